"""Shared fixtures: tiny models and inputs that keep the suite fast on a 2-core CPU."""

import os
from pathlib import Path

import pytest
import torch

import vaswani_hf  # noqa: F401  (registers the Auto classes)
from vaswani_hf import VaswaniConfig, VaswaniForConditionalGeneration

MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


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
