"""Translation with the paper's decoding and scoring with sacreBLEU (BLEU, chrF) on detokenized text (Sec. 6.1)."""

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sacrebleu
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import BatchEncoding, EvalPrediction, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from .tokenization import load_tokenizer

logger = logging.getLogger(__name__)


@torch.no_grad()
def translate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: list[str],
    batch_size: int = 64,
    progress_bar: bool = True,
    description: str = "Translating",
    across_processes: bool = False,
    batch_logits_processor: Callable[[list[str], BatchEncoding], LogitsProcessorList] | None = None,
    **generate_kwargs,
) -> list[str]:
    """Translate `sources` with `model.generate` (its generation config: beam 4, length penalty 0.6, length limit,
    unless `generate_kwargs` say otherwise). Sentences are batched by length and returned in input order. A tqdm bar
    counts the sentences on a terminal (never when stderr is not one, nor with `progress_bar=False`).

    With `across_processes`, every process of the run (accelerate's `PartialState`) must call it with the same
    sources: process r of n translates batches r, r + n, ... of the same length-sorted batches one process would
    make, and every process gets all the translations in input order (`gather_object`). One process translates all,
    as without it.

    `batch_logits_processor(sources, batch)`, when given, makes the logits processors of each batch from its sources
    and their encoding, in the order of the batch's rows (constraints that depend on the sentence: parsing.parse)."""
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    state = PartialState() if across_processes else None
    if state is not None:
        batches = batches[state.process_index :: state.num_processes]
    translated: list[tuple[int, str]] = []
    # disable=None: tqdm turns itself off when stderr is not a terminal (logs, pipes, CI); one bar, the main process's
    shown = progress_bar and (state is None or state.is_main_process)
    with tqdm(
        total=sum(map(len, batches)),
        desc=description,
        unit="sentence",
        disable=None if shown else True,
        dynamic_ncols=True,
    ) as bar:
        for indices in batches:
            batch_sources = [sources[i] for i in indices]
            batch = tokenizer(batch_sources, return_tensors="pt", padding=True).to(model.device)
            if batch_logits_processor is not None:
                generate_kwargs["logits_processor"] = batch_logits_processor(batch_sources, batch)
            generated = model.generate(**batch, **generate_kwargs)
            translated.extend(zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True))
            bar.update(len(indices))
    if state is not None and state.num_processes > 1:
        translated = gather_object(translated)  # every process's (index, translation) pairs, to every process
    translations: list[str] = [""] * len(sources)
    for index, text in translated:
        translations[index] = text
    return translations


def _corpus_score(metric, hypotheses: list[str], references: list[str], fields: tuple[str, ...]) -> dict:
    """A sacreBLEU metric's corpus score: `score`, the result's `fields`, and the `signature` to quote with it."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:  # sacreBLEU would fail with an IndexError
        raise ValueError("no sentences to score: the hypotheses and references are empty")
    result = metric.corpus_score(hypotheses, [references])
    return {
        "score": result.score,
        **{name: getattr(result, name) for name in fields},
        "signature": str(metric.get_signature()),
    }


BLEU_FIELDS = ("counts", "totals", "precisions", "bp", "sys_len", "ref_len")


def bleu(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU of detokenized text with sacreBLEU's defaults (13a tokenizer, cased), in the keys of the
    `evaluate` sacrebleu metric (`score`, `counts`, `totals`, `precisions`, `bp`, `sys_len`, `ref_len`) plus the
    `signature` to quote with the score."""
    return _corpus_score(sacrebleu.BLEU(), hypotheses, references, BLEU_FIELDS)


