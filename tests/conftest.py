"""Shared fixtures: tiny models and inputs that keep the suite fast on a 2-core CPU."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import vaswani_hf  # noqa: F401  (registers the Auto classes)
from vaswani_hf import VaswaniConfig, VaswaniForConditionalGeneration

MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"
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


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    if not MULTI30K.is_dir():
        if os.environ.get("CI"):  # in CI the data must be there: a skip would hide the data tests
            pytest.fail(f"Multi30k not found at {MULTI30K}")
        pytest.skip(f"Multi30k not found at {MULTI30K}")
    return MULTI30K


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


@pytest.fixture(scope="session")
def reversal_model() -> VaswaniForConditionalGeneration:
    """A tiny model trained for a few seconds to reverse its input: its greedy outputs are varied sequences
    that depend on the source, unlike a random model's, so decoding tests compare something meaningful."""
    model = tiny_model(seed=1)
    model.train()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    for _ in range(300):
        loss = model(**copy_task_batch(generator)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_translator(multi30k_dir):
    """A byte-level BPE tokenizer (300 tokens) from Multi30k and a tiny model trained for a few seconds to copy
    English sentences: real text in, varied real text out, for the pipeline and publishing tests."""
    from vaswani_hf.tokenization import train_tokenizer

    sentences = gzip.open(multi30k_dir / "val.en.gz", "rt", encoding="utf-8").read().splitlines()[:400]
    tokenizer = train_tokenizer(sentences, vocab_size=300)
    model = tiny_model(seed=3, vocab_size=len(tokenizer))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    for step in range(60):
        batch = tokenizer(sentences[step % 20 * 16 : step % 20 * 16 + 16], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def small_corpus(multi30k_dir, tmp_path_factory) -> Path:
    """The first lines of Multi30k En-De: 300 training pairs, 20 validation and 20 test pairs."""
    folder = tmp_path_factory.mktemp("multi30k_slice")
    for stem, count in (("train", 300), ("val", 20), ("test_2016_flickr", 20)):
        for lang in ("en", "de"):
            with gzip.open(multi30k_dir / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(count)]
            (folder / f"{stem}.{lang}").write_text("".join(lines), encoding="utf-8")
    return folder


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


@pytest.fixture(scope="session")
def trained_run(small_corpus, tmp_path_factory) -> Path:
    """A tiny model really trained by scripts/train.py for 20 steps, with checkpoint averaging and BLEU."""
    tmp_path = tmp_path_factory.mktemp("run")
    output_dir = tmp_path / "out"
    run([sys.executable], recipe(small_corpus, output_dir, max_steps=20, save_steps=10), tmp_path)
    return output_dir


@pytest.fixture(scope="session")
def tiny_translator_folder(tiny_translator, tmp_path_factory) -> Path:
    """`tiny_translator` saved as a model folder (weights, configs, tokenizer), for the commands that take one."""
    model, tokenizer = tiny_translator
    folder = tmp_path_factory.mktemp("tiny_translator") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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
