"""Chat with a model through tunegate, with the official openai SDK: whole, then streamed.

    python -m clients.examples.chat [MODEL]      (default: smollm2-135m-instruct)

Reads TUNEGATE_URL (default http://127.0.0.1:8000/v1) and TUNEGATE_API_KEY.
"""

import os
import sys

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("TUNEGATE_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ.get("TUNEGATE_API_KEY", "local"),
)
model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]

reply = client.chat.completions.create(model=model, messages=question, max_tokens=16, temperature=0)
print("whole:   ", reply.choices[0].message.content)

print("streamed:", end=" ", flush=True)
for chunk in client.chat.completions.create(
    model=model, messages=question, max_tokens=16, temperature=0, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
