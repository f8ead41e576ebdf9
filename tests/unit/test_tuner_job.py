"""The trainer on a tiny random Llama (seconds, not minutes), with the real tokenizer."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapters.safetensors_header import read_tensor_infos
from tests.support.gateway_process import REPO
from tuner.job import EventSink, JobSpec, make_callback, run

TOKENIZER_DIR = REPO / "var" / "models" / "smollm2-135m-instruct"
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        **TINY,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_run_dir(folder: Path, base: Path, valid: bool, lr: float = 1e-3) -> JobSpec:
    folder.mkdir(parents=True)
    data = (REPO / "tests" / "data" / "json_answers.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(data[:8]) + "\n")
    if valid:
        (folder / "valid.jsonl").write_text("\n".join(data[8:]) + "\n")
    spec = {
        "base_dir": str(base),
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate": lr,
        "seed": 0,
        "max_length": 256,
        "lora": {"rank": 4, "alpha": 8, "target_modules": "all-linear"},
    }
    (folder / "job.json").write_text(json.dumps(spec))
    return JobSpec.from_run_dir(folder)


def events_of(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_training_emits_progress_and_checkpoints_and_saves_a_safetensors_lora(tiny_base, tmp_path):
    spec = write_run_dir(tmp_path / "run", tiny_base, valid=True)
    stream = io.StringIO()
    run(spec, EventSink(stream))
    events = events_of(stream)
    kinds = [e["type"] for e in events]
    assert kinds.count("progress") == 4  # 8 examples / batch 4 x 2 epochs
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert len(checkpoints) == 2 and all(c["valid_loss"] is not None for c in checkpoints)
    result = events[-1]
    assert result["type"] == "result" and result["steps"] == 4
    assert result["valid_loss"] == min(c["valid_loss"] for c in checkpoints)  # the best one is kept
    files = sorted(p.name for p in spec.adapter_dir.iterdir())
    assert "adapter_model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    # Trainable parameters are exactly r x (in + out) per adapted linear layer.
    h, i, kv = TINY["hidden_size"], TINY["intermediate_size"], TINY["hidden_size"] // 2
    per_layer = 4 * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    infos = read_tensor_infos(spec.adapter_dir / "adapter_model.safetensors")
    total = sum(int.__mul__(*info.shape) for info in infos.values())
    assert total == per_layer * TINY["num_hidden_layers"]


def test_without_validation_data_every_epoch_is_a_checkpoint(tiny_base, tmp_path):
    spec = write_run_dir(tmp_path / "run", tiny_base, valid=False)
    stream = io.StringIO()
    run(spec, EventSink(stream))
    checkpoints = [e for e in events_of(stream) if e["type"] == "checkpoint"]
    assert [c["valid_loss"] for c in checkpoints] == [None, None]


def test_overfitting_is_reported_when_valid_loss_rises_as_train_loss_falls():
    stream = io.StringIO()
    callback = make_callback(EventSink(stream))
    state = SimpleNamespace(global_step=1, max_steps=10, epoch=1.0)
    args = SimpleNamespace(eval_strategy="epoch")
    for train, valid in ((2.0, 1.5), (1.0, 1.4), (0.5, 1.6)):
        callback.on_log(args, state, None, logs={"loss": train})
        callback.on_evaluate(args, state, None, metrics={"eval_loss": valid})
    warnings = [e for e in events_of(stream) if e["type"] == "warning"]
    assert len(warnings) == 1 and "overfitting" in warnings[0]["message"]


def test_an_untouched_lora_leaves_the_base_unchanged(tiny_base):
    """A LoRA before training (B = 0) merged into the base gives back the base exactly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    lora = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    merged = lora.merge_and_unload()
    for name, tensor in merged.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def write_dpo_run_dir(
    folder: Path, base: Path, valid: bool, start_adapter: Path | None = None, lr: float = 5e-4
) -> JobSpec:
    folder.mkdir(parents=True)
    pairs = (REPO / "tests" / "data" / "short_answer_pairs.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(pairs[:8]) + "\n")
    if valid:
        (folder / "valid.jsonl").write_text("\n".join(pairs[8:12]) + "\n")
    spec = {
        "base_dir": str(base),
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate": lr,
        "seed": 0,
        "max_length": 256,
        "lora": {"rank": 4, "alpha": 8, "target_modules": "all-linear"},
        "method": "dpo",
        "method_options": {"beta": 0.1, "sft_weight": 1.0},
        "start_adapter": str(start_adapter) if start_adapter else None,
    }
    (folder / "job.json").write_text(json.dumps(spec))
    return JobSpec.from_run_dir(folder)


def lora_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(adapter_dir / "adapter_model.safetensors")


def test_dpo_reports_loss_reward_accuracy_and_margin_train_and_valid(tiny_base, tmp_path):
    spec = write_dpo_run_dir(tmp_path / "run", tiny_base, valid=True)
    stream = io.StringIO()
    run(spec, EventSink(stream))
    events = events_of(stream)
    progress = [e for e in events if e["type"] == "progress"]
    assert len(progress) == 4  # 8 pairs / batch 4 x 2 epochs
    for event in progress:
        assert {"train_loss", "train_reward_accuracy", "train_reward_margin"} <= set(event)
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert len(checkpoints) == 2
    for checkpoint in checkpoints:
        assert 0 <= checkpoint["valid_reward_accuracy"] <= 1
        assert checkpoint["valid_loss"] is not None and "valid_reward_margin" in checkpoint
    result = events[-1]
    assert result["type"] == "result" and result["steps"] == 4
    assert result["valid_loss"] == min(c["valid_loss"] for c in checkpoints)
    # Each pair runs as two sequences, each epoch.
    assert result["trained_tokens"] > 2 * 8 * 2 * 10
    # Only the trained adapter is saved, not the trainer's frozen reference.
    assert sorted(p.name for p in spec.adapter_dir.iterdir() if p.is_dir()) == []
    assert all(".ref." not in name for name in lora_tensors(spec.adapter_dir))


def test_dpo_continues_an_adapter_and_uses_it_as_the_reference(tiny_base, tmp_path):
    # A parent far enough from the base that a reference of the base would show a margin
    # (about 0.14 on the first pair here).
    parent = write_run_dir(tmp_path / "sft", tiny_base, valid=False, lr=3e-2)
    run(parent, EventSink(io.StringIO()))
    start = lora_tensors(parent.adapter_dir)

    # So small a learning rate that the weights stay where they started: the parent's.
    spec = write_dpo_run_dir(
        tmp_path / "dpo", tiny_base, valid=False, start_adapter=parent.adapter_dir, lr=1e-9
    )
    stream = io.StringIO()
    run(spec, EventSink(stream))
    events = events_of(stream)
    # The reference is the parent itself: no reward for either answer before training moves.
    first = next(e for e in events if e["type"] == "progress")
    assert abs(first["train_reward_margin"]) < 1e-3
    trained = lora_tensors(spec.adapter_dir)
    assert trained.keys() == start.keys()
    for name, tensor in trained.items():
        assert (tensor - start[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize(
    ("cuda", "bf16_supported", "expected"),
    [
        (False, False, {"bf16": False, "fp16": False, "gradient_checkpointing": False}),
        (True, False, {"bf16": False, "fp16": False, "gradient_checkpointing": False}),
        (True, True, {"bf16": True, "fp16": False, "gradient_checkpointing": True}),
    ],
)
def test_mixed_precision_only_where_the_device_runs_bf16_natively(cuda, bf16_supported, expected):
    from tuner.job import precision_arguments

    torch = SimpleNamespace(
        cuda=SimpleNamespace(is_available=lambda: cuda, is_bf16_supported=lambda: bf16_supported)
    )
    assert precision_arguments(torch) == expected


def test_a_cpu_run_trains_in_fp32_without_recomputing_activations(tmp_path):
    """TRL's own defaults (bf16 autocast, checkpointing) made a CPU step some 10x slower."""
    from trl import SFTConfig

    from tuner.job import shared_arguments

    spec = SimpleNamespace(
        checkpoints_dir=tmp_path,
        batch_size=4,
        n_epochs=1,
        learning_rate=1e-3,
        seed=0,
        run_dir=tmp_path,
    )
    config = SFTConfig(**shared_arguments(spec, False, 8, 1))
    assert config.bf16 is False and config.fp16 is False
    assert config.gradient_checkpointing is False
