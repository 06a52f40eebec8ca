"""Benchmarks whose figures go to files (`scripts/benchmark.py` is the command-line front)."""

import copy
import ctypes
import gc
import json
import math
import os
import platform
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LabelSmoother

from vaswani_hf.configuration_vaswani import VaswaniConfig
from vaswani_hf.convert import convert_to_marian, export_ctranslate2, quantize_dynamic_int8
from vaswani_hf.data import MULTI30K_SPLITS, TokenBatchSampler, load_parallel_corpus, padded_size, preprocess
from vaswani_hf.devices import cpu_has_native_bfloat16
from vaswani_hf.evaluation import bleu, evaluate_translation
from vaswani_hf.modeling_vaswani import VaswaniForConditionalGeneration
from vaswani_hf.tokenization import load_tokenizer, train_tokenizer

# what a benchmark's machine section says where it leaves its bfloat16 rows out
BFLOAT16_ROWS_SKIPPED = "skipped: no bfloat16 units on this CPU (avx512_bf16 / amx_bf16)"


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


# --- model speed: ours against MarianMTModel holding the same weights -------------------------------------------


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every `interval` seconds (0.5 ms by default) from
    /proc/self/statm by a thread of its own.

    PyTorch keeps no CPU allocator statistics, so this measures the process: freed memory is first returned to the
    system (`malloc_trim`) so that the baseline is what is really held. `samples` counts the samples taken; code
    measured under it can hold memory until the sampler has seen it (`hold_until_sampled`), so that on a loaded
    machine, where the thread may not run for a while, a short-lived allocation is still in the peak."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.samples = 0
        self._sampled = threading.Condition()

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        self.baseline = self.peak = _resident_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        _SAMPLERS.add(self)
        return self

    def _sample(self) -> None:
        while self._running:
            resident = _resident_bytes()
            with self._sampled:
                self.peak = max(self.peak, resident)
                self.samples += 1
                self._sampled.notify_all()
            time.sleep(self.interval)

    def wait_for_sample(self) -> None:
        """Return once the sampler has read the resident memory after this call (a sample under way may have read
        it before: the one after that counts). Raises if the sampler has stopped."""
        with self._sampled:
            wanted = self.samples + 2
            while self.samples < wanted:
                if not self._thread.is_alive():
                    raise RuntimeError("the PeakMemory sampler is not running")
                self._sampled.wait(timeout=1.0)  # only to look at the thread again: what is waited for is the count

    def __exit__(self, *exc) -> None:
        _SAMPLERS.discard(self)
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())

    @property
    def increase(self) -> int:
        return self.peak - self.baseline


_SAMPLERS: set[PeakMemory] = set()  # those measuring now


def hold_until_sampled() -> None:
    """Wait until every `PeakMemory` measuring now has sampled the memory as it is at this call, so that what the
    caller holds is in their peaks whatever the machine's load; without one, return at once (timed runs)."""
    for sampler in list(_SAMPLERS):
        sampler.wait_for_sample()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: the baseline may include freed memory
    _LIBC = None


def side_by_side(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict]:
    """Time each callable `repeats` times, alternating (and reversing the order every other round, so neither
    always runs first). Returns per name the median seconds and the peak memory increase, measured in a run of its
    own: the memory-sampling thread would take CPU time from the timed runs on a small machine."""
    names = list(runs)
    memory: dict[str, int] = {}
    for name in names:  # warm-up (first-call allocations, kernel selection), then one run under the memory sampler
        runs[name]()
        with PeakMemory() as peak:
            runs[name]()
        memory[name] = peak.increase
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - started)
    return {
        name: {"median_seconds": statistics.median(seconds[name]), "seconds": seconds[name], "peak_bytes": memory[name]}
        for name in names
    }


