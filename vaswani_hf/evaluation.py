"""Translation with the paper's decoding and scoring with sacreBLEU (BLEU, chrF) on detokenized text (Sec. 6.1)."""

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sacrebleu
import torch
from tqdm.auto import tqdm
from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

from .tokenization import load_tokenizer


@torch.no_grad()
def translate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: list[str],
    batch_size: int = 64,
    progress_bar: bool = True,
    description: str = "Translating",
    **generate_kwargs,
) -> list[str]:
    """Translate `sources` with `model.generate` (its generation config: beam 4, length penalty 0.6, length limit,
    unless `generate_kwargs` say otherwise). Sentences are batched by length and returned in input order. A tqdm bar
    counts the sentences on a terminal (never when stderr is not one, nor with `progress_bar=False`)."""
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    translations: list[str] = [""] * len(sources)
    # disable=None: tqdm turns itself off when stderr is not a terminal (logs, pipes, CI)
    with tqdm(
        total=len(sources),
        desc=description,
        unit="sentence",
        disable=None if progress_bar else True,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = tokenizer([sources[i] for i in indices], return_tensors="pt", padding=True).to(model.device)
            generated = model.generate(**batch, **generate_kwargs)
            for index, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
                translations[index] = text
            bar.update(len(indices))
    return translations


def _corpus_score(metric, hypotheses: list[str], references: list[str], fields: tuple[str, ...]) -> dict:
    """A sacreBLEU metric's corpus score: `score`, the result's `fields`, and the `signature` to quote with it."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    result = metric.corpus_score(hypotheses, [references])
    return {
        "score": result.score,
        **{name: getattr(result, name) for name in fields},
        "signature": str(metric.get_signature()),
    }


def bleu(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU of detokenized text with sacreBLEU's defaults (13a tokenizer, cased), in the keys of the
    `evaluate` sacrebleu metric (`score`, `counts`, `totals`, `precisions`, `bp`, `sys_len`, `ref_len`) plus the
    `signature` to quote with the score."""
    fields = ("counts", "totals", "precisions", "bp", "sys_len", "ref_len")
    return _corpus_score(sacrebleu.BLEU(), hypotheses, references, fields)


def chrf(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus chrF of detokenized text with sacreBLEU's defaults (character 6-grams, no word n-grams, beta 2): the
    `score`, those settings, and the `signature` to quote with the score."""
    return _corpus_score(sacrebleu.CHRF(), hypotheses, references, ("char_order", "word_order", "beta"))


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


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """One sentence a line, UTF-8 (a clear error names the file otherwise)."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not valid UTF-8: {error}") from error


def evaluate_files(
    model_name_or_path: str | os.PathLike,
    source_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    **generate_kwargs,
) -> dict:
    """Translate `source_file` with a saved model and its tokenizer, score against `reference_file`, optionally
    write the translations; returns the BLEU result."""
    from transformers import AutoModelForSeq2SeqLM

    sources, references = read_text_lines(source_file), read_text_lines(reference_file)
    if len(sources) != len(references):
        raise ValueError(f"{source_file} has {len(sources)} lines but {reference_file} has {len(references)}")
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path)
    tokenizer = load_tokenizer(model_name_or_path)
    result, hypotheses = evaluate_translation(model, tokenizer, sources, references, **generate_kwargs)
    if output_file is not None:
        Path(output_file).write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    return result


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


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; on success it replaces `path` in one rename, on failure it is
    removed, so a reader never sees a half-built folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_atomically(path: str | os.PathLike, text: str) -> None:
    """A reader sees the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON atomically."""
    _write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Write one text a line, atomically, so that line i is text i: a line break inside a text (a byte-level model
    can generate one) becomes a space, which the 13a tokenizer of BLEU and chrF treat alike."""
    _write_atomically(path, "".join(" ".join(line.splitlines()) + "\n" for line in lines))
