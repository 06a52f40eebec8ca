"""The output projection's layout in the CPU decoding loops (`generation_vaswani.TRANSPOSED_PROJECTION_ROWS`).

For each number of rows (beams x sentences still running), the product of hidden states with the output projection
each way into preallocated scores (`device_speed.projection_case`: weight x hidden^T plus the transposing copy,
against hidden x weight^T), at the base preset's sizes (37k vocabulary, d_model 512) and at the trained model's; with
a trained model, also the test set translated end to end (`evaluation.translate`, beam 4, length penalty 0.6) with
each layout rule, alternating in one process.
"""

from pathlib import Path
from unittest import mock

import torch

import vaswani_hf.evaluation as evaluation
import vaswani_hf.generation_vaswani as generation
from vaswani_hf.modeling_vaswani import VaswaniForConditionalGeneration
from vaswani_hf.tokenization import load_tokenizer

from .device_speed import alternating, projection_case, ratio
from .harness import machine
from .translate import load_test_set

# Which row counts take the transposed product: the loops' rule, the layout before it (every row count), none.
LAYOUTS = {
    "rule": generation.TRANSPOSED_PROJECTION_ROWS,
    "always_transposed": range(1, 2**31),
    "never_transposed": range(0),
}
ROWS = (2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


def projection_benchmark(
    model_dir: str | Path | None,
    corpus_dir: str | Path,
    rows: tuple[int, ...] = ROWS,
    repeats: int = 5,
    batch_size: int = 64,
    sentences: int | None = None,
) -> dict:
    """Products of each row count each way, then (with `model_dir`) the test set translated with each layout."""
    cpu = torch.device("cpu")
    results: dict = {
        "machine": machine(),
        "settings": {"rule": f"transposed for {LAYOUTS['rule'].start}-{LAYOUTS['rule'].stop - 1} rows"},
    }
    shapes = {"base_preset": (37000, 512)}
    model = None
    if model_dir is not None:
        model = VaswaniForConditionalGeneration.from_pretrained(model_dir).eval()
        shapes["trained_model"] = tuple(model.lm_head.weight.shape)
    for name, (vocabulary, width) in shapes.items():
        weight = torch.randn(vocabulary, width, generator=torch.Generator().manual_seed(0))
        section = {}
        for count in rows:
            case = projection_case(weight, count, repeats, cpu)
            section[f"{count} rows"] = {**case, "rule_takes": _taken(count)}
        results[f"products_{name}_{vocabulary}x{width}"] = section
    if model is not None:
        results["translate"] = _translate_with_each_layout(
            model, load_tokenizer(model_dir), corpus_dir, repeats, batch_size, sentences
        )
    return results


def _taken(rows: int) -> str:
    return "transposed" if rows in LAYOUTS["rule"] else "plain"


def _translate_with_each_layout(model, tokenizer, corpus_dir, repeats: int, batch_size: int, sentences) -> dict:
    sources, references = load_test_set(corpus_dir)
    if sentences is not None:
        sources, references = sources[:sentences], references[:sentences]
    outputs: dict[str, list[str]] = {}
    decoding = {"batch_size": batch_size, "progress_bar": False, "num_beams": 4, "length_penalty": 0.6}  # Sec. 6.1

    def translate_with(layout: str):
        def run() -> None:
            with mock.patch.object(generation, "TRANSPOSED_PROJECTION_ROWS", LAYOUTS[layout]), torch.inference_mode():
                outputs[layout] = evaluation.translate(model, tokenizer, sources, **decoding)

        return run

    timings = alternating({layout: translate_with(layout) for layout in LAYOUTS}, repeats, torch.device("cpu"))
    return {
        layout: {
            "seconds": round(timings[layout]["median_seconds"], 2),
            "all_seconds": [round(s, 2) for s in timings[layout]["seconds"]],
            "speed_relative_to_always_transposed": ratio(timings, "always_transposed", layout),
            "bleu": round(evaluation.bleu(outputs[layout], references)["score"], 2),
            "same_translations_as_rule": sum(a == b for a, b in zip(outputs[layout], outputs["rule"], strict=True)),
            "sentences": len(sources),
        }
        for layout in LAYOUTS
    }
