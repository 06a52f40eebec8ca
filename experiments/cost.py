"""Experiment 5, Table 1: how the time and memory of one layer grow with the sequence length n.

Table 1 gives per-layer complexity O(n^2 d) for self-attention, O(n d^2) for a recurrent layer and O(k n d^2) for
a convolution: attention is cheaper while n < d, then grows quadratically. Measured on this CPU, one thread, batch 1,
forward only (no gradients): the self-attention sub-layer (`VaswaniAttention`, 8 heads) with the eager
implementation, which materialises the n x n weights of Eq. 1, and with PyTorch's SDPA, which the model uses by
default; an LSTM layer; and a convolution of kernel 3. Peak memory is the process's resident memory above its level
before the call (`benchmark.PeakMemory`). Slopes are least-squares fits on log-log axes over the lengths n >= d,
the regime where Table 1 has self-attention quadratic (below it the O(n d^2) projections dominate).
"""

from pathlib import Path

import numpy as np
import torch
from matplotlib import pyplot as plt
from torch import nn

from benchmarks.harness import side_by_side
from vaswani_hf.configuration_vaswani import VaswaniConfig
from vaswani_hf.files import write_json
from vaswani_hf.modeling_vaswani import VaswaniAttention

from .budget import Budget
from .measures import save_figure

HEADS = 8
KERNEL = 3


def _layers(d_model: int) -> dict[str, nn.Module]:
    layers = {}
    for implementation in ("eager", "sdpa"):
        config = VaswaniConfig(d_model=d_model, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS)
        config._attn_implementation = implementation
        layers[f"self-attention ({implementation})"] = VaswaniAttention(
            config, HEADS, is_cross_attention=False, is_causal=False, layer_idx=0
        )
    layers["LSTM"] = nn.LSTM(d_model, d_model, batch_first=True)
    layers[f"convolution (k={KERNEL})"] = nn.Conv1d(d_model, d_model, KERNEL, padding=KERNEL // 2)
    return {name: layer.eval() for name, layer in layers.items()}


def _forward(name: str, layer: nn.Module, inputs: torch.Tensor):
    if name.startswith("convolution"):
        return lambda: layer(inputs.transpose(1, 2))
    return lambda: layer(inputs)


def fitted_slope(lengths: list[int], values: list[float], from_length: int = 0) -> float | None:
    """Slope of log(value) against log(length), fitted by least squares over the lengths >= `from_length` whose
    value is positive; None with fewer than two such points."""
    points = [(n, v) for n, v in zip(lengths, values, strict=True) if n >= from_length and v > 0]
    if len(points) < 2:
        return None
    slope, _ = np.polyfit(np.log([n for n, _ in points]), np.log([v for _, v in points]), 1)
    return float(slope)


@torch.no_grad()
def run_cost(budget: Budget, output_dir: str | Path, task=None) -> dict:
    """Writes `cost.json` and `cost.png`; returns the JSON's content. (`task` is unused: no data needed.)"""
    output_dir = Path(output_dir)
    torch.manual_seed(budget.seed)
    layers = _layers(budget.cost_d_model)
    lengths = list(budget.cost_lengths)
    measured: dict[str, dict[str, list]] = {name: {"seconds": [], "peak_bytes": []} for name in layers}
    for length in lengths:
        inputs = torch.randn(1, length, budget.cost_d_model)
        timings = side_by_side(
            {name: _forward(name, layer, inputs) for name, layer in layers.items()}, budget.cost_repeats
        )
        for name, timing in timings.items():
            measured[name]["seconds"].append(timing["median_seconds"])
            measured[name]["peak_bytes"].append(timing["peak_bytes"])
    slopes = {
        name: {
            "time": fitted_slope(lengths, m["seconds"], budget.cost_d_model),
            "memory": fitted_slope(lengths, m["peak_bytes"], budget.cost_d_model),
        }
        for name, m in measured.items()
    }

    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    longest = lengths[-1]
    rows = [
        f"| layer | time slope | memory slope | time at n={longest} (s) | peak memory at n={longest} (MB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in measured.items():
        rows.append(
            f"| {name} | {show(slopes[name]['time'])} | {show(slopes[name]['memory'])} | {m['seconds'][-1]:.4f} | "
            f"{m['peak_bytes'][-1] / 2**20:.1f} |"
        )
    eager = "self-attention (eager)"
    findings = [
        f"d_model {budget.cost_d_model}, batch 1, lengths {lengths[0]}-{longest}, forward only, median of "
        f"{budget.cost_repeats} timed runs after one warm-up, {torch.get_num_threads()} thread(s); slopes fitted "
        f"over n >= d_model = {budget.cost_d_model}.",
        f"Eager self-attention: time slope {show(slopes[eager]['time'])}, memory slope "
        f"{show(slopes[eager]['memory'])} (Table 1: 2 for n > d); LSTM time slope {show(slopes['LSTM']['time'])}, "
        f"convolution {show(slopes[f'convolution (k={KERNEL})']['time'])} (Table 1: 1).",
    ]
    if slopes[eager]["time"] is not None and slopes[eager]["time"] < 1.9:
        findings.append(
            f"The eager layer's time slope ({slopes[eager]['time']:.2f}) is below 2 over these lengths: near n = d "
            "its O(n d^2) projections are still a large share of the work; the quadratic term takes over as n grows."
        )
    disagreements = []
    if slopes[eager]["memory"] is not None and slopes[eager]["memory"] < 1.5:
        disagreements.append("Eager self-attention memory grew less than quadratically over the longer lengths.")
    sdpa_memory = slopes["self-attention (sdpa)"]["memory"]
    if sdpa_memory is not None and sdpa_memory < 1.5:
        findings.append(
            "PyTorch's SDPA on the CPU computes attention in blocks without the full n x n matrix: its memory grows "
            f"with slope {sdpa_memory:.2f}, not 2, its time with slope {show(slopes['self-attention (sdpa)']['time'])} "
            "(Table 1 counts operations, O(n^2 d) whatever the implementation)."
        )

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, m in measured.items():
        for axis, key, scale in ((axes[0], "seconds", 1.0), (axes[1], "peak_bytes", 2**-20)):
            slope = slopes[name]["time" if key == "seconds" else "memory"]
            points = [(n, v * scale) for n, v in zip(lengths, m[key], strict=True) if v > 0]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=f"{name}, slope {show(slope)}")
    axes[0].set(title="Forward time of one layer", xlabel="sequence length n", ylabel="seconds")
    axes[1].set(title="Peak memory of one layer", xlabel="sequence length n", ylabel="MB above baseline")
    for axis in axes:
        axis.set(xscale="log", yscale="log")
        axis.legend(fontsize=7)
    save_figure(figure, output_dir / "cost.png")

    result = {
        "title": "Cost against sequence length (Table 1)",
        "paper": "Per layer: self-attention O(n^2 d) operations, recurrent O(n d^2), convolutional O(k n d^2); "
        "self-attention needs O(1) sequential operations, a recurrent layer O(n).",
        "findings": findings,
        "table": "\n".join(rows),
        "disagreements": disagreements,
        "figures": ["cost.png"],
        "lengths": lengths,
        "measured": measured,
        "slopes": slopes,
    }
    write_json(output_dir / "cost.json", result)
    return result
