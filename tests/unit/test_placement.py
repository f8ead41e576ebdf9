"""Pinning managed vLLM replicas: GPUs per replica, or the CPU cores split between them."""

from __future__ import annotations

import pytest

from gateway.engines.placement import (
    PlacementError,
    cpu_placements,
    gpu_placements,
    tensor_parallel_size,
)


def test_gpus_are_split_between_replicas():
    assert gpu_placements(2, 2, ["0", "1", "2", "3"]) == [
        {"CUDA_VISIBLE_DEVICES": "0,1"},
        {"CUDA_VISIBLE_DEVICES": "2,3"},
    ]
    with pytest.raises(PlacementError, match="need 4 GPUs; 3 are visible"):
        gpu_placements(2, 2, ["0", "1", "2"])


def test_cpu_cores_are_split_between_replicas_and_their_tensor_parallel_ranks():
    assert cpu_placements(1, [0, 1]) == [{}]  # one replica: vLLM's own binding
    assert cpu_placements(2, [0, 1]) == [
        {"VLLM_CPU_OMP_THREADS_BIND": "0"},
        {"VLLM_CPU_OMP_THREADS_BIND": "1"},
    ]
    assert cpu_placements(2, list(range(8)), ranks=2) == [
        {"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"},
        {"VLLM_CPU_OMP_THREADS_BIND": "4,5|6,7"},
    ]
    with pytest.raises(PlacementError):
        cpu_placements(3, [0, 1])


def test_tensor_parallel_size_is_read_from_vllms_extra_flags():
    assert tensor_parallel_size([]) == 1
    assert tensor_parallel_size(["--tensor-parallel-size", "4"]) == 4
    assert tensor_parallel_size(["-tp=2", "--x"]) == 2
