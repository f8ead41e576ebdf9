"""Convert a PEFT LoRA adapter to GGUF, for llama-server's per-request adapters.

    python -m tuner.lora_gguf --adapter ADAPTER_DIR --base HF_DIR --out FILE.gguf

Runs llama.cpp's own ``convert_lora_to_gguf.py`` from the sources vendored in the
pinned llama-cpp-python (set up by ``make setup`` beside ``convert_hf_to_gguf.py``,
which merges use), so the adapter's GGUF and the llama-server that loads it are
one llama.cpp version. The converter reads only the base's config and tokenizer
(``--base``), never its weights. The GGUF is written under a temporary name and
renamed into place last: a failed or killed conversion leaves nothing at ``--out``.

This wrapper imports nothing heavy itself; the converter runs as its child, in
the same process group, so stopping this process stops the conversion.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from tuner.export import CONVERTER_DIR, publish, staging_path

# f16 keeps the adapter as trained (it is a few MB), whatever the base's quantisation.
OUTTYPE = "f16"


class LoraConversionError(Exception):
    pass


def converter_command(
    adapter_dir: Path, base_dir: Path, out_file: Path, converter_dir: Path = CONVERTER_DIR
) -> tuple[list[str], dict[str, str]]:
    """The converter's argv and environment (offline: the base comes from ``base_dir``)."""
    script = converter_dir / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise LoraConversionError("llama.cpp's LoRA converter is not installed; run `make setup`.")
    argv = [
        sys.executable,
        str(script),
        str(adapter_dir),
        "--base",
        str(base_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        OUTTYPE,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(converter_dir / "gguf-py"), str(converter_dir)]),
        "HF_HUB_OFFLINE": "1",
    }
    return argv, env


def convert_lora(
    adapter_dir: Path, base_dir: Path, out_file: Path, converter_dir: Path = CONVERTER_DIR
) -> Path:
    staging = staging_path(out_file)
    argv, env = converter_command(adapter_dir, base_dir, staging, converter_dir)
    result = subprocess.run(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if result.returncode != 0 or not staging.is_file():
        staging.unlink(missing_ok=True)
        sys.stderr.write(result.stdout[-4000:])
        raise LoraConversionError(f"the LoRA converter failed (exit status {result.returncode})")
    return publish(staging, out_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        convert_lora(args.adapter, args.base, args.out)
    except (LoraConversionError, OSError) as exc:
        staging_path(args.out).unlink(missing_ok=True)
        print(f"conversion failed: {exc}", file=sys.stderr)
        return 1
    print(f"converted {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
