"""VaswaniTrainer and the paper's recipe: token batches, Eq. 3, Adam, complete checkpoints, averaging; what train()
leaves behind, and how it refuses to mix two runs."""

import io
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import recipe, run, tiny_model
from datasets import Dataset
from safetensors.torch import load_file
from transformers import (
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    TrainerControl,
    TrainerState,
)
from transformers.trainer_callback import ProgressCallback

from vaswani_hf import VaswaniConfig, convert_to_marian, training
from vaswani_hf.arguments import DataArguments, ModelArguments, VaswaniTrainingArguments, parse_overrides
from vaswani_hf.callbacks import EarlyStopping, TrainingMinutesProgress, TrainingTimeBudget
from vaswani_hf.checkpoints import (
    COMPLETE_MARKER,
    average_checkpoints,
    checkpoint_folders,
    checkpoint_record,
    checkpoint_step,
    checkpoints_to_keep,
    complete_checkpoints,
    last_complete_checkpoint,
    load_averaged_model,
    select_checkpoints,
)
from vaswani_hf.cli.train_tokenizer import main as train_tokenizer_main
from vaswani_hf.data import load_parallel_corpus
from vaswani_hf.evaluation import TOKENIZED_BLEU_LABEL, bleu, chrf, tokenized_bleu, translate
from vaswani_hf.parsing import parse
from vaswani_hf.tokenization import load_tokenizer, train_tokenizer
from vaswani_hf.trainer import VaswaniTrainer, eq3_learning_rate
from vaswani_hf.training import _print_summary, build_tokenizer, check_tokenizer_fits, earlier_run_outputs, train

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def reversal_dataset(size: int = 200) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(size):
        n = int(torch.randint(2, 20, (1,), generator=generator))
        ids = torch.randint(4, 97, (n,), generator=generator).tolist() + [2]
        labels = ids[::-1][1:] + [2]
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": labels,
                "source_length": len(ids),
                "target_length": len(labels),
            }
        )
    return Dataset.from_list(rows)


def pad(features: list[dict]) -> dict:
    def stack(key, value):
        longest = max(len(f[key]) for f in features)
        return torch.tensor([f[key] + [value] * (longest - len(f[key])) for f in features])

    return {
        "input_ids": stack("input_ids", 0),
        "attention_mask": stack("attention_mask", 0),
        "labels": stack("labels", -100),
    }


def trainer_for(tmp_path, model, eval_dataset=None, compute_metrics=None, **overrides) -> VaswaniTrainer:
    fields = dict(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        seed=1,
        max_tokens=256,
        warmup_steps=50,
        label_smoothing_factor=0.0,
    )
    args = VaswaniTrainingArguments(**{**fields, **overrides})
    return VaswaniTrainer(
        model=model,
        args=args,
        train_dataset=reversal_dataset(),
        eval_dataset=eval_dataset,
        data_collator=pad,
        compute_metrics=compute_metrics,
    )


def test_defaults_are_the_papers():
    args = VaswaniTrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay) == (0.9, 0.98, 1e-9, 0.0)
    assert (args.warmup_steps, args.label_smoothing_factor, args.lr_schedule) == (4000, 0.1, "eq3")
    assert args.max_grad_norm == 0  # no clipping (the Trainer clips only above 0)
    # Sec. 6.1: the last 5 averaged, which are also the checkpoints kept; no early stopping
    assert (args.average_checkpoints, args.checkpoints_to_average, args.save_total_limit) == ("last", 5, 5)
    assert args.early_stopping_patience is None


class GradientNorms(TrainerCallback):
    """Records the total gradient norm that each optimizer step receives (after any clipping)."""

    def __init__(self):
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())


def test_gradients_are_not_clipped_unless_max_grad_norm_is_set(tmp_path):
    """The paper and fairseq's reproduction (--clip-norm 0) clip no gradient: by default Adam gets the gradients
    whose norm the Trainer logs (before clipping); with max_grad_norm set, it gets them clipped to that norm."""
    received, logged = {}, {}
    for max_grad_norm in (None, 0.5):
        setting = {} if max_grad_norm is None else {"max_grad_norm": max_grad_norm}
        trainer = trainer_for(
            tmp_path / str(max_grad_norm),
            tiny_model(seed=5),
            max_steps=3,
            logging_strategy="steps",
            logging_steps=1,
            **setting,
        )
        norms = GradientNorms()
        trainer.add_callback(norms)
        trainer.train()
        received[max_grad_norm] = norms.norms
        logged[max_grad_norm] = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert min(logged[None]) > 1.0  # above the Trainer's default max_grad_norm of 1.0 and the 0.5 set here
    assert received[None] == pytest.approx(logged[None], rel=1e-5)
    assert logged[0.5][0] == pytest.approx(logged[None][0], rel=1e-5)  # the same first gradient, then clipped
    assert received[0.5] == pytest.approx([0.5] * 3, rel=1e-4) and min(logged[0.5]) > 0.5


