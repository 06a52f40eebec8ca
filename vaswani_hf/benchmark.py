"""Benchmarks whose figures go to files (`scripts/benchmark.py` is the command-line front)."""

import copy
import ctypes
import gc
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LabelSmoother

from .configuration_vaswani import VaswaniConfig
from .convert import convert_to_marian, export_ctranslate2
from .data import MULTI30K_SPLITS, TokenBatchSampler, load_parallel_corpus, padded_size, preprocess
from .evaluation import bleu, evaluate_translation
from .modeling_vaswani import VaswaniForConditionalGeneration
from .tokenization import load_tokenizer, train_tokenizer


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
    label_smoothing: float = 0.1,
) -> dict:
    """Training step (forward, label-smoothed loss, backward, Adam step) of ours and of MarianMTModel with the same
    weights and batch: target tokens/s, peak memory, model FLOP utilisation, and the ratio ours / Marian."""
    models = dict(zip(("ours", "marian"), _same_weights_pair(config), strict=True))
    batch = _random_batch(config, batch_size, source_length, target_length)
    optimizers = {  # fused: the Trainer's default optimizer, adamw_torch_fused
        name: torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, fused=True)
        for name, model in models.items()
    }

    smoother = LabelSmoother(epsilon=label_smoothing)
    unlabelled = {key: value for key, value in batch.items() if key != "labels"}
    losses = {
        # Each model's loss as Seq2SeqTrainer computes it with label_smoothing_factor set: ours in the model, fused
        # with the output projection (VaswaniTrainer.compute_loss); Marian's by LabelSmoother from its logits.
        "ours": lambda: models["ours"](**batch, label_smoothing=label_smoothing).loss,
        "marian": lambda: smoother(models["marian"](**unlabelled), batch["labels"]),
    }

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                loss = losses[name]()
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


def quantize_dynamic_int8(model: VaswaniForConditionalGeneration) -> VaswaniForConditionalGeneration:
    """A copy of `model` whose linear layers run in int8 with dynamic activation scales (`torch.ao`), for CPU
    inference; the embeddings stay in float32."""
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


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
    beam_settings = {"length_penalty": 0.6, "early_stopping": True} if num_beams > 1 else {}
    generation = GenerationConfig(
        num_beams=num_beams,
        do_sample=False,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        decoder_start_token_id=model.config.decoder_start_token_id,
        pad_token_id=model.config.pad_token_id,
        eos_token_id=model.config.eos_token_id,
        **beam_settings,
    )

    def generate_with(name: str, engine: torch.nn.Module) -> Callable[[], int]:
        def run() -> int:
            with torch.inference_mode():
                outputs[name] = engine.generate(**inputs, generation_config=generation)
            return batch_size * new_tokens

        return run

    engines["ours"] = generate_with("ours", model.eval())
    engines["marian"] = generate_with("marian", convert_to_marian(model).eval())
    engines["ours_int8_dynamic"] = generate_with("ours_int8_dynamic", quantize_dynamic_int8(model))
    if tokenizer is not None:
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
    bf16 = _cpu_has_native_bfloat16()
    results: dict = {
        "machine": {"threads": torch.get_num_threads(), "native_bfloat16": bf16, "torch": torch.__version__},
    }
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


def _cpu_has_native_bfloat16() -> bool:
    """bfloat16 matrix units (AVX512-BF16 or AMX); without them PyTorch emulates bfloat16 and autocast is slower."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


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


def write_wmt_sized_corpus(
    multi30k_dir: str | os.PathLike,
    folder: str | os.PathLike,
    pairs: int,
    source_lang: str = "en",
    target_lang: str = "de",
    seed: int = 0,
) -> dict:
    """Write `pairs` aligned sentence pairs of WMT14-like length to `folder`/train.{source,target}_lang, made
    deterministically from Multi30k train: each pair joins two Multi30k pairs drawn at random (Multi30k sentences
    average about 12 words, WMT14's about 25), and about one word in a hundred of each side is glued to a random
    corpus word, a new word, so that the distinct words keep growing with the corpus as a real one's do (Multi30k has
    about 10k in English, 18k in German). Returns the pairs, words per sentence and new words made."""
    corpus = load_parallel_corpus(multi30k_dir, source_lang, target_lang, splits={"train": "train"})
    rows = corpus["train"]["translation"]
    sentences = {lang: [row[lang] for row in rows] for lang in (source_lang, target_lang)}
    words = {lang: sorted({w.lower() for text in texts for w in text.split()}) for lang, texts in sentences.items()}
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"pairs": pairs, "words": 0, "new_words": 0}
    files = {lang: (folder / f"train.{lang}").open("w", encoding="utf-8") for lang in sentences}
    try:
        for _ in range(pairs):
            first, second = rng.randrange(len(rows)), rng.randrange(len(rows))
            for lang, texts in sentences.items():
                text = f"{texts[first]} {texts[second]}"
                if rng.random() < 0.25:  # ~0.25 new words in ~25: one in a hundred
                    tokens = text.split()
                    position = rng.randrange(len(tokens))
                    tokens[position] += words[lang][rng.randrange(len(words[lang]))]
                    text = " ".join(tokens)
                    counts["new_words"] += 1
                counts["words"] += text.count(" ") + 1
                files[lang].write(text + "\n")
    finally:
        for file in files.values():
            file.close()
    words_per_sentence = round(counts["words"] / (2 * pairs), 2)
    return {"pairs": pairs, "words_per_sentence": words_per_sentence, "new_words": counts["new_words"]}


# Run in a fresh process per size, so that its peak resident memory (the parent's wait4) is this step's alone.
_LEARN_BPE = """
import json, sys, time
from vaswani_hf.data import load_parallel_corpus
from vaswani_hf.tokenization import train_tokenizer
folder, source, target, vocab_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
started = time.perf_counter()
corpus = load_parallel_corpus(folder, source, target, splits={"train": "train"}, cache_dir=sys.argv[5])
loaded = time.perf_counter()
# as training.build_tokenizer and vaswani-train-tokenizer learn it: both sides of every training pair
texts = (text for pair in corpus["train"]["translation"] for text in pair.values())
tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
print(json.dumps({"load_seconds": loaded - started, "learn_seconds": time.perf_counter() - loaded,
                  "vocabulary": len(tokenizer)}))
