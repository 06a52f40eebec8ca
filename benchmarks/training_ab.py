"""The training step with and without each change to it, side by side in one process:

- dropout masks: `VaswaniDropout` (16 random bits per element) against torch's nn.Dropout (one Bernoulli draw per
  element), in the base training step and alone on one (batch, length, d_model) activation;
- the fused loss: today's `LinearCrossEntropy` against the one at git commit `before`, read from the repository's
  history with `git show` (left out where there is no history), alone on the base batch's hidden states and in the
  base training step;
- attention in bfloat16 training on a CPU: the eager products (`fused_attention_is_slow`, what an sdpa model runs
  there now) against torch's fused sdpa kernel, alone on one layer's (batch, heads, length, head_dim) queries, keys
  and values (in float32 too, where the rule keeps sdpa) and in the base training step under bfloat16 autocast.

Float32, and bfloat16 autocast on a CPU with bf16 units. Ratios are before / now: above 1 the change is faster.
"""

import importlib.util
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import vaswani_hf.loss_vaswani as loss_module
import vaswani_hf.modeling_vaswani as modeling_module
from vaswani_hf import VaswaniConfig, VaswaniForConditionalGeneration
from vaswani_hf.devices import cpu_has_native_bfloat16
from vaswani_hf.modeling_vaswani import VaswaniDropout, sdpa_masks_in_eager_attention

from .harness import _random_batch, machine, side_by_side, training_step

ROOT = Path(__file__).resolve().parents[1]
LOSS_FILE = "vaswani_hf/loss_vaswani.py"


def loss_at_commit(commit: str) -> type[torch.autograd.Function] | None:
    """`LinearCrossEntropy` as it was at `commit` of this repository, or None without git or that commit."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:{LOSS_FILE}"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "loss_before.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("loss_before", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.LinearCrossEntropy


def _rows(results: dict, before: str, now: str) -> dict:
    """Each variant's median seconds, and the speedup of `now` over `before`."""
    rows = {name: {"median_seconds": round(value["median_seconds"], 4)} for name, value in results.items()}
    return {**rows, "speedup": round(results[before]["median_seconds"] / results[now]["median_seconds"], 3)}


def _steps(config: VaswaniConfig, batch: dict, dtype: torch.dtype | None, patches: dict) -> dict[str, Callable]:
    """One training step per name, each on its own model with the same initial weights, under its patch."""
    steps = {}
    for name, patch in patches.items():
        torch.manual_seed(0)
        model = VaswaniForConditionalGeneration(config)
        step = training_step(model, lambda model=model: model(**batch, label_smoothing=0.1).loss, dtype)

        def patched(step=step, patch=patch) -> None:
            with patch():
                step()

        steps[name] = patched
    return steps


def _dropout_alone(config: VaswaniConfig, shape: tuple[int, ...], dtype: torch.dtype, repeats: int) -> dict:
    activation = torch.randn(*shape, dtype=dtype)
    torch_dropout, ours = nn.Dropout(config.dropout).train(), VaswaniDropout(config.dropout).train()
    results = side_by_side(
        {"torch_dropout": lambda: torch_dropout(activation), "ours": lambda: ours(activation)}, repeats
    )
    return _rows(results, "torch_dropout", "ours")


def _loss_alone(loss_before, batch: dict, d_model: int, vocab_size: int, dtype, repeats: int) -> dict:
    """Forward and backward of the fused loss on the batch's (tokens x d_model) hidden states."""
    labels = batch["labels"].flatten()
    hidden = torch.randn(labels.shape[0], d_model, requires_grad=True)
    weight = (torch.randn(vocab_size, d_model) * d_model**-0.5).requires_grad_()
    chunk_rows = max(1, 2**25 // vocab_size)  # as label_smoothed_loss chunks

    def run(function) -> None:
        hidden.grad = weight.grad = None
        function.apply(hidden, weight, labels, 0.1, labels.ne(-100).sum(), chunk_rows, dtype).backward()

    results = side_by_side(
        {"before": lambda: run(loss_before), "now": lambda: run(loss_module.LinearCrossEntropy)}, repeats
    )
    return _rows(results, "before", "now")


def _attention_alone(config: VaswaniConfig, batch_size: int, length: int, dtype: torch.dtype, repeats: int) -> dict:
    """Forward and backward of one causal self-attention over (batch, heads, length, head_dim): torch's sdpa against
    the eager products, each given no mask as the decoder's self-attention over an unpadded batch is (sdpa then runs
    its causal kernel; the eager products build the causal mask)."""
    heads = config.encoder_attention_heads
    shape = (batch_size, heads, length, config.d_model // heads)
    query, key, value = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
    module = nn.Module().train()
    module.is_causal = True

    def run(attention) -> None:
        query.grad = key.grad = value.grad = None
        attention(module, query, key, value, None, scaling=shape[-1] ** -0.5)[0].sum().backward()

    results = side_by_side(
        {"sdpa": lambda: run(sdpa_attention_forward), "eager": lambda: run(sdpa_masks_in_eager_attention)}, repeats
    )
    return _rows(results, "sdpa", "eager")


def training_ab_benchmark(
    preset: str = "base",
    vocab_size: int = 37000,
    batch_size: int = 128,
    length: int = 32,
    repeats: int = 5,
    before: str | None = "9af73e4",
) -> dict:
    config = VaswaniConfig.from_preset(preset, vocab_size=vocab_size)
    batch = _random_batch(config, batch_size, length, length)
    loss_before = loss_at_commit(before) if before else None
    dtypes = {"float32": None, **({"bfloat16": torch.bfloat16} if cpu_has_native_bfloat16() else {})}
    results = {
        "machine": machine(),
        "settings": {
            "preset": preset,
            "vocab_size": vocab_size,
            "batch": f"{batch_size} x {length} source + {length} target tokens",
            "repeats": repeats,
            "loss_before_commit": before if loss_before else f"{before} (not found: no loss rows)",
        },
    }
    dropout_patches = {
        "torch_dropout": lambda: mock.patch.object(VaswaniDropout, "forward", nn.Dropout.forward),
        "ours": nullcontext,
    }
    loss_patches = {
        "before": lambda: mock.patch.object(loss_module, "LinearCrossEntropy", loss_before),
        "now": nullcontext,
    }
    attention_patches = {
        "sdpa": lambda: mock.patch.object(modeling_module, "fused_attention_is_slow", lambda query: False),
        "eager": nullcontext,
    }
    for label, dtype in dtypes.items():
        results[f"attention_alone_{label}"] = _attention_alone(
            config, batch_size, length, dtype or torch.float32, repeats
        )
        if dtype is not None:
            steps = side_by_side(_steps(config, batch, dtype, attention_patches), repeats)
            results[f"attention_in_step_{preset}_{label}"] = _rows(steps, "sdpa", "eager")
        shape = (batch_size, length, config.d_model)
        results[f"dropout_alone_{label}"] = _dropout_alone(config, shape, dtype or torch.float32, repeats)
        steps = side_by_side(_steps(config, batch, dtype, dropout_patches), repeats)
        results[f"dropout_in_step_{preset}_{label}"] = _rows(steps, "torch_dropout", "ours")
        if loss_before is None:
            continue
        results[f"loss_alone_{label}"] = _loss_alone(loss_before, batch, config.d_model, vocab_size, dtype, repeats)
        steps = side_by_side(_steps(config, batch, dtype, loss_patches), repeats)
        results[f"loss_in_step_{preset}_{label}"] = _rows(steps, "before", "now")
    return results
