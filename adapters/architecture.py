"""What a LoRA must look like to fit a base model: per module, its input and output sizes.

A table per module name, computed from the base's ``config.json``; a LoRA for
another architecture or size fails here with a clear message instead of
failing inside the engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapters.errors import InvalidAdapterError
from adapters.safetensors_header import TensorInfo

_LORA_TENSOR = re.compile(
    r"^base_model\.model\.(?:model\.)?layers\.(?P<layer>\d+)\.[a-z_]+\.(?P<module>[a-z_]+)"
    r"\.lora_(?P<ab>[AB])(?:\.weight)?$"
)


@dataclass(frozen=True)
class BaseShape:
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    q_out: int
    kv_out: int

    @classmethod
    def from_config_file(cls, path: Path) -> BaseShape:
        config = json.loads(path.read_text())
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        kv_heads = config.get("num_key_value_heads") or heads
        return cls(
            model_type=config.get("model_type", "unknown"),
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            q_out=heads * head_dim,
            kv_out=kv_heads * head_dim,
        )


# module name -> (in_features, out_features) for the decoder layers of
# Llama-family models (Llama, Mistral, Qwen2, SmolLM...).
MODULE_DIMS: dict[str, Callable[[BaseShape], tuple[int, int]]] = {
    "q_proj": lambda b: (b.hidden, b.q_out),
    "k_proj": lambda b: (b.hidden, b.kv_out),
    "v_proj": lambda b: (b.hidden, b.kv_out),
    "o_proj": lambda b: (b.q_out, b.hidden),
    "gate_proj": lambda b: (b.hidden, b.intermediate),
    "up_proj": lambda b: (b.hidden, b.intermediate),
    "down_proj": lambda b: (b.intermediate, b.hidden),
}


def check_fits_base(
    tensors: dict[str, TensorInfo], rank: int, base: BaseShape, base_id: str
) -> None:
    for name, info in tensors.items():
        match = _LORA_TENSOR.match(name)
        if match is None:
            raise InvalidAdapterError(f"Tensor '{name}' is not a LoRA weight of a decoder layer.")
        module, ab = match["module"], match["ab"]
        if module not in MODULE_DIMS:
            raise InvalidAdapterError(f"The adapter targets '{module}', which '{base_id}' lacks.")
        if int(match["layer"]) >= base.layers:
            raise InvalidAdapterError(
                f"The adapter has layer {match['layer']}; '{base_id}' has {base.layers} layers."
            )
        in_features, out_features = MODULE_DIMS[module](base)
        expected = (rank, in_features) if ab == "A" else (out_features, rank)
        if info.shape != expected:
            raise InvalidAdapterError(
                f"The adapter does not fit base '{base_id}': {name} has shape {list(info.shape)}, "
                f"the base needs {list(expected)}. Was it trained on another model?"
            )
