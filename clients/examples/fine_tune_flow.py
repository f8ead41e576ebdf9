"""The whole fine-tuning flow with the official openai SDK:

upload a dataset, create a job, follow its events, chat with the fine-tuned
model, export it to GGUF, and chat with the merged model on llama.cpp.

    python -m clients.examples.fine_tune_flow [DATA.jsonl] [--epochs N]
"""

import argparse
import os
import time
from pathlib import Path

import httpx
from openai import OpenAI

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "ahoy.jsonl"
url = os.environ.get("TUNEGATE_URL", "http://127.0.0.1:8000/v1")
key = os.environ.get("TUNEGATE_API_KEY", "local")
client = OpenAI(base_url=url, api_key=key)

parser = argparse.ArgumentParser()
parser.add_argument("data", nargs="?", default=str(BUNDLED))
parser.add_argument("--epochs", default="auto")
args = parser.parse_args()
epochs = args.epochs if args.epochs == "auto" else int(args.epochs)

# 1. Upload, and create the job; "export" also merges it into a GGUF for llama.cpp.
training = client.files.create(file=open(args.data, "rb"), purpose="fine-tune")
job = client.fine_tuning.jobs.create(
    model="smollm2-135m-instruct",
    training_file=training.id,
    suffix="example",
    hyperparameters={"n_epochs": epochs},
    extra_body={"export": ["gguf"]},
)
print("job:", job.id)

# 2. Follow its events until it ends.
seen = set()
while job.status not in ("succeeded", "failed", "cancelled"):
    time.sleep(2)
    job = client.fine_tuning.jobs.retrieve(job.id)
    for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=50).data):
        if event.id not in seen:
            seen.add(event.id)
            print("event:", event.message)
print("status:", job.status)
if job.status != "succeeded":
    raise SystemExit(f"the job ended {job.status}: {job.error}")

# 3. The fine-tuned model (a LoRA on vLLM) answers at once.
question = [{"role": "user", "content": "What do bees make?"}]
reply = client.chat.completions.create(
    model=job.fine_tuned_model, messages=question, max_tokens=24, temperature=0
)
print("adapter:", reply.choices[0].message.content)

# 4. Wait for the GGUF export the job started, then ask the merged model on llama.cpp.
merge_id = next(
    e.data["merge_id"]
    for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data
    if e.data and "merge_id" in e.data
)
with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
    merge = http.get(f"/merges/{merge_id}").json()
    while merge["status"] in ("queued", "running"):
        time.sleep(2)
        merge = http.get(f"/merges/{merge_id}").json()
if merge["status"] != "succeeded":
    raise SystemExit(f"the export failed: {merge['error']}")
reply = client.chat.completions.create(
    model=merge["model"], messages=question, max_tokens=24, temperature=0
)
print("merged:", reply.choices[0].message.content)
