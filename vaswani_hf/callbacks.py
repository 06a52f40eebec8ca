"""The Trainer callbacks of a run: the training-time budget and its progress bar, early stopping, the dropout
schedule, and the guard that keeps NaN or inf gradients out of the weights."""

import logging
import time

import torch
from tqdm.auto import tqdm
from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_callback import ExportableState, ProgressCallback

logger = logging.getLogger(__name__)


class TrainingTimeBudget(TrainerCallback, ExportableState):
    """Counts training time (time inside optimizer steps: evaluation and saving excluded), asks for an evaluation
    and a checkpoint at each of `marks_minutes`, and stops training with a checkpoint after `budget_minutes` (with an
    evaluation too if `evaluate_at_stop`: a checkpoint selection by metric then ranks the last one as well). Its
    count is saved in checkpoints: a resumed run goes on from it (`continue_from`) under the budget and marks it is
    given; `reached` records (minutes, step) of each mark passed."""

    def __init__(
        self,
        budget_minutes: float | None,
        marks_minutes: list[float],
        trained_seconds: float = 0.0,
        evaluate_at_stop: bool = False,
    ):
        self.budget_minutes = budget_minutes
        self.marks_minutes = sorted(marks_minutes)
        self.trained_seconds = trained_seconds
        self.evaluate_at_stop = evaluate_at_stop
        self.reached: list[list[float]] = []
        self._step_started = 0.0

    def state(self) -> dict:
        return {
            "args": {
                "budget_minutes": self.budget_minutes,
                "marks_minutes": self.marks_minutes,
                "evaluate_at_stop": self.evaluate_at_stop,
            },
            "attributes": {"trained_seconds": self.trained_seconds, "reached": self.reached},
        }

    def continue_from(self, trained_seconds: float, reached: list[list[float]]) -> None:
        """Go on from a checkpoint's count: its training time counts against this budget and the marks it passed stay
        passed, while the budget and the marks still ahead are this one's (a resumed recipe may extend them)."""
        self.trained_seconds, self.reached = trained_seconds, reached
        self.marks_minutes = [mark for mark in self.marks_minutes if mark > trained_seconds / 60]

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.trained_seconds += time.perf_counter() - self._step_started
        minutes = self.trained_seconds / 60
        while self.marks_minutes and minutes >= self.marks_minutes[0]:
            self.reached.append([self.marks_minutes.pop(0), state.global_step])
            control.should_evaluate = control.should_save = True
        if self.budget_minutes is not None and minutes >= self.budget_minutes:
            self.reached.append([self.budget_minutes, state.global_step])
            # a checkpoint; its evaluation only where a selection by metric needs it: train() evaluates the final
            # weights right after
            control.should_training_stop = control.should_save = True
            control.should_evaluate = control.should_evaluate or self.evaluate_at_stop
        return control


class TrainingMinutesProgress(ProgressCallback):
    """transformers' `ProgressCallback` whose training bar counts minutes of training time (the `TrainingTimeBudget`'s
    count) against `max_train_minutes`, so its total and ETA follow the time budget; its steps bar would show the
    `max_steps` the Trainer derives from `num_train_epochs`, which the budget cuts short. The budget is looked up in
    the trainer's callbacks at each step, where a resume puts it back (`VaswaniTrainer._load_callback_state`)."""

    def __init__(self, callback_handler):
        super().__init__()
        self.callback_handler = callback_handler

    def _budget(self) -> TrainingTimeBudget:
        return next(c for c in self.callback_handler.callbacks if isinstance(c, TrainingTimeBudget))

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            budget = self._budget()
            self.training_bar = tqdm(
                total=budget.budget_minutes,
                initial=min(budget.trained_seconds / 60, budget.budget_minutes),
                unit="min",
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} training minutes [{elapsed}<{remaining}{postfix}]",
                dynamic_ncols=True,
            )
        self.current_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            budget = self._budget()
            # with max_steps as well, the run ends at whichever comes first: the steps are shown against it
            steps = f"{state.global_step}/{args.max_steps}" if args.max_steps > 0 else state.global_step
            self.training_bar.set_postfix(step=steps, refresh=False)
            self.training_bar.update(min(budget.trained_seconds / 60, budget.budget_minutes) - self.training_bar.n)
            self.current_step = state.global_step


