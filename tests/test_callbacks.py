"""The Trainer callbacks: the training-time budget and its progress bar, early stopping, the dropout schedule."""

from types import SimpleNamespace

from helpers import pad, reversal_dataset, scripted_trainer, tiny_model, trainer_for
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from transformers.trainer_callback import ProgressCallback

from vaswani_hf.arguments import VaswaniTrainingArguments
from vaswani_hf.callbacks import DropoutSchedule, EarlyStopping, TrainingMinutesProgress, TrainingTimeBudget
from vaswani_hf.trainer import VaswaniTrainer


def test_early_stopping_stops_after_the_patience_and_goes_on_counting_after_a_resume(tmp_path):
    """Patience 3: the best is step 2's 5.0; steps 3, 4 and 5 bring nothing better, so training stops at step 5 of
    10. Stopped by max_steps at 4 (two evaluations without improvement counted) and resumed, it stops at 5 too."""
    scores = [1.0, 5.0, 2.0, 3.0, 1.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    trainer = scripted_trainer(tmp_path / "whole", scores, early_stopping_patience=3)
    trainer.train()
    assert trainer.state.global_step == 5
    first = scripted_trainer(tmp_path / "resumed", scores[:4], early_stopping_patience=3)
    first.train()
    assert first.state.global_step == 4
    resumed = scripted_trainer(tmp_path / "resumed", scores[4:], early_stopping_patience=3, max_steps=10)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-4"))
    assert resumed.state.global_step == 5
    stopping = [c for c in resumed.callback_handler.callbacks if isinstance(c, EarlyStopping)]
    assert len(stopping) == 1 and stopping[0].stopped()


def test_the_time_budgets_stop_evaluates_only_for_a_selection_by_metric():
    """The checkpoint at the end of the time budget gets an evaluation where checkpoints are ranked by their metric,
    so that it can be among the averaged ones; otherwise the final evaluation scores those weights anyway."""
    for evaluate_at_stop in (False, True):
        budget = TrainingTimeBudget(budget_minutes=0, marks_minutes=[], evaluate_at_stop=evaluate_at_stop)
        control = TrainerControl()
        budget.on_step_end(None, TrainerState(global_step=3), control)
        assert (control.should_training_stop, control.should_save, control.should_evaluate) == (
            True,
            True,
            evaluate_at_stop,
        )
    assert TrainingTimeBudget(**budget.state()["args"]).evaluate_at_stop is True  # saved with the checkpoint


def test_time_budget_marks_and_stop_count_only_step_time(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("vaswani_hf.callbacks.time.perf_counter", lambda: clock[0])
    budget = TrainingTimeBudget(budget_minutes=3, marks_minutes=[1, 2])
    state, control = TrainerState(), TrainerControl()
    for step in range(1, 6):
        state.global_step = step
        budget.on_step_begin(None, state, control)
        clock[0] += 40  # a 40-second step
        budget.on_step_end(None, state, control)
        clock[0] += 1000  # evaluation or saving between steps: not counted
        if step < 5:
            assert control.should_training_stop is False
        # 80 s > 1 min and 120 s >= 2 min: evaluate and save; 200 s > 3 min: save and stop
        assert control.should_evaluate == (step in (2, 3)), step
        assert control.should_save == (step in (2, 3, 5)), step
        control = TrainerControl()
    assert budget.reached == [[1, 2], [2, 3], [3, 5]]
    restored = TrainingTimeBudget(**budget.state()["args"])
    for name, value in budget.state()["attributes"].items():
        setattr(restored, name, value)
    assert restored.trained_seconds == 200 and restored.marks_minutes == []


def test_the_training_bar_counts_minutes_of_the_time_budget(tmp_path, capsys):
    budget = TrainingTimeBudget(budget_minutes=60, marks_minutes=[])
    trainer = VaswaniTrainer(
        model=tiny_model(),
        args=VaswaniTrainingArguments(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=3, max_tokens=256, save_strategy="no"
        ),
        train_dataset=reversal_dataset(),
        data_collator=pad,
        callbacks=[budget],
    )
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert TrainingMinutesProgress in kinds and ProgressCallback not in kinds
    trainer.train()
    shown = capsys.readouterr().err
    # no steps bar (| 3/3 [...]), the steps against max_steps beside the minutes: the run ends at whichever first
    assert "/60.0 training minutes" in shown and "| 3/3 [" not in shown and "step=3/3]" in shown
    # unit check with a controlled count, and the budget a resume restores found in the trainer's callbacks
    handler = SimpleNamespace(callbacks=[TrainingTimeBudget(budget_minutes=60, marks_minutes=[], trained_seconds=600)])
    progress, state = TrainingMinutesProgress(handler), TrainerState()
    progress.on_train_begin(None, state, TrainerControl())
    assert (progress.training_bar.n, progress.training_bar.total) == (10, 60)
    handler.callbacks = [TrainingTimeBudget(budget_minutes=60, marks_minutes=[], trained_seconds=1800)]
    state.global_step = 7
    progress.on_step_end(SimpleNamespace(max_steps=0), state, TrainerControl())
    assert progress.training_bar.n == 30 and progress.training_bar.postfix == "step=7"
    progress.on_step_end(SimpleNamespace(max_steps=7400), state, TrainerControl())
    assert progress.training_bar.postfix == "step=7/7400"
    progress.on_train_end(None, state, TrainerControl())
    # without a time budget the Trainer's own steps bar stays
    plain = trainer_for(tmp_path, tiny_model())
    assert ProgressCallback in [type(c) for c in plain.callback_handler.callbacks]


class DropoutRecorder(TrainerCallback):
    """The P_drop each update trains with, as every layer applying it has it."""

    def __init__(self):
        self.by_update: dict[int, set[float]] = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        layers = [*model.model.encoder.layers, *model.model.decoder.layers, model.model.encoder, model.model.decoder]
        self.by_update[state.global_step + 1] = {layer.dropout.p for layer in layers} | {model.config.dropout}


def test_the_dropout_schedule_changes_p_drop_at_its_updates_and_after_a_resume(tmp_path):
    """dropout 0.1, then 0.3 from update 3 on (after 2 updates), 0.0 from update 5 on; a run stopped after update 3
    and resumed with a fresh model (dropout 0.1 again) trains update 4 with 0.3."""
    schedule = DropoutSchedule([(2, 0.3), (4, 0.0)], initial=0.1)
    assert [schedule.dropout_at(update) for update in range(6)] == [0.1, 0.1, 0.3, 0.3, 0.0, 0.0]

    whole = trainer_for(tmp_path / "whole", tiny_model(dropout=0.1).train(), max_steps=5)
    whole.add_callback(DropoutSchedule([(2, 0.3), (4, 0.0)], initial=0.1))
    recorder = DropoutRecorder()
    whole.add_callback(recorder)
    whole.train()
    assert recorder.by_update == {1: {0.1}, 2: {0.1}, 3: {0.3}, 4: {0.3}, 5: {0.0}}

    first = trainer_for(
        tmp_path / "resumed", tiny_model(dropout=0.1).train(), max_steps=3, save_strategy="steps", save_steps=3
    )
    first.add_callback(DropoutSchedule([(2, 0.3)], initial=0.1))
    first.train()
    resumed = trainer_for(tmp_path / "resumed", tiny_model(dropout=0.1).train(), max_steps=4)
    resumed.add_callback(DropoutSchedule([(2, 0.3)], initial=0.1))
    recorder = DropoutRecorder()
    resumed.add_callback(recorder)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert recorder.by_update == {4: {0.3}}
