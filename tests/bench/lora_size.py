"""What a LoRA adapter costs llama.cpp's decode, by the size of the base.

llama.cpp applies an adapter as four more graph nodes per adapted matrix (two small
products, a scale, an add), and on a CPU each node is one more wait for all threads:
unpatched, a rank-8 adapter on every linear layer (the tuner's default, 210 matrices on
the embedded model) cost a fifth of the embedded model's decode speed here. Our patch
(patches/llama.cpp) computes the adapted product and its adapter as one node on a
decode step. Both are measured, side by side: the patched server as the gateway runs
it, and the same binary with ``GGML_CPU_DISABLE_FUSION=1`` (llama.cpp's own nodes).

Measured on llama-server directly, one server per base and per way, with the adapter
loaded and chosen per request, against the same server's base at the all-zero scales
the gateway sends, in turns. The bases: the embedded model, and two bases of the shapes
of larger models in the same family (SmolLM2-360M's, TinyLlama-1.1B's) with random
weights, since decode speed does not depend on the weights' values. Every base is q8_0,
the adapter f16 (as the gateway converts it). The random bases are made once and kept
under ``var/bench/cache/lora-size``.

    python -m tests.bench --suite lora-size [--quick]
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tests.bench.llamacpp_server import LORA_MODULES
from tests.bench.suites import BASE_CONFIG, STORY, Row
from tests.support.adapter_factory import write_adapter
from tests.support.llama_server import llama_server
from tuner.export import convert
from tuner.lora_gguf import convert_lora

CACHE = BASE_CONFIG.parents[2] / "bench" / "cache" / "lora-size"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Shapes of larger models of the embedded model's family (llama, its tokenizer).
SHAPES: dict[str, dict[str, int] | None] = {
    "135M (embedded)": None,
    "360M shape": {
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
    },
    "1.1B shape": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 64,
    },
}
DECODE_TOKENS = 64


async def lora_size(quick: bool) -> list[Row]:
    rounds = 3 if quick else 6
    rows = []
    for name, shape in SHAPES.items():
        base_gguf, adapter_gguf = await asyncio.to_thread(_prepared, name, shape)
        for fused in (True, False):
            with llama_server(base_gguf, [adapter_gguf], fused) as url:
                base, adapted = await asyncio.to_thread(_decode_in_turns, url, rounds)
            goal = "≥ 0.9× base" if shape is None else "report (≥ 0.9× base)"
            how = "" if fused else ", llama.cpp's own nodes (fusion off)"
            rows.append(
                Row(
                    "llama.cpp adapters",
                    f"decode tok/s, adapter vs base, {name}{how}",
                    base,
                    adapted,
                    "tok/s",
                    goal if fused else "report",
                    adapted / base >= 0.9 if fused else None,
                )
            )
    return rows


def _prepared(name: str, shape: dict[str, int] | None) -> tuple[Path, Path]:
    """(base GGUF, adapter GGUF) for ``name``, made once and kept."""
    folder = CACHE / name.split(" ")[0]
    base_gguf, adapter_gguf = folder / "base-q8_0.gguf", folder / "adapter-f16.gguf"
    if base_gguf.is_file() and adapter_gguf.is_file():
        return base_gguf, adapter_gguf
    folder.mkdir(parents=True, exist_ok=True)
    hf_dir = BASE_CONFIG.parent if shape is None else _random_base(folder / "hf", shape)
    convert(hf_dir, base_gguf, "q8_0")
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-lora-size-") as scratch:
        adapter = write_adapter(
            Path(scratch) / "adapter",
            rank=8,
            base_config=hf_dir / "config.json",
            seed=1,
            modules=LORA_MODULES,
        )
        convert_lora(adapter, hf_dir, adapter_gguf)
    if shape is not None:
        shutil.rmtree(hf_dir)  # the GGUFs are all that is measured
    return base_gguf, adapter_gguf


def _random_base(folder: Path, shape: dict[str, int]) -> Path:
    """An HF checkpoint of the embedded model's family in ``shape``, random f16 weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {**json.loads(BASE_CONFIG.read_text()), **shape, "dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(config))
    for name in TOKENIZER_FILES:
        shutil.copy(BASE_CONFIG.parent / name, folder / name)
    hidden, inner, head = shape["hidden_size"], shape["intermediate_size"], shape["head_dim"]
    heads, kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    rng = np.random.default_rng(0)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    tensors = {
        "model.embed_tokens.weight": weight(config["vocab_size"], hidden),
        "model.norm.weight": np.ones(hidden, dtype=np.float16),
    }
    for i in range(shape["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        tensors |= {
            f"{layer}.self_attn.q_proj.weight": weight(heads * head, hidden),
            f"{layer}.self_attn.k_proj.weight": weight(kv * head, hidden),
            f"{layer}.self_attn.v_proj.weight": weight(kv * head, hidden),
            f"{layer}.self_attn.o_proj.weight": weight(hidden, heads * head),
            f"{layer}.mlp.gate_proj.weight": weight(inner, hidden),
            f"{layer}.mlp.up_proj.weight": weight(inner, hidden),
            f"{layer}.mlp.down_proj.weight": weight(hidden, inner),
            f"{layer}.input_layernorm.weight": np.ones(hidden, dtype=np.float16),
            f"{layer}.post_attention_layernorm.weight": np.ones(hidden, dtype=np.float16),
        }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _decode_in_turns(url: str, rounds: int) -> tuple[float, float]:
    """Median decode tok/s of the base (scale 0) and of the adapter (scale 1), in turns."""
    speeds: dict[float, list[float]] = {0.0: [], 1.0: []}
    for turn in range(rounds + 1):
        for scale in speeds:
            speed = _decode_speed(url, scale)
            if turn:  # the first turn warms the server up
                speeds[scale].append(speed)
    return statistics.median(speeds[0.0]), statistics.median(speeds[1.0])


def _decode_speed(url: str, scale: float) -> float:
    body = {
        "messages": STORY,
        "max_tokens": DECODE_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "lora": [{"id": 0, "scale": scale}],
    }
    headers = {"content-type": "application/json"}
    request = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(), headers
    )
    with urllib.request.urlopen(request, timeout=600) as answer:
        return float(json.load(answer)["timings"]["predicted_per_second"])
