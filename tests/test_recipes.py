"""The paper's WMT14 recipes as a user with 8 GPUs runs them: what they really do, beside what the paper did, as the
README's table says (Sec. 5, 6.1, Table 3). The table is checked against the parsed recipes, so neither drifts."""

import re

import pytest
import yaml
from helpers import ROOT

from vaswani_hf import VaswaniConfig
from vaswani_hf.arguments import parse_overrides
from vaswani_hf.cli.train import parse_arguments

RECIPES = ("wmt14_en_de_base", "wmt14_en_de_big", "wmt14_en_fr_base", "wmt14_en_fr_big")
ACCELERATE_CONFIG = ROOT / "recipes" / "accelerate_8gpu.yaml"


def effective_values(name: str) -> dict[str, str]:
    """One recipe under recipes/accelerate_8gpu.yaml, parsed by the training command, as the README's rows show it."""
    launch = yaml.safe_load(ACCELERATE_CONFIG.read_text())
    # bf16 needs a GPU to pass TrainingArguments' checks: read the recipe's own value, parse it as a CPU run
    recipe = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
    model_args, data_args, args = parse_arguments(
        [str(ROOT / "recipes" / f"{name}.yaml"), "--use_cpu", "true", "--bf16", "false"]
    )
    config = VaswaniConfig.from_preset(model_args.preset, **parse_overrides(model_args.config_overrides))
    tokens = args.max_tokens * launch["num_processes"] * launch["num_machines"] * args.gradient_accumulation_steps
    precision = "bf16" if recipe.get("bf16") else "fp16" if recipe.get("fp16") else "fp32"
    return {
        "padded source + target tokens per update": f"{tokens:,}",
        "updates": f"{args.max_steps:,}",
        "warm-up updates (Eq. 3)": f"{int(args.warmup_steps):,}",
        "dropout": f"{config.dropout}",
        "label smoothing": f"{args.label_smoothing_factor}",
        "gradient clipping": f"{args.max_grad_norm}" if args.max_grad_norm else "none",
        "checkpoints averaged (Sec. 6.1)": f"{args.checkpoints_to_average}",
        "checkpoints kept on disk, besides the best": f"{args.save_total_limit}" if args.save_total_limit else "all",
        "precision": f"{precision} (accelerate: {launch['mixed_precision']})",
        "vocabulary (shared BPE)": f"{data_args.vocab_size:,}",
    }


def readme_table() -> dict[str, list[str]]:
    """The README's recipe table: {row label: [cell per recipe]}, in RECIPES' column order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    header = "| | paper | " + " | ".join(f"`{name}`" for name in RECIPES) + " |"
    assert header in text, f"README.md has no recipe table headed {header}"
    rows = {}
    for line in text[text.index(header) :].splitlines()[2:]:
        if not line.startswith("|"):
            break
        label, _paper, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[label] = cells
    return rows


@pytest.mark.parametrize("column, name", list(enumerate(RECIPES)))
def test_the_readme_table_gives_each_wmt_recipes_effective_values(column, name):
    table = readme_table()
    for label, value in effective_values(name).items():
        assert label in table, f"README's recipe table lacks the row {label!r}"
        assert re.sub(r"\s+", " ", table[label][column]) == value, f"{name}: {label}"
