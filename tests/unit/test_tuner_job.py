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


def write_run_dir(folder: Path, base: Path, valid: bool) -> JobSpec:
    folder.mkdir(parents=True)
    data = (REPO / "tests" / "data" / "json_answers.jsonl").read_text().splitlines()
    (folder / "train.jsonl").write_text("\n".join(data[:8]) + "\n")
    if valid:
        (folder / "valid.jsonl").write_text("\n".join(data[8:]) + "\n")
    spec = {
        "base_dir": str(base),
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
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