class EarlyStopping(EarlyStoppingCallback):
    """transformers' `EarlyStoppingCallback` (stop after `early_stopping_patience` evaluations in a row without a
    better metric_for_best_model than `state.best_metric`, which the Trainer keeps whenever metric_for_best_model is
    set), less its warning that load_best_model_at_end is off: the final evaluation (`_final_evaluation`) chooses the
    final model from the checkpoints instead of loading the best. Its count is saved in checkpoints; on resume the
    patience given to the trainer (the recipe's) applies (`VaswaniTrainer._load_callback_state`)."""

    def on_train_begin(self, args, state, control, **kwargs):
        return control  # the arguments were checked by VaswaniTrainingArguments

    def stopped(self) -> bool:
        """Whether this callback stopped (or, from a checkpoint's count, would stop) the training."""
        return self.early_stopping_patience_counter >= self.early_stopping_patience


class DropoutSchedule(TrainerCallback):
    """P_drop by update (`dropout_schedule`): before each update, the model's dropout is the value of the latest change
    at or before it, else the model's own (`initial`). Worked out from the update count alone, so a resumed run
    trains with the value its update has."""

    def __init__(self, changes: list[tuple[int, float]], initial: float):
        self.changes = changes
        self.initial = initial

    def dropout_at(self, update: int) -> float:
        """P_drop for the update after `update` updates."""
        return next((p for step, p in reversed(self.changes) if update >= step), self.initial)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        p = self.dropout_at(state.global_step)
        if model.config.dropout != p:
            model.set_dropout(p)
            logger.info("update %d: dropout %s", state.global_step, p)


class NonFiniteGradientGuard(TrainerCallback):
    """Before each optimizer step, check the gradients: a NaN or inf (a diverging run, a bad batch, an overflow) would
    otherwise be written into every weight by Adam. `policy="stop"` raises an error naming the update; `"skip"`
    drops that update (the optimizer skips parameters without gradients), logs a warning and records the step.

    Under fp16 GradScaler checks the gradients itself: an update whose gradients overflow is skipped and the loss
    scale lowered, a routine event (most often in the first updates), so the guard leaves those to it, whatever the
    policy. Training stops only after `max_consecutive_fp16_skips` skipped updates in a row (0: never), which no
    lowering of the scale cures (a NaN loss, a diverged run), as fairseq stops at its `--min-loss-scale`. Skipped
    updates are recorded in `skipped_steps` in both cases."""

    def __init__(self, policy: str = "stop", max_consecutive_fp16_skips: int = 30):
        if policy not in ("stop", "skip"):
            raise ValueError(f"nonfinite_gradients must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self.max_consecutive_fp16_skips = max_consecutive_fp16_skips
        self.skipped_steps: list[int] = []
        self.skipped_in_a_row = 0
        self.scale: float | None = None  # fp16: GradScaler's scale after the last update (or before the first)

    def on_train_begin(self, args, state, control, **kwargs):
        self.scale, self.skipped_in_a_row = None, 0  # a resumed run's scaler comes from its checkpoint

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        scaler = getattr(optimizer, "scaler", None)
        if scaler is not None:  # fp16: GradScaler's step checks these gradients; on_optimizer_step reads its verdict
            if self.scale is None:
                self.scale = scaler.get_scale()
            return control
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        # The norm is reduced on the device: reading back whether it is finite is this update's one host sync.
        if not gradients or torch.isfinite(torch.nn.utils.get_total_norm(gradients)):
            return control
        update = state.global_step + 1
        if self.policy == "stop":
            raise FloatingPointError(
                f"non-finite gradient (NaN or inf) at update {update}: training stopped before the weights were "
                "changed; resume from the last checkpoint with a lower learning rate, or set nonfinite_gradients=skip"
            )
        logger.warning("non-finite gradient at update %d: update skipped", update)
        self.skipped_steps.append(update)
        for parameter in model.parameters():
            parameter.grad = None
        return control

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        scaler = getattr(optimizer, "scaler", None)
        if scaler is None:
            return control
        # GradScaler lowers its scale exactly when it skipped the update. (accelerate's step_was_skipped misses the
        # skips of fused optimizers, which GradScaler lets skip inside their own step.) Reading the scale is the
        # update's one host sync.
        previous, self.scale = self.scale, scaler.get_scale()
        if self.scale >= previous:
            self.skipped_in_a_row = 0
            return control
        update = state.global_step + 1
        self.skipped_steps.append(update)
        self.skipped_in_a_row += 1
        logger.info("fp16: gradient overflow at update %d, skipped by GradScaler, which lowered its scale", update)
        if self.max_consecutive_fp16_skips and self.skipped_in_a_row >= self.max_consecutive_fp16_skips:
            raise FloatingPointError(
                f"fp16: GradScaler skipped {self.skipped_in_a_row} updates in a row (updates "
                f"{update - self.skipped_in_a_row + 1} to {update}) for NaN or inf gradients, lowering its loss scale "
                "each time: the run has diverged (max_consecutive_fp16_skips). Resume from the last checkpoint with "
                "a lower learning rate, or train in bf16"
            )
        return control
