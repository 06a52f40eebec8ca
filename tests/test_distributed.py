"""Many machines: a two-machine accelerate launch trains one model; FSDP and DeepSpeed are refused (DDP only)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from helpers import HANG_GUARD_SECONDS, ROOT, recipe
from recorded_train import fingerprint
from transformers import AutoModelForSeq2SeqLM

from vaswani_hf.arguments import DataArguments, ModelArguments, VaswaniTrainingArguments
from vaswani_hf.data import load_parallel_corpus
from vaswani_hf.tokenization import TOKENIZER_RECORD, load_tokenizer, save_learned_tokenizer, train_tokenizer
from vaswani_hf.training import train


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def machine(rank: int, port: int) -> list[str]:
    """`accelerate launch` as machine `rank` of two, one process each: `--multi_gpu` starts torchrun (nnodes 2,
    rendezvous at 127.0.0.1:port), whose processes run on the CPU with gloo where there is no GPU. The script is
    tests/recorded_train.py: scripts/train.py recording the tokenizer each process built."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "2",
        "--machine_rank",
        str(rank),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "tests" / "recorded_train.py"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["learned_beforehand", "learned_in_train"])
def test_two_machines_train_one_model(small_corpus, tmp_path, tokenizer):
    """Both "machines" share one output_dir, as on a cluster's shared file system. The tokenizer is either learned
    beforehand, as the WMT14 recipes are run (vaswani-train-tokenizer), or learned inside train(): there the run's
    main process alone learns it (main_process_first(local=save_on_each_node), not per machine, where the machines
    share the output_dir) and saves it once; the other machine's process waits, then loads that one. Either way
    both processes use the same vocabulary, the one saved with the model."""
    output_dir = tmp_path / "out"
    settings = dict(max_steps=6, save_steps=3)
    if tokenizer == "learned_beforehand":
        corpus = load_parallel_corpus(small_corpus, "en", "de", splits={"train": "train"})["train"]
        texts = (text for pair in corpus["translation"] for text in pair.values())
        save_learned_tokenizer(train_tokenizer(texts, vocab_size=400), tmp_path / "tokenizer", ["en", "de"], 400)
        settings["tokenizer_name_or_path"] = str(tmp_path / "tokenizer")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(small_corpus, output_dir, **settings)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    port = free_port()
    records = tmp_path / "records"
    records.mkdir()
    logs = [tmp_path / f"machine-{rank}.log" for rank in (0, 1)]
    processes = []
    for rank, log in enumerate(logs):
        with log.open("w") as output:  # files, not pipes: a full pipe would block a rank
            command = [*machine(rank, port), str(records), str(path)]
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT))
    try:
        codes = [process.wait(timeout=HANG_GUARD_SECONDS) for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2  # one process on each "machine"
    assert json.loads((output_dir / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    # the main process alone evaluated and wrote the run's record
    assert "Training finished" in logs[0].read_text() and "Training finished" not in logs[1].read_text()
    assert AutoModelForSeq2SeqLM.from_pretrained(output_dir).num_parameters() > 0
    # one vocabulary: each process's tokenizer is the one saved with the model; learned in train(), it was learned
    # by the run's main process alone and saved once in the run's tokenizer/ with the record of what it was for
    used = [json.loads((records / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["learned"] for r in used] == [tokenizer == "learned_in_train", False]
    saved = {"size": len(load_tokenizer(output_dir)), "sha256": fingerprint(load_tokenizer(output_dir))}
    assert [{"size": r["size"], "sha256": r["sha256"]} for r in used] == [saved, saved]
    learned = output_dir / "tokenizer"
    if tokenizer == "learned_in_train":
        assert fingerprint(load_tokenizer(learned)) == saved["sha256"]
        assert json.loads((learned / TOKENIZER_RECORD).read_text()) == {"languages": ["en", "de"], "vocab_size": 400}
        assert not list(output_dir.glob(".tokenizer.*"))  # saved once, whole: nothing left beside it
    else:
        assert not learned.exists()


def arguments(tmp_path, **training) -> tuple[ModelArguments, DataArguments, VaswaniTrainingArguments]:
    missing = tmp_path / "no_data_here"  # loading it would fail: the refusal must come first
    return (
        ModelArguments(),
        DataArguments(dataset=str(missing)),
        VaswaniTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **training),
    )


def test_fsdp_in_the_training_arguments_is_refused_before_the_data_is_read(tmp_path):
    with pytest.raises(ValueError, match="FSDP requested .* DDP is the supported engine: .* 213M parameters"):
        train(*arguments(tmp_path, fsdp=True))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("variable", "engine"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")]
)
def test_fsdp_or_deepspeed_from_accelerate_launch_is_refused(tmp_path, monkeypatch, variable, engine):
    """`accelerate launch --use_fsdp` / `--use_deepspeed` (or a config of that distributed_type) sets the variable
    the Trainer's Accelerator reads. It is set after the arguments are built: without DeepSpeed installed,
    TrainingArguments itself stops on it; with it installed, train() must."""
    model_args, data_args, training_args = arguments(tmp_path)
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ValueError, match=f"{engine} requested .* DDP is the supported engine"):
        train(model_args, data_args, training_args)
    assert not (tmp_path / "out").exists()


def test_deepspeed_in_the_training_arguments_is_refused(tmp_path):
    model_args, data_args, training_args = arguments(tmp_path)
    training_args.deepspeed = {"zero_optimization": {"stage": 2}}  # as a DeepSpeed config parsed where it is installed
    with pytest.raises(ValueError, match="DeepSpeed requested .* DDP is the supported engine"):
        train(model_args, data_args, training_args)
