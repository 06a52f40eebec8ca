"""bfloat16 on a CPU with bfloat16 units (AVX512-BF16, AMX): the training step under autocast (ours, ours with the
unfused loss, MarianMTModel), decoding a trained model in bfloat16 (weights cast, or autocast) against float32 with
its BLEU cost on Multi30k test, and the loss curves of a bfloat16 and a float32 run of one recipe.

Without bfloat16 units PyTorch emulates bfloat16 and every figure would measure the emulation: the benchmark says so
and measures nothing (`python scripts/benchmark.py bf16`; figures in docs/benchmarks/bf16.{json,md})."""

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from vaswani_hf.configuration_vaswani import VaswaniConfig
from vaswani_hf.data import MULTI30K_SPLITS, load_parallel_corpus
from vaswani_hf.evaluation import bleu, translate
from vaswani_hf.modeling_vaswani import VaswaniForConditionalGeneration
from vaswani_hf.tokenization import load_tokenizer

from .harness import machine, matmul_peak_flops, side_by_side, training_benchmark

NO_BF16_UNITS = (
    "this CPU has no bfloat16 units (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo): PyTorch emulates bfloat16, "
    "so the bfloat16 rows are skipped; run on a CPU that has them"
)


def training_bf16_benchmark(
    config, batch_size: int = 128, source_length: int = 32, target_length: int = 32, repeats: int = 3
) -> dict:
    """One training step (forward, label-smoothed loss, backward, fused AdamW) under bfloat16 autocast, alternating:
    ours (the loss fused with the output projection), ours with the unfused loss (as before the fused loss worked
    under autocast) and MarianMTModel with the same weights and its LabelSmoother loss. MFU is against the measured
    bfloat16 matrix-multiply peak; the float32 peak is beside it."""
    results = training_benchmark(
        config, batch_size, source_length, target_length, repeats, autocast_dtype=torch.bfloat16, unfused_loss=True
    )
    results["float32_matmul_peak_gflops"] = round(matmul_peak_flops(torch.float32) / 1e9, 1)
    return results


