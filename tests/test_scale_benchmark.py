"""`scripts/benchmark.py scale` at tiny sizes: the corpus it generates, and the structure of the files it writes."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT, TINY

from benchmarks.harness import generate_wmt_sized_corpus, log_log_slope


def test_the_generated_corpus_is_parallel_deterministic_and_nested(multi30k_dir, tmp_path):
    small = generate_wmt_sized_corpus(multi30k_dir, tmp_path / "small", 50, seed=1)
    generate_wmt_sized_corpus(multi30k_dir, tmp_path / "large", 200, seed=1)
    generate_wmt_sized_corpus(multi30k_dir, tmp_path / "again", 200, seed=1)
    for lang in ("en", "de"):
        large = (tmp_path / "large" / f"train.{lang}").read_text().splitlines()
        assert (tmp_path / "small" / f"train.{lang}").read_text().splitlines() == large[:50]
        assert (tmp_path / "again" / f"train.{lang}").read_text() == (tmp_path / "large" / f"train.{lang}").read_text()
        assert len(large) == 200
    assert small["english_words_mean"] > 15  # longer than Multi30k's captions (about 12 words)


def test_log_log_slope_recovers_the_exponent():
    assert log_log_slope([1000, 2000, 4000], [3.0, 12.0, 48.0]) == 2.0
    assert log_log_slope([1000], [1.0]) is None


@pytest.mark.slow
def test_scale_benchmark_writes_each_size_with_its_pairs_slopes_and_the_training_start(multi30k_dir, tmp_path):
    sizes = [2000, 4000, 8000]
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "scale", "--sizes", ",".join(map(str, sizes))]
    command += ["--output_dir", str(tmp_path / "out"), "--corpus", str(multi30k_dir), "--vocab_size", "400"]
    command += ["--training_steps", "2", "--preset", "small", "--config_overrides", TINY, "--max_tokens", "512"]
    command += ["--num_proc", "1", "--work_dir", str(tmp_path)]
    finished = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert finished.returncode == 0, finished.stdout[-4000:]
    results = json.loads((tmp_path / "out" / "scale.json").read_text())
    entries = [results[f"pairs_{size}"] for size in sizes]
    assert [entry["pairs"] for entry in entries] == sizes
    for entry in entries:
        assert entry["bpe_seconds"] > 0 and entry["preprocessing_seconds"] > 0 and entry["batches_per_epoch"] > 0
        assert 0 < entry["pairs_kept"] <= entry["pairs"]
    assert entries[0]["batches_per_epoch"] < entries[-1]["batches_per_epoch"]
    training = entries[-1]["training"]
    assert training["updates"] == 2 and training["seconds_to_first_update"] > 0
    assert "training" not in entries[0]
    assert set(results["slopes"]) >= {"bpe_seconds", "preprocessing_seconds", "sampler_build_seconds"}
    assert results["machine"]["cores"] >= 1 and "niceness" in results["machine"]
    assert "on_8_GPUs" in results["expectations"]
    markdown = (tmp_path / "out" / "scale.md").read_text()
    assert "Command: `python scripts/benchmark.py scale --sizes 2000,4000,8000" in markdown
    assert "## pairs_8000" in markdown
    assert not list(tmp_path.glob("tmp*"))  # the generated corpus is removed


def test_the_committed_scale_figures_name_their_command_and_sizes():
    results = json.loads((ROOT / "docs" / "benchmarks" / "scale.json").read_text())
    entries = [entry for key, entry in results.items() if key.startswith("pairs_")]
    assert len(entries) >= 3 and all(f"pairs_{entry['pairs']}" in results for entry in entries)
    assert "training" in entries[-1] and set(results["slopes"]) >= {"bpe_seconds", "preprocessing_seconds"}
    markdown = (ROOT / "docs" / "benchmarks" / "scale.md").read_text()
    assert "Command: `python scripts/benchmark.py scale --sizes" in markdown
