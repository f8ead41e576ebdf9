#!/usr/bin/env bash
# A fresh machine's set-up, to the first answer, with nothing cached (issue 21).
#
# Clones this checkout's HEAD into a new directory and runs `make setup` there with pip's
# cache off and an empty llama.cpp build cache, every line of its output stamped with the
# second it came at; then `make serve` until a chat request is answered.
#
#   tests/bench/fresh_install.sh [NAME] [ENGINE]      (defaults: run, llamacpp)
#
# The log is /tmp/fresh-NAME.log; the summary line is printed and added to
# /tmp/fresh-results.txt. It deletes /tmp/fresh and /tmp/fresh-cache first.
set -u
name=${1:-run}
engine=${2:-llamacpp}
port=8123
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
rm -rf /tmp/fresh /tmp/fresh-cache && git clone -q "$repo" /tmp/fresh && cd /tmp/fresh || exit 1
started=$(date +%s)
PIP_NO_CACHE_DIR=1 make setup ENGINE="$engine" LLAMA_SERVER_CACHE=/tmp/fresh-cache 2>&1 |
	while IFS= read -r line; do
		printf '%4d %s\n' "$(($(date +%s) - started))" "$line"
	done >"/tmp/fresh-$name.log"
set_up=$(date +%s)
make serve ENGINE="$engine" LLAMA_SERVER_CACHE=/tmp/fresh-cache ARGS="--port $port" \
	>"/tmp/fresh-$name-serve.log" 2>&1 &
tries=0
until curl -sf -o /dev/null -H 'Content-Type: application/json' \
	-d '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}' \
	"http://127.0.0.1:$port/v1/chat/completions"; do
	sleep 0.5
	tries=$((tries + 1))
	[ "$tries" -gt 1200 ] && { echo "$name: no answer within 10 min"; break; }
done
answered=$(date +%s)
build=$(cat .venv/share/tunegate/llama.cpp/build/build-seconds 2>/dev/null || echo "?")
echo "$name: setup $((set_up - started)) s; serve to first answer $((answered - set_up)) s;" \
	"total $((answered - started)) s; build $build s" | tee -a /tmp/fresh-results.txt
pkill -f -- "gateway --data-root var .*--port $port" || true
sleep 2
