"""`report.md` from the experiments' JSON files: their numbers, figures, and where they disagree with the paper."""

import json
from pathlib import Path

from .budget import BUDGETS

RUN_FILE = "run.json"  # the command, budget and wall times of the run that wrote the folder


def render_report(output_dir: str | Path, names: tuple[str, ...]) -> Path:
    """Write `output_dir/report.md` from `run.json` and each `<name>.json` present, in the order of `names`."""
    output_dir = Path(output_dir)
    run = json.loads((output_dir / RUN_FILE).read_text(encoding="utf-8"))
    budget = BUDGETS[run["budget"]]
    overrides = " with " + ", ".join(f"{k}={v}" for k, v in budget.model.items()) if budget.model else ""
    lines = [
        "# The paper's experiments at small scale",
        "",
        "Made by this command, from the project root, on a 2-core CPU with one thread (`OMP_NUM_THREADS=1`):",
        "",
        "```bash",
        run["command"],
        "```",
        "",
        f"Budget `{budget.name}`: wall time {run['total_seconds'] / 60:.1f} minutes in all "
        f"({', '.join(f'{name} {seconds:.0f} s' for name, seconds in run['seconds'].items())}; the Multi30k "
        "models are trained once and shared, so the first experiment to ask for one pays for it). Multi30k "
        f"models: the small preset{overrides}, {budget.train_steps} steps of at most "
        f"{budget.max_tokens} padded tokens, Adam and Eq. 3 (warmup {budget.warmup_steps}, scale {budget.lr_scale}), "
        f"label smoothing 0.1; validation loss on the first {budget.eval_pairs} validation pairs, greedy BLEU "
        f"(sacreBLEU) on the first {budget.eval_pairs} test pairs of test_2016_flickr. These are minutes of "
        "training where the paper trains for 12 hours on 8 GPUs: read differences between settings, not absolute "
        "scores, and small differences as noise (one seed).",
        "",
    ]
    for name in names:
        path = output_dir / f"{name}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        lines += [f"## {result['title']}", "", f"Paper: {result['paper']}", "", "Measured:", ""]
        lines += [f"- {finding}" for finding in result["findings"]]
        lines.append("")
        if result.get("table"):
            lines += [result["table"], ""]
        if result["disagreements"]:
            lines += ["Where this run disagrees with the paper:", ""]
            lines += [f"- {text}" for text in result["disagreements"]]
            lines.append("")
        lines += [f"![{name}]({figure})" for figure in result["figures"]]
        lines.append("")
    path = output_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
