"""Pausing a run: the gateway asks by creating ``RUN_DIR/pause``.

At the end of each optimizer step the ranks agree whether anyone has seen the
request; if so they save a checkpoint together and stop. A file, not a signal:
a signal to the launcher's process group would reach neither the ranks (each
in a session of its own) nor a launcher that treats it as fatal.
"""

from __future__ import annotations

from pathlib import Path

PAUSE_FILE = "pause"


def make_pause_callback(pause_file: Path):  # transformers imported late
    from transformers import TrainerCallback

    from tuner.distributed import all_agree

    class PauseCallback(TrainerCallback):
        def __init__(self) -> None:
            self.paused_at: int | None = None

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if self.paused_at is None and all_agree(pause_file.exists()):
                self.paused_at = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

    return PauseCallback()