def test_learning_rate_follows_eq_3_and_adam_has_the_papers_hyperparameters(tmp_path):
    model = tiny_model()
    trainer = trainer_for(tmp_path, model, lr_scale=2.0)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-9 and group["weight_decay"] == 0.0
    step = 0
    for target in (1, 2, 25, 50, 51, 200, 999):
        while step + 1 < target:
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            step += 1
        # the lr of the target-th update: 2 * 32^-0.5 * min(step^-0.5, step * 50^-1.5)
        expected = 2.0 * 32**-0.5 * min(target**-0.5, target * 50**-1.5)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    assert eq3_learning_rate(4000, 512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)


def test_trainer_batches_by_tokens(tmp_path):
    model = tiny_model()
    seen = []  # padded source + target tokens of each batch the model receives
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].numel() + kwargs["labels"].numel()),
        with_kwargs=True,
    )
    trainer = trainer_for(tmp_path, model, num_train_epochs=1)
    trainer.train()
    assert seen and max(seen) <= 256
    assert len(seen) == len(trainer.get_train_dataloader())


def test_averaging_is_the_elementwise_mean_and_keeps_ties(tmp_path):
    folders = []
    for seed in range(5):
        folder = tmp_path / f"checkpoint-{seed}"
        tiny_model(seed=seed).save_pretrained(folder)
        folders.append(folder)
    averaged = average_checkpoints(folders)
    weights = [load_file(f / "model.safetensors") for f in folders]
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, sum(w[name] for w in weights) / 5, rtol=0, atol=1e-7)
    model = load_averaged_model(folders)
    assert model.lm_head.weight is model.model.shared.weight
    torch.testing.assert_close(model.model.shared.weight, averaged["model.shared.weight"])


def test_averaging_refuses_mismatched_checkpoints(tmp_path):
    tiny_model(seed=0).save_pretrained(tmp_path / "a")
    tiny_model(seed=0, vocab_size=50).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="has shape"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        average_checkpoints([tmp_path / "missing"])


def test_a_checkpoint_without_its_completion_marker_is_never_resumed_from(tmp_path):
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if complete:
            (folder / COMPLETE_MARKER).write_text(json.dumps(checkpoint_record(folder)))
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert not (tmp_path / "checkpoint-30").exists() and (tmp_path / "incomplete-checkpoint-30").is_dir()


# Validation scores of the evaluations after updates 1 to 10: the best is update 2's.
SCORES = [1.0, 5.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("setting", "kept"),
    [
        ({"checkpoints_to_average": 3}, [2, 8, 9, 10]),  # default: the 3 averaged, and the best
        ({"average_last_checkpoints": 3}, [2, 8, 9, 10]),  # the earlier spelling of the same
        ({"checkpoints_to_average": 0, "save_total_limit": 1}, [2, 10]),  # the newest, for resuming, and the best
        ({"checkpoints_to_average": 3, "save_total_limit": 0}, list(range(1, 11))),  # every one
        ({"average_checkpoints": "best", "checkpoints_to_average": 3}, [2, 3, 4, 10]),  # the best 3, and the newest
        # the 3 around the best, and the newest (3 - 1) // 2 + 1, which a later best would have around it
        ({"average_checkpoints": "around_best", "checkpoints_to_average": 3}, [1, 2, 3, 9, 10]),
    ],
)
def test_checkpoints_kept_are_the_averaged_ones_and_the_best_and_other_folders_are_untouched(tmp_path, setting, kept):
    """A checkpoint and an evaluation after each of 10 updates. As the run goes, complete checkpoints are deleted but
    the newest save_total_limit (by default checkpoints_to_average) and the best by metric_for_best_model, or with
    average_checkpoints 'best' the best save_total_limit and the newest (around_best: those around the best); a
    user's checkpoint-12-backup (older than every checkpoint, so first in the Trainer's mtime order) and a
    checkpoint set aside as incomplete stay as they were."""
    (tmp_path / "checkpoint-12-backup").mkdir(parents=True)
    (tmp_path / "checkpoint-12-backup" / "model.safetensors").write_bytes(b"the user's")
    os.utime(tmp_path / "checkpoint-12-backup", (0, 0))
    (tmp_path / "incomplete-checkpoint-5").mkdir()
    untouched = {name: folder_state(tmp_path / name) for name in ("checkpoint-12-backup", "incomplete-checkpoint-5")}
    trainer = scripted_trainer(tmp_path, SCORES, **setting)
    trainer.train()
    assert [checkpoint_step(folder) for folder in checkpoint_folders(tmp_path)] == kept
    assert [checkpoint_step(folder) for folder in complete_checkpoints(tmp_path)] == kept
    assert {name: folder_state(tmp_path / name) for name in untouched} == untouched
    assert trainer.args.save_total_limit == setting.get("save_total_limit", 3)  # as given, after the run too


def scripted_trainer(tmp_path, scores: list[float], **overrides) -> VaswaniTrainer:
    """A trainer that evaluates and saves after every update, its validation `score` the next of `scores`."""
    scripted = iter(scores)
    fields = dict(
        max_steps=len(scores),
        save_strategy="steps",
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="score",
        predict_with_generate=False,
        label_names=["labels"],  # the Trainer would infer ["labels", "label_smoothing"] from forward()
    )
    return trainer_for(
        tmp_path,
        tiny_model(seed=6),
        eval_dataset=reversal_dataset(4).remove_columns(["source_length", "target_length"]),
        compute_metrics=lambda prediction: {"score": next(scripted)},
        **{**fields, **overrides},
    )


