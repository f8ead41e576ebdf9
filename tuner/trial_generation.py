"""Greedy answers from the model in the trainer's hands, with its adapter or without.

The trainer already holds the base with the new LoRA; peft's ``disable_adapter()``
gives the base itself for free, so the checks after training (samples, drift,
repetition) need no second model and no engine. Prompts go in one left-padded
batch, the base's rows with the adapter's.
"""

from __future__ import annotations

import contextlib
from typing import Any

Messages = list[dict[str, Any]]


def without_adapter(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The base: the adapter switched off for the block (a model with none is the base)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else contextlib.nullcontext()


def prompt_text(tokenizer: Any, messages: Messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def greedy_answers(
    model: Any, tokenizer: Any, prompts: list[Messages], max_new_tokens: int, adapter: bool = True
) -> list[str]:
    """One greedy answer per prompt, from the adapter (``adapter``) or from the base."""
    return mixed_greedy_answers(model, tokenizer, [(p, adapter) for p in prompts], max_new_tokens)


def mixed_greedy_answers(
    model: Any, tokenizer: Any, asks: list[tuple[Messages, bool]], max_new_tokens: int
) -> list[str]:
    """One greedy answer per (prompt, from the adapter?), all in one batch.

    On a CPU a decode step of a small model costs about the same for 3 rows as for 24:
    it reads every weight once either way. So the base's and the adapter's answers go
    in one ``generate`` (peft's mixed batches: ``adapter_names``, ``"__base__"`` for
    the base), not one call each.
    """
    import torch

    if not asks:
        return []
    texts = [prompt_text(tokenizer, messages) for messages, _ in asks]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every row from its last token
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    batch = batch.to(model.device)
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    switch, routing = _adapter_choice(model, [adapter for _, adapter in asks])
    try:
        with torch.no_grad(), switch:
            output = model.generate(
                **batch,
                **routing,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
    finally:
        model.train(was_training)
    start = batch["input_ids"].shape[1]
    return [tokenizer.decode(row[start:], skip_special_tokens=True).strip() for row in output]


def _adapter_choice(
    model: Any, adapter_rows: list[bool]
) -> tuple[contextlib.AbstractContextManager[Any], dict[str, Any]]:
    """(context, generate's extra arguments) that give each row the adapter or the base."""
    from peft import PeftModel

    if all(adapter_rows):
        return contextlib.nullcontext(), {}
    if not any(adapter_rows) or not isinstance(model, PeftModel):  # no adapter: all the base
        return without_adapter(model), {}
    names = [model.active_adapter if adapter else "__base__" for adapter in adapter_rows]
    return contextlib.nullcontext(), {"adapter_names": names}
