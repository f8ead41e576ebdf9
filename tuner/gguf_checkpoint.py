"""The HF checkpoint of a base that was given only as a GGUF, for the tuner.

    python -m tuner.gguf_checkpoint --gguf FILE --out DIR

A GGUF that Ollama or LM Studio pulled (q8_0, q4_K_M...) can be fine-tuned: its
weights are dequantised by transformers' GGUF loader into an HF checkpoint (fp32
safetensors + tokenizer + chat template), once, as ``tuner.prepare_base`` does for the
embedded model. The LoRA trains on that checkpoint and is served on top of the
original GGUF by llama.cpp.

Exit status 3, with one line that says so, when transformers cannot read the GGUF's
architecture: the gateway answers fine-tuning requests on that base with it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

UNSUPPORTED = 3


def gguf_architecture(gguf: Path) -> str:
    """``general.architecture`` from the GGUF's header (the tensors are not read)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def readable_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


def unsupported_reason(gguf: Path) -> str | None:
    architecture = gguf_architecture(gguf)
    readable = readable_architectures()
    if architecture in readable:
        return None
    return (
        f"transformers cannot read the '{architecture}' architecture from a GGUF, so this "
        f"model can be served but not fine-tuned here (it reads: {', '.join(readable)})."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reason = unsupported_reason(args.gguf)
    if reason is not None:
        print(reason, file=sys.stderr)
        return UNSUPPORTED
    from tuner.prepare_base import derive_checkpoint

    out = derive_checkpoint(args.gguf.resolve(), args.out.resolve())
    print(f"checkpoint ready: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
