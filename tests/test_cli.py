"""The training command line: a recipe file plus flags, unknown names refused, enumerated options checked."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, recipe
from transformers import HfArgumentParser

from vaswani_hf.arguments import DataArguments, ModelArguments, VaswaniTrainingArguments, parse_overrides
from vaswani_hf.cli.evaluate_parsing import main as evaluate_parsing_main
from vaswani_hf.cli.train import main as train_main
from vaswani_hf.cli.train import parse_arguments
from vaswani_hf.cli.train_tokenizer import main as train_tokenizer_main
from vaswani_hf.tokenization import load_tokenizer, train_tokenizer_command

RECIPE = {"dataset": "corpus_folder", "output_dir": "from_recipe", "use_cpu": True, "max_train_minutes": 60, "seed": 4}


def write(path, values: dict):
    path.write_text(json.dumps(values) if path.suffix == ".json" else yaml.safe_dump(values))
    return str(path)


def refused(argv: list[str], capsys) -> str:
    """argparse's error message for `argv` (it exits with status 2)."""
    with pytest.raises(SystemExit) as stopped:
        parse_arguments(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_recipe_file_plus_flags_and_the_flags_win(tmp_path, suffix):
    recipe = write(tmp_path / f"recipe{suffix}", {**RECIPE, "test_split": None, "lr_schedule": "hf"})
    model_args, data_args, training_args = parse_arguments(
        [recipe, "--output_dir", "x", "--max_train_minutes", "5", "--lr_schedule", "eq3"]
    )
    assert (training_args.output_dir, training_args.max_train_minutes, training_args.lr_schedule) == ("x", 5.0, "eq3")
    # the recipe's other values stay, including a null
    assert (data_args.dataset, data_args.test_split, training_args.seed, training_args.use_cpu) == (
        "corpus_folder",
        None,
        4,
        True,
    )
    assert model_args.preset == "small"
    # the recipe alone
    _, _, training_args = parse_arguments([recipe])
    assert (training_args.output_dir, training_args.max_train_minutes, training_args.lr_schedule) == (
        "from_recipe",
        60,
        "hf",
    )


def test_an_unknown_recipe_key_or_flag_is_refused_naming_it(tmp_path, capsys):
    recipe = write(tmp_path / "recipe.yaml", {**RECIPE, "lr_shedule": "eq3"})
    message = refused([recipe], capsys)
    assert "unknown key(s) 'lr_shedule' (did you mean 'lr_schedule'" in message
    recipe = write(tmp_path / "good.yaml", RECIPE)
    message = refused([recipe, "--max_train_minuts", "5"], capsys)
    assert "unknown argument(s): --max_train_minuts (did you mean 'max_train_minutes'" in message
    # no abbreviations: a prefix of a flag is not that flag
    assert "unknown argument(s): --max_train" in refused([recipe, "--max_train", "5"], capsys)
    assert "a mapping of argument names to values" in refused([write(tmp_path / "list.yaml", [1, 2])], capsys)
    assert "the recipe file comes first" in refused(["--dataset", "d", "--output_dir", "x", recipe], capsys)
    assert "unknown argument(s): extra" in refused([recipe, "--output_dir", "x", "extra"], capsys)


def test_the_dataset_has_no_default(tmp_path, capsys):
    recipe = write(tmp_path / "recipe.yaml", {k: v for k, v in RECIPE.items() if k != "dataset"})
    assert "the following arguments are required: --dataset" in refused([recipe], capsys)
    assert "the following arguments are required: --dataset" in refused(["--output_dir", "x", "--use_cpu"], capsys)
    with pytest.raises(TypeError, match="dataset"):
        DataArguments()
    assert DataArguments(dataset="folder").dataset_config is None


@pytest.mark.parametrize(
    "name, value, choices",
    [
        ("lr_schedule", "Eq3", "'eq3', 'hf'"),
        ("nonfinite_gradients", "ignore", "'stop', 'skip'"),
        ("preset", "huge", "'small', 'base', 'big'"),
    ],
)
def test_enumerated_options_are_refused_naming_the_value_and_the_choices(tmp_path, capsys, name, value, choices):
    # from a recipe file
    message = refused([write(tmp_path / "recipe.yaml", {**RECIPE, name: value})], capsys)
    assert f"{name} {value!r} is not one of the choices: {choices}" in message
    # from a flag: argparse's own check
    message = refused([write(tmp_path / "good.yaml", RECIPE), f"--{name}", value], capsys)
    assert f"argument --{name}" in message and f"invalid choice: {value!r} (choose from {choices})" in message
    # from Python
    with pytest.raises(ValueError, match=f"{name} {value!r} is not one of the choices: {choices}"):
        if name == "preset":
            ModelArguments(preset=value)
        else:
            VaswaniTrainingArguments(output_dir="unused", use_cpu=True, report_to=[], **{name: value})


def test_help_shows_the_choices():
    shown = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for choices in ("--lr_schedule {eq3,hf}", "--nonfinite_gradients {stop,skip}", "--preset {small,base,big}"):
        assert choices in shown
    assert "--dataset DATASET     required" in shown


def test_an_unknown_config_override_is_refused_naming_it_and_the_fields(tmp_path, capsys):
    with pytest.raises(
        ValueError,
        match=r"override 'dropuot' is not a VaswaniConfig field \(did you mean 'dropout'\?\); the fields: .*d_model",
    ):
        parse_overrides("dropuot=0.3")
    with pytest.raises(ValueError, match="'dropuot' is not a VaswaniConfig field"):
        ModelArguments(config_overrides="d_model=64,dropuot=0.3")
    message = refused([write(tmp_path / "recipe.yaml", {**RECIPE, "config_overrides": "dropuot=0.3"})], capsys)
    assert "config override 'dropuot' is not a VaswaniConfig field (did you mean 'dropout'?)" in message
    # values are still read as JSON
    assert parse_overrides("dropout=0.3,position_encoding=learned,init_std=null") == {
        "dropout": 0.3,
        "position_encoding": "learned",
        "init_std": None,
    }


def test_the_command_trains_from_a_recipe_with_flag_overrides_and_refuses_to_rerun(small_corpus, tmp_path):
    """The issue's command line, `train.py recipe.yaml --output_dir x --max_train_minutes 5`, through the script."""
    recipe_file = write(
        tmp_path / "recipe.yaml",
        recipe(small_corpus, tmp_path / "from_recipe", max_steps=2, average_last_checkpoints=0),
    )
    output_dir = tmp_path / "x"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), recipe_file, "--output_dir", str(output_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    done = subprocess.run([*command, "--max_train_minutes", "5"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "from_recipe").exists()
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert (
        metrics["settings"]["training"]["max_train_minutes"] == 5 and metrics["settings"]["training"]["max_steps"] == 2
    )
    assert "train: 300 pairs read, 0 filtered out by length, 300 kept" in done.stderr  # logged
    assert "/5.0 training minutes" in done.stderr  # the training bar follows the time budget
    # the same command again: refused before training, saying how to resume
    again = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert again.returncode != 0
    assert f"output_dir {output_dir} holds an earlier run" in again.stderr
    assert "--resume_from_checkpoint last" in again.stderr
    assert "Traceback" not in again.stderr  # a one-line error, not a stack


def test_the_tokenizer_command_records_what_it_learned_for_and_keeps_other_files(small_corpus, tmp_path, capsys):
    output_dir = tmp_path / "tokenizer"
    train_tokenizer_main([str(small_corpus), "en", "de", str(output_dir), "--split", "train", "--vocab_size", "400"])
    assert json.loads((output_dir / "learned_for.json").read_text()) == {"languages": ["en", "de"], "vocab_size": 400}
    assert load_tokenizer(output_dir)("A dog.")["input_ids"][-1] == 2
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as stopped:
        train_tokenizer_main([str(small_corpus), "en", "de", str(tmp_path / "used"), "--vocab_size", "400"])
    assert stopped.value.code == 1
    assert re.search(r": error: .*already holds \['notes.txt'\]", capsys.readouterr().err)
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "recipe_name", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml") if not p.name.startswith("accelerate"))
)
def test_the_command_line_reads_each_shipped_recipe_as_its_values_say(recipe_name):
    path = ROOT / "recipes" / recipe_name
    # GPU recipes ask for bf16, which TrainingArguments refuses without a GPU: flags make them CPU runs
    from_command_line = parse_arguments([str(path), "--use_cpu", "true", "--bf16", "false"])
    values = {**yaml.safe_load(path.read_text()), "use_cpu": True, "bf16": False}
    parser = HfArgumentParser((ModelArguments, DataArguments, VaswaniTrainingArguments))
    model_args, data_args, training_args = parser.parse_dict(values)
    assert from_command_line[0] == model_args and from_command_line[1] == data_args
    assert from_command_line[2].to_dict() == training_args.to_dict()


def test_recipe_values_take_their_arguments_types(tmp_path, capsys):
    """YAML reads `4e-1` as text and `10` as a number: each becomes the type of its argument, as a flag would, and a
    value of another kind for a numeric argument is refused naming the key, the value and the type."""
    head = "dataset: corpus_folder\noutput_dir: out\nuse_cpu: true\n"
    path = tmp_path / "recipe.yaml"
    path.write_text(head + "lr_scale: 4e-1\neval_at_minutes: 10\nmax_steps: 20.0\nwarmup_steps: 100\n")
    _, _, training_args = parse_arguments([str(path)])
    assert (training_args.lr_scale, training_args.eval_at_minutes, training_args.max_steps) == (0.4, "10", 20)
    assert type(training_args.lr_scale) is float and type(training_args.max_steps) is int
    for line, message in (
        ("lr_scale: [0.4]", "lr_scale is [0.4], not a number"),
        ("lr_scale: true", "lr_scale is True, not a number"),
        ("max_steps: 2.5", "max_steps is 2.5, not an integer"),
        ("lr_scale: four", "lr_scale is 'four', not a number"),
        ("max_steps: 1e3", "max_steps is '1e3', not an integer"),
    ):
        path.write_text(f"{head}{line}\n")
        assert message in refused([str(path)], capsys)


def test_the_wmt14_recipes_use_a_tokenizer_learned_first_and_report_the_papers_metric_the_others_do_not():
    """A WMT14 recipe's comments give the exact vaswani-train-tokenizer command that learns its tokenizer_name_or_path
    (one for base and big), and it asks for the paper's tokenized BLEU; Multi30k and parsing recipes do not."""
    tokenizers = {}
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        if path.name.startswith("accelerate"):
            continue
        _, data_args, training_args = parse_arguments([str(path), "--use_cpu", "true", "--bf16", "false"])
        if path.name.startswith("wmt14"):
            command = train_tokenizer_command(data_args, data_args.tokenizer_name_or_path)
            assert f"# {command}\n" in path.read_text(), path.name
            assert training_args.tokenized_bleu, path.name
            tokenizers.setdefault(path.name.rsplit("_", 1)[0], set()).add(data_args.tokenizer_name_or_path)
        else:
            assert not training_args.tokenized_bleu, path.name
    assert tokenizers == {
        "wmt14_en_de": {"runs/tokenizers/en_de_bpe37000"},
        "wmt14_en_fr": {"runs/tokenizers/en_fr_bpe32000"},
    }


def test_commands_end_bad_input_with_a_one_line_error_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vaswani-train"])
    missing = tmp_path / "no_such_corpus"
    recipe_file = write(
        tmp_path / "recipe.yaml", {**RECIPE, "dataset": str(missing), "output_dir": str(tmp_path / "run")}
    )
    with pytest.raises(SystemExit) as stopped:
        train_main([recipe_file])
    assert stopped.value.code == 1
    message = f"vaswani-train: error: no folder or file {missing} (a Hub dataset id is NAME or OWNER/NAME)\n"
    assert capsys.readouterr().err.endswith(message)
    with pytest.raises(SystemExit) as stopped:
        train_tokenizer_main([str(missing), "en", "de", str(tmp_path / "tokenizer")])
    assert stopped.value.code == 1 and f": error: no folder or file {missing}" in capsys.readouterr().err
    assert not (tmp_path / "tokenizer").exists()


@pytest.mark.parametrize("flag", ["--batch_size", "--num_beams", "--limit"])
def test_the_parsing_command_refuses_counts_below_one_naming_them(flag, capsys):
    with pytest.raises(SystemExit) as stopped:
        evaluate_parsing_main(["model", "treebank.zip", flag, "0"])
    assert stopped.value.code == 2 and f"{flag} must be at least 1, got 0" in capsys.readouterr().err