"""


def _learn_bpe_in_child(folder: Path, source_lang: str, target_lang: str, vocab_size: int, cache_dir: Path) -> dict:
    command = [sys.executable, "-c", _LEARN_BPE, str(folder), source_lang, target_lang, str(vocab_size), str(cache_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"learning the BPE on {folder} failed ({process.returncode})")
    return {**json.loads(output), "peak_memory_mb": round(usage.ru_maxrss / 1024)}  # ru_maxrss is in KiB


def tokenizer_scale_benchmark(
    multi30k_dir: str | os.PathLike,
    sizes: tuple[int, ...] = (500_000, 1_500_000, 4_500_000),
    vocab_size: int = 37000,
    max_minutes: float = 15.0,
    source_lang: str = "en",
    target_lang: str = "de",
) -> dict:
    """Time to learn the shared BPE (what a multi-process run's other processes would wait for at the barrier) and
    to load the corpus, and peak memory, on `write_wmt_sized_corpus` corpora of each size (in a temporary folder,
    deleted after). A size whose time, extrapolated from the sizes measured, would exceed `max_minutes` is not run:
    its row holds the extrapolation, marked `extrapolated`. Time grows as pairs^slope, the log-log slope between
    the largest two sizes measured."""
    rows: dict[str, dict] = {}
    measured: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="wmt-sized-") as tmp:
        for pairs in sorted(sizes):
            if len(measured) >= 1:
                slope = _log_slope(measured) if len(measured) >= 2 else 1.0
                (last_pairs, last_seconds) = measured[-1]
                predicted = last_seconds * (pairs / last_pairs) ** slope
                if predicted > 60 * max_minutes:
                    basis = "linear from the last size" if len(measured) < 2 else f"slope {slope:.2f}"
                    rows[f"{pairs} pairs"] = {
                        "pairs": pairs,
                        "learn_seconds": round(predicted, 1),
                        "how": f"EXTRAPOLATED, not run ({basis} predicts over {max_minutes} minutes)",
                    }
                    continue
            folder = Path(tmp) / f"corpus-{pairs}"
            started = time.perf_counter()
            generated = write_wmt_sized_corpus(multi30k_dir, folder, pairs, source_lang, target_lang)
            generation_seconds = time.perf_counter() - started
            load_before = os.getloadavg()[0]
            result = _learn_bpe_in_child(folder, source_lang, target_lang, vocab_size, Path(tmp) / f"cache-{pairs}")
            rows[f"{pairs} pairs"] = {
                "how": "measured",
                **generated,
                "load_seconds": round(result["load_seconds"], 1),
                "learn_seconds": round(result["learn_seconds"], 1),
                "peak_memory_mb": result["peak_memory_mb"],
                "vocabulary": result["vocabulary"],
                "generation_seconds": round(generation_seconds, 1),
                "load_average_before": round(load_before, 2),
                "load_average_after": round(os.getloadavg()[0], 2),
            }
            measured.append((pairs, result["learn_seconds"]))
            shutil.rmtree(folder)
    summary = {
        "vocab_size": vocab_size,
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores",
        "learn_time_slope": round(_log_slope(measured), 2) if len(measured) >= 2 else None,
    }
    return {"bpe learning": {**rows, **summary}}


def _log_slope(points: list[tuple[int, float]]) -> float:
    """The exponent b of seconds = a * pairs^b through the last two points."""
    (x0, y0), (x1, y1) = points[-2], points[-1]
    return math.log(y1 / y0) / math.log(x1 / x0)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"
