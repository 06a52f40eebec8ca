"""Benchmarks whose figures go to files (`scripts/benchmark.py` is the command-line front)."""

import ctypes
import gc
import json
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GenerationConfig

from .convert import convert_to_marian
from .data import MULTI30K_SPLITS, TokenBatchSampler, load_parallel_corpus, padded_size, preprocess
from .modeling_vaswani import VaswaniForConditionalGeneration
from .tokenization import train_tokenizer


def padding_share(batches: list[list[int]], source_lengths: list[int], target_lengths: list[int]) -> float:
    """Share of padding among the padded source + target tokens of `batches`."""
    real = sum(source_lengths[i] + target_lengths[i] for batch in batches for i in batch)
    return 1 - real / sum(padded_size(batch, source_lengths, target_lengths) for batch in batches)


def data_benchmark(
    corpus_dir: str | os.PathLike,
    source_lang: str = "en",
    target_lang: str = "de",
    max_tokens: int = 4096,
    seed: int = 0,
) -> dict:
    """Preprocessing time on a cold and a warm `datasets` cache, and the padding share of token batches against
    shuffled batches holding the same average number of sentences."""
    with tempfile.TemporaryDirectory() as cache_dir:
        started = time.perf_counter()
        corpus = load_parallel_corpus(corpus_dir, source_lang, target_lang, splits=MULTI30K_SPLITS, cache_dir=cache_dir)
        loading = time.perf_counter() - started
        started = time.perf_counter()
        tokenizer = train_tokenizer(text for pair in corpus["train"]["translation"] for text in pair.values())
        tokenizer_training = time.perf_counter() - started
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            data = preprocess(corpus, tokenizer, source_lang, target_lang)
            timings.append(time.perf_counter() - started)
    sources, targets = list(data["train"]["source_length"]), list(data["train"]["target_length"])
    token_batches = list(TokenBatchSampler(sources, targets, max_tokens=max_tokens, seed=seed))
    average_size = round(len(sources) / len(token_batches))
    order = list(range(len(sources)))
    random.Random(seed).shuffle(order)
    shuffled_batches = [order[i : i + average_size] for i in range(0, len(order), average_size)]
    return {
        "corpus": f"Multi30k {source_lang}-{target_lang} train ({len(sources)} pairs after filtering)",
        "max_tokens": max_tokens,
        "loading_seconds": round(loading, 2),
        "tokenizer_training_seconds": round(tokenizer_training, 2),
        "preprocessing_seconds_cold_cache": round(timings[0], 2),
        "preprocessing_seconds_warm_cache": round(timings[1], 2),
        "token_batches": len(token_batches),
        "average_sentences_per_batch": average_size,
        "padding_share_token_batches": round(padding_share(token_batches, sources, targets), 4),
        "padding_share_shuffled_batches": round(padding_share(shuffled_batches, sources, targets), 4),
    }


def write_results(name: str, results: dict, output_dir: str | os.PathLike) -> Path:
    """Write `results` as `{name}.json` and a two-column `{name}.md` table; return the JSON path."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"| {key} | {value} |" for key, value in results.items())
    (output / f"{name}.md").write_text(f"# Benchmark: {name}\n\n| measure | value |\n| --- | --- |\n{rows}\n")
    path = output / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


# --- model speed: ours against MarianMTModel holding the same weights -------------------------------------------


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 0.5 ms from /proc/self/statm.

    PyTorch keeps no CPU allocator statistics, so this measures the process: freed memory is first returned to the
    system (`malloc_trim`) so that the baseline is what is really held."""

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        self.baseline = self.peak = _resident_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, _resident_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())

    @property
    def increase(self) -> int:
        return self.peak - self.baseline


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: the baseline may include freed memory
    _LIBC = None


def side_by_side(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict]:
    """Time each callable `repeats` times, alternating (and reversing the order every other round, so neither
    always runs first). Returns per name the median seconds and the largest peak memory increase."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    memory: dict[str, int] = dict.fromkeys(runs, 0)
    names = list(runs)
    for name in names:  # warm-up: first-call allocations, kernel selection
        runs[name]()
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            with PeakMemory() as peak:
                started = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - started)
            memory[name] = max(memory[name], peak.increase)
    return {
        name: {"median_seconds": statistics.median(seconds[name]), "seconds": seconds[name], "peak_bytes": memory[name]}
        for name in names
    }


def matmul_peak_flops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """The machine's measured matrix-multiply rate (FLOP/s): the best of `repeats` square products."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def training_step_flops(config, batch_size: int, source_length: int, target_length: int) -> int:
    """Matrix-multiply FLOPs of one training step (forward + backward = 3 x forward), counting 2 FLOPs per
    multiply-add. With d = d_model, f = d_ff, V = vocabulary, S / T = source / target length, per sequence:
      encoder layer:  S * (2*4*d*d + 2*2*d*f) + 2*2*S*S*d          (q, k, v, out; FFN; scores and weighted sum)
      decoder layer:  T * (2*4*d*d + 2*2*d*f + 2*2*d*d) + S * 2*2*d*d + 2*2*T*T*d + 2*2*T*S*d
                      (self q, k, v, out; FFN; cross q, out; cross k, v on the source; self and cross attention)
      output layer:   T * 2*d*V
    Attention counts the full T x T score matrix, as SDPA computes it under a causal mask on a CPU."""
    d, f, vocab = config.d_model, config.encoder_ffn_dim, config.vocab_size
    s, t = source_length, target_length
    encoder = config.encoder_layers * (s * (8 * d * d + 4 * d * f) + 4 * s * s * d)
    decoder = config.decoder_layers * (
        t * (8 * d * d + 4 * d * f + 4 * d * d) + s * 4 * d * d + 4 * t * t * d + 4 * t * s * d
    )
    output = t * 2 * d * vocab
    return 3 * batch_size * (encoder + decoder + output)


