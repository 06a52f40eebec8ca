"""Helpers shared by the test files: tiny models and batches, tiny recipes and the runs of scripts/train.py that
train them, trainers on a toy reversal task. Plain functions and constants, imported by name (`from helpers
import ...`); the pytest fixtures are in conftest.py."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from datasets import Dataset
from transformers import HfArgumentParser

import vaswani_hf.generation_vaswani as generation
from vaswani_hf import VaswaniConfig, VaswaniForConditionalGeneration
from vaswani_hf.arguments import DataArguments, ModelArguments, VaswaniTrainingArguments
from vaswani_hf.trainer import VaswaniTrainer
from vaswani_hf.treebank import Tree, read_trees

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "d_model=32,encoder_layers=1,decoder_layers=1,encoder_attention_heads=2,decoder_attention_heads=2,"
    "encoder_ffn_dim=64,decoder_ffn_dim=64"
)


def tiny_config(**overrides) -> VaswaniConfig:
    """Two layers each side, d_model 32: every code path of the base model, in milliseconds."""
    fields = dict(
        vocab_size=97,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        dropout=0.0,
    )
    return VaswaniConfig(**{**fields, **overrides})


def tiny_model(seed: int = 0, **overrides) -> VaswaniForConditionalGeneration:
    torch.manual_seed(seed)
    return VaswaniForConditionalGeneration(tiny_config(**overrides)).eval()


def padded_batch(seed: int = 0, vocab_size: int = 97) -> dict[str, torch.Tensor]:
    """Three sources of lengths 9, 6 and 3 (ending in </s>), right-padded like a tokenizer pads them."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [9, 6, 3]
    input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, : length - 1] = torch.randint(4, vocab_size, (length - 1,), generator=generator)
        input_ids[row, length - 1] = 2
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def copy_task_batch(generator: torch.Generator, batch_size: int = 32, vocab_size: int = 97) -> dict:
    """Random sources of length 3-9 ending in </s>; the target is the source reversed (then </s>)."""
    batch = padded_batch_of(
        [
            torch.randint(4, vocab_size, (int(n),), generator=generator)
            for n in torch.randint(2, 9, (batch_size,), generator=generator)
        ]
    )
    labels = torch.full_like(batch["input_ids"], -100)
    for row, length in enumerate(batch["attention_mask"].sum(-1)):
        labels[row, : length - 1] = batch["input_ids"][row, : length - 1].flip(0)
        labels[row, length - 1] = 2
    return {**batch, "labels": labels}


