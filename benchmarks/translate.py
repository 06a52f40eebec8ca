"""The end-to-end translation benchmark: a test set translated text in, text out, as users translate a file.

Multi30k test_2016_flickr (1,000 sentences of mixed lengths, whose translations finish at different steps) with a
trained model at the paper's decoding (beam 4, length penalty 0.6, Sec. 6.1), through each engine a user would reach
for, alternating: ours through `pipeline("translation")` and through `vaswani_hf.evaluation.translate` (what
`vaswani-evaluate` runs), `MarianMTModel` with the same weights (`convert_to_marian`) through transformers' own
`generate` on the same batches, and the CTranslate2 export in float32 and int8 (`translate_batch` with the same batch
size; it sorts by length itself), and, on a CPU with bfloat16 units, ours through `evaluation.translate` with the
weights cast to bfloat16. `ours_evaluate_history_copies` is ours with the beam search that copies the beams'
self-attention histories at each reorder (what attention implementations without 4-D masks run, and ours before
`BeamAncestry`). With `before=True` also ours as it was before sorting by tokens, dropping finished sentences and
`BeamAncestry` (`ours_*_before`), for before/after figures from the same run.

Per engine: median wall time, sentences/s, sacreBLEU, speed relative to CTranslate2 float32 (the median of per-round
ratios) and how many translations equal ours through `evaluation.translate`.

The PyTorch engines run in one worker process and each CTranslate2 engine in its own: once a CTranslate2
`Translator` has run in a process, PyTorch's products there run slower while it lives (ours on the 1,000 sentences
9.3-9.6 s against 6.9-7.1 s before it ran; a 256 x 256 x 1,024 linear 15% slower, its speed back once the translator
is deleted), while CTranslate2 runs as fast beside PyTorch as alone: its OpenMP calls bind to torch's libgomp, whose
threads then outnumber the CPUs, and libgomp stops spinning at barriers (docs/benchmarks/translate_processes/).
"""

import multiprocessing
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from unittest import mock

import torch
from transformers import LogitsProcessorList, pipeline

import vaswani_hf.evaluation as evaluation
import vaswani_hf.generation_vaswani as generation
from vaswani_hf.convert import convert_to_marian, export_ctranslate2
from vaswani_hf.data import load_parallel_corpus
from vaswani_hf.devices import cpu_has_native_bfloat16
from vaswani_hf.generation_vaswani import SourceLengthLimitLogitsProcessor, target_length_limits
from vaswani_hf.modeling_vaswani import VaswaniForConditionalGeneration
from vaswani_hf.pipeline_vaswani import TranslationPipeline
from vaswani_hf.tokenization import load_tokenizer

from .bf16 import decoding_variants
from .harness import machine

Engine = Callable[[list[str]], list[str]]
ENGINES = (
    "ours_pipeline",
    "ours_evaluate",
    "ours_evaluate_history_copies",  # beam reorders copy the self-attention histories (attention without 4-D masks)
    "ours_evaluate_bfloat16",  # the weights cast to bfloat16 (--dtype bfloat16): only on a CPU with bf16 units
    "marian",
    "ctranslate2_float32",
    "ctranslate2_int8",
)


def load_test_set(
    corpus_dir: str | Path, source_lang: str = "en", target_lang: str = "de", split: str = "test_2016_flickr"
) -> tuple[list[str], list[str]]:
    """(sources, references) of a split of a Moses-style corpus folder (Multi30k's test_2016_flickr by default)."""
    pairs = load_parallel_corpus(corpus_dir, source_lang, target_lang, splits={"test": split})["test"]["translation"]
    return [pair[source_lang] for pair in pairs], [pair[target_lang] for pair in pairs]


def history_copies():
    """Beam reorders that copy the self-attention histories, as under attention implementations without 4-D masks."""
    return mock.patch.object(generation, "_BEAM_MASK_ATTENTION", {})


@contextmanager
def as_before():
    """Ours as it decoded before issue 22: `evaluation.translate` batching sentences in order of characters, the
    pipeline in the order given, finished sentences kept in the running batch to the end, and beam reorders copying
    the self-attention histories."""
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(generation, "DROP_FINISHED_SENTENCES", False))
        stack.enter_context(history_copies())
        stack.enter_context(
            mock.patch.object(TranslationPipeline, "length_order", lambda self, texts: list(range(len(texts))))
        )
        stack.enter_context(
            mock.patch.object(evaluation, "source_lengths", lambda tokenizer, sources: [len(s) for s in sources])
        )
        yield


def _our_engine(name: str, model, tokenizer, batch_size: int, decoding: dict) -> Engine:
    """`ours_pipeline`, `ours_evaluate` or `ours_evaluate_history_copies`."""
    if name == "ours_pipeline":
        translator = pipeline("translation", model=model, tokenizer=tokenizer, device=model.device)

        def through_pipeline(sources: list[str]) -> list[str]:
            return [output["translation_text"] for output in translator(sources, batch_size=batch_size, **decoding)]

        return through_pipeline

    def through_evaluate(sources: list[str]) -> list[str]:
        with history_copies() if name == "ours_evaluate_history_copies" else ExitStack():
            return evaluation.translate(
                model, tokenizer, sources, batch_size=batch_size, progress_bar=False, **decoding
            )

    return through_evaluate