class CheckpointsOnDisk(TrainerCallback):
    """Records, after each save (the deletions done), the steps of the checkpoint folders on disk."""

    def __init__(self, output_dir: Path):
        self.output_dir, self.seen = output_dir, []

    def on_save(self, args, state, control, **kwargs):
        folders = checkpoint_folders(self.output_dir)
        assert folders == complete_checkpoints(self.output_dir)  # only complete checkpoints, none half-deleted
        self.seen.append([checkpoint_step(folder) for folder in folders])


# The best (9.0) comes early and stays the best to the end; the second best (5.0) comes late.
FADING_SCORES = [1.0, 9.0, 2.0, 3.0, 1.0, 4.0, 0.0, 5.0, 0.0, 0.0]


@pytest.mark.parametrize(("selection", "bound"), [("best", 2 + 1), ("around_best", 2 + 0 + 1)])
def test_checkpoints_on_disk_never_exceed_the_averaged_ones_plus_the_newest_and_the_best_is_never_deleted(
    tmp_path, selection, bound
):
    """With average_checkpoints 'best' (k = 2): after every save the disk holds exactly the best 2 so far by the
    validation metric and the newest, at most k + 1 checkpoints, the best of step 2 among them to the end although
    8 newer checkpoints came after it. 'around_best' (k = 2: the best and the one after it) likewise holds the window
    around the best so far and the newest (k - 1) // 2 + 1."""
    trainer = scripted_trainer(tmp_path, FADING_SCORES, average_checkpoints=selection, checkpoints_to_average=2)
    on_disk = CheckpointsOnDisk(tmp_path)
    trainer.add_callback(on_disk)
    trainer.train()
    assert len(on_disk.seen) == 10
    for step, kept in enumerate(on_disk.seen, start=1):
        scores = dict(enumerate(FADING_SCORES[:step], start=1))
        best = max(scores, key=scores.get)
        assert len(kept) <= bound and best in kept and step in kept, (step, kept)
        assert set(select_checkpoints(scores, selection, 2)) <= set(kept), (step, kept)
    assert on_disk.seen[-1] == ([2, 8, 10] if selection == "best" else [2, 3, 10])


def test_checkpoint_selection_ranks_by_metric_oldest_first_on_ties_and_centres_the_window_on_the_best():
    scores = {100: 1.0, 200: 3.0, 300: 3.0, 400: None, 500: 2.0, 600: 0.5}
    assert select_checkpoints(scores, "last", 2) == [500, 600]
    assert select_checkpoints(scores, "best", 2) == [200, 300]  # equal scores: the older first
    assert select_checkpoints(scores, "best", 3) == [200, 300, 500]  # never one without a score
    assert select_checkpoints(scores, "best", 2, greater_is_better=False) == [100, 600]  # a loss
    assert select_checkpoints(scores, "around_best", 3) == [100, 200, 300]
    assert select_checkpoints(scores, "around_best", 5) == [100, 200, 300, 400]  # fewer at the start
    assert select_checkpoints({1: None}, "around_best", 3) == []
    assert checkpoints_to_keep(scores, "best", 2) == {200, 300, 600}
    assert checkpoints_to_keep(scores, "last", 2) == {200, 500, 600}
    assert checkpoints_to_keep(scores, "around_best", 3) == {100, 200, 300, 500, 600}


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


def test_a_checkpoint_limit_below_the_averaging_or_negative_is_refused():
    common = dict(output_dir="unused", use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="save_total_limit 2 keeps fewer checkpoints than checkpoints_to_average 5"):
        VaswaniTrainingArguments(save_total_limit=2, **common)
    with pytest.raises(ValueError, match=r"save_total_limit must be 0 \(keep every checkpoint\) or more, got -1"):
        VaswaniTrainingArguments(save_total_limit=-1, **common)
    assert VaswaniTrainingArguments(average_last_checkpoints=0, **common).save_total_limit == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"metric_for_best_model": None}, "average_checkpoints 'best' rank the evaluations by metric_for_best_model, "
         "which is not set: set metric_for_best_model"),
        ({"eval_strategy": "no"}, "but eval_strategy is 'no'"),
        ({"save_steps": 300}, "save_strategy 'steps' with save_steps 300 saves checkpoints where eval_strategy "
         "'steps' with eval_steps 200 does not evaluate"),
        ({"save_strategy": "epoch"}, "save_strategy 'epoch' with save_steps 400 saves checkpoints where "
         "eval_strategy 'steps'"),
        ({"eval_steps": 0.1, "save_steps": 0.2}, "with eval_steps 0.1 does not evaluate"),
        ({"checkpoints_to_average": 0}, "checkpoints_to_average must be 1 or more, got 0"),
        ({"average_last_checkpoints": 3}, "average_last_checkpoints 3 (the earlier spelling of average_checkpoints "
         "'last' with checkpoints_to_average 3) contradicts average_checkpoints 'best' with checkpoints_to_average 5"),
        ({"average_checkpoints": "last", "metric_for_best_model": None, "early_stopping_patience": 2},
         "early_stopping_patience 2 rank the evaluations by metric_for_best_model, which is not set"),
        ({"early_stopping_patience": 0}, "early_stopping_patience must be 1 or more evaluations"),
    ],
)
def test_a_selection_by_metric_where_a_checkpoint_would_have_none_is_refused_naming_the_settings(setting, message):
    common = dict(
        output_dir="unused",
        use_cpu=True,
        report_to=[],
        average_checkpoints="best",
        metric_for_best_model="bleu",
        eval_strategy="steps",
        eval_steps=200,
        save_strategy="steps",
        save_steps=400,
    )
    VaswaniTrainingArguments(**common)  # saves at every other evaluation: each checkpoint has its metric
    with pytest.raises(ValueError) as refused:
        VaswaniTrainingArguments(**{**common, **setting})
    assert message in str(refused.value)


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


