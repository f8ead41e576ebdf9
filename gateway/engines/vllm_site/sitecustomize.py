"""Loaded by every process of a vLLM engine the gateway starts (via PYTHONPATH).

It arms the parent-death signal in this process and in every child it forks,
so that vLLM's engine core dies with its API server, which dies with the
gateway: a SIGKILLed gateway leaves no engine behind (``gateway.parent_death``).

It also corrects one engine bug before vLLM uses the code in question:

vLLM's CPU LoRA kernels (``vllm.lora.ops.torch_ops``) select each token's
LoRA weights with ``weights[lora_index]``. Tokens of requests *without* an
adapter carry index -1, which Python indexing turns into the *last* adapter
slot: in a batch that mixes base-model requests with adapter requests, the
base requests are answered with an adapter's weights. (The GPU kernels skip
index -1.) The fix zeroes the LoRA shrink output of tokens with index -1, so
the expand step adds nothing to them, exactly as if no adapter were applied.

The patch is installed by an import hook, because vLLM binds these functions
by name at import time, in every worker process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_TARGET = "vllm.lora.ops.torch_ops.lora_ops"


def _patch(module: ModuleType) -> None:
    original = module.bgmv_shrink
    if getattr(original, "_tunegate_masked", False):
        return

    def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        original(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling)
        # Branch-free, so it also works inside a compiled graph.
        keep = (lora_indices_tensor >= 0).to(output_tensor.dtype).unsqueeze(-1)
        output_tensor.mul_(keep)

    bgmv_shrink._tunegate_masked = True  # type: ignore[attr-defined]
    module.bgmv_shrink = bgmv_shrink  # sgmv_shrink looks it up here at call time


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader) -> None:
        self._wrapped = wrapped

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return self._wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._wrapped.exec_module(module)
        _patch(module)


class _PatchFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


try:
    from gateway.parent_death import arm_for_this_process_tree
except ImportError:  # not started by the gateway
    pass
else:
    arm_for_this_process_tree()

if _TARGET in sys.modules:
    _patch(sys.modules[_TARGET])
else:
    sys.meta_path.insert(0, _PatchFinder())
