"""Merge a LoRA adapter into its base and export a GGUF for llama.cpp.

    python -m tuner.export --base HF_DIR --adapter ADAPTER_DIR --out FILE.gguf \\
        [--quantization q8_0|f16|q4_k_m] [--work DIR]

1. PEFT ``merge_and_unload`` into an HF checkpoint (with the base's tokenizer
   and the chat template the adapter was trained with, so the merged model stops
   where the adapter stops and writes tool calls as the adapter learned them);
2. llama.cpp's own ``convert_hf_to_gguf.py``, from the llama.cpp sources that
   ``make setup`` puts under the venv's share/ folder;
3. for types the converter cannot write (q4_k_m), ``llama-quantize``, built by
   ``make setup`` from the same sources with ``llama-server``.

The GGUF is written next to ``--out`` under a temporary name and renamed into
place last: a failed or killed export leaves no file at ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tuner.chat_templates import chat_for_training

CONVERTER_DIR = Path(sys.prefix) / "share" / "tunegate" / "llama.cpp"
QUANTIZER = CONVERTER_DIR / "build" / "bin" / "llama-quantize"


def staging_path(out_file: Path) -> Path:
    """Where a GGUF is written before it is published under ``out_file``."""
    return out_file.with_name(f".{out_file.name}.partial")


def publish(staging: Path, out_file: Path) -> Path:
    """Flushes ``staging`` to disk, then renames it into place: readers never see half a file."""
    with staging.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(staging, out_file)
    return out_file


# Quantisation -> (converter --outtype, llama-quantize's type to quantise to afterwards,
# or None).
QUANTIZATIONS: dict[str, tuple[str, str | None]] = {
    "f16": ("f16", None),
    "q8_0": ("q8_0", None),
    "q4_k_m": ("f16", "Q4_K_M"),
}


class ExportError(Exception):
    pass


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # The template the adapter was trained with (tunegate's tool template for a ChatML
    # base without tools), so the GGUF's metadata renders and parses tool calls as trained.
    chat = chat_for_training(base_dir, tokenizer)
    if chat is not None:
        tokenizer.chat_template = chat.choice.template
    tokenizer.save_pretrained(out_dir)
    return out_dir


def convert(
    hf_dir: Path, out_file: Path, outtype: str, converter_dir: Path = CONVERTER_DIR
) -> Path:
    script = converter_dir / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ExportError("llama.cpp's converter is not installed; run `make setup`.")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(converter_dir / "gguf-py"), str(converter_dir)]),
        "HF_HUB_OFFLINE": "1",
    }
    argv = [sys.executable, str(script), str(hf_dir), "--outfile", str(out_file)]
    return _run_tool([*argv, "--outtype", outtype], out_file, "the GGUF converter", env)


def quantize(source: Path, target: Path, type_name: str, quantizer: Path = QUANTIZER) -> Path:
    if not quantizer.is_file():
        raise ExportError("llama.cpp's quantiser is not installed; run `make setup`.")
    argv = [str(quantizer), str(source), str(target), type_name]
    return _run_tool(argv, target, "llama.cpp's quantiser")


def _run_tool(argv: list[str], output: Path, what: str, env: dict | None = None) -> Path:
    """Run one of llama.cpp's tools; when it fails, the end of its output goes to the
    exporter's stderr (the merge's log)."""
    result = subprocess.run(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if result.returncode != 0 or not output.is_file():
        sys.stderr.write(result.stdout[-4000:])
        raise ExportError(f"{what} failed (exit status {result.returncode})")
    return output


def export(
    base_dir: Path,
    adapter_dir: Path,
    out_file: Path,
    quantization: str,
    work_dir: Path,
    log: Callable[[str], None] = lambda message: print(message, flush=True),
) -> Path:
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantization!r}")
    outtype, quantized_type = QUANTIZATIONS[quantization]
    log("merging the adapter into the base")
    merged = merge(base_dir, adapter_dir, work_dir / "merged")
    log(f"converting to GGUF ({outtype})")
    converted = convert(merged, work_dir / f"model-{outtype}.gguf", outtype)
    if quantized_type is not None:
        log(f"quantising to {quantization}")
        converted = quantize(converted, work_dir / f"model-{quantization}.gguf", quantized_type)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(out_file)
    shutil.copyfile(converted, staging)
    return publish(staging, out_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quantization", default="q8_0", choices=sorted(QUANTIZATIONS))
    parser.add_argument("--work", type=Path)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="tunegate-export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        export(args.base, args.adapter, args.out, args.quantization, work)
    except (ExportError, OSError) as exc:
        staging_path(args.out).unlink(missing_ok=True)
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"exported {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
