"""The training arguments: the paper's defaults, the checks that refuse settings which cannot work together, the
config overrides, and the shipped recipes parsed by them."""

from pathlib import Path

import pytest
import yaml
from transformers import (
    HfArgumentParser,
)

from vaswani_hf import VaswaniConfig
from vaswani_hf.arguments import (
    DataArguments,
    ModelArguments,
    VaswaniTrainingArguments,
    parse_dropout_schedule,
    parse_eval_at_minutes,
    parse_file_splits,
    parse_overrides,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_defaults_are_the_papers():
    args = VaswaniTrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay) == (0.9, 0.98, 1e-9, 0.0)
    assert (args.warmup_steps, args.label_smoothing_factor, args.lr_schedule) == (4000, 0.1, "eq3")
    assert args.max_grad_norm == 0  # no clipping (the Trainer clips only above 0)
    # Sec. 6.1: the last 5 averaged, which are also the checkpoints kept; no early stopping
    assert (args.average_checkpoints, args.checkpoints_to_average, args.save_total_limit) == ("last", 5, 5)
    assert args.early_stopping_patience is None


def test_a_checkpoint_limit_below_the_averaging_or_negative_is_refused():
    common = dict(output_dir="unused", use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="save_total_limit 2 keeps fewer checkpoints than checkpoints_to_average 5"):
        VaswaniTrainingArguments(save_total_limit=2, **common)
    with pytest.raises(ValueError, match=r"save_total_limit must be 0 \(keep every checkpoint\) or more, got -1"):
        VaswaniTrainingArguments(save_total_limit=-1, **common)
    assert VaswaniTrainingArguments(average_last_checkpoints=0, **common).save_total_limit == 1


def test_a_dropout_schedule_is_updates_in_order_each_with_a_p_drop():
    assert parse_dropout_schedule(None) == []
    assert parse_dropout_schedule("2800:0.3,5000:0.4") == [(2800, 0.3), (5000, 0.4)]
    common = dict(output_dir="unused", use_cpu=True, report_to=[])
    for schedule, item in (("2800", "'2800'"), ("2800:0.3,x:0.1", "'x:0.1'"), ("0:0.3", "'0:0.3'")):
        with pytest.raises(ValueError, match=f"dropout_schedule '{schedule}': {item}"):
            VaswaniTrainingArguments(dropout_schedule=schedule, **common)
    for schedule in ("2800:1.0", "2800:-0.1", "3000:0.3,2000:0.2", "2000:0.3,2000:0.2"):
        with pytest.raises(ValueError, match="after the one before it, and a P_drop in"):
            VaswaniTrainingArguments(dropout_schedule=schedule, **common)


def test_file_splits_are_split_stem_pairs_and_malformed_ones_are_refused_naming_the_item():
    assert parse_file_splits(None) is None
    assert parse_file_splits("train=train, validation=val") == {"train": "train", "validation": "val"}
    for text, item in (("train", "'train'"), ("train=train,=val", "'=val'"), ("train=a,train=b", "'train=b'")):
        with pytest.raises(ValueError, match=f"file_splits '{text}': {item} is not SPLIT=STEM"):
            DataArguments(dataset="unused", file_splits=text)


def test_evaluation_marks_are_increasing_positive_minutes_and_others_are_refused_naming_the_item():
    assert parse_eval_at_minutes("") == [] and parse_eval_at_minutes("10,30") == [10.0, 30.0]
    common = dict(output_dir="unused", use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="eval_at_minutes '10,x': 'x' is not a number of minutes"):
        VaswaniTrainingArguments(eval_at_minutes="10,x", **common)
    for text, item in (("0", "'0'"), ("30,10", "'10'"), ("10,inf", "'inf'"), ("nan", "'nan'")):
        with pytest.raises(ValueError, match=f"eval_at_minutes '{text}': {item} must be positive and after"):
            VaswaniTrainingArguments(eval_at_minutes=text, **common)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            {"metric_for_best_model": None},
            "average_checkpoints 'best' rank the evaluations by metric_for_best_model, "
            "which is not set: set metric_for_best_model",
        ),
        ({"eval_strategy": "no"}, "but eval_strategy is 'no'"),
        (
            {"save_steps": 300},
            "save_strategy 'steps' with save_steps 300 saves checkpoints where eval_strategy "
            "'steps' with eval_steps 200 does not evaluate",
        ),
        (
            {"save_strategy": "epoch"},
            "save_strategy 'epoch' with save_steps 400 saves checkpoints where eval_strategy 'steps'",
        ),
        ({"eval_steps": 0.1, "save_steps": 0.2}, "with eval_steps 0.1 does not evaluate"),
        ({"checkpoints_to_average": 0}, "checkpoints_to_average must be 1 or more, got 0"),
        (
            {"average_last_checkpoints": 3},
            "average_last_checkpoints 3 (the earlier spelling of average_checkpoints 'last' with "
            "checkpoints_to_average 3) contradicts average_checkpoints 'best' with checkpoints_to_average 5",
        ),
        (
            {"average_checkpoints": "last", "metric_for_best_model": None, "early_stopping_patience": 2},
            "early_stopping_patience 2 rank the evaluations by metric_for_best_model, which is not set",
        ),
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