def chrf(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus chrF of detokenized text with sacreBLEU's defaults (character 6-grams, no word n-grams, beta 2): the
    `score`, those settings, and the `signature` to quote with the score."""
    return _corpus_score(sacrebleu.CHRF(), hypotheses, references, ("char_order", "word_order", "beta"))


# The paper's BLEU (27.3 / 28.4 En-De, 38.1 / 41.8 En-Fr) is tensor2tensor's get_ende_bleu.sh: Moses-tokenized text,
# compounds split by `perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'`, then multi-bleu.perl (no smoothing). Scores on
# tokenized text are not comparable to sacreBLEU's, hence the label stored with every such score.
TOKENIZED_BLEU_LABEL = "tokenized BLEU (tensor2tensor get_ende_bleu, not comparable to sacreBLEU)"
# Like Perl's s///g, re.sub does not overlap matches: "a-b-c" becomes "a ##AT##-##AT## b-c", as in t2t's numbers.
COMPOUND_HYPHEN = re.compile(r"(\S)-(\S)")
_TOKENIZER_13A = sacrebleu.BLEU(tokenize="13a").tokenizer


def tokenize_as_t2t(text: str) -> str:
    """`text` as get_ende_bleu scores it: tokenized (sacreBLEU's 13a, mteval's tokenizer, standing in for Moses'
    tokenizer.perl; both keep hyphens inside words), then every hyphen between two non-space characters set apart
    as the token ##AT##-##AT##."""
    return COMPOUND_HYPHEN.sub(r"\1 ##AT##-##AT## \2", _TOKENIZER_13A(text))


def tokenized_bleu(hypotheses: list[str], references: list[str]) -> dict:
    """The paper's metric, for comparison with its tables only: corpus BLEU of `tokenize_as_t2t` text, split at
    spaces (sacreBLEU with tokenize none), unsmoothed as multi-bleu.perl; the keys of `bleu`, plus `label`
    (`TOKENIZED_BLEU_LABEL`). The honest score to report is `bleu`'s sacreBLEU."""
    metric = sacrebleu.BLEU(tokenize="none", smooth_method="none")
    tokenized = [tokenize_as_t2t(text) for text in hypotheses], [tokenize_as_t2t(text) for text in references]
    return {**_corpus_score(metric, *tokenized, BLEU_FIELDS), "label": TOKENIZED_BLEU_LABEL}


def evaluate_translation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: list[str],
    references: list[str],
    **generate_kwargs,
) -> tuple[dict, list[str]]:
    """Translate and score: (BLEU result, hypotheses)."""
    hypotheses = translate(model, tokenizer, sources, **generate_kwargs)
    return bleu(hypotheses, references), hypotheses


# Every character str.splitlines() breaks at: a translation holding one would become two lines for some reader.
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """One sentence a line, UTF-8 (`split_text_lines`; a clear error names the file otherwise)."""
    return split_text_lines(Path(path).read_bytes(), str(path))


def split_text_lines(data: bytes, name: str) -> list[str]:
    """UTF-8 `data` split at "\n" only (a trailing "\r" is dropped), so that line N is line N for `wc -l`, `sed`
    and `paste` too; `name` (a file, or standard input) and the line are named if it is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{name} is not valid UTF-8 (line {line}): {error}") from error
    lines = text.split("\n")
    if lines[-1] == "":  # the newline ending the last line starts no new one
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def as_one_line(text: str) -> str:
    """`text` with its line breaks (of any kind) replaced by spaces, so it cannot shift the lines after it."""
    return LINE_BREAKS.sub(" ", text)


def as_text_lines(lines: list[str]) -> str:
    """One line per item (`as_one_line`), each ended by "\n"."""
    return "".join(as_one_line(line) + "\n" for line in lines)


def write_text_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Write `as_text_lines(lines)` in UTF-8, atomically (`write_text`)."""
    write_text(path, as_text_lines(lines))


