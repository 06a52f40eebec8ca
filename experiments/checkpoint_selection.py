"""Which checkpoints to average, measured after the fact on runs that kept every checkpoint (save_total_limit 0).

    python experiments/checkpoint_selection.py runs/de_d03 runs/de_d01 --data ../shared/data/multi30k \
        --target_lang de --budgets 2800,3700,7400 --output docs/training/checkpoint_selection.json

The Eq. 3 schedule does not depend on the number of updates, so the first B updates of a longer run are the run
with a budget of B updates: each budget is a prefix of the run. For each budget, the model of each policy (the
last weights; the average of the last k, of the best k by validation BLEU, of the k around the best) is built
and scored on validation and test; early stopping with a patience of p evaluations is simulated on the
validation curve logged during training. Validation decides, test is reported.
"""

import argparse
import gzip
import json
import platform
from pathlib import Path

import torch
from transformers import AutoTokenizer

from vaswani_hf.averaging import load_averaged_model
from vaswani_hf.checkpoints import checkpoint_step, complete_checkpoints, select_checkpoints
from vaswani_hf.evaluation import bleu, chrf, translate
from vaswani_hf.files import write_json


def validation_curve(run: Path) -> dict[int, float]:
    """Validation BLEU logged at each evaluation of the run, by update."""
    last = complete_checkpoints(run)[-1]
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["eval_bleu"] for entry in history if "eval_bleu" in entry}


def policies(steps: list[int], curve: dict[int, float], k: int) -> dict[str, list[int]]:
    """The checkpoints (by update) each policy averages among `steps`, those saved within the budget, chosen as the
    training run chooses them (`select_checkpoints`)."""
    scores = {step: curve.get(step) for step in steps}
    return {
        "last weights": steps[-1:],
        "best single": select_checkpoints(scores, "best", 1),
        f"last {k}": select_checkpoints(scores, "last", k),
        f"best {k}": select_checkpoints(scores, "best", k),
        f"{k} around the best": select_checkpoints(scores, "around_best", k),
    }


def early_stop(curve: dict[int, float], patience: int) -> int | None:
    """The update at which training stops after `patience` evaluations without a new best, or None."""
    best, waited = float("-inf"), 0
    for step in sorted(curve):
        if curve[step] > best:
            best, waited = curve[step], 0
        else:
            waited += 1
            if waited >= patience:
                return step
    return None


def score(steps: list[int], folders: dict, tokenizer, texts: dict, scored: dict) -> dict:
    """Validation and test BLEU / chrF of the average of the checkpoints at `steps`, computed once per set."""
    key = tuple(steps)
    if key not in scored:
        model = load_averaged_model([folders[s] for s in steps]).eval()
        result = {}
        for role, (sources, references) in texts.items():
            hypotheses = translate(model, tokenizer, sources, progress_bar=False)
            result[f"{role}_bleu"] = round(bleu(hypotheses, references)["score"], 2)
            result[f"{role}_chrf"] = round(chrf(hypotheses, references)["score"], 2)
        scored[key] = result
    return scored[key]


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--source_lang", default="en")
    parser.add_argument("--target_lang", default="de")
    parser.add_argument("--budgets", default="2800,3700,7400", help="updates, comma-separated")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--patience", default="3,5,8", help="evaluations, comma-separated")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--figure", type=Path, help="validation BLEU over updates of each run, as a PNG")
    args = parser.parse_args()
    splits = {"validation": "val", "test": "test_2016_flickr"}
    texts = {
        role: (
            read_lines(args.data / f"{stem}.{args.source_lang}.gz"),
            read_lines(args.data / f"{stem}.{args.target_lang}.gz"),
        )
        for role, stem in splits.items()
    }
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    report = {"machine": {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__}, "runs": {}}
    for run in args.runs:
        folders = {checkpoint_step(f): f for f in complete_checkpoints(run)}
        curve = validation_curve(run)
        tokenizer = AutoTokenizer.from_pretrained(folders[max(folders)])
        scored: dict[tuple[int, ...], dict] = {}

        budgets = {}
        for budget in [int(b) for b in args.budgets.split(",")]:
            steps = sorted(s for s in folders if s <= budget)
            if not steps or steps[-1] < budget:
                continue
            budgets[budget] = {
                name: {"checkpoints": chosen, **score(chosen, folders, tokenizer, texts, scored)}
                for name, chosen in policies(steps, curve, args.k).items()
            }
        stops = {p: early_stop(curve, p) for p in [int(p) for p in args.patience.split(",")]}
        report["runs"][run.name] = {
            "validation_bleu_curve": curve,
            "budgets": budgets,
            "early_stop_at_update": stops,
        }
        write_json(args.output, report)  # after each run: a long measurement keeps what it has
    if args.figure:
        plot_curves(report, args.figure)


def plot_curves(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, run in report["runs"].items():
        curve = run["validation_bleu_curve"]
        axes.plot(list(curve), list(curve.values()), marker="o", markersize=3, label=name)
    axes.set_xlabel("updates")
    axes.set_ylabel("validation BLEU (sacreBLEU, beam 4)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
