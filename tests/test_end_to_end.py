"""scripts/train.py end to end through subprocesses: two processes under accelerate, and a SIGKILL then resume."""

import json
import sys

import pytest
import torch
from conftest import TINY, recipe, run
from hub_server import multi30k_files, serve
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from vaswani_hf.data import TokenBatchSampler, load_parallel_corpus, preprocess
from vaswani_hf.tokenization import train_tokenizer
from vaswani_hf.training import complete_checkpoints

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


def test_two_processes_under_accelerate_write_a_loadable_model(small_corpus, tmp_path):
    output_dir = tmp_path / "out"
    output = run(TWO_PROCESSES, recipe(small_corpus, output_dir, max_steps=8, save_steps=4), tmp_path)
    assert "Training finished" in output
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert (output_dir / "generation_config.json").is_file() and (output_dir / "training_curves.png").is_file()
    metrics = json.loads((output_dir / "metrics.json").read_text())
    test_bleu = metrics["evaluation"][metrics["final_model"]]["test_bleu"]
    assert 0 <= test_bleu["score"] <= 100 and test_bleu["signature"].startswith("nrefs:1|case:mixed")
    assert metrics["train"]["world_size"] == 2  # two processes really ran
    state = json.loads((output_dir / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    generated = model.generate(**tokenizer(["A dog runs."], return_tensors="pt"), max_new_tokens=5)
    assert generated.shape[0] == 1


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
