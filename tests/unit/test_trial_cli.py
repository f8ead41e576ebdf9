"""``tunegate tune --trial [N]``: the request field it sends and the report it prints."""

from __future__ import annotations

from clients.cli import build_parser
from clients.trial import format_report, trial_body


def parse(*flags: str):
    return build_parser().parse_args(["tune", "data.jsonl", "--model", "m", *flags])


def test_trial_flag_becomes_the_trial_field():
    assert trial_body(parse().trial) == {}
    assert trial_body(parse("--trial").trial) == {"trial": {}}
    assert trial_body(parse("--trial", "8").trial) == {"trial": {"examples": 8}}


def test_the_report_in_words():
    text = format_report(
        {
            "learns": False,
            "verdict": "format_only",
            "reason": "only the format is learned",
            "held_out_loss_before": 3.1,
            "held_out_loss_after": 2.0,
            "control_held_out_loss_after": 2.05,
            "estimated_full_run_s": 95.0,
            "drift": {"kl": 0.1},
            "repetition": {"mean": 0.0, "base_mean": 0.0},
            "samples": [
                {
                    "prompt": [{"role": "user", "content": "Code for Peru?"}],
                    "base_answer": "I do not know.",
                    "trial_answer": "K2P9-QX7A",
                    "expected": "ZZ41-0PQR",
                }
            ],
        }
    )
    assert text.startswith("learns: false (format_only)")
    assert "estimated full run: 95.0 s" in text and "Code for Peru?" in text