def matmul_peak_flops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 20) -> float:
    """The machine's measured matrix-multiply rate (FLOP/s): the best of `repeats` square products (many: on a shared
    machine a few can all be slowed)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def training_step_flops(config, batch_size: int, source_length: int, target_length: int) -> int:
    """Matrix-multiply FLOPs of one training step (forward + backward = 3 x forward), counting 2 FLOPs per
    multiply-add. With d = d_model, f = d_ff (the encoder's or the decoder's), V = vocabulary, S / T = source / target
    length, per sequence:
      encoder layer:  S * (2*4*d*d + 2*2*d*f) + 2*2*S*S*d          (q, k, v, out; FFN; scores and weighted sum)
      decoder layer:  T * (2*4*d*d + 2*2*d*f + 2*2*d*d) + S * 2*2*d*d + 2*2*T*T*d + 2*2*T*S*d
                      (self q, k, v, out; FFN; cross q, out; cross k, v on the source; self and cross attention)
      output layer:   T * 2*d*V
    Attention counts the full T x T score matrix, as SDPA computes it under a causal mask on a CPU."""
    d, vocab = config.d_model, config.vocab_size
    s, t = source_length, target_length
    encoder = config.encoder_layers * (s * (8 * d * d + 4 * d * config.encoder_ffn_dim) + 4 * s * s * d)
    decoder = config.decoder_layers * (
        t * (8 * d * d + 4 * d * config.decoder_ffn_dim + 4 * d * d) + s * 4 * d * d + 4 * t * t * d + 4 * t * s * d
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


def training_step(
    model: torch.nn.Module, loss: Callable[[], torch.Tensor], autocast_dtype: torch.dtype | None = None
) -> Callable[[], None]:
    """One training step of `model` (in training mode): `loss` under autocast when `autocast_dtype` is given, backward,
    and a step of fused AdamW, the Trainer's default optimizer (adamw_torch_fused), with the paper's betas and eps."""
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, fused=True
    )

    def run() -> None:
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def synthetic_generation_config(config, num_beams: int, new_tokens: int) -> GenerationConfig:
    """Decoding that produces exactly `new_tokens` tokens per output (end of sentence suppressed until then), so
    every engine does the same work; beams with the paper's length penalty (Sec. 6.1)."""
    beam_settings = {"length_penalty": 0.6, "early_stopping": True} if num_beams > 1 else {}
    return GenerationConfig(
        num_beams=num_beams,
        do_sample=False,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        decoder_start_token_id=config.decoder_start_token_id,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        **beam_settings,
    )


def training_benchmark(
    config,
    batch_size: int = 128,
    source_length: int = 32,
    target_length: int = 32,
    repeats: int = 5,
    autocast_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.1,
    unfused_loss: bool = False,
) -> dict:
    """Training step (forward, label-smoothed loss, backward, Adam step) of ours and of MarianMTModel with the same
    weights and batch: target tokens/s, peak memory, model FLOP utilisation, and the ratio ours / Marian. With
    `unfused_loss`, also ours with a no-op hook on its output projection, which keeps the loss unfused (the logits
    stored, the loss computed from them)."""
    ours, marian = _same_weights_pair(config)
    models = {"ours": ours, "marian": marian}
    if unfused_loss:
        unfused = copy.deepcopy(ours)
        unfused.lm_head.register_forward_hook(lambda module, inputs, output: None)
        models = {"ours": ours, "ours_unfused_loss": unfused, "marian": marian}
    batch = _random_batch(config, batch_size, source_length, target_length)

    smoother = LabelSmoother(epsilon=label_smoothing)
    unlabelled = {key: value for key, value in batch.items() if key != "labels"}
    losses = {
        # Each model's loss as Seq2SeqTrainer computes it with label_smoothing_factor set: ours in the model, fused
        # with the output projection (VaswaniTrainer.compute_loss); Marian's by LabelSmoother from its logits.
        "ours": lambda: models["ours"](**batch, label_smoothing=label_smoothing).loss,
        "ours_unfused_loss": lambda: models["ours_unfused_loss"](**batch, label_smoothing=label_smoothing).loss,
        "marian": lambda: smoother(models["marian"](**unlabelled), batch["labels"]),
    }

    timings = side_by_side(
        {name: training_step(model, losses[name], autocast_dtype) for name, model in models.items()}, repeats
    )
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
    if unfused_loss:
        results["ratio_ours_unfused_loss_to_marian"] = _ratio(timings, "ours_unfused_loss")
    results["step_flops"] = flops
    results["matmul_peak_gflops"] = round(peak / 1e9, 1)
    return results


