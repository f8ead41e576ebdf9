"""A one-line progress bar for fine-tuning jobs, redrawn in place on a terminal.

    [##########··········] step 12/27 · epoch 4.0 · loss 0.1234 · 312 tok/s · ETA 0:42

Off a terminal (a pipe, a log file) each update is its own line instead.
"""

from __future__ import annotations

from typing import Any, TextIO

_WIDTH = 24


class ProgressBar:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._drawn = False
        self._last_status: str | None = None

    def update(self, metrics: dict[str, Any]) -> None:
        step, total = int(metrics.get("step") or 0), int(metrics.get("total_steps") or 0)
        filled = round(_WIDTH * step / total) if total else 0
        parts = [
            f"[{'#' * filled}{'·' * (_WIDTH - filled)}]",
            f"step {step}/{total}",
            f"epoch {metrics.get('epoch', 0):.1f}",
        ]
        if metrics.get("train_loss") is not None:
            parts.append(f"loss {metrics['train_loss']:.4f}")
        if metrics.get("train_reward_accuracy") is not None:  # DPO
            parts.append(f"reward acc {metrics['train_reward_accuracy']:.2f}")
        if metrics.get("tokens_per_s"):
            parts.append(f"{metrics['tokens_per_s']:.0f} tok/s")
        if metrics.get("eta_s") is not None:
            minutes, seconds = divmod(int(metrics["eta_s"]), 60)
            parts.append(f"ETA {minutes}:{seconds:02d}")
        self._draw(" · ".join(parts))

    def status(self, status: str) -> None:
        """Before the first step: say what the job is doing (validating, queued...)."""
        if status != self._last_status and not self._drawn:
            self._last_status = status
            self._draw(f"{status}…")

    def message(self, text: str) -> None:
        self._end_line()
        self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._end_line()

    def _draw(self, line: str) -> None:
        if self._tty:
            self._stream.write("\r\x1b[2K" + line)
            self._drawn = True
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def _end_line(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._drawn = False