def test_config_overrides_parse_values():
    assert parse_overrides("dropout=0.3, decoder_layers=4,activation_function=gelu") == {
        "dropout": 0.3,
        "decoder_layers": 4,
        "activation_function": "gelu",
    }
    with pytest.raises(ValueError, match="not field=value"):
        parse_overrides("dropout")


@pytest.mark.parametrize(
    "recipe", sorted(p.name for p in RECIPES.glob("*.yaml") if not p.name.startswith("accelerate"))
)
def test_shipped_recipes_parse(recipe):
    parser = HfArgumentParser((ModelArguments, DataArguments, VaswaniTrainingArguments))
    values = yaml.safe_load((RECIPES / recipe).read_text())
    # GPU recipes ask for bf16, which TrainingArguments refuses without a GPU: parse them as on a CPU
    values = {**values, "use_cpu": True, "bf16": False}
    model_args, data_args, training_args = parser.parse_dict(values)
    assert training_args.lr_schedule == "eq3" and training_args.label_smoothing_factor == 0.1
    # translation into German or French, or parsing into linearized trees (Sec. 6.3)
    assert data_args.source_lang == "en" and data_args.target_lang in {"de", "fr", "tree"}
    assert (data_args.target_lang == "tree") == data_args.dataset.endswith("treebank.zip")
    assert (data_args.dataset_format == "treebank") == (data_args.target_lang == "tree")
    VaswaniConfig.from_preset(model_args.preset, **parse_overrides(model_args.config_overrides))
    assert training_args.max_grad_norm == 0  # the paper clips no gradient
    if recipe.startswith(("wmt14", "multi30k")):
        # bounded: the checkpoints averaged at the end, and the best by validation BLEU
        assert training_args.save_total_limit == training_args.checkpoints_to_average > 0
        assert training_args.metric_for_best_model == "bleu"
        # every evaluation by steps falls on a checkpoint, so that the best is one on disk
        assert training_args.eval_steps % training_args.save_steps == 0
    # the paper's recipes average the last checkpoints (Sec. 6.1); the small-data 60-minute ones the best by
    # validation BLEU, with a budget in updates (the same work on any machine) capped by training minutes
    paper = recipe.startswith("wmt14")
    selection = "best" if recipe.startswith("multi30k") and recipe.endswith("_cpu.yaml") else "last"
    assert training_args.average_checkpoints == selection and not (paper and training_args.early_stopping_patience)
    if selection == "best":
        assert training_args.max_steps > 0 and training_args.max_train_minutes > 0
        assert training_args.eval_steps == training_args.save_steps and training_args.early_stopping_patience


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


def test_a_resumed_run_trains_on_to_the_recipes_larger_time_budget(small_corpus, tmp_path, monkeypatch):
    """Trained for a 2-minute budget, then resumed with 4 minutes and a new mark: it trains on to 4 minutes, evaluating
    at the new mark (3) and not again at the one already passed (1). Each update takes one minute of a fake clock
    that only the updates move, so the counts are the same on any machine."""
    clock = [0.0]
    monkeypatch.setattr("vaswani_hf.callbacks.time.perf_counter", lambda: clock[0])
    training_step = VaswaniTrainer.training_step

    def one_minute_update(self, *args, **kwargs):
        clock[0] += 60
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(VaswaniTrainer, "training_step", one_minute_update)
    output_dir = tmp_path / "out"
    common = dict(average_last_checkpoints=0, max_eval_samples=4, resume_from_checkpoint="last")
    first = train(*tiny_run_arguments(small_corpus, output_dir, max_train_minutes=2, eval_at_minutes="1", **common))
    assert first["train"]["time_marks"] == [[1, 1], [2, 2]]
    again = train(*tiny_run_arguments(small_corpus, output_dir, max_train_minutes=4, eval_at_minutes="1,3", **common))
    assert again["train"]["time_marks"] == [[1, 1], [2, 2], [3, 3], [4, 4]]
    assert again["train"]["trained_minutes"] == 4  # the 2 minutes trained before count against the new budget
    assert [entry["step"] for entry in again["log_history"] if "eval_bleu" in entry] == [1, 3]
    assert json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4


