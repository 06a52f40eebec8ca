"""Benchmarks whose figures go to files (`scripts/benchmark.py` is the command-line front)."""

import json
import os
import random
import tempfile
import time
from pathlib import Path

from .data import MULTI30K_SPLITS, TokenBatchSampler, load_parallel_corpus, padded_size, preprocess
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