def translation_benchmark(
    model: VaswaniForConditionalGeneration,
    num_beams: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    batch_size: int = 32,
    source_length: int = 30,
    new_tokens: int = 30,
    repeats: int = 5,
) -> dict:
    """`generate` of ours and of MarianMTModel with the same weights on the same batch, exactly `new_tokens` new
    tokens per output (end of sentence suppressed until then) so both do the same work: target tokens/s, peak
    memory, the ratio to Marian, and whether both produced the same tokens. Also ours with dynamic int8 and, given
    the model's tokenizer, its CTranslate2 export in float32 and int8 on the same sources."""
    engines: dict[str, Callable[[], int]] = {}
    outputs: dict[str, torch.Tensor] = {}
    batch = _random_batch(model.config, batch_size, source_length, 1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    generation = synthetic_generation_config(model.config, num_beams, new_tokens)

    def generate_with(name: str, engine: torch.nn.Module) -> Callable[[], int]:
        def run() -> int:
            with torch.inference_mode():
                outputs[name] = engine.generate(**inputs, generation_config=generation)
            return batch_size * new_tokens

        return run

    engines["ours"] = generate_with("ours", model.eval())
    engines["marian"] = generate_with("marian", convert_to_marian(model).eval())
    engines["ours_int8_dynamic"] = generate_with("ours_int8_dynamic", quantize_dynamic_int8(model))
    if tokenizer is not None:  # in this process, which slows ours and Marian after it ran (translate.py keeps it apart)
        engines.update(_ctranslate2_engines(model, tokenizer, inputs["input_ids"], num_beams, new_tokens))

    produced: dict[str, int] = {}

    def counting(name: str) -> Callable[[], None]:
        def run() -> None:
            produced[name] = engines[name]()

        return run

    timings = side_by_side({name: counting(name) for name in engines}, repeats)
    results = {
        name: {
            "target_tokens_per_second": round(produced[name] / timing["median_seconds"], 1),
            "peak_memory_mb": round(timing["peak_bytes"] / 2**20, 1),
            "speed_relative_to_marian": _ratio(timings, name),
        }
        for name, timing in timings.items()
    }
    results["same_tokens_as_marian"] = torch.equal(outputs["ours"], outputs["marian"])
    return results


def _ctranslate2_engines(
    model: VaswaniForConditionalGeneration, tokenizer, input_ids: torch.Tensor, num_beams: int, new_tokens: int
) -> dict[str, Callable[[], int]]:
    import ctranslate2

    sources = [tokenizer.convert_ids_to_tokens(ids) for ids in input_ids.tolist()]
    engines = {}
    with tempfile.TemporaryDirectory() as folder:
        for quantization in ("float32", "int8"):
            path = export_ctranslate2(model, tokenizer, Path(folder) / quantization, quantization=quantization)
            translator = ctranslate2.Translator(str(path), device="cpu", intra_threads=torch.get_num_threads())

            def run(translator=translator) -> int:
                results = translator.translate_batch(
                    sources,
                    beam_size=num_beams,
                    length_penalty=0.6 if num_beams > 1 else 1.0,
                    min_decoding_length=new_tokens,
                    max_decoding_length=new_tokens,
                )
                return sum(len(result.hypotheses[0]) for result in results)

            engines[f"ctranslate2_{quantization}"] = run
    return engines


def _ratio(timings: dict[str, dict], name: str = "ours") -> float:
    """Speed of `name` over Marian: the median of the per-round ratios of alternating runs."""
    pairs = zip(timings["marian"]["seconds"], timings[name]["seconds"], strict=True)
    return round(statistics.median(marian / ours for marian, ours in pairs), 3)


def quality_benchmark(
    model_dir: str | os.PathLike,
    corpus_dir: str | os.PathLike,
    source_lang: str = "en",
    target_lang: str = "de",
    equal_tokens_sentences: int = 100,
) -> dict:
    """On a trained model and Multi30k test_2016_flickr: the BLEU cost of dynamic int8, and whether the CTranslate2
    export gives our greedy tokens (on the first `equal_tokens_sentences` sentences) and our BLEU (beam 4)."""
    import ctranslate2

    model = VaswaniForConditionalGeneration.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    test = load_parallel_corpus(corpus_dir, source_lang, target_lang, splits={"test": "test_2016_flickr"})["test"]
    sources = [pair[source_lang] for pair in test["translation"]]
    references = [pair[target_lang] for pair in test["translation"]]
    results = {"test_sentences": len(sources)}
    results["bleu_float32"] = round(evaluate_translation(model, tokenizer, sources, references)[0]["score"], 2)
    quantized = quantize_dynamic_int8(model)
    results["bleu_int8_dynamic"] = round(evaluate_translation(quantized, tokenizer, sources, references)[0]["score"], 2)

    head = sources[:equal_tokens_sentences]
    batch = tokenizer(head, return_tensors="pt", padding=True)
    with torch.inference_mode():
        greedy = model.generate(**batch, num_beams=1, max_new_tokens=80)
    ours = [
        [t for t in tokenizer.convert_ids_to_tokens(ids) if t not in tokenizer.all_special_tokens]
        for ids in greedy.tolist()
    ]
    source_tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(sources)["input_ids"]]
    with tempfile.TemporaryDirectory() as folder:
        for quantization in ("float32", "int8"):
            path = export_ctranslate2(model, tokenizer, Path(folder) / quantization, quantization=quantization)
            translator = ctranslate2.Translator(str(path), device="cpu", intra_threads=torch.get_num_threads())
            hypotheses = translator.translate_batch(source_tokens[: len(head)], beam_size=1, max_decoding_length=80)
            same = sum(h.hypotheses[0] == o for h, o in zip(hypotheses, ours, strict=True))
            results[f"ctranslate2_{quantization}_same_greedy_tokens"] = f"{same}/{len(head)}"
            beam = translator.translate_batch(source_tokens, beam_size=4, length_penalty=0.6, max_batch_size=64)
            texts = [tokenizer.convert_tokens_to_string(h.hypotheses[0]) for h in beam]
            results[f"bleu_ctranslate2_{quantization}"] = round(bleu(texts, references)["score"], 2)
    return results