def evaluate_files(
    model_name_or_path: str | os.PathLike,
    source_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    across_processes: bool = False,
    **generate_kwargs,
) -> dict | None:
    """Translate `source_file` with a saved model and its tokenizer on `device`, `batch_size` sentences at a time,
    score against `reference_file`, optionally write the translations (one a line, atomically); returns the BLEU
    result. `generate_kwargs` (`num_beams`, `length_penalty`, ...) override the model's generation config. Lines end
    at "\n" only (`read_text_lines`); an empty file, or files whose line counts differ (one hypothesis is made per
    source line), are refused naming them, before the model is loaded.

    With `across_processes` (under `accelerate launch`), every process calls it and translates its share
    (`translate`); the main process alone scores and writes, and the others return None."""
    from transformers import AutoModelForSeq2SeqLM

    sources, references = read_text_lines(source_file), read_text_lines(reference_file)
    for path, lines in ((source_file, sources), (reference_file, references)):
        if not lines:
            raise ValueError(f"{path} is empty: give a file of one sentence a line")
    if len(sources) != len(references):
        raise ValueError(
            f"{source_file} has {len(sources)} lines but {reference_file} has {len(references)}: the sources and"
            " references must align line by line (lines end at \\n only)"
        )
    if across_processes:  # on a CPU, accelerate joins the processes (gloo) only when told that the CPU is the device
        PartialState(cpu=torch.device(device).type == "cpu")
    tokenizer = load_tokenizer(model_name_or_path)  # before the model: a missing tokenizer fails fast
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path).to(device)
    hypotheses = translate(
        model, tokenizer, sources, batch_size=batch_size, across_processes=across_processes, **generate_kwargs
    )
    if across_processes and not PartialState().is_main_process:
        return None
    if output_file is not None:
        write_text_lines(output_file, hypotheses)
    return bleu(hypotheses, references)


def bleu_metric_for_trainer(tokenizer: PreTrainedTokenizerBase) -> Callable[[EvalPrediction], dict]:
    """`compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)`: BLEU of the decoded generations against
    the decoded labels (the tokenizer round-trips text exactly, so these are the references)."""

    def compute_metrics(prediction: EvalPrediction) -> dict:
        predictions = np.where(prediction.predictions < 0, tokenizer.pad_token_id, prediction.predictions)
        labels = np.where(prediction.label_ids < 0, tokenizer.pad_token_id, prediction.label_ids)
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return {"bleu": bleu(hypotheses, references)["score"]}

    return compute_metrics


# What a command that builds a folder whole records beside it (`atomic_folder(built_by=...)`): the folder's file names,
# so the same command may later rebuild it without an overwrite flag, as long as it holds nothing else.
BUILT_BY_SUFFIX = ".built-by.json"


def _built_by_record(path: Path) -> Path:
    return path.with_name(f".{path.name}{BUILT_BY_SUFFIX}")


