"""Translation with the paper's decoding and scoring with sacreBLEU (BLEU, chrF) on detokenized text (Sec. 6.1)."""

import os
import re
from collections.abc import Callable

import numpy as np
import sacrebleu
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import BatchEncoding, EvalPrediction, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from .files import read_text_lines, write_text_lines
from .tokenization import load_tokenizer


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
    unless `generate_kwargs` say otherwise). Sentences are batched in order of their number of tokens (least padding)
    and returned in input order. An empty or whitespace-only source translates to `""` without running the model, as
    in the pipeline. A tqdm bar counts the sentences on a terminal (never when stderr is not one, nor with
    `progress_bar=False`).

    With `across_processes`, every process of the run (accelerate's `PartialState`) must call it with the same
    sources: process r of n translates batches r, r + n, ... of the same length-sorted batches one process would
    make, and every process gets all the translations in input order (`gather_object`). One process translates all,
    as without it.

    `batch_logits_processor(sources, batch)`, when given, makes the logits processors of each batch from its sources
    and their encoding, in the order of the batch's rows (constraints that depend on the sentence: parsing.parse)."""
    model.eval()
    to_translate = [index for index, text in enumerate(sources) if text.strip()]
    lengths = source_lengths(tokenizer, [sources[index] for index in to_translate])
    order = [to_translate[position] for position in sorted(range(len(to_translate)), key=lengths.__getitem__)]
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


def source_lengths(tokenizer: PreTrainedTokenizerBase, sources: list[str]) -> list[int]:
    """The number of tokens of each source, as `translate` encodes it: the key its batches are sorted by."""
    if not sources:  # the tokenizer fails on an empty list
        return []
    return [len(ids) for ids in tokenizer(list(sources))["input_ids"]]


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


def evaluate_files(
    model_name_or_path: str | os.PathLike,
    source_file: str | os.PathLike,
    reference_file: str | os.PathLike,
    output_file: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    across_processes: bool = False,
    **generate_kwargs,
) -> dict | None:
    """Translate `source_file` with a saved model (its weights in `dtype`) and its tokenizer on `device`, `batch_size`
    sentences at a time, score against `reference_file`, optionally write the translations (one a line,
    atomically); returns the BLEU result. `generate_kwargs` (`num_beams`, `length_penalty`, ...) override the model's
    generation config. Lines end at "\n" only (`read_text_lines`); an empty file, or files whose line counts differ
    (one hypothesis is made per source line), are refused naming them, before the model is loaded.

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
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path, dtype=dtype).to(device)
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