def scripted_validation_bleu(monkeypatch, scores: list[float], final_average_wins: bool = True) -> None:
    """train()'s validation BLEU during training: the next of `scores` at each evaluation. With
    `final_average_wins`, the final evaluation scores the averaged model (the second candidate) 100 BLEU higher than
    sacreBLEU does, so that it is the one saved."""
    scripted = iter(scores)
    monkeypatch.setattr(training, "bleu_metric_for_trainer", lambda tokenizer: lambda p: {"bleu": next(scripted)})
    calls = []

    def final_bleu(hypotheses, references):
        calls.append(None)
        result = bleu(hypotheses, references)
        second_candidate = len(calls) > 2  # validation and test of the last weights come first
        return {**result, "score": result["score"] + 100} if final_average_wins and second_candidate else result

    monkeypatch.setattr(training, "bleu", final_bleu)


def test_the_final_model_is_the_average_of_the_best_k_checkpoints_and_metrics_name_them(
    small_corpus, tmp_path, monkeypatch, capsys
):
    """Evaluations and checkpoints every 2 updates for 12; the best 2 by validation BLEU are those of steps 4 (7.0)
    and 8 (6.0). The final model, chosen by validation BLEU over the last weights, holds exactly their average, and
    metrics.json names them with their validation BLEU. Early stopping with patience 5 counts 4 evaluations without
    improvement by the end: not stopped early."""
    scripted_validation_bleu(monkeypatch, [1.0, 7.0, 2.0, 6.0, 3.0, 5.0])
    output_dir = tmp_path / "out"
    selection = dict(average_checkpoints="best", checkpoints_to_average=2, metric_for_best_model="bleu")
    steps = dict(max_steps=12, eval_strategy="steps", eval_steps=2, save_steps=2, early_stopping_patience=5)
    metrics = train(*tiny_run_arguments(small_corpus, output_dir, max_eval_samples=4, **selection, **steps))
    assert metrics["final_model"] == "average of the best 2"
    averaged = metrics["evaluation"]["average of the best 2"]["checkpoints"]
    assert averaged == [{"step": 4, "eval_bleu": 7.0}, {"step": 8, "eval_bleu": 6.0}]
    assert json.loads((output_dir / "metrics.json").read_text())["evaluation"]["average of the best 2"]["checkpoints"]
    assert [checkpoint_step(folder) for folder in complete_checkpoints(output_dir)] == [4, 8, 12]
    expected = average_checkpoints([output_dir / "checkpoint-4", output_dir / "checkpoint-8"])
    saved = load_file(output_dir / "model.safetensors")
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    assert metrics["train"]["stopped_early_at_step"] is None
    assert metrics["settings"]["training"]["average_checkpoints"] == "best"
    assert "    checkpoints averaged (validation metric): 4 (7.00), 8 (6.00)" in capsys.readouterr().out


def test_a_run_stopped_early_records_the_step(small_corpus, tmp_path, monkeypatch):
    scripted_validation_bleu(monkeypatch, [1.0, 7.0, 2.0, 6.0, 3.0, 5.0], final_average_wins=False)
    output_dir = tmp_path / "out"
    steps = dict(max_steps=12, eval_strategy="steps", eval_steps=2, save_steps=2, metric_for_best_model="bleu")
    arguments = tiny_run_arguments(small_corpus, output_dir, max_eval_samples=4, early_stopping_patience=2, **steps)
    metrics = train(*arguments)
    # 7.0 at step 4, then 2.0 and 6.0: two evaluations without improvement
    assert metrics["train"]["stopped_early_at_step"] == 8
    assert metrics["settings"]["training"]["early_stopping_patience"] == 2
    assert json.loads((output_dir / "checkpoint-8" / "trainer_state.json").read_text())["global_step"] == 8