def _same_weights_pair(config) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ours = VaswaniForConditionalGeneration(config)
    return ours, convert_to_marian(ours)


def _random_batch(config, batch_size: int, source_length: int, target_length: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    special = 4  # ids below are pad, bos, eos, unk
    input_ids = torch.randint(special, config.vocab_size, (batch_size, source_length), generator=generator)
    labels = torch.randint(special, config.vocab_size, (batch_size, target_length), generator=generator)
    decoder_input_ids = torch.cat([torch.full((batch_size, 1), config.decoder_start_token_id), labels[:, :-1]], 1)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
    }


def training_benchmark(
    config,
    batch_size: int = 128,
    source_length: int = 32,
    target_length: int = 32,
    repeats: int = 5,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Training step (forward, backward, Adam step) of ours and of MarianMTModel with the same weights and batch:
    target tokens/s, peak memory, model FLOP utilisation, and the ratio ours / Marian."""
    models = dict(zip(("ours", "marian"), _same_weights_pair(config), strict=True))
    batch = _random_batch(config, batch_size, source_length, target_length)
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
        for name, model in models.items()
    }

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                loss = models[name](**batch).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)

        return run

    for model in models.values():
        model.train()
    timings = side_by_side({name: step(name) for name in models}, repeats)
    flops = training_step_flops(config, batch_size, source_length, target_length)
    peak = matmul_peak_flops(autocast_dtype or torch.float32)
    tokens = batch_size * target_length
    results = {
        name: {
            "target_tokens_per_second": round(tokens / timing["median_seconds"], 1),
            "peak_memory_mb": round(timing["peak_bytes"] / 2**20, 1),
            "model_flops_utilisation": round(flops / timing["median_seconds"] / peak, 4),
        }
        for name, timing in timings.items()
    }
    results["ratio_ours_to_marian"] = _ratio(timings)
    results["step_flops"] = flops
    results["matmul_peak_gflops"] = round(peak / 1e9, 1)
    return results


def translation_benchmark(
    model: VaswaniForConditionalGeneration,
    num_beams: int,
    batch_size: int = 32,
    source_length: int = 30,
    new_tokens: int = 30,
    repeats: int = 5,
) -> dict:
    """`generate` of ours and of MarianMTModel with the same weights on the same batch, exactly `new_tokens` new
    tokens per output (end of sentence suppressed until then) so both do the same work: target tokens/s, peak
    memory, the ratio ours / Marian, and whether both produced the same tokens."""
    models = {"ours": model.eval(), "marian": convert_to_marian(model).eval()}
    batch = _random_batch(model.config, batch_size, source_length, 1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    generation = GenerationConfig(
        num_beams=num_beams,
        do_sample=False,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        length_penalty=0.6,
        early_stopping=True,
        decoder_start_token_id=model.config.decoder_start_token_id,
        pad_token_id=model.config.pad_token_id,
        eos_token_id=model.config.eos_token_id,
    )
    outputs = {}

    def translate(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                outputs[name] = models[name].generate(**inputs, generation_config=generation)

        return run

    timings = side_by_side({name: translate(name) for name in models}, repeats)
    tokens = batch_size * new_tokens
    results = {
        name: {
            "target_tokens_per_second": round(tokens / timing["median_seconds"], 1),
            "peak_memory_mb": round(timing["peak_bytes"] / 2**20, 1),
        }
        for name, timing in timings.items()
    }
    results["ratio_ours_to_marian"] = _ratio(timings)
    results["same_tokens"] = torch.equal(outputs["ours"], outputs["marian"])
    return results


def _ratio(timings: dict[str, dict]) -> float:
    """Speed of ours over Marian: the median of the per-round ratios of alternating runs."""
    pairs = zip(timings["marian"]["seconds"], timings["ours"]["seconds"], strict=True)
    return round(statistics.median(marian / ours for marian, ours in pairs), 3)
