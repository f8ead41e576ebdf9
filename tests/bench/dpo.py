"""DPO: the tuner's DPO jobs vs a plain TRL DPOTrainer script, side by side in one run.

Same model (SmolLM2), preference pairs, LoRA, loss, schedule and seed. Both
times cover building the trainer (tokenizing; for the tuner also the
reference model's log-probabilities, computed once) and training.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.bench.suites import BASE_CONFIG, Row, _last_line, _python, write_job_spec
from tests.support.gateway_process import REPO

PAIRS = REPO / "tests" / "data" / "short_answer_pairs.jsonl"


async def dpo(quick: bool) -> list[Row]:
    # The plan "auto" picks for 40 pairs: 3 epochs, batch 8, 5e-4, beta 0.1.
    epochs, batch, lr, beta = (2 if quick else 3), 8, 5e-4, 0.1
    pairs = PAIRS.read_text().splitlines()[: 24 if quick else 40]
    base = BASE_CONFIG.parent
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-dpo-") as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        data = run_dir / "train.jsonl"
        data.write_text("\n".join(pairs) + "\n")
        plain = json.loads(
            _last_line(
                await _python(
                    "-m",
                    "tests.bench.plain_trl_dpo",
                    *map(str, (base, data, epochs, batch, lr, beta)),
                )
            )
        )
        options = {"beta": beta, "sft_weight": 1.0}
        write_job_spec(run_dir, epochs, batch, lr, method="dpo", method_options=options)
        events = [
            json.loads(line)
            for line in (await _python("-m", "tuner.job", str(run_dir))).splitlines()
        ]
    result = next(e for e in events if e["type"] == "result")
    ours = [e["train_loss"] for e in events if e["type"] == "progress"]
    trained_pairs = len(pairs) * epochs
    plain_rate = trained_pairs / plain["seconds"]
    our_rate = trained_pairs / (result["setup_seconds"] + result["train_seconds"])
    drift = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(ours, plain["losses"], strict=True))
    return [
        Row(
            "dpo",
            "trained pairs/s",
            plain_rate,
            our_rate,
            "pairs/s",
            "≥ 1.1× plain TRL",
            our_rate / plain_rate >= 1.1,
        ),
        Row("dpo", "loss curve, max rel. diff", 1.0, 1.0 + drift, "×", "≤ 2% apart", drift <= 0.02),
    ]
