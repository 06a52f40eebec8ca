"""benchmarks/gpu_check.py (issue 24's check for a GPU machine) in its dry mode: every stage at toy sizes on the CPU,
through scripts/gpu_check.sh as on the GPU machine, so that the command cannot rot while no GPU runs it."""

import json
import os
import subprocess
import sys

import pytest
from helpers import HANG_GUARD_SECONDS, ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_every_stage_in_its_dry_mode(multi30k_dir, tmp_path):
    output, work = tmp_path / "out", tmp_path / "work"
    command = ["bash", "scripts/gpu_check.sh", "--dry", "--corpus", str(multi30k_dir)]
    command += ["--output_dir", str(output), "--work_dir", str(work)]
    finished = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    assert finished.returncode == 0, finished.stdout[-4000:]
    results = json.loads((output / "gpu.json").read_text())
    assert results["environment"]["device"] == "cpu" and results["unmet_requirements"] == []

    tests = results["tests"]  # on a CPU pytest finds the CUDA tests and runs none (each skipped: no CUDA device)
    assert tests["returncode"] == 0 and tests["skipped"] >= 8 and "passed" not in tests, tests
    assert tests["failed_tests"] == [], tests

    speed = results["speed"]
    for precision in ("float32", "bf16"):
        row = speed["training_step"][precision]
        assert row["ours"]["target_tokens_per_second"] > 0 and row["marian"]["target_tokens_per_second"] > 0
        assert row["ratio_ours_to_marian"] > 0
    assert sorted(speed["generation"]) == sorted(
        f"float32_batch{batch}_{search}" for batch in (2, 3) for search in ("greedy", "beam4")
    )
    assert all(case["same_tokens"] for case in speed["generation"].values())  # the same weights decode alike
    choices = speed["cpu_choices"]
    assert choices["training_step_float32_input_checks"]["ratio_checked_to_unchecked"] > 0
    assert {"output_projection_2_rows", "output_projection_12_rows", "gradient_guard_per_update"} <= set(choices)

    for precision in ("bf16", "fp32"):
        run = results["recipe"][precision]
        assert run["updates"] == 3 and [step for step, _ in run["loss_curve"]] == [1, 2, 3], run
        assert 0 <= run["test_bleu"] <= 100 and set(run["bleu_by_candidate"]) == {"last", "average of the best 2"}
    report = (output / "gpu.md").read_text()
    for heading in ("## Tests", "## Speed, ours / MarianMTModel", "## Multi30k En-De recipe: bf16 against fp32"):
        assert heading in report
    assert (output / "gpu_curves.png").stat().st_size > 0