def padded_batch_of(sequences: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    longest = max(len(s) for s in sequences) + 1
    input_ids = torch.zeros(len(sequences), longest, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, tokens in enumerate(sequences):
        input_ids[row, : len(tokens)] = tokens
        input_ids[row, len(tokens)] = 2
        attention_mask[row, : len(tokens) + 1] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def recipe(corpus: Path, output_dir: Path, **overrides) -> dict:
    return {
        "dataset": str(corpus),
        "file_splits": "train=train,validation=val,test=test_2016_flickr",
        "vocab_size": 400,
        "config_overrides": TINY,
        "output_dir": str(output_dir),
        "use_cpu": True,
        "max_tokens": 512,
        "warmup_steps": 10,
        "lr_scale": 4.0,
        "logging_steps": 10,
        "report_to": "none",
        "seed": 3,
        **overrides,
    }


# A run that hangs fails after this long instead of blocking the suite; tiny runs take seconds to a few minutes.
HANG_GUARD_SECONDS = 900


def run(
    command: list[str], config: dict, tmp_path: Path, kill_at: tuple[str, int] | None = None, env: dict | None = None
) -> str:
    """Run scripts/train.py on `config` (offline, unless `env` says otherwise) and return its output. With
    `kill_at=(phase, step)` the run goes through tests/paused_train.py, which pauses it at that phase of that update
    (see there); once it has paused (the test waits for that state, never for a time), it is killed with SIGKILL."""
    stamp = time.monotonic_ns()
    path = tmp_path / f"recipe-{stamp}.yaml"
    path.write_text(yaml.safe_dump(config))
    offline = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    env = {**os.environ, **offline, **(env or {})}
    if kill_at is None:
        finished = subprocess.run(
            [*command, str(ROOT / "scripts" / "train.py"), str(path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=HANG_GUARD_SECONDS,
        )
        assert finished.returncode == 0, finished.stdout[-4000:]
        return finished.stdout
    phase, step = kill_at
    paused_file, log = tmp_path / f"paused-{stamp}.json", tmp_path / f"train-{stamp}.log"
    pausing = [str(ROOT / "tests" / "paused_train.py"), phase, str(step), str(paused_file), str(path)]
    with log.open("w") as output:  # a file, not a pipe: a full pipe would block the run before its pause
        process = subprocess.Popen([*command, *pausing], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        hung_after = time.monotonic() + HANG_GUARD_SECONDS
        while not paused_file.exists():
            if process.poll() is not None:
                tail = log.read_text()[-4000:]
                pytest.fail(f"the run exited ({process.returncode}) before pausing at {kill_at}:\n{tail}")
            if time.monotonic() > hung_after:
                pytest.fail(f"the run neither paused at {kill_at} nor exited:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)  # poll interval only: what is waited for is the file
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, log.read_text()[-4000:]
    paused = json.loads(paused_file.read_text())
    assert (paused["phase"], paused["step"]) == (phase, step)
    return log.read_text()


def offline_hub_cache(folder: Path, repo_id: str, tmp_path: Path) -> dict[str, str]:
    """Place `folder` in a Hub cache under tmp_path as `repo_id`'s main revision; returns the environment under
    which huggingface_hub, offline, resolves `repo_id` to it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    repo_cache = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}


def reversal_dataset(size: int = 200) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(size):
        n = int(torch.randint(2, 20, (1,), generator=generator))
        ids = torch.randint(4, 97, (n,), generator=generator).tolist() + [2]
        labels = ids[::-1][1:] + [2]
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": labels,
                "source_length": len(ids),
                "target_length": len(labels),
            }
        )
    return Dataset.from_list(rows)


def pad(features: list[dict]) -> dict:
    def stack(key, value):
        longest = max(len(f[key]) for f in features)
        return torch.tensor([f[key] + [value] * (longest - len(f[key])) for f in features])

    return {
        "input_ids": stack("input_ids", 0),
        "attention_mask": stack("attention_mask", 0),
        "labels": stack("labels", -100),
    }


def trainer_for(tmp_path, model, eval_dataset=None, compute_metrics=None, **overrides) -> VaswaniTrainer:
    fields = dict(
        output_dir=str(tmp_path),
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        seed=1,
        max_tokens=256,
        warmup_steps=50,
        label_smoothing_factor=0.0,
    )
    args = VaswaniTrainingArguments(**{**fields, **overrides})
    return VaswaniTrainer(
        model=model,
        args=args,
        train_dataset=reversal_dataset(),
        eval_dataset=eval_dataset,
        data_collator=pad,
        compute_metrics=compute_metrics,
    )


def scripted_trainer(tmp_path, scores: list[float], **overrides) -> VaswaniTrainer:
    """A trainer that evaluates and saves after every update, its validation `score` the next of `scores`."""
    scripted = iter(scores)
    fields = dict(
        max_steps=len(scores),
        save_strategy="steps",
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="score",
        predict_with_generate=False,
    )
    return trainer_for(
        tmp_path,
        tiny_model(seed=6),
        eval_dataset=reversal_dataset(4).remove_columns(["source_length", "target_length"]),
        compute_metrics=lambda prediction: {"score": next(scripted)},
        **{**fields, **overrides},
    )


def tiny_run_arguments(corpus, output_dir, **overrides):
    """The three argument dataclasses of a tiny recipe (`recipe`), as the command line builds them."""
    parser = HfArgumentParser((ModelArguments, DataArguments, VaswaniTrainingArguments))
    return parser.parse_dict(recipe(corpus, output_dir, **{"disable_tqdm": True, **overrides}))


def folder_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def fp16_trainer(tmp_path, model, init_scale: float, **overrides):
    """A VaswaniTrainer training in fp16 through the Trainer's own fp16 path (scaled backward, unscaling before the
    norm, GradScaler's step and update), with a real torch.amp.GradScaler. accelerate makes the scaler and fp16
    autocast for accelerators only (on a CPU its Accelerator leaves both off); here they are given to it as it sets
    them up on a GPU, with GradScaler's CPU implementation."""
    trainer = trainer_for(tmp_path, model, fp16=True, **overrides)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    trainer.accelerator.native_amp = True
    return trainer


def generate_with_each_loop(model, batch: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The same call through our loops and through GenerationMixin's; fails if ours did not run."""
    decided = []

    def applies(*args):
        decided.append(fast_decoding_applies(*args))
        return decided[-1]

    fast_decoding_applies = generation.fast_decoding_applies
    with mock.patch.object(generation, "fast_decoding_applies", applies):
        ours = model.generate(**batch, **kwargs)
    assert decided == [True], "generate did not take the fast loop"
    with mock.patch.object(generation, "fast_decoding_applies", lambda *args: False):
        theirs = model.generate(**batch, **kwargs)
    return ours, theirs


def until_eos(generated: torch.Tensor) -> list[int]:
    """The generated tokens after the start token, up to and without the first </s>."""
    tokens = generated[1:].tolist()
    return tokens[: tokens.index(2)] if 2 in tokens else tokens


def reversed_source(batch: dict, row: int) -> list[int]:
    length = int(batch["attention_mask"][row].sum()) - 1
    return batch["input_ids"][row, :length].flip(0).tolist()


def decoder_inputs(batch_size: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 97, (batch_size, length), generator=generator)
    ids[:, 0] = 1
    return ids


# "The cat sat on the mat ." with gold brackets S 0-6, NP 0-2, VP 2-6, PP 3-6, NP 4-6 (the final "." is deleted).
GOLD = "(S (NP (DT The) (NN cat)) (VP (VBD sat) (PP (IN on) (NP (DT the) (NN mat)))) (. .))"
WORDS = "The cat sat on the mat .".split()


def tree(text: str) -> Tree:
    (result,) = read_trees(text)
    return result


def user_folder(path):
    path.mkdir(parents=True)
    (path / "mine.txt").write_text("keep me")
    return path


def with_placeholder_tags(node: Tree) -> Tree:
    """The tree with every part-of-speech tag replaced by XX: what a linearization keeps."""
    if node.is_preterminal:
        return Tree("XX", node.children)
    return Tree(node.label, tuple(with_placeholder_tags(child) for child in node.children))