def decoding_variants(model: VaswaniForConditionalGeneration) -> dict[str, Callable[..., list[str]]]:
    """float32, the weights cast to bfloat16 (`model.to(torch.bfloat16)`), and float32 weights under bf16 autocast."""
    bf16_model = copy.deepcopy(model).to(torch.bfloat16).eval()

    def float32(*args, **kwargs):
        return translate(model, *args, **kwargs)

    def bfloat16_weights(*args, **kwargs):
        return translate(bf16_model, *args, **kwargs)

    def bfloat16_autocast(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return translate(model, *args, **kwargs)

    return {"float32": float32, "bfloat16_weights": bfloat16_weights, "bfloat16_autocast": bfloat16_autocast}


def decoding_bf16_benchmark(
    model_dir: str | os.PathLike,
    corpus: str | os.PathLike,
    repeats: int = 3,
    speed_sentences: int = 128,
    bleu_sentences: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Speed of each decoding variant (greedy and beam 4 with the paper's length penalty 0.6 and length limit) on the
    first `speed_sentences` sources of Multi30k test_2016_flickr, alternating, relative to float32; then each
    variant's sacreBLEU on `bleu_sentences` of them (all by default) and the share of translations equal to
    float32's."""
    model = VaswaniForConditionalGeneration.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    test = load_parallel_corpus(corpus, "en", "de", splits={"test": MULTI30K_SPLITS["test"]})["test"]["translation"]
    sources, references = [pair["en"] for pair in test], [pair["de"] for pair in test]
    variants = decoding_variants(model)
    results: dict = {}
    for num_beams, name in ((1, "greedy"), (4, "beam4")):
        options = {"batch_size": batch_size, "progress_bar": False, "num_beams": num_beams}
        timed = {
            variant: (lambda run=run, options=options: run(tokenizer, sources[:speed_sentences], **options))
            for variant, run in variants.items()
        }
        timings = side_by_side(timed, repeats)
        scored = sources[:bleu_sentences], references[:bleu_sentences]
        translations = {variant: run(tokenizer, scored[0], **options) for variant, run in variants.items()}
        section = {}
        for variant, timing in timings.items():
            pairs = zip(timings["float32"]["seconds"], timing["seconds"], strict=True)
            section[variant] = {
                "sentences_per_second": round(speed_sentences / timing["median_seconds"], 2),
                "speed_relative_to_float32": round(sorted(f / v for f, v in pairs)[len(timing["seconds"]) // 2], 3),
                "bleu": round(bleu(translations[variant], scored[1])["score"], 2),
                "same_translation_as_float32": round(
                    sum(a == b for a, b in zip(translations[variant], translations["float32"], strict=True))
                    / len(scored[0]),
                    3,
                ),
            }
        section["speed_sentences"] = speed_sentences
        section["bleu_sentences"] = len(scored[0])
        results[f"decoding_{name}"] = section
    return results


def run_log_history(run_dir: str | os.PathLike) -> list[dict]:
    """The training log of a run: its trainer_state.json, else its newest checkpoint's (a run stopped early)."""
    run = Path(run_dir)
    states = [run / "trainer_state.json"] if (run / "trainer_state.json").exists() else []
    checkpoints = sorted(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    state = (states or checkpoints[-1:] or [None])[0]
    if state is None:
        raise FileNotFoundError(f"{run} has no trainer_state.json, nor a checkpoint holding one")
    return json.loads(state.read_text())["log_history"]


def _up_to(history: list[dict], key: str, last_step: int) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in history if key in entry and entry["step"] <= last_step}


def training_curves(runs: dict[str, str | os.PathLike], figure: str | os.PathLike) -> dict:
    """The training loss and validation BLEU of each run (label -> run folder) up to the updates they all reached, in
    one figure, and the test BLEU of each run's final model where its metrics.json has one."""
    histories = {label: run_log_history(run) for label, run in runs.items()}
    common = min(max(entry["step"] for entry in history if "loss" in entry) for history in histories.values())
    losses = {label: _up_to(history, "loss", common) for label, history in histories.items()}
    validation = {label: _up_to(history, "eval_bleu", common) for label, history in histories.items()}
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    fig, (loss_axis, bleu_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    for label in runs:
        loss_axis.plot(list(losses[label]), list(losses[label].values()), label=label)
        bleu_axis.plot(list(validation[label]), list(validation[label].values()), marker=".", label=label)
    loss_axis.set_ylabel("training loss (label-smoothed)")
    bleu_axis.set_ylabel("validation BLEU (beam 4)")
    for axis in (loss_axis, bleu_axis):
        axis.set_xlabel("update")
        axis.legend()
    fig.suptitle("Multi30k En-De, small preset: bfloat16 autocast vs float32")
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    pyplot.close(fig)
    results: dict = {"updates_compared": common, "figure": str(figure)}
    for label, run in runs.items():
        results[f"loss_{label}"] = {str(step): loss for step, loss in losses[label].items()}
        results[f"final_loss_{label}"] = losses[label][max(losses[label])]
        results[f"validation_bleu_{label}"] = {str(step): round(bleu, 2) for step, bleu in validation[label].items()}
        metrics = Path(run) / "metrics.json"
        if metrics.exists():
            evaluation = json.loads(metrics.read_text())
            final = evaluation["final_model"]
            results[f"test_bleu_{label}"] = {
                "model": final,
                "after_updates": max(entry["step"] for entry in histories[label]),
                "bleu": round(evaluation["evaluation"][final]["test_bleu"]["score"], 2),
            }
    return results


def bf16_benchmark(
    trained_model_dir: str | os.PathLike | None = None,
    corpus: str | os.PathLike | None = None,
    repeats: int = 3,
    presets: tuple[str, ...] = ("base", "small"),
    speed_sentences: int = 128,
    bleu_sentences: int | None = None,
    curves: dict[str, str] | None = None,
    figure: str | os.PathLike = "docs/benchmarks/bf16_curves.png",
) -> dict:
    results: dict = {"machine": machine()}
    if not results["machine"]["native_bfloat16"]:
        results["skipped"] = {"reason": NO_BF16_UNITS}
        return results
    for preset in presets:
        config = VaswaniConfig.from_preset(preset, vocab_size=37000 if preset == "base" else 8000)
        results[f"training_{preset}_bfloat16_autocast"] = training_bf16_benchmark(config, repeats=repeats)
    if trained_model_dir is not None:
        results.update(
            decoding_bf16_benchmark(
                trained_model_dir, corpus, repeats, speed_sentences=speed_sentences, bleu_sentences=bleu_sentences
            )
        )
    if curves:
        results["curves"] = training_curves(curves, figure)
    return results