def speed_benchmark(trained_model_dir: str | os.PathLike | None = None, repeats: int = 5) -> dict:
    """Ours against MarianMTModel with the same weights: training steps at the base preset (37,000 vocabulary) and
    the small preset, translation at the base preset and, given a trained small model, with CTranslate2 beside."""
    bf16 = cpu_has_native_bfloat16()
    results: dict = {"machine": machine()}
    if not bf16:
        results["machine"]["bfloat16_rows"] = BFLOAT16_ROWS_SKIPPED
    for preset in ("small", "base"):
        config = VaswaniConfig.from_preset(preset, vocab_size=37000 if preset == "base" else 8000)
        results[f"training_{preset}_float32"] = training_benchmark(config, repeats=repeats)
        if bf16:
            results[f"training_{preset}_bfloat16"] = training_benchmark(
                config, repeats=repeats, autocast_dtype=torch.bfloat16
            )
    base, _ = _same_weights_pair(VaswaniConfig.from_preset("base", vocab_size=37000))
    for beams, name in ((1, "greedy"), (4, "beam4")):
        results[f"translation_base_{name}"] = translation_benchmark(base, beams, repeats=repeats)
    if trained_model_dir is not None:
        trained = VaswaniForConditionalGeneration.from_pretrained(trained_model_dir).eval()
        tokenizer = load_tokenizer(trained_model_dir)
        for beams, name in ((1, "greedy"), (4, "beam4")):
            results[f"translation_trained_small_{name}"] = translation_benchmark(
                trained, beams, tokenizer, repeats=repeats
            )
    return results


