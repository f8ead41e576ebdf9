"""Derive an HF checkpoint (safetensors + tokenizer) from a GGUF file, once.

vLLM and the tuner load HF checkpoints; the embedded model ships as a GGUF.
transformers dequantises the GGUF into a ``LlamaForCausalLM``; this saves it.
The result appears atomically: written to a temporary sibling directory, then
renamed into place.

    python -m tuner.prepare_base --gguf FILE --out DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path


def derive_checkpoint(gguf: Path, out_dir: Path) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _mark_dequantised(model)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _mark_dequantised(model: object) -> None:
    """transformers refuses to save a model it still believes GGUF-quantised; it is not."""
    model.hf_quantizer = None  # type: ignore[attr-defined]
    config = model.config  # type: ignore[attr-defined]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.is_quantized = False  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out = derive_checkpoint(args.gguf.resolve(), args.out.resolve())
    print(f"checkpoint ready: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
