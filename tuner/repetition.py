"""How much an answer repeats itself: the share of its word n-grams seen earlier in it.

A model that loses track on a long or multi-step prompt often loops ("and then
the and then the ..."); the repeated n-gram fraction catches that without a
judge model. For an answer of words w1..wk and n = 3 it is

    1 - distinct trigrams / trigrams

0 for an answer that never repeats three words in a row, near 1 for a loop.
Answers of fewer than n words count as 0. Words are compared lower-cased with
punctuation stripped at their ends, so "Yes." and "yes" are one word.

An answer **loops** when half its trigrams are repeats, or when some run of four
words comes back three times or more. The second test catches a loop that starts
late in a short answer, where a sound opening keeps the fraction under a half:
"Here's a packing list for a trip to Rome: Day 1: Rome - Rome - Rome - ..." (seen
after a real fine-tune of the embedded model). Natural answers of a few dozen
words seldom repeat four words three times.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

NGRAM = 3
# An answer at or past this fraction is "looping": half its trigrams are repeats.
LOOPING_FRACTION = 0.5
# ...and so is one where a run of LOOP_RUN words comes back LOOP_RETURNS times or more.
LOOP_RUN = 4
LOOP_RETURNS = 3
# Warn when an adapter's answers repeat this much more, on average, than the base's do
# on the same prompts, or when an adapter loops on a prompt where the base did not.
MEAN_INCREASE_WARNING = 0.15


def _words(text: str) -> list[str]:
    words = [w.strip(string.punctuation).lower() for w in text.split()]
    return [w for w in words if w]


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_fraction(text: str, n: int = NGRAM) -> float:
    grams = _ngrams(_words(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def loops(text: str) -> bool:
    if repeated_ngram_fraction(text) >= LOOPING_FRACTION:
        return True
    runs = Counter(_ngrams(_words(text), LOOP_RUN))
    return max(runs.values(), default=0) >= LOOP_RETURNS


@dataclass(frozen=True)
class RepetitionReport:
    prompts: int
    mean: float  # the adapter's answers
    base_mean: float  # the base's answers to the same prompts
    looping: int  # adapter answers that loop (``loops``)
    base_looping: int
    worst_answer: str  # the adapter's most repetitive answer, cut short

    def warning(self) -> str | None:
        if self.looping > self.base_looping:
            return (
                f"The adapter repeats itself: {self.looping} of {self.prompts} answers loop "
                f"(repeated 3-word sequences >= {LOOPING_FRACTION:.0%}, or {LOOP_RUN} words "
                f"back {LOOP_RETURNS} times; the base: {self.base_looping}), "
                f"e.g. {self.worst_answer!r}. It may need more or more "
                "varied data, fewer epochs, or another base."
            )
        if self.mean - self.base_mean > MEAN_INCREASE_WARNING:
            return (
                f"The adapter's answers repeat more than the base's (repeated 3-word "
                f"sequences {self.mean:.0%} against {self.base_mean:.0%} on {self.prompts} "
                "prompts)."
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def compare(adapter_answers: Iterable[str], base_answers: Iterable[str]) -> RepetitionReport:
    tuned = list(adapter_answers)
    base = list(base_answers)
    tuned_scores = [repeated_ngram_fraction(a) for a in tuned]
    base_scores = [repeated_ngram_fraction(a) for a in base]
    # The worst answer shown is a looping one when there is one, else the most repetitive.
    tuned_loops = [loops(a) for a in tuned]
    worst = (
        max(range(len(tuned)), key=lambda i: (tuned_loops[i], tuned_scores[i])) if tuned else None
    )
    return RepetitionReport(
        prompts=len(tuned),
        mean=_mean(tuned_scores),
        base_mean=_mean(base_scores),
        looping=sum(tuned_loops),
        base_looping=sum(loops(a) for a in base),
        worst_answer=(tuned[worst][:160] if worst is not None else ""),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
