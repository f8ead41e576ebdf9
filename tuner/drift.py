"""How far an adapter moved away from its base outside the task it was trained for.

A small built-in set of general prompts (``tuner/data/general_prompts.jsonl``,
shipped with the package) goes through the base; its own greedy answers are
then read, token by token, by the base and by the adapter. The drift is

    mean over answer tokens of KL(p_base || p_adapter)   (nats per token)

the extra surprise the adapter has at what the base would say. An untouched
adapter has 0; an adapter that now answers every question in its task's style
has a large one (the base's plain answers have become unlikely to it). The base
answers' mean log-likelihood under the adapter, against under the base, is
reported beside it (``nll_increase``, nats per token).

Past ``KL_WARNING`` the job gets a warning event. The threshold is a first
choice (about a nat of surprise every other token), to be set from measured
adapters of the embedded model: one trained to answer everything in JSON should
pass it, a light style adapter should not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from tuner.trial_generation import Messages, prompt_text, without_adapter

KL_WARNING = 0.5  # nats per token
ANSWER_TOKENS = 48  # of each base answer read back; enough to show a style, cheap on a CPU


@dataclass(frozen=True)
class GeneralPrompt:
    messages: Messages
    multi_step: bool  # several steps to keep track of: the repetition check uses these


def general_prompts() -> list[GeneralPrompt]:
    text = files("tuner").joinpath("data/general_prompts.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [GeneralPrompt(r["messages"], bool(r.get("multi_step"))) for r in rows]


@dataclass(frozen=True)
class DriftReport:
    prompts: int
    kl: float  # mean per-token KL(base || adapter) over the base's answers, nats
    nll_increase: float  # the base answers' mean NLL under the adapter minus under the base

    def warning(self) -> str | None:
        if self.kl <= KL_WARNING:
            return None
        return (
            f"Style drift: outside its task the adapter moved far from the base (mean KL "
            f"{self.kl:.2f} nats/token on {self.prompts} general prompts; warning past "
            f"{KL_WARNING}). It may answer everything in the task's style; mix in general "
            "examples, train fewer epochs or at a lower learning rate."
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "kl": round(self.kl, 4),
            "nll_increase": round(self.nll_increase, 4),
        }


def measure_drift(
    model: Any, tokenizer: Any, prompts: list[Messages], base_answers: list[str]
) -> DriftReport:
    """Drift over (prompt, base answer) pairs; one forward pass each, with and without."""
    import torch

    total_kl = total_nll = 0.0
    counted = 0
    was_training = model.training
    model.eval()
    try:
        for messages, answer in zip(prompts, base_answers, strict=True):
            prompt_ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"][:ANSWER_TOKENS]
            if not answer_ids:
                continue
            ids = torch.tensor([prompt_ids["input_ids"] + answer_ids], device=model.device)
            start = len(prompt_ids["input_ids"]) - 1  # the logits that predict the answer
            with torch.no_grad():
                tuned = model(input_ids=ids).logits[0, start:-1].float().log_softmax(-1)
                with without_adapter(model):
                    base = model(input_ids=ids).logits[0, start:-1].float().log_softmax(-1)
            target = ids[0, start + 1 :].unsqueeze(-1)
            kl = (base.exp() * (base - tuned)).sum(-1)
            nll = tuned.gather(-1, target).squeeze(-1) - base.gather(-1, target).squeeze(-1)
            total_kl += float(kl.sum())
            total_nll -= float(nll.sum())
            counted += len(answer_ids)
    finally:
        model.train(was_training)
    n = max(1, counted)
    return DriftReport(prompts=len(prompts), kl=total_kl / n, nll_increase=total_nll / n)
