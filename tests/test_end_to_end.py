"""scripts/train.py end to end through subprocesses: two processes under accelerate, and a SIGKILL then resume."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import HANG_GUARD_SECONDS, ROOT, TINY, recipe, run
from hub_server import multi30k_files, serve
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from vaswani_hf.checkpoints import complete_checkpoints
from vaswani_hf.data import TokenBatchSampler, load_parallel_corpus, preprocess
from vaswani_hf.tokenization import train_tokenizer

# Two processes with gloo on a CPU. In accelerate 1.15 `--cpu --num_processes 2` starts ONE process (its simple
# launcher); `--multi_gpu` starts them through torchrun, and on a machine without GPUs they run on the CPU.
TWO_PROCESSES = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
pytestmark = pytest.mark.slow


def counted_rows(count_dir: Path) -> dict[str, int]:
    """Sentences each process translated, from tests/counted_generate.py's counts."""
    return {path.stem: sum(map(int, path.read_text().split())) for path in sorted(count_dir.glob("process-*.txt"))}


@pytest.fixture(scope="module")
def corpus_with_130_evaluation_pairs(small_corpus, multi30k_dir, tmp_path_factory) -> Path:
    """The small corpus with 130 validation and 130 test pairs: three batches of translate()'s 64 sentences each,
    so that two processes both have some to translate."""
    folder = tmp_path_factory.mktemp("multi30k_130")
    for lang in ("en", "de"):
        shutil.copy(small_corpus / f"train.{lang}", folder / f"train.{lang}")
        for stem in ("val", "test_2016_flickr"):
            with gzip.open(multi30k_dir / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
                (folder / f"{stem}.{lang}").write_text("".join(next(f) for _ in range(130)), encoding="utf-8")
    return folder


def test_two_processes_under_accelerate_write_a_loadable_model(corpus_with_130_evaluation_pairs, tmp_path):
    """Two processes train, then share the final evaluation's decoding (each translates its share of the batches of
    both models on both splits); the main process alone scores and writes, and its test translations are those of
    one process evaluating the saved model."""
    output_dir, counts = tmp_path / "out", tmp_path / "counts"
    counts.mkdir()
    config = recipe(corpus_with_130_evaluation_pairs, output_dir, max_steps=8, save_steps=4)
    output = run([*TWO_PROCESSES, str(ROOT / "tests" / "counted_generate.py"), str(counts)], config, tmp_path)
    assert output.count("Training finished") == 1  # one summary: one process wrote the record
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert (output_dir / "generation_config.json").is_file() and (output_dir / "training_curves.png").is_file()
    metrics = json.loads((output_dir / "metrics.json").read_text())
    test_bleu = metrics["evaluation"][metrics["final_model"]]["test_bleu"]
    assert 0 <= test_bleu["score"] <= 100 and test_bleu["signature"].startswith("nrefs:1|case:mixed")
    assert metrics["train"]["world_size"] == 2  # two processes really ran
    assert list(metrics["evaluation"]) == ["last", "average of 2"]
    # 2 models x 2 splits x 130 sentences, in batches 0 and 2 (64 + 2 sentences) on process 0, batch 1 on process 1
    assert counted_rows(counts) == {"process-0": 4 * 66, "process-1": 4 * 64}
    state = json.loads((output_dir / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    generated = model.generate(**tokenizer(["A dog runs."], return_tensors="pt"), max_new_tokens=5)
    assert generated.shape[0] == 1

    # one process evaluating the saved model gives the same test translations, in the same order, and the same BLEU
    test_files = [str(corpus_with_130_evaluation_pairs / f"test_2016_flickr.{lang}") for lang in ("en", "de")]
    hypotheses = tmp_path / "one_process.de"
    evaluate = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(output_dir), *test_files]
    one = subprocess.run(
        [*evaluate, "--output_file", str(hypotheses), "--device", "cpu"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    assert one.returncode == 0, one.stderr[-4000:]
    assert hypotheses.read_text() == (output_dir / "test_predictions.txt").read_text()
    assert json.loads(one.stdout)["bleu"] == round(test_bleu["score"], 2)


def test_evaluate_on_two_processes_translates_like_one_process_and_writes_once(
    tiny_translator_folder, multi30k_dir, tmp_path
):
    """`accelerate launch scripts/evaluate.py` on two processes: each translates its share of the batches, the
    translations and scores are those of one process, and the files and the printed result come once."""
    sources, references = tmp_path / "test.en", tmp_path / "test.de"
    for path, lang in ((sources, "en"), (references, "de")):
        with gzip.open(multi30k_dir / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            path.write_text("".join(next(f) for _ in range(100)), encoding="utf-8")
    results = {}
    for name, launcher in (("one", [sys.executable]), ("two", TWO_PROCESSES)):
        counts, out = tmp_path / f"counts-{name}", tmp_path / name
        counts.mkdir()
        out.mkdir()
        command = [*launcher, str(ROOT / "tests" / "counted_generate.py"), str(counts)]
        command += [str(ROOT / "scripts" / "evaluate.py"), str(tiny_translator_folder), str(sources), str(references)]
        files = ["--output_file", str(out / "hyp.de"), "--metrics_file", str(out / "bleu.json")]
        command += [*files, "--batch_size", "16"]
        finished = subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_SECONDS,
        )
        assert finished.returncode == 0, finished.stderr[-4000:]
        results[name] = finished.stdout, counted_rows(counts), sorted(p.name for p in out.iterdir())
        results[name] += ((out / "hyp.de").read_text(), json.loads((out / "bleu.json").read_text()))
    one_stdout, one_rows, one_files, one_hypotheses, one_bleu = results["one"]
    two_stdout, two_rows, two_files, two_hypotheses, two_bleu = results["two"]
    assert one_rows == {"process-0": 100}
    # 7 batches of at most 16: 0, 2, 4, 6 (16 + 16 + 16 + 4 sentences) on process 0, 1, 3, 5 on process 1
    assert two_rows == {"process-0": 52, "process-1": 48}
    assert two_hypotheses == one_hypotheses and len(two_hypotheses.splitlines()) == 100
    assert two_bleu == one_bleu and two_files == one_files == ["bleu.json", "hyp.de"]
    assert len(two_stdout.splitlines()) == 1 and json.loads(two_stdout) == json.loads(one_stdout)


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_model(small_corpus, tmp_path):
    steps = dict(max_steps=120, save_steps=20, average_last_checkpoints=0)
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    run([sys.executable], recipe(small_corpus, reference_dir, **steps), tmp_path)

    # the run pauses once checkpoint-40 is complete, and is killed there: the same moment on any machine
    run([sys.executable], recipe(small_corpus, killed_dir, **steps), tmp_path, kill_at=("saved", 40))
    # without averaging, only the newest checkpoint is kept (save_total_limit 1)
    assert complete_checkpoints(killed_dir) == [killed_dir / "checkpoint-40"]
    assert not (killed_dir / "model.safetensors").exists()

    run([sys.executable], recipe(small_corpus, killed_dir, resume_from_checkpoint="last", **steps), tmp_path)
    state = json.loads((killed_dir / "checkpoint-120" / "trainer_state.json").read_text())
    assert state["global_step"] == 120
    # Same batches in the same order after the resume, none skipped or repeated: the same weights at the end,
    # and the same logged training losses after the kill point.
    reference, resumed = load_file(reference_dir / "model.safetensors"), load_file(killed_dir / "model.safetensors")
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    reference_log = json.loads((reference_dir / "checkpoint-120" / "trainer_state.json").read_text())["log_history"]
    losses = {e["step"]: e["loss"] for e in reference_log if "loss" in e}
    assert {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e} == pytest.approx(losses, abs=1e-6)


def test_two_processes_match_one_process_with_the_same_global_batch(small_corpus, tmp_path):
    """Two processes take batches 2k and 2k+1 of the same sampler; one process accumulating two batches per update
    takes the same pairs: the updates, and so the weights, must agree (no dropout, a small learning rate)."""
    corpus = load_parallel_corpus(small_corpus, "en", "de", splits={"train": "train"})
    tokenizer = train_tokenizer((t for pair in corpus["train"]["translation"] for t in pair.values()), vocab_size=400)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    train = preprocess(corpus, tokenizer, "en", "de")["train"]
    lengths = list(train["source_length"]), list(train["target_length"])
    # an even number of batches, so that sharding over two processes splits none of them
    max_tokens = next(m for m in range(512, 300, -4) if len(TokenBatchSampler(*lengths, max_tokens=m, seed=3)) % 2 == 0)
    common = dict(
        max_steps=8,
        save_steps=8,
        average_last_checkpoints=0,
        config_overrides=TINY + ",dropout=0.0",
        tokenizer_name_or_path=str(tmp_path / "tokenizer"),
        max_tokens=max_tokens,
        lr_scale=0.1,
    )
    single_dir, double_dir = tmp_path / "one", tmp_path / "two"
    run([sys.executable], recipe(small_corpus, single_dir, gradient_accumulation_steps=2, **common), tmp_path)
    run(TWO_PROCESSES, recipe(small_corpus, double_dir, **common), tmp_path)
    one, two = load_file(single_dir / "model.safetensors"), load_file(double_dir / "model.safetensors")
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_a_run_whose_local_folder_is_missing_trains_on_the_hub_dataset_and_says_so(small_corpus, tmp_path):
    """A recipe whose `dataset` folder does not exist loads its `hub_dataset` through the real load_dataset (here
    bentrevett/multi30k, made of the small corpus, served on 127.0.0.1): logged, and recorded in metrics.json."""
    server, state = serve(token="unused")
    state.add_dataset("bentrevett/multi30k", multi30k_files(small_corpus))
    missing = tmp_path / "no_multi30k_here"
    config = recipe(missing, tmp_path / "out", hub_dataset="bentrevett/multi30k", max_steps=4, save_steps=4)
    hub = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path)}
    try:
        output = run([sys.executable], config, tmp_path, env=hub)
    finally:
        server.shutdown()
    assert f"{missing} does not exist: loading the Hub dataset bentrevett/multi30k instead" in output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["settings"]["data"]["loaded"] == {"dataset": "bentrevett/multi30k", "dataset_config": None}
    resolve = "/datasets/bentrevett/multi30k/resolve/"
    downloaded = {path.rpartition("/")[2] for method, path, _ in state.requests if method == "GET" and resolve in path}
    assert {"train.jsonl", "val.jsonl", "test.jsonl"} <= downloaded  # the data came from the served repo
