"""Where the time of the speed benchmark's base-preset workloads goes: ours' training step in float32 and, on a CPU with
bfloat16 units, under bfloat16 autocast (each with its model FLOP utilisation against the matrix-multiply peak of its
dtype measured in the same process), and ours' beam 4 on the synthetic batch (32 sources of 30 tokens, exactly 30 new
tokens). torch.profiler, self CPU time per operator, as shares, and the share of all matrix products together.

The products' share bounds what the rest of the step can give: with utilisation U and products' share P, the
products themselves run at U / P of the peak, and a step of products alone would reach that.
"""

from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from vaswani_hf import VaswaniConfig, VaswaniForConditionalGeneration
from vaswani_hf.devices import cpu_has_native_bfloat16

from .harness import (
    BFLOAT16_ROWS_SKIPPED,
    _random_batch,
    machine,
    matmul_peak_flops,
    side_by_side,
    synthetic_generation_config,
    training_step,
    training_step_flops,
)

# aten's matrix products, whose FLOPs the utilisation counts (the attention's included)
MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")


def operator_shares(run: Callable[[], None], top: int = 12) -> dict[str, float]:
    """The share of self CPU time of all matrix products together ("share of matrix products", inside sdpa's fused
    kernels not counted) and of the `top` costliest operators ("share of OPERATOR") over one call of `run`, after a
    warm-up call."""
    run()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    events = [event for event in profiler.key_averages() if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in events)
    events.sort(key=lambda event: event.self_cpu_time_total, reverse=True)
    products = sum(event.self_cpu_time_total for event in events if event.key in MATRIX_PRODUCTS)
    shares = {"share of matrix products": round(products / total, 4)}
    return shares | {f"share of {event.key}": round(event.self_cpu_time_total / total, 4) for event in events[:top]}


def _median_seconds(run: Callable[[], None], repeats: int) -> float:
    return side_by_side({"run": run}, repeats)["run"]["median_seconds"]


def training_step_profile(
    config: VaswaniConfig,
    batch_size: int = 128,
    length: int = 32,
    repeats: int = 3,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Ours' training step as `speed` times it (label smoothing 0.1 in the fused loss, fused AdamW), under autocast
    when `autocast_dtype` is given."""
    torch.manual_seed(0)
    model = VaswaniForConditionalGeneration(config)
    batch = _random_batch(config, batch_size, length, length)
    step = training_step(model, lambda: model(**batch, label_smoothing=0.1).loss, autocast_dtype)
    seconds = _median_seconds(step, repeats)
    peak = matmul_peak_flops(autocast_dtype or torch.float32)
    return {
        "step_seconds": round(seconds, 3),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "model_flops_utilisation": round(training_step_flops(config, batch_size, length, length) / seconds / peak, 3),
        **operator_shares(step),
    }


def beam_search_profile(config: VaswaniConfig, batch_size: int = 32, length: int = 30, repeats: int = 3) -> dict:
    """Ours' `generate` with beam 4 on the speed benchmark's synthetic batch."""
    torch.manual_seed(0)
    model = VaswaniForConditionalGeneration(config).eval()
    batch = _random_batch(config, batch_size, length, 1)
    generation = synthetic_generation_config(config, num_beams=4, new_tokens=length)

    def run() -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=generation
            )

    return {"seconds": round(_median_seconds(run, repeats), 3), **operator_shares(run)}


def profile_benchmark(preset: str = "base", vocab_size: int = 37000, repeats: int = 3) -> dict:
    config = VaswaniConfig.from_preset(preset, vocab_size=vocab_size)
    results = {"machine": machine(), f"training_step_{preset}_float32": training_step_profile(config, repeats=repeats)}
    if cpu_has_native_bfloat16():
        results[f"training_step_{preset}_bfloat16"] = training_step_profile(
            config, repeats=repeats, autocast_dtype=torch.bfloat16
        )
    else:
        results["machine"]["bfloat16_rows"] = BFLOAT16_ROWS_SKIPPED
    results[f"beam4_{preset}_float32"] = beam_search_profile(config, repeats=repeats)
    return results