def write_tables(name: str, results: dict, output_dir: str | os.PathLike, command: str) -> Path:
    """Write `results` (sections of engine -> measures) as `{name}.json` and one markdown table per section."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    lines = [f"# Benchmark: {name}", "", f"Command: `{command}`", ""]
    for section, rows in results.items():
        lines += [f"## {section}", ""]
        engines = {key: value for key, value in rows.items() if isinstance(value, dict)}
        scalars = {key: value for key, value in rows.items() if not isinstance(value, dict)}
        if engines:
            columns = list(next(iter(engines.values())))
            lines += ["| | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
            lines += [
                f"| {engine} | " + " | ".join(str(v.get(c)) for c in columns) + " |" for engine, v in engines.items()
            ]
            lines.append("")
        lines += [f"- {key}: {value}" for key, value in scalars.items()] + [""]
    (output / f"{name}.md").write_text("\n".join(lines))
    path = output / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


# --- scale: the data pipeline and the first training steps at WMT14's size ----------------------------------------

WMT14_EN_DE_PAIRS = 4_500_000  # the training pairs of WMT14 En-De (Sec. 5.1)
# English words per generated pair: log-normal around 16 words, before the last Multi30k sentence overshoots it,
# so that pairs average about 25 words with a tail past 60, as news and parliament text has (Multi30k's image
# captions average 12); the measured lengths are in the results.
GENERATED_MEDIAN_WORDS, GENERATED_SIGMA = 16, 0.6


def generate_wmt_sized_corpus(
    multi30k_dir: str | os.PathLike, folder: str | os.PathLike, pairs: int, seed: int = 0, validation_pairs: int = 1
) -> dict:
    """Write `pairs` En-De training pairs to `folder`/train.{en,de}, each one or more Multi30k training pairs
    joined (so both sides stay translations of each other), drawn from `seed` alone: the first n pairs of a larger
    corpus are the smaller one. Also `validation_pairs` Multi30k validation pairs as val.{en,de}. Returns length and
    vocabulary statistics of what was written."""
    import gzip

    def lines(stem: str, lang: str) -> list[str]:
        with gzip.open(Path(multi30k_dir) / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as file:
            return file.read().splitlines()

    english, german = lines("train", "en"), lines("train", "de")
    english_words = [len(sentence.split()) for sentence in english]
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lengths, vocabulary = [], set()
    with open(folder / "train.en", "w", encoding="utf-8") as en, open(folder / "train.de", "w", encoding="utf-8") as de:
        for _ in range(pairs):
            wanted = rng.lognormvariate(math.log(GENERATED_MEDIAN_WORDS), GENERATED_SIGMA)
            chosen, words = [], 0
            while words < wanted:
                chosen.append(rng.randrange(len(english)))
                words += english_words[chosen[-1]]
            en.write(" ".join(english[i] for i in chosen) + "\n")
            de.write(" ".join(german[i] for i in chosen) + "\n")
            lengths.append(words)
    for lang in ("en", "de"):
        (folder / f"val.{lang}").write_text("\n".join(lines("val", lang)[:validation_pairs]) + "\n", encoding="utf-8")
    for sentence in english + german:
        vocabulary.update(sentence.split())
    lengths.sort()
    return {
        "english_words_mean": round(sum(lengths) / len(lengths), 1),
        "english_words_median": lengths[len(lengths) // 2],
        "english_words_p99": lengths[int(0.99 * (len(lengths) - 1))],
        "distinct_words_in_the_multi30k_sentences": len(vocabulary),
        "text_bytes": sum((folder / f"train.{lang}").stat().st_size for lang in ("en", "de")),
    }


def folder_bytes(folder: str | os.PathLike) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _measured(function: Callable, *args, **kwargs) -> tuple[object, float, int]:
    """(result, seconds, peak resident memory increase in bytes) of one call of `function(*args, **kwargs)`. Memory
    is sampled every 20 ms: these stages last seconds to minutes, and a busier sampler would slow Python-bound ones."""
    with PeakMemory(interval=0.02) as peak:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        seconds = time.perf_counter() - started
    return result, seconds, peak.increase


def _child_peak_bytes() -> int:
    """The largest peak resident memory of any child process waited for so far (getrusage reports kilobytes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def training_start_benchmark(
    corpus_dir: Path,
    tokenizer_dir: Path,
    work_dir: Path,
    steps: int,
    processes: int,
    preset: str,
    config_overrides: str | None,
    max_tokens: int,
    vocab_size: int,
    num_proc: int | None,
) -> dict:
    """`accelerate launch` of the training command on the generated corpus (tokenizer given): seconds from the launch
    to the first update, and per update after it, read from the wall times of the TensorBoard log of each update's
    loss (the Trainer's own logging, every step)."""
    import subprocess
    import sys

    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir = work_dir / "run"
    recipe = {
        "dataset": str(corpus_dir),
        "file_splits": "train=train,validation=val",
        "test_split": None,
        "tokenizer_name_or_path": str(tokenizer_dir),
        "vocab_size": vocab_size,
        "preset": preset,
        "config_overrides": config_overrides,
        "max_tokens": max_tokens,
        "max_steps": steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "checkpoints_to_average": 0,
        "logging_steps": 1,
        "report_to": "tensorboard",
        "use_cpu": True,
        "disable_tqdm": True,
        "preprocessing_num_workers": num_proc,
        "output_dir": str(output_dir),
    }
    recipe_path = work_dir / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    # one process: --cpu gives it all cores; two: --multi_gpu starts them through torchrun (gloo on a CPU)
    engine = ["--cpu"] if processes == 1 else ["--multi_gpu"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *engine, "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "vaswani_hf.cli.train", str(recipe_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(work_dir / "datasets")}
    launched = time.time()
    finished = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"the training run failed ({finished.returncode}):\n{finished.stdout[-4000:]}")
    events = EventAccumulator(str(next(output_dir.glob("runs/**/events.out.tfevents*")).parent))
    events.Reload()
    walls = [event.wall_time for event in sorted(events.Scalars("train/loss"), key=lambda e: e.step)]
    result = {
        "processes": processes,
        "updates": len(walls),
        "seconds_to_first_update": round(walls[0] - launched, 1),
        "peak_memory_mb_per_process": round(_child_peak_bytes() / 2**20),
    }
    if len(walls) > 1:
        result["seconds_per_update_after_the_first"] = round((walls[-1] - walls[0]) / (len(walls) - 1), 2)
    return result


def log_log_slope(sizes: list[int], costs: list[float]) -> float | None:
    """The exponent b of cost ~ size^b, fitted by least squares on logarithms (None with fewer than two points)."""
    import numpy

    points = [(math.log(s), math.log(c)) for s, c in zip(sizes, costs, strict=True) if c > 0]
    if len(points) < 2:
        return None
    x, y = zip(*points, strict=True)
    return round(float(numpy.polyfit(x, y, 1)[0]), 2)


def scale_benchmark(
    multi30k_dir: str | os.PathLike,
    sizes: list[int],
    work_dir: str | os.PathLike | None = None,
    vocab_size: int = 37000,
    num_proc: int | None = 2,
    max_tokens: int = 6250,
    replicas: int = 8,
    training_steps: int = 20,
    processes: int = 1,
    preset: str = "base",
    config_overrides: str | None = None,
    seed: int = 0,
) -> dict:
    """At each corpus size (pairs generated from Multi30k with WMT-like lengths, `generate_wmt_sized_corpus`), the
    costs of the data pipeline: loading (`load_parallel_corpus`), learning the shared BPE (`train_tokenizer`),
    preprocessing (`preprocess`, datasets.map with `num_proc`), and `TokenBatchSampler` for `replicas` processes
    (build and one epoch); then, at the largest size, the time from `accelerate launch` to the first update and per
    update of `preset` with the WMT recipe's `max_tokens` (`training_steps` updates on `processes` processes). Each
    size's entry names its number of pairs (`pairs`); `slopes` are the log-log exponents of each cost in pairs."""
    sizes = sorted(sizes)
    results: dict = {
        "machine": machine(),
        "settings": {
            "vocab_size": vocab_size,
            "num_proc": num_proc,
            "max_tokens": max_tokens,
            "sampler_replicas": replicas,
            "preset": preset,
            "config_overrides": config_overrides,
            "training_steps": training_steps,
            "training_processes": processes,
            "seed": seed,
        },
    }
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        for pairs in sizes:
            folder = Path(scratch) / f"pairs-{pairs}"
            entry: dict = {"pairs": pairs}
            entry.update(generate_wmt_sized_corpus(multi30k_dir, folder / "corpus", pairs, seed=seed))
            cache = folder / "datasets"
            splits = {"train": "train", "validation": "val"}
            corpus, seconds, memory = _measured(
                load_parallel_corpus, folder / "corpus", "en", "de", splits=splits, cache_dir=str(cache)
            )
            entry["loading_seconds"], entry["loading_memory_mb"] = round(seconds, 2), round(memory / 2**20)
            entry["loaded_disk_mb"] = round(folder_bytes(cache) / 2**20)
            texts = (text for pair in corpus["train"]["translation"] for text in pair.values())  # as train() does
            tokenizer, seconds, memory = _measured(train_tokenizer, texts, vocab_size=vocab_size)
            entry["bpe_seconds"], entry["bpe_memory_mb"] = round(seconds, 2), round(memory / 2**20)
            entry["bpe_vocabulary"] = len(tokenizer)
            data, seconds, memory = _measured(preprocess, corpus, tokenizer, "en", "de", num_proc=num_proc)
            entry["preprocessing_seconds"], entry["preprocessing_memory_mb"] = round(seconds, 2), round(memory / 2**20)
            entry["preprocessing_worker_peak_mb"] = round(_child_peak_bytes() / 2**20)
            entry["preprocessed_disk_mb"] = round(folder_bytes(cache) / 2**20) - entry["loaded_disk_mb"]
            entry["pairs_kept"] = len(data["train"])
            lengths = data["train"]["source_length"], data["train"]["target_length"]
            sampler, seconds, memory = _measured(
                TokenBatchSampler, *lengths, max_tokens=max_tokens, seed=seed, num_replicas=replicas
            )
            entry["sampler_build_seconds"], entry["sampler_memory_mb"] = round(seconds, 2), round(memory / 2**20)
            sampler.set_epoch(1)
            _, seconds, _ = _measured(list, sampler)
            entry["sampler_epoch_seconds"] = round(seconds, 3)
            entry["batches_per_epoch"] = len(sampler)
            entry[f"updates_per_epoch_on_{replicas}_processes"] = len(sampler) // replicas
            if pairs == sizes[-1] and training_steps > 0:
                tokenizer.save_pretrained(folder / "tokenizer")
                overrides = config_overrides
                if len(tokenizer) < vocab_size:  # the output layer of the recipe's vocabulary, whatever BPE learned
                    overrides = ",".join(filter(None, [overrides, f"vocab_size={vocab_size}"]))
                entry["training"] = training_start_benchmark(
                    folder / "corpus",
                    folder / "tokenizer",
                    folder,
                    training_steps,
                    processes,
                    preset,
                    overrides,
                    max_tokens,
                    vocab_size,
                    num_proc,
                )
            del corpus, data, lengths, sampler
            shutil.rmtree(folder)
            results[f"pairs_{pairs}"] = entry
    measured = [results[f"pairs_{pairs}"] for pairs in sizes]
    costs = [key for key in measured[0] if key.endswith(("_seconds", "_mb")) and key != "text_bytes"]
    results["slopes"] = {cost: log_log_slope(sizes, [entry[cost] for entry in measured]) for cost in costs}
    results["expectations"] = _scale_expectations(measured, results["slopes"], replicas)
    results["notes"] = scale_notes(results)
    return results


def scale_notes(results: dict) -> dict:
    """What the scale figures are and are not: the corpus, the training run, the machine's load."""
    measured = [entry for key, entry in results.items() if key.startswith("pairs_")]
    settings = results["settings"]
    return {
        "sizes_measured": ", ".join(f"{entry['pairs']:,}" for entry in measured)
        + " pairs"
        + ("" if measured[-1]["pairs"] >= WMT14_EN_DE_PAIRS else "; figures for 4.5M pairs are extrapolated"),
        "corpus": "generated: each pair is one or more Multi30k training pairs joined, English lengths log-normal "
        "(mean, median, p99 words per size above). Lengths and counts are WMT-like; the vocabulary is Multi30k's "
        f"({measured[0]['distinct_words_in_the_multi30k_sentences']:,} distinct words), far smaller than WMT14's, "
        "so BPE time and memory are lower bounds (its counting pass is representative, its merges are not)",
        "training": f"measured at the largest size only ({settings['training_steps']} updates, "
        f"{settings['training_processes']} process(es) on {results['machine']['cores']} cores, float32, max_tokens "
        f"{settings['max_tokens']}, output layer of "
        f"vocab_size {settings['vocab_size']}): the update's cost does not depend on the corpus size, and the time "
        "before the first update grows as loading, preprocessing and the sampler do (measured at every size). "
        "The run is given the tokenizer the benchmark learned and its datasets cache: the loaded corpus is reused; "
        "preprocessing is redone (and counted before the first update) unless datasets' fingerprint of the map, "
        "which hashes the tokenizer, matches",
        "load": f"run at niceness {results['machine']['niceness']} on a machine shared with other jobs (load average "
        f"{results['machine']['load_average_1_5_15_min_at_start']} over 1, 5, 15 minutes at the start): times are "
        "upper bounds for this machine",
    }


def machine() -> dict:
    """The CPU, its cores and bfloat16 units, memory, threads, the torch / transformers versions, and the load and
    niceness this ran under: the header of every benchmark file."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "bfloat16_units": sorted(flag for flag in flags if flag in ("avx512_bf16", "amx_bf16", "amx_tile")),
        "native_bfloat16": cpu_has_native_bfloat16(),
        "threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "niceness": os.nice(0),
        "load_average_1_5_15_min_at_start": [round(load, 2) for load in os.getloadavg()],
    }


def _scale_expectations(measured: list[dict], slopes: dict, replicas: int) -> dict:
    """What the measured sizes say for WMT14 En-De's 4.5M pairs (measured there, or extrapolated on the slope)."""
    largest = measured[-1]
    factor = WMT14_EN_DE_PAIRS / largest["pairs"]
    how = "measured" if factor == 1 else f"extrapolated from {largest['pairs']:,} pairs on the slope"
    stages = ("loading_seconds", "bpe_seconds", "preprocessing_seconds", "sampler_build_seconds")
    at_wmt = {
        stage: round(largest[stage] * factor ** (slopes[stage] if slopes.get(stage) is not None else 1), 1)
        for stage in stages
    }
    updates = round(largest[f"updates_per_epoch_on_{replicas}_processes"] * factor)
    return {
        "at_4.5M_pairs": f"{how}: " + ", ".join(f"{stage} {value}" for stage, value in at_wmt.items()),
        f"on_{replicas}_GPUs": (
            f"before the first update: loading, BPE (learn it once, train_tokenizer.py, and point the recipe at it) "
            f"and preprocessing take about {sum(at_wmt[s] for s in stages[:3]):.0f} s on this machine's cores at 4.5M "
            f"pairs ({how}; datasets.map spreads over preprocessing_num_workers), then every process builds the "
            f"sampler ({at_wmt['sampler_build_seconds']} s); an epoch is about {updates:,} updates of {replicas} x "
            "max_tokens, so the recipe's 100,000 updates are about "
            f"{100_000 / max(updates, 1):.1f} epochs. The per-update time measured here is a CPU's, not a GPU's."
        ),
    }
