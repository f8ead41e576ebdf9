"""Whether a trial's data teaches something: the rule behind ``trial_report.learns``.

A falling held-out loss is not enough: a set whose answers are random codes
still teaches their format (length, alphabet, punctuation), and the held-out
loss falls with it. So a trial trains two adapters on the same sample, with
the same settings and steps:

- the **trial**, on the data as it is;
- a **control**, on the same examples with the answers shuffled across the
  prompts. It learns the answers' format and style, but not how an answer
  depends on its prompt.

Both are scored on the same held-out examples (with their true answers). Then

    learns = after < before x (1 - IMPROVEMENT)          the held-out loss fell
             and (after < control x (1 - CONTROL_MARGIN)  and the trial beats the control
                  or after <= FIXED_ANSWER_LOSS)          or predicts the answers nearly exactly

The trial beats its control only when what an answer says depends on its
prompt in a way that carries over to prompts it never saw: capital cities,
a JSON shape filled with the right value, a pirate voice that still answers
the question asked. Random codes do not: the trial can only memorise the codes
of its training prompts, which helps no held-out prompt, so it scores like
the control (or worse).

**Pure style data** (answers that do not depend on the prompt, such as one
fixed refusal): shuffling changes nothing, so trial and control score alike.
When the held-out answers are then predicted nearly exactly (at most
``FIXED_ANSWER_LOSS`` nats per token), the data is learnable and ``learns`` is
true ("fixed answers"); a shared form around unpredictable content is not,
and ``learns`` is false ("format only").

The margins are set by reasoning, not yet by measurement: a control trained on
the wrong answers for its prompts scores the content tokens of a learnable
answer (a city, a value, the question's own subject) far worse than the trial,
which moves a per-token mean by well over 10%; random codes leave the two
within noise of each other. They are to be checked with real runs on the
embedded SmolLM2 (``tests/e2e/test_trial.py``; ``tests/data/trial_*.jsonl``).
"""

from __future__ import annotations

from dataclasses import dataclass

IMPROVEMENT = 0.05  # relative fall of the held-out loss from before training
CONTROL_MARGIN = 0.10  # relative: the trial's held-out loss below the control's
FIXED_ANSWER_LOSS = 0.15  # nats per answer token: answers predicted nearly exactly


@dataclass(frozen=True)
class Verdict:
    learns: bool
    kind: str  # "content", "fixed_answers", "format_only", "nothing"
    reason: str


def judge(before: float, after: float, control_after: float) -> Verdict:
    improved = after < before * (1 - IMPROVEMENT)
    beats_control = after < control_after * (1 - CONTROL_MARGIN)
    if not improved:
        return Verdict(
            False,
            "nothing",
            f"The held-out loss did not fall ({before:.3f} before, {after:.3f} after): the trial "
            "learned nothing that carries over to unseen prompts. Check the data, or try more "
            "steps or a higher learning rate.",
        )
    if beats_control:
        return Verdict(
            True,
            "content",
            f"The held-out loss fell from {before:.3f} to {after:.3f}, below the "
            f"{control_after:.3f} of a control trained on the same answers shuffled across "
            "prompts: the answers depend on their prompts in a way the model learns.",
        )
    if after <= FIXED_ANSWER_LOSS:
        return Verdict(
            True,
            "fixed_answers",
            f"The held-out answers are predicted nearly exactly ({after:.3f} nats/token), but no "
            f"better than by the shuffled control ({control_after:.3f}): the answers do not "
            "depend on the prompt (a fixed style or answer), and that is learned.",
        )
    return Verdict(
        False,
        "format_only",
        f"The held-out loss fell from {before:.3f} to {after:.3f}, but a control trained on "
        f"the answers shuffled across prompts reached {control_after:.3f}: only the answers' "
        "format is learned, not what they say for a given prompt (random or inconsistent "
        "answers?). Fix the data before a full run.",
    )
