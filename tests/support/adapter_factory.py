"""Synthetic LoRA adapters and base configs, for registry tests and benchmarks (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from adapters.architecture import MODULE_DIMS, BaseShape

TINY_BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
_DIMS = {  # module -> (in, out) for TINY_BASE: head_dim 16, kv_out 32
    "q_proj": (64, 64),
    "k_proj": (64, 32),
    "v_proj": (64, 32),
    "o_proj": (64, 64),
    "gate_proj": (64, 128),
    "up_proj": (64, 128),
    "down_proj": (128, 64),
}


def write_base(folder: Path, **overrides: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINY_BASE, **overrides}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    return folder


def write_adapter(
    folder: Path,
    rank: int = 4,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    hidden: int = 64,
    layers: int = 2,
    config_overrides: dict[str, object] | None = None,
    base_config: Path | None = None,
    seed: int | None = None,
) -> Path:
    """A LoRA with zero weights for TINY_BASE (scaled by ``hidden``), or, given
    ``base_config``, small random weights that fit that base."""
    folder.mkdir(parents=True, exist_ok=True)
    dims = dict(_DIMS)
    if base_config is not None:
        shape = BaseShape.from_config_file(base_config)
        dims = {m: f(shape) for m, f in MODULE_DIMS.items()}
        layers, hidden = shape.layers, 64
    scale = hidden / 64
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module in modules:
            block = "mlp" if module.endswith(("gate_proj", "up_proj", "down_proj")) else "self_attn"
            in_f, out_f = (int(d * scale) for d in dims[module])
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            a = np.zeros((rank, in_f), dtype=np.float32)
            b = np.zeros((out_f, rank), dtype=np.float32)
            if seed is not None:
                a = rng.normal(0, 0.02, a.shape).astype(np.float32)
                b = rng.normal(0, 0.02, b.shape).astype(np.float32)
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = b
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(modules),
        "base_model_name_or_path": "somewhere",
        **(config_overrides or {}),
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder
