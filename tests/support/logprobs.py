"""Comparing two greedy answers of llama.cpp token by token, by their log-probabilities.

llama.cpp's answers depend in the last bits on how a step was batched and on what its
prompt cache held (the same request twice can part at a near tie), so two answers that
should be the same are compared by what the model said at each position, not by text.
"""

from __future__ import annotations

from collections.abc import Iterable

# What an answer said at each position: the token chosen, and the log-probabilities of
# the most likely tokens there.
Steps = list[tuple[str, dict[str, float]]]


def steps_of(logprobs_content: Iterable[dict]) -> Steps:
    """Steps from a chat answer's ``choices[0].logprobs.content`` (as JSON)."""
    return [
        (step["token"], {top["token"]: top["logprob"] for top in step["top_logprobs"]})
        for step in logprobs_content
    ]


def shared_tokens(first: Steps, second: Steps, tolerance: float) -> int:
    """How many tokens the two answers share, checking at each position, up to and
    including the first where they part, that both gave both chosen tokens the same
    log-probability (within ``tolerance``). The answers may part where two tokens are
    as likely; past that, they continue different texts and are not compared."""
    for position, ((token, top), (other_token, other_top)) in enumerate(
        zip(first, second, strict=False)
    ):
        for chosen in {token, other_token}:
            assert chosen in top and chosen in other_top, (position, top, other_top)
            assert abs(top[chosen] - other_top[chosen]) < tolerance, (position, chosen)
        if token != other_token:
            return position
    return min(len(first), len(second))
