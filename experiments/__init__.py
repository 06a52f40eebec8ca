"""The paper's experiments at small scale, each seeded and writing `<name>.json` and a figure, then `report.md`. They
are the repository's reports, run from a clone; not part of the installed package.

`run_all("quick", "docs/experiments")` runs them all; `scripts/experiments/run_all.py` is its command line.
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vaswani_hf.files import write_json

from .budget import BUDGETS, Budget
from .cost import run_cost
from .heads import run_heads
from .masks import run_masks
from .multi30k import Multi30kTask
from .pictures import run_pictures
from .positions import run_positions
from .report import RUN_FILE, render_report
from .scaling import run_scaling

# In this order: the Multi30k models trained for one are reused by the later ones.
EXPERIMENTS: dict[str, Callable[[Budget, Path, Multi30kTask | None], dict]] = {
    "scaling": run_scaling,
    "positions": run_positions,
    "heads": run_heads,
    "masks": run_masks,
    "cost": run_cost,
    "pictures": run_pictures,
}
NEEDS_MULTI30K = {"scaling", "positions", "heads", "masks", "pictures"}
DEFAULT_DATA_DIR = "../shared/data/multi30k"


def run_all(
    budget: str | Budget,
    output_dir: str | os.PathLike,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    only: list[str] | None = None,
) -> Path:
    """Run the experiments (all, or those in `only`) with one thread, write their JSON and PNG files and
    `run.json` (command and wall times) to `output_dir`, then `report.md`; returns the report's path."""
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    names = list(EXPERIMENTS) if only is None else only
    unknown = sorted(set(names) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; choose from {list(EXPERIMENTS)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the timings and budgets are for one thread
    run_path = output_dir / RUN_FILE
    run = json.loads(run_path.read_text(encoding="utf-8")) if run_path.is_file() else {}
    if run.get("budget") != budget.name:  # a folder holds one budget's results
        run = {"seconds": {}}
    started = time.perf_counter()
    task = None
    if NEEDS_MULTI30K & set(names):
        task = Multi30kTask(data_dir, budget)
        run["seconds"]["data"] = time.perf_counter() - started
    for name in (name for name in EXPERIMENTS if name in names):
        began = time.perf_counter()
        EXPERIMENTS[name](budget, output_dir, task)
        run["seconds"][name] = time.perf_counter() - began
    only_flag = "" if only is None else f" --only {','.join(names)}"
    run.update(
        budget=budget.name,
        command=f"OMP_NUM_THREADS=1 python scripts/experiments/run_all.py --budget {budget.name} "
        f"--output_dir {output_dir}{only_flag}",
        total_seconds=sum(run["seconds"].values()),
        budget_settings=budget.to_dict(),
    )
    write_json(run_path, run)
    return render_report(output_dir, tuple(EXPERIMENTS))


__all__ = ["BUDGETS", "Budget", "DEFAULT_DATA_DIR", "EXPERIMENTS", "Multi30kTask", "render_report", "run_all"]
