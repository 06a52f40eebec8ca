"""Train a Vaswani Transformer with the paper's recipe through Seq2SeqTrainer.

    vaswani-train recipes/multi30k_en_de_cpu.yaml
    vaswani-train recipes/multi30k_en_de_cpu.yaml --output_dir runs/try --max_train_minutes 5
    vaswani-train --dataset wmt/wmt14 --dataset_config de-en --preset base --output_dir out ...

A recipe file (YAML or JSON) of arguments, then flags, which win over the recipe (see --help): model
(ModelArguments), data (DataArguments) and training (VaswaniTrainingArguments, i.e. Seq2SeqTrainingArguments with
the paper's defaults). An unknown key in the recipe or an unknown flag is an error naming it.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml
from accelerate import PartialState
from transformers import HfArgumentParser

from vaswani_hf.arguments import DataArguments, ModelArguments, VaswaniTrainingArguments, close_names
from vaswani_hf.cli import input_errors_as_messages
from vaswani_hf.training import train

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help of each argument, the description as written."""


def build_parser() -> HfArgumentParser:
    # No abbreviated flags: a shortened or misspelt flag is an error, never another argument.
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, VaswaniTrainingArguments),
        allow_abbrev=False,
        formatter_class=HelpFormatter,
        usage="%(prog)s [recipe.yaml|recipe.json] [--argument value ...]",
        description=__doc__,
    )
    parser.add_argument("recipe", nargs="?", help="a YAML or JSON file of arguments; flags given after it win")
    return parser


def read_recipe(path: Path, known: set[str]) -> dict:
    """The recipe's arguments; a key that no argument has is an error naming it (with the closest names)."""
    if path.suffix not in RECIPE_SUFFIXES:
        raise ValueError(f"recipe {path}: a recipe is a {', '.join(RECIPE_SUFFIXES)} file")
    text = path.read_text(encoding="utf-8")
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path} holds a {type(values).__name__}, not a mapping of argument names to values")
    unknown = [key for key in values if key not in known]
    if unknown:
        named = "; ".join(f"{key!r}{close_names(key, known)}" for key in unknown)
        raise ValueError(f"recipe {path}: unknown key(s) {named} (--help lists them all)")
    return values


def typed_recipe_values(recipe: dict, parser: argparse.ArgumentParser, path: Path) -> dict:
    """The recipe's values in their arguments' types, as flags are converted: text for a numeric argument is read as
    the number it writes (YAML reads `4e-1` as text), a number for a text argument (`eval_at_minutes: 10`) becomes its
    text; anything else for a numeric argument is refused naming the key, the value and the type (it would fail
    later, far from the recipe, as "can't multiply sequence by non-int")."""
    types = {}
    for action in parser._actions:  # the first action of a name is its own (a --no_ flag shares the name)
        types.setdefault(action.dest, action.type)
    typed = {}
    for key, value in recipe.items():
        expected, number = types[key], isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None or expected not in (int, float, str):
            typed[key] = value
        elif expected is str:
            typed[key] = str(value) if number else value
        else:
            typed[key] = _as_number(value, expected, number)
            if typed[key] is None:
                kind = "an integer" if expected is int else "a number"
                raise ValueError(f"recipe {path}: {key} is {value!r}, not {kind}")
    return typed


def _as_number(value, expected: type, number: bool) -> int | float | None:
    """`value` (a number, or text writing one) as an `expected` int or float; None if it is not one."""
    if isinstance(value, str):
        try:
            return expected(value)
        except ValueError:
            return None
    if number and (expected is float or float(value).is_integer()):
        return expected(value)
    return None


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, VaswaniTrainingArguments]:
    """Recipe file and flags -> the three argument dataclasses; errors exit with argparse's usage message."""
    parser = build_parser()
    # argparse's actions (no public accessor): the argument names, and which ones the recipe makes optional
    arguments = [a.dest for a in parser._actions if a.dest not in ("help", "recipe")]
    recipe_path = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        if recipe_path is not None:
            recipe = typed_recipe_values(read_recipe(Path(recipe_path), set(arguments)), parser, Path(recipe_path))
            # The recipe's values become the defaults, so a flag on the command line wins over them; argparse
            # checks choices only for flags, and the dataclasses check recipe values when they are built.
            parser.set_defaults(**recipe)
            for action in parser._actions:
                if action.dest in recipe:
                    action.required = False
        *parsed, namespace, remaining = parser.parse_args_into_dataclasses(
            argv, return_remaining_strings=True, look_for_args_file=False
        )
    except (ValueError, OSError) as error:
        parser.error(str(error))
    if recipe_path is None and namespace.recipe is not None:
        parser.error(f"the recipe file comes first, before the flags: {namespace.recipe}")
    if remaining:
        named = [f"{a}{close_names(a.lstrip('-'), arguments)}" if a.startswith("-") else a for a in remaining]
        parser.error(f"unknown argument(s): {'; '.join(named)}")
    return tuple(parsed)


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    # the package's own log lines (pairs read, filtered and kept; checkpoint clean-up) from the main process
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vaswani_hf").setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    with input_errors_as_messages():  # an earlier run in output_dir, missing data, a tokenizer that does not fit
        train(model_args, data_args, training_args)
    state = PartialState()  # every process leaves together, its process group taken down (see cli/evaluate.py)
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    main()
