"""The base's answers to the general prompts, made ahead of the tests' jobs (``make test``).

The checks after every job and trial read the base's greedy answers to the built-in
general prompts from the data root's ``cache/checks/`` (``tuner.base_answers``); the
first job on a base makes them, in the same batch as its adapter's answers, which
costs that job about 9 s for the embedded model on 2 CPU cores. ``make test`` (and
``make bench``) make them once for the embedded model, so that no test's first trial
waits for them; ``make serve`` does not (on a fresh machine they would share the cores
with llama.cpp's build before the first answer).

    python -m tuner.warm_checks --base DIR --cache DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tuner.base_answers import base_answers, read_cached
from tuner.drift import general_prompts
from tuner.trial_checks import ANSWER_TOKENS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner.warm_checks")
    parser.add_argument("--base", type=Path, required=True, help="the base's HF checkpoint")
    parser.add_argument("--cache", type=Path, required=True, help="DATA_ROOT/cache/checks")
    args = parser.parse_args(argv)
    prompts = [prompt.messages for prompt in general_prompts()]
    if read_cached(prompts, ANSWER_TOKENS, args.base, args.cache) is not None:
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    base_answers(model, tokenizer, prompts, ANSWER_TOKENS, args.base, args.cache)
    if read_cached(prompts, ANSWER_TOKENS, args.base, args.cache) is None:
        print(f"could not keep the base's answers in {args.cache}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
