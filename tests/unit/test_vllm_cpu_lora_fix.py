"""The engine-side fix: tokens without an adapter (index -1) get no LoRA contribution."""

from __future__ import annotations

import os
import subprocess
import sys

from gateway.engines.vllm import vllm_env
from gateway.settings import Settings

CHECK = """
import torch
from vllm.lora.ops.torch_ops import bgmv_shrink, sgmv_shrink
weights = torch.ones(2, 1, 3, 4)            # two adapter slots, rank 3, hidden 4
x = torch.ones(3, 4)
out = torch.full((3, 3), 7.0)
bgmv_shrink(x, weights, out, torch.tensor([0, -1, 1]), 1.0)
assert out[1].abs().sum() == 0, out          # the base token: nothing from the last slot
assert (out[0] == 4).all() and (out[2] == 4).all(), out
out = torch.full((3, 3), 7.0)
sgmv_shrink(x, weights, out, torch.tensor([0, 1]), torch.tensor([2, 1]),
            torch.tensor([-1, 0]), 2, 2, 3, 1.0)
assert out[:2].abs().sum() == 0 and (out[2] == 4).all(), out
print("ok")
"""


def test_engine_processes_get_the_lora_index_fix():
    env = vllm_env(Settings())
    result = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_the_fix_is_scoped_to_engine_processes():
    assert "vllm_site" not in os.environ.get("PYTHONPATH", "")
    assert "vllm_site" in vllm_env(Settings())["PYTHONPATH"]