@pytest.mark.slow
def test_a_run_killed_and_resumed_keeps_the_best_checkpoints_by_the_validation_bleu_recorded_before_the_kill(
    small_corpus, tmp_path
):
    """Real runs of scripts/train.py, validation BLEU (4 sentences) and a checkpoint every 2 updates, the best 2
    averaged: killed right after checkpoint 8 and resumed to 16, the disk holds at most 2 + 1 checkpoints at the kill
    and, at the end, the best 2 by the BLEU of all 8 evaluations (those before the kill read back from the checkpoints'
    trainer states) and the newest; the final evaluation averages those 2."""
    settings = dict(
        max_steps=16,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        max_eval_samples=4,
        metric_for_best_model="bleu",
        average_checkpoints="best",
        checkpoints_to_average=2,
        resume_from_checkpoint="last",
    )
    output_dir = tmp_path / "out"
    run([sys.executable], recipe(small_corpus, output_dir, **settings), tmp_path, kill_at=("saved", 8))
    at_kill = [checkpoint_step(folder) for folder in checkpoint_folders(output_dir)]
    assert len(at_kill) <= 3 and 8 in at_kill, at_kill
    run([sys.executable], recipe(small_corpus, output_dir, **settings), tmp_path)
    history = json.loads((output_dir / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
    scores = {entry["step"]: entry["eval_bleu"] for entry in history if "eval_bleu" in entry}
    assert sorted(scores) == list(range(2, 17, 2))
    best = select_checkpoints(scores, "best", 2)
    assert [checkpoint_step(folder) for folder in checkpoint_folders(output_dir)] == sorted({*best, 16})
    evaluation = json.loads((output_dir / "metrics.json").read_text())["evaluation"]
    assert [checkpoint["step"] for checkpoint in evaluation["average of the best 2"]["checkpoints"]] == best


def test_bf16_mixed_precision_trains_with_float32_master_weights(tmp_path):
    """`bf16: true` (the 8-GPU recipes) runs the forward under bfloat16 autocast; the weights and Adam stay float32
    and the loss falls like in float32. (On a CPU without bfloat16 units it is emulated and slow; see README.)"""
    losses = {}
    for bf16 in (False, True):
        model = tiny_model(seed=5)
        trainer = trainer_for(tmp_path / str(bf16), model, bf16=bf16, max_steps=60, lr_scale=0.2, warmup_steps=10)
        trainer.train()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        batch = pad([reversal_dataset()[i] for i in range(32)])
        with torch.no_grad():
            losses[bf16] = model.eval()(**batch).loss.item()
    initial = tiny_model(seed=5)(**batch).loss.item()
    assert losses[True] < 0.9 * initial and losses[False] < 0.9 * initial, (initial, losses)
    assert losses[True] == pytest.approx(losses[False], rel=0.05)


def test_evaluation_leaves_the_generation_config_as_it_was(tmp_path):
    """Seq2SeqTrainer fills the model's generation config with defaults (max_length 20) when it evaluates with
    generate; that would replace the per-sentence length limit (source + 50, Sec. 6.1) in every later generate()
    and in the saved model."""
    model = tiny_model()
    before = model.generation_config.to_dict()
    trainer = trainer_for(tmp_path, model, per_device_eval_batch_size=8)
    trainer.compute_metrics = lambda prediction: {}  # with metrics to compute, evaluation generates
    trainer.evaluate(eval_dataset=reversal_dataset(16).remove_columns(["source_length", "target_length"]))
    assert model.generation_config.max_length is None
    assert model.generation_config.to_dict() == before


def test_training_step_with_label_smoothing_equals_the_trainers_label_smoother(tmp_path):
    # The model's fused label-smoothed loss gives the same loss and gradients as Seq2SeqTrainer's LabelSmoother.
    batch = pad([reversal_dataset(8)[i] for i in range(8)])
    ours, reference = tiny_model(seed=2), tiny_model(seed=2)
    batch["decoder_input_ids"] = ours.prepare_decoder_input_ids_from_labels(batch["labels"])  # as the collator does
    trainer = trainer_for(tmp_path / "ours", ours, label_smoothing_factor=0.1)
    plain = Seq2SeqTrainer(
        model=reference,
        args=Seq2SeqTrainingArguments(
            output_dir=str(tmp_path / "plain"), report_to=[], use_cpu=True, label_smoothing_factor=0.1
        ),
    )
    items = batch["labels"].ne(-100).sum()
    losses = [t.training_step(t.model, dict(batch), items) for t in (trainer, plain)]
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)
    # another model (MarianMTModel) keeps the Trainer's LabelSmoother
    marian = convert_to_marian(reference).train()
    marian_trainer = trainer_for(tmp_path / "marian", marian, label_smoothing_factor=0.1)
    torch.testing.assert_close(marian_trainer.compute_loss(marian, dict(batch)), losses[1])
    # evaluation still reports the label-smoothed loss from the logits
    ours.eval()
    torch.testing.assert_close(
        trainer.compute_loss(ours, dict(batch)), plain.compute_loss(reference.eval(), dict(batch))
    )


def tiny_run_arguments(corpus, output_dir, **overrides):
    """The three argument dataclasses of a tiny recipe (conftest's), as the command line builds them."""
    parser = HfArgumentParser((ModelArguments, DataArguments, VaswaniTrainingArguments))
    return parser.parse_dict(recipe(corpus, output_dir, **{"disable_tqdm": True, **overrides}))


@pytest.fixture(scope="module")
def filtered_corpus(small_corpus, tmp_path_factory) -> Path:
    """conftest's Multi30k slice with two training pairs the length filters drop: an empty target, and a target of
    40 words for a source of one (a length ratio far above 3)."""
    folder = tmp_path_factory.mktemp("filtered")
    for path in small_corpus.iterdir():
        shutil.copyfile(path, folder / path.name)
    with open(folder / "train.en", "a", encoding="utf-8") as english, open(folder / "train.de", "a") as german:
        english.write("A dog.\nHello.\n")
        german.write("\n" + "Hallo " * 40 + "\n")
    return folder


@pytest.fixture(scope="module")
def finished_run(filtered_corpus, tmp_path_factory):
    """A tiny run of 4 updates with checkpoints at 2 and 4, so that the final evaluation has two candidates (the last
    weights and the average of the two checkpoints): its output folder and the metrics train() returned."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    arguments = tiny_run_arguments(
        filtered_corpus, output_dir, max_steps=4, save_steps=2, average_last_checkpoints=2, tokenized_bleu=True
    )
    return output_dir, train(*arguments)


def test_a_run_asked_for_the_papers_metric_reports_it_labelled_beside_sacrebleu(finished_run, small_corpus, capsys):
    output_dir, metrics = finished_run
    references = (small_corpus / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    for result in metrics["evaluation"].values():
        hypotheses = (output_dir / result["test_predictions"]).read_text(encoding="utf-8").split("\n")[:-1]
        assert result["test_tokenized_bleu"] == tokenized_bleu(hypotheses, references)
        assert result["test_bleu"] == bleu(hypotheses, references)  # sacreBLEU stays the main score
        for role in ("validation", "test"):
            assert result[f"{role}_tokenized_bleu"]["label"] == TOKENIZED_BLEU_LABEL
    assert metrics["settings"]["training"]["tokenized_bleu"] is True
    _print_summary(metrics, output_dir)
    printed = capsys.readouterr().out
    scores = {role: metrics["evaluation"]["last"][f"{role}_tokenized_bleu"]["score"] for role in ("validation", "test")}
    shown = f"validation {scores['validation']:.2f}, test {scores['test']:.2f}"
    assert f"    {TOKENIZED_BLEU_LABEL}: {shown}" in printed.splitlines()


def test_a_multi_process_run_refuses_to_learn_a_bpe_of_a_large_corpus_and_gives_the_command(
    small_corpus, tmp_path, monkeypatch
):
    """The other processes would wait at main_process_first's barrier while one learns it (ddp_timeout 1,800 s):
    above the limit, every process refuses before the barrier, naming the vaswani-train-tokenizer command, and the
    command given learns a tokenizer the run then takes."""
    data_args = DataArguments(dataset=str(small_corpus), vocab_size=400, file_splits="train=train,validation=val")
    corpus = load_parallel_corpus(small_corpus, "en", "de", splits={"train": "train", "validation": "val"})
    monkeypatch.setattr(training, "MAX_PAIRS_TO_LEARN_BPE_IN_MULTI_PROCESS_RUN", 299)  # the slice holds 300
    two_processes = SimpleNamespace(world_size=2, ddp_timeout=1800)  # refused before any barrier is reached
    output_dir = tmp_path / "runs" / "run"
    with pytest.raises(ValueError) as refused:
        build_tokenizer(data_args, corpus, output_dir, two_processes)
    message = str(refused.value)
    folder = tmp_path / "runs" / "tokenizers" / "en_de_bpe400"
    command = f"vaswani-train-tokenizer {small_corpus} en de {folder} --vocab_size 400"
    assert "learning a BPE from 300 training pairs (more than 299) in a run of 2 processes" in message
    assert "ddp_timeout (1800 s)" in message and f"{command} and set tokenizer_name_or_path: {folder}" in message
    assert not output_dir.exists()
    train_tokenizer_main(shlex.split(command)[1:])
    reused = DataArguments(dataset=str(small_corpus), vocab_size=400, tokenizer_name_or_path=str(folder))
    assert len(build_tokenizer(reused, corpus, output_dir, two_processes)) == len(load_tokenizer(folder))
    # one process learns it itself, at any size
    one_process = VaswaniTrainingArguments(output_dir=str(output_dir), use_cpu=True)
    build_tokenizer(data_args, corpus, output_dir, one_process)
    assert (output_dir / "tokenizer" / "learned_for.json").is_file()


def test_a_tokenizer_folder_that_does_not_exist_is_named_with_the_command_that_learns_it(small_corpus, tmp_path):
    folder = "runs/tokenizers/en_de_bpe37000"
    data_args = DataArguments(
        dataset="wmt/wmt14", dataset_config="de-en", vocab_size=37000, tokenizer_name_or_path=folder
    )
    with pytest.raises(FileNotFoundError) as refused:
        build_tokenizer(data_args, {}, tmp_path, SimpleNamespace(world_size=8))
    assert str(refused.value) == (
        f"tokenizer_name_or_path {folder} does not exist: learn it first with vaswani-train-tokenizer wmt/wmt14 en de"
        f" {folder} --config_name de-en --vocab_size 37000"
    )


def test_a_run_writes_every_test_translation_and_chrf_beside_bleu(finished_run, small_corpus):
    output_dir, metrics = finished_run
    assert json.loads((output_dir / "metrics.json").read_text())["evaluation"] == metrics["evaluation"]
    references = (small_corpus / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    assert set(metrics["evaluation"]) == {"last", "average of 2"}
    files = {name: result["test_predictions"] for name, result in metrics["evaluation"].items()}
    saved = metrics["final_model"]
    assert files[saved] == "test_predictions.txt"
    assert files[next(name for name in files if name != saved)] in (
        "test_predictions_last.txt",
        "test_predictions_average.txt",
    )
    for name, file_name in files.items():
        lines = (output_dir / file_name).read_text(encoding="utf-8").split("\n")
        assert lines[-1] == "" and len(lines[:-1]) == len(references) == 20  # one a line, every test sentence
        result = metrics["evaluation"][name]
        assert lines[:5] == [" ".join(h.splitlines()) for h in result["test_hypotheses_head"]]
        # the written translations give the reported scores
        assert bleu(lines[:-1], references)["score"] == pytest.approx(result["test_bleu"]["score"])
        assert chrf(lines[:-1], references)["score"] == pytest.approx(result["test_chrf"]["score"])
        for split in ("validation", "test"):
            assert "|nc:6|nw:0|" in result[f"{split}_chrf"]["signature"]  # sacreBLEU's chrF: character 6-grams
    assert not list(output_dir.glob(".test_predictions*"))  # no staging file left


def test_a_run_records_the_pairs_read_filtered_and_kept(finished_run, capsys):
    _, metrics = finished_run
    # the two bad pairs are dropped from the training split; evaluation splits stay whole
    assert metrics["data"] == {
        "train": {"read": 302, "filtered": 2, "kept": 300},
        "validation": {"read": 20, "filtered": 0, "kept": 20},
        "test": {"read": 20, "filtered": 0, "kept": 20},
    }


def folder_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_a_second_run_into_a_used_output_dir_is_refused_before_it_starts(finished_run, filtered_corpus):
    output_dir, _ = finished_run
    before = folder_state(output_dir)
    arguments = tiny_run_arguments(filtered_corpus, output_dir, max_steps=4, save_steps=2, average_last_checkpoints=2)
    with pytest.raises(FileExistsError) as refused:
        train(*arguments)
    message = str(refused.value)
    assert f"output_dir {output_dir} holds an earlier run (checkpoint-2, checkpoint-4, metrics.json" in message
    assert "--resume_from_checkpoint last" in message and "another --output_dir" in message
    assert folder_state(output_dir) == before  # nothing written, nothing removed


def test_resuming_with_another_vocabulary_size_is_refused_naming_both(finished_run, filtered_corpus):
    output_dir, _ = finished_run
    assert json.loads((output_dir / "tokenizer" / "learned_for.json").read_text()) == {
        "languages": ["en", "de"],
        "vocab_size": 400,
    }
    before = folder_state(output_dir)
    arguments = tiny_run_arguments(filtered_corpus, output_dir, vocab_size=500, resume_from_checkpoint="last")
    with pytest.raises(ValueError, match="learned with vocab_size 400, but the recipe asks for vocab_size 500"):
        train(*arguments)
    assert folder_state(output_dir) == before


def test_a_reused_tokenizer_must_fit_the_recipe(tmp_path):
    texts = ["a man rides a bike", "zwei hunde spielen im schnee"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    data_args = DataArguments(dataset="unused", source_lang="en", target_lang="de", vocab_size=300)
    # a tokenizer with no record: only a vocabulary larger than vocab_size proves it is not the recipe's
    tokenizer.save_pretrained(tmp_path)
    check_tokenizer_fits(tokenizer, tmp_path, data_args)
    check_tokenizer_fits(tokenizer, tmp_path, DataArguments(dataset="unused", vocab_size=len(tokenizer) + 100))
    with pytest.raises(ValueError, match=f"has {len(tokenizer)} tokens, more than the recipe's vocab_size 280"):
        check_tokenizer_fits(tokenizer, tmp_path, DataArguments(dataset="unused", vocab_size=280))
    # with the record train() writes: the requested size and the languages, in either direction
    (tmp_path / "learned_for.json").write_text(json.dumps({"languages": ["en", "de"], "vocab_size": 300}))
    check_tokenizer_fits(
        tokenizer, tmp_path, DataArguments(dataset="unused", source_lang="de", target_lang="en", vocab_size=300)
    )
    with pytest.raises(
        ValueError, match=r"learned for the languages \['en', 'de'\], but the recipe translates \['en', 'fr'\]"
    ):
        check_tokenizer_fits(tokenizer, tmp_path, DataArguments(dataset="unused", target_lang="fr", vocab_size=300))
    with pytest.raises(ValueError, match="learned with vocab_size 300, but the recipe asks for vocab_size 8000"):
        check_tokenizer_fits(tokenizer, tmp_path, DataArguments(dataset="unused"))


def test_what_counts_as_an_earlier_run(tmp_path):
    assert earlier_run_outputs(tmp_path / "missing") == []
    (tmp_path / "recipe.yaml").write_text("seed: 1")
    (tmp_path / "notes").mkdir()
    assert earlier_run_outputs(tmp_path) == []  # a folder holding other things is free to use
    for name in ("checkpoint-10", "tokenizer"):
        (tmp_path / name).mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert earlier_run_outputs(tmp_path) == ["checkpoint-10", "model.safetensors", "tokenizer"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_translation_shows_a_progress_bar_on_a_terminal_only(monkeypatch):
    tokenizer = train_tokenizer(["a man rides a bike", "zwei hunde spielen im schnee"] * 20, vocab_size=300)
    model = tiny_model(vocab_size=len(tokenizer))
    sources = ["a man", "two dogs", "a bike"]
    shown = {}
    for name, stream, progress_bar in (
        ("terminal", Terminal(), True),
        ("off", Terminal(), False),
        ("pipe", io.StringIO(), True),
    ):
        monkeypatch.setattr(sys, "stderr", stream)
        translations = translate(
            model, tokenizer, sources, batch_size=2, progress_bar=progress_bar, description="test", max_new_tokens=3
        )
        shown[name] = stream.getvalue()
        assert len(translations) == 3
    # parsing decodes through translate() with its own bar (beam 21 takes minutes on a real parser)
    monkeypatch.setattr(sys, "stderr", Terminal())
    parse(model, tokenizer, sources, num_beams=1)
    shown["parsing"] = sys.stderr.getvalue()
    monkeypatch.undo()
    assert "test: 100%" in shown["terminal"] and "3/3" in shown["terminal"]
    assert shown["off"] == "" and shown["pipe"] == ""
    assert "Parsing: 100%" in shown["parsing"]


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