def _our_bfloat16_engine(model, tokenizer, batch_size: int, decoding: dict) -> Engine:
    """`evaluation.translate` with the weights cast to bfloat16, as `vaswani-evaluate --dtype bfloat16` runs it."""
    bfloat16_weights = decoding_variants(model)["bfloat16_weights"]

    def through_evaluate(sources: list[str]) -> list[str]:
        return bfloat16_weights(tokenizer, sources, batch_size=batch_size, progress_bar=False, **decoding)

    return through_evaluate


def _before(engine: Engine) -> Engine:
    def run(sources: list[str]) -> list[str]:
        with as_before():
            return engine(sources)

    return run


def _marian_engine(model, tokenizer, batch_size: int, decoding: dict) -> Engine:
    """MarianMTModel with our weights through transformers' `generate`, on `evaluation.translate`'s batches (sorted
    by tokens), with our per-sentence length limit (source + 50, Sec. 6.1) so that it runs the same search."""
    marian = convert_to_marian(model).eval()
    offset = model.generation_config.max_new_tokens_offset

    def run(sources: list[str]) -> list[str]:
        lengths = evaluation.source_lengths(tokenizer, sources)
        order = sorted(range(len(sources)), key=lengths.__getitem__)
        translations = [""] * len(sources)
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = tokenizer([sources[i] for i in indices], return_tensors="pt", padding=True)
            limits = target_length_limits(model.config, batch["attention_mask"], offset)
            limit = SourceLengthLimitLogitsProcessor(
                limits.repeat_interleave(decoding["num_beams"]), model.config.eos_token_id
            )
            generated = marian.generate(
                **batch, logits_processor=LogitsProcessorList([limit]), max_new_tokens=int(limits.max()) + 1, **decoding
            )
            for index, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
                translations[index] = text
        return translations

    return run


def _ctranslate2_engine(model, tokenizer, folder: Path, quantization: str, batch_size: int, decoding: dict) -> Engine:
    import ctranslate2

    path = export_ctranslate2(model, tokenizer, folder / quantization, quantization=quantization)
    translator = ctranslate2.Translator(str(path), device="cpu", intra_threads=torch.get_num_threads())

    def run(sources: list[str]) -> list[str]:
        tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(sources)["input_ids"]]
        results = translator.translate_batch(
            tokens,
            max_batch_size=batch_size,
            beam_size=decoding["num_beams"],
            length_penalty=decoding["length_penalty"],
        )
        return [tokenizer.convert_tokens_to_string(result.hypotheses[0]) for result in results]

    return run


def _engine(name: str, model, tokenizer, folder: Path, batch_size: int, decoding: dict) -> Engine:
    """The engine called `name` (one of `ENGINES`, or `ours_pipeline_before` / `ours_evaluate_before`)."""
    if name.endswith("_before"):
        return _before(_engine(name.removesuffix("_before"), model, tokenizer, folder, batch_size, decoding))
    if name == "ours_evaluate_bfloat16":
        return _our_bfloat16_engine(model, tokenizer, batch_size, decoding)
    if name == "marian":
        return _marian_engine(model, tokenizer, batch_size, decoding)
    if name.startswith("ctranslate2_"):
        return _ctranslate2_engine(model, tokenizer, folder, name.removeprefix("ctranslate2_"), batch_size, decoding)
    return _our_engine(name, model, tokenizer, batch_size, decoding)


def _serve_engines(
    connection, names: list[str], model_dir: str, batch_size: int, decoding: dict, threads: int, warm_up: list[str]
) -> None:
    """A worker process's loop: build the engines `names`, translate `warm_up` once with each (first-call
    allocations, kernel choices), say "ready", then time each (engine, sources) received until None comes."""
    try:
        torch.set_num_threads(threads)
        model = VaswaniForConditionalGeneration.from_pretrained(model_dir).eval()
        tokenizer = load_tokenizer(model_dir)
        with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
            engines = {name: _engine(name, model, tokenizer, Path(folder), batch_size, decoding) for name in names}
            for engine in engines.values():
                engine(warm_up)
            connection.send(("ready", None))
            while (request := connection.recv()) is not None:
                name, sources = request
                started = time.perf_counter()
                translations = engines[name](sources)
                connection.send((time.perf_counter() - started, translations))
    except Exception:
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def _reply(process: str, connection):
    """The worker's answer, or its error raised here with the process's name."""
    try:
        status, value = connection.recv()
    except EOFError:
        raise RuntimeError(f"the {process} process ended without answering") from None
    if status == "error":
        raise RuntimeError(f"the {process} process failed:\n{value}")
    return status, value


