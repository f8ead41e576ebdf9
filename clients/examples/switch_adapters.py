"""Switch LoRA adapters per request, just by the model name.

    python -m clients.examples.switch_adapters ADAPTER_A ADAPTER_B

Each round asks the base model, then adapter A, then adapter B: vLLM swaps the
adapter per request, and all three can be in the same batch.
"""

import os
import sys

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("TUNEGATE_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ.get("TUNEGATE_API_KEY", "local"),
)
models = ["smollm2-135m-instruct", *sys.argv[1:3]]
for question in ("What is the capital of Italy?", "How many wheels does a bicycle have?"):
    for model in models:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=24,
            temperature=0,
        )
        print(f"{model}: {reply.choices[0].message.content}")