def check_output_folder(
    path: str | os.PathLike,
    overwrite: bool = False,
    keep: Iterable[tuple[str, str | os.PathLike]] = (),
    untouched: Iterable[tuple[str, str | os.PathLike]] = (),
    built_by: str | None = None,
) -> None:
    """Refuse `path` as a folder to build and replace whole (`atomic_folder`) where that would lose something: the
    current directory or a folder holding it; a folder in `keep` ((what, folder) pairs, such as ("the training run",
    run_dir)) or a folder holding one; a folder inside one in `untouched`; something that is not a folder; or an
    existing non-empty folder, unless `overwrite` or `built_by` built it (its record beside it lists exactly what it
    holds). The first four are refused even with `overwrite`. Raises a `FileExistsError` naming the problem."""
    path = Path(path)
    target = path.resolve()
    if Path.cwd().resolve().is_relative_to(target):
        where = "is" if Path.cwd().resolve() == target else "holds"
        raise FileExistsError(
            f"{path} {where} the current directory: replacing it would delete it; choose another folder"
        )
    for what, folder in keep:
        if Path(folder).exists() and Path(folder).resolve().is_relative_to(target):
            where = "is" if Path(folder).resolve() == target else "holds"
            raise FileExistsError(
                f"{path} {where} {what} {folder}: replacing it would delete {what}; choose another folder"
            )
    for what, folder in untouched:
        if Path(folder).exists() and target.is_relative_to(Path(folder).resolve()):
            raise FileExistsError(
                f"{path} is inside {what} {folder}: writing there would change it; choose another folder"
            )
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileExistsError(f"{path} exists and is not a folder; choose another path")
    present = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    if not present or overwrite:
        return
    if built_by is not None and _built_by_record(path).is_file():
        try:
            record = json.loads(_built_by_record(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        if record.get("built_by") == built_by:
            others = sorted(set(present) - set(record.get("files", [])))
            if not others:
                return
            raise FileExistsError(
                f"{path} was built by {built_by} but now also holds {others}; move them, or pass --overwrite "
                "(overwrite=True) to replace the folder"
            )
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    raise FileExistsError(
        f"{path} exists and is not empty ({shown}); choose another folder, or pass --overwrite (overwrite=True) to "
        "replace it"
    )


def _swap_folders(path: Path) -> tuple[Path, Path]:
    """Where `atomic_folder` builds the new folder for `path`, and where it moves the old one during the swap."""
    path = Path(os.path.abspath(path))  # "." and ".." have no name to put beside them (they are refused later)
    return path.with_name(f".{path.name}.atomic-new"), path.with_name(f".{path.name}.atomic-old")


def recover_interrupted_swap(path: str | os.PathLike) -> None:
    """Finish what a kill inside `atomic_folder` left beside `path`, with a warning: an old folder moved aside while
    nothing is at `path` (killed between the two renames) is put back; one moved aside while the new folder is in
    place (killed before deleting it) is deleted; a new folder that was never renamed in is deleted. `atomic_folder`
    calls it first; running it again after a kill inside it goes on where it stopped."""
    path = Path(path)
    if not Path(os.path.abspath(path)).name:  # the root: never built (check_output_folder refuses it)
        return
    new, old = _swap_folders(path)
    if old.is_dir():
        if path.exists() or path.is_symlink():
            logger.warning("%s: deleting %s, the old folder an interrupted replacement left aside", path, old)
            shutil.rmtree(old)
        else:
            logger.warning("%s: an interrupted replacement left it missing; putting back the old folder %s", path, old)
            os.replace(old, path)
    if new.is_dir():
        logger.warning("%s: deleting %s, a new folder an interrupted build never put in place", path, new)
        shutil.rmtree(new)


@contextmanager
def atomic_folder(
    path: str | os.PathLike,
    overwrite: bool = False,
    keep: Iterable[tuple[str, str | os.PathLike]] = (),
    untouched: Iterable[tuple[str, str | os.PathLike]] = (),
    built_by: str | None = None,
) -> Iterator[Path]:
    """Yield an empty folder beside `path` to build in; on success it replaces `path`, on failure it is removed, so
    a reader never sees a half-built folder. The swap moves the old folder aside, renames the new one in, then
    deletes the old one: a kill at any moment leaves the old folder or the new one at `path`, or the old one aside
    with nothing at `path`, which the next call puts back first (`recover_interrupted_swap`). `path` is checked by
    `check_output_folder` (same arguments): nothing it refuses is ever replaced. With `built_by`, the folder's file
    names are recorded beside it so that the same command may rebuild it."""
    path = Path(path)
    keep, untouched = list(keep), list(untouched)
    recover_interrupted_swap(path)
    check_output_folder(path, overwrite=overwrite, keep=keep, untouched=untouched, built_by=built_by)
    path.parent.mkdir(parents=True, exist_ok=True)
    new, old = _swap_folders(path)
    new.mkdir()
    try:
        yield new
        # again: the build may have run long enough for something to be written there meanwhile
        check_output_folder(path, overwrite=overwrite, keep=keep, untouched=untouched, built_by=built_by)
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
        record = _built_by_record(path)
        if built_by is None:
            record.unlink(missing_ok=True)
        else:
            write_json(record, {"built_by": built_by, "files": sorted(entry.name for entry in path.iterdir())})
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def read_json(path: str | os.PathLike):
    """The JSON value in `path`; a file that is not valid JSON (a truncated write, say) is a `ValueError` naming it
    (json's own error names only the line and column)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON (truncated or damaged?): {error}") from error


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON atomically (`write_text`)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically: a reader sees the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(staging, "xb") as f:  # a plain new file: the usual permissions (tempfile's would be 0600)
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