def _engine_names(engines: tuple[str, ...], before: bool) -> list[str]:
    names = []
    for name in ENGINES:
        if name in engines:
            if name == "ours_evaluate_bfloat16" and not cpu_has_native_bfloat16():
                continue
            names.append(name)
        if name == "ours_evaluate_history_copies" and before:  # where they stood in the tables before
            names += [f"{ours}_before" for ours in ("ours_pipeline", "ours_evaluate") if ours in engines]
    return names


def translate_benchmark(
    model_dir: str | Path,
    corpus_dir: str | Path,
    batch_size: int = 64,
    repeats: int = 3,
    sentences: int | None = None,
    before: bool = True,
    engines: tuple[str, ...] = ENGINES,
    source_lang: str = "en",
    target_lang: str = "de",
    one_process: bool = False,
) -> dict:
    """Translate the test set with every engine, `repeats` rounds alternating (the order reversed every other round)
    after one warm-up translation of `batch_size` sentences; `sentences` limits the test set (for quick runs). The
    PyTorch engines run in one worker process, each CTranslate2 engine in its own (all in one with `one_process`, to
    measure what a translator does to its neighbours); one engine runs at a time."""
    started_on = machine()  # its load average is the machine's before this run's own load
    sources, references = load_test_set(corpus_dir, source_lang, target_lang)
    if sentences is not None:
        sources, references = sources[:sentences], references[:sentences]
    decoding = {"num_beams": 4, "length_penalty": 0.6}
    names = _engine_names(engines, before)
    # the worker process of each engine: each CTranslate2 engine its own, the PyTorch ones together
    process_of = {name: name if name.startswith("ctranslate2") and not one_process else "pytorch" for name in names}
    processes: dict[str, list[str]] = {}
    for name, process_name in process_of.items():
        processes.setdefault(process_name, []).append(name)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing loaded by another process's engines
    workers = {}
    try:
        for process_name, served in processes.items():
            connection, child_connection = context.Pipe()
            arguments = (child_connection, served, str(model_dir), batch_size, decoding, torch.get_num_threads())
            process = context.Process(target=_serve_engines, args=(*arguments, sources[:batch_size]), daemon=True)
            process.start()
            child_connection.close()
            workers[process_name] = (process, connection)
        for process_name, (_, connection) in workers.items():
            _reply(process_name, connection)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        outputs: dict[str, list[str]] = {}
        for round_index in range(repeats):
            for name in names if round_index % 2 == 0 else names[::-1]:
                connection = workers[process_of[name]][1]
                connection.send((name, sources))
                elapsed, translations = _reply(process_of[name], connection)
                seconds[name].append(elapsed)
                if outputs.setdefault(name, translations) != translations:
                    raise RuntimeError(f"{name} translated differently in round {round_index}")
    finally:  # also when one failed: the others wait for a request, and None ends them
        for process, connection in workers.values():
            with suppress(OSError):  # a worker that failed has closed its end
                connection.send(None)
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
            connection.close()
    reference_name = "ctranslate2_float32" if "ctranslate2_float32" in names else names[0]
    compared_name = "ours_evaluate" if "ours_evaluate" in names else names[0]
    results: dict = {
        "machine": {
            **started_on,
            "ctranslate2": _version("ctranslate2"),
        },
        "settings": {
            "model": str(model_dir),
            "test_set": f"{Path(corpus_dir).name} test_2016_flickr {source_lang}-{target_lang}",
            "sentences": len(sources),
            "batch_size": batch_size,
            "num_beams": decoding["num_beams"],
            "length_penalty": decoding["length_penalty"],
            "repeats": repeats,
            "processes": "all engines in one"
            if one_process
            else "the PyTorch engines in one, each CTranslate2 engine in its own; one engine runs at a time",
            "process_ids": {name: workers[process_name][0].pid for name, process_name in process_of.items()},
            "speed_relative_to": reference_name,
        },
        "translate": {},
    }
    if "ours_evaluate_bfloat16" in engines and "ours_evaluate_bfloat16" not in names:
        results["skipped"] = {"ours_evaluate_bfloat16": "this CPU has no bfloat16 units (avx512_bf16 / amx_bf16)"}
    for name in names:
        median = statistics.median(seconds[name])
        ratios = [reference / own for reference, own in zip(seconds[reference_name], seconds[name], strict=True)]
        results["translate"][name] = {
            "seconds": round(median, 2),
            "sentences_per_second": round(len(sources) / median, 1),
            "bleu": round(evaluation.bleu(outputs[name], references)["score"], 2),
            f"speed_relative_to_{reference_name}": round(statistics.median(ratios), 3),
            f"same_translations_as_{compared_name}": sum(
                a == b for a, b in zip(outputs[name], outputs[compared_name], strict=True)
            ),
            "all_seconds": [round(s, 2) for s in seconds[name]],
        }
    return results


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
