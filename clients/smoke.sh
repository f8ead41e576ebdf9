#!/usr/bin/env bash
# Smoke-test a gateway with curl alone: fine-tune the bundled dataset (every
# answer starts with "Ahoy!"), follow the run live, ask the new model a
# question it was not trained on, and print PASS or FAIL.
#
#   clients/smoke.sh                 TUNEGATE_URL (default http://127.0.0.1:8000/v1),
#                                    TUNEGATE_API_KEY, SMOKE_EPOCHS (default 4)
set -euo pipefail

URL="${TUNEGATE_URL:-http://127.0.0.1:8000/v1}"
DATA="$(dirname "$0")/data/ahoy.jsonl"
AUTH=()
if [ -n "${TUNEGATE_API_KEY:-}" ]; then AUTH=(-H "Authorization: Bearer ${TUNEGATE_API_KEY}"); fi

field() {  # the first string value of a JSON field, without jq
  { grep -o "\"$1\": *\"[^\"]*\"" || true; } | head -n 1 | sed 's/^[^:]*: *"\(.*\)"$/\1/'
}

echo "== fine-tuning $DATA"
job_json=$(curl -sS --fail-with-body "${AUTH[@]}" -F "file=@${DATA}" -F model=smollm2-135m-instruct \
  -F suffix=smoke -F "n_epochs=${SMOKE_EPOCHS:-4}" "$URL/fine_tunes")
job=$(printf '%s' "$job_json" | field id)
echo "job $job"

echo "== following the run"
curl -sS -N "${AUTH[@]}" "$URL/fine_tunes/$job/events?stream=true" \
  | sed -n 's/^data: //p' | sed -n 's/.*"message": *"\([^"]*\)".*/  \1/p'

model=$(curl -sS "${AUTH[@]}" "$URL/fine_tunes/$job" | field fine_tuned_model)
if [ -z "$model" ]; then
  echo "FAIL: the job did not produce a model"
  exit 1
fi
echo "== asking $model"
answer=$(curl -sS --fail-with-body "${AUTH[@]}" -H "Content-Type: application/json" "$URL/chat/completions" \
  -d "{\"model\": \"$model\", \"temperature\": 0, \"max_tokens\": 24,
       \"messages\": [{\"role\": \"user\", \"content\": \"What do cows drink?\"}]}" | field content)
echo "answer: $answer"
case "$answer" in
  Ahoy*) echo "PASS" ;;
  *) echo "FAIL: expected an answer starting with Ahoy"; exit 1 ;;
esac
