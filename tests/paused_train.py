"""scripts/train.py with a pause the test chooses, so a test kills the run at a known moment on any machine.

    python tests/paused_train.py PHASE STEP PAUSED_FILE recipe.yaml

The run trains as scripts/train.py does until it reaches PHASE of update STEP; there it writes PAUSED_FILE (JSON:
phase, step, checkpoint) and blocks until it is killed. The test polls for that file (a state, not a time), then
sends SIGKILL. Phases:
- `update`: update STEP's gradients are computed, the optimizer has not changed the weights yet;
- `save`: checkpoint STEP is written (weights, optimizer, trainer state) but not its completion marker;
- `saved`: checkpoint STEP is complete, training has not gone on.
The faults are injected here, from test code, by patching the Trainer; the package has no test hooks.
"""

import json
import os
import signal
import sys
from pathlib import Path

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from vaswani_hf.cli.train import main
from vaswani_hf.trainer import VaswaniTrainer

PHASES = ("update", "save", "saved")


def pause(paused_file: Path, phase: str, step: int, output_dir: str) -> None:
    """Say where the run stopped (atomically: the test never reads half a file), then wait for the kill."""
    checkpoint = Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    partial = paused_file.with_name(paused_file.name + ".partial")
    partial.write_text(json.dumps({"phase": phase, "step": step, "checkpoint": str(checkpoint)}))
    os.replace(partial, paused_file)
    while True:
        signal.pause()


class PauseAt(TrainerCallback):
    def __init__(self, phase: str, step: int, paused_file: Path):
        self.phase, self.step, self.paused_file = phase, step, paused_file

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.phase == "update" and state.global_step + 1 == self.step:
            pause(self.paused_file, self.phase, self.step, args.output_dir)

    def on_save(self, args, state, control, **kwargs):
        if self.phase == "saved" and state.global_step == self.step:
            pause(self.paused_file, self.phase, self.step, args.output_dir)


def install(phase: str, step: int, paused_file: Path) -> None:
    if phase not in PHASES:
        raise SystemExit(f"unknown phase {phase!r}; phases: {PHASES}")
    trainer_init = VaswaniTrainer.__init__

    def init_with_pause(self, *args, **kwargs):
        trainer_init(self, *args, **kwargs)
        self.add_callback(PauseAt(phase, step, paused_file))

    VaswaniTrainer.__init__ = init_with_pause
    if phase == "save":
        # VaswaniTrainer._save_checkpoint writes the marker after Trainer._save_checkpoint has written the rest.
        save_checkpoint = Trainer._save_checkpoint

        def save_then_pause(self, model, trial):
            save_checkpoint(self, model, trial)
            if self.state.global_step == step:
                pause(paused_file, phase, step, self.args.output_dir)

        Trainer._save_checkpoint = save_then_pause


if __name__ == "__main__":
    phase, step, paused_file, *argv = sys.argv[1:]
    install(phase, int(step), Path(paused_file))
    main(argv)
