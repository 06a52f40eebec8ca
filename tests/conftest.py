"""The pytest fixtures shared by the test files: the data (Multi30k, the treebank sample), tiny models trained for
a few seconds, a tiny run of scripts/train.py. The plain helpers they and the tests use are in helpers.py."""

import gzip
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, copy_task_batch, recipe, run, tiny_model

import vaswani_hf  # noqa: F401  (registers the Auto classes)
from vaswani_hf import VaswaniForConditionalGeneration
from vaswani_hf.treebank import read_treebank

MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    if not MULTI30K.is_dir():
        if os.environ.get("CI"):  # in CI the data must be there: a skip would hide the data tests
            pytest.fail(f"Multi30k not found at {MULTI30K}")
        pytest.skip(f"Multi30k not found at {MULTI30K}")
    return MULTI30K


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


TREEBANK = ROOT.parent / "shared" / "data" / "ptb-sample" / "treebank.zip"


@pytest.fixture(scope="session")
def treebank_zip():
    if not TREEBANK.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the treebank sample is not at {TREEBANK}")
        pytest.skip(f"the treebank sample is not at {TREEBANK}")
    return TREEBANK


@pytest.fixture(scope="session")
def treebank(treebank_zip):
    return read_treebank(treebank_zip)
