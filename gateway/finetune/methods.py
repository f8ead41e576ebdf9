"""Fine-tuning methods as the service sees them: the data they take and how they are planned.

The trainer has its own table (``tuner.job.METHODS``) under the same names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequestError
from tuner.dataset import CheckedDataset, DatasetLimits, check_dataset, content_text
from tuner.dpo_hyperparameters import resolve_dpo
from tuner.hyperparameters import Hyperparameters, resolve
from tuner.preference_dataset import check_preference_dataset, preferred_text, prompt_of

TokenCounter = Callable[[str], int] | None


@dataclass(frozen=True)
class JobMethod:
    check: Callable[[bytes, DatasetLimits, TokenCounter], CheckedDataset]
    plan: Callable[[dict[str, Any], int], Hyperparameters]
    # A cleaned example -> (the prompt, the answer the data asks for), for the samples.
    sample: Callable[[dict[str, Any]], tuple[list[dict[str, Any]], str]]
    what: str  # what one example is called in messages


def _chat_sample(example: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], content_text(messages[last].get("content"))


def _pair_sample(pair: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    return prompt_of(pair), preferred_text(pair)


JOB_METHODS: dict[str, JobMethod] = {
    "supervised": JobMethod(check_dataset, resolve, _chat_sample, "examples"),
    "dpo": JobMethod(check_preference_dataset, resolve_dpo, _pair_sample, "pairs"),
}

_UNSUPPORTED = {
    "reinforcement": (
        "Reinforcement fine-tuning (method.type 'reinforcement') is not supported: it needs "
        "graders that score sampled answers, which this gateway does not run. "
        "Use 'supervised' or 'dpo'."
    ),
}


def job_method(name: str) -> JobMethod:
    method = JOB_METHODS.get(name)
    if method is None:
        known = ", ".join(f"'{m}'" for m in JOB_METHODS)
        raise InvalidRequestError(
            _UNSUPPORTED.get(name, f"Unknown method.type '{name}'; supported: {known}."),
            param="method.type",
            code="unsupported_method",
        )
    return method
