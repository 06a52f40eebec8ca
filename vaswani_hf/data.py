"""Parallel data: loading a corpus, tokenizing and filtering it, and batching by tokens (Sec. 5.1).

`load_parallel_corpus` returns a `DatasetDict` with a `translation` column shaped like the Hub's `wmt/wmt14`
(`{"en": ..., "de": ...}`), from a Hub dataset, a folder of Moses-style files, or TSV / JSON-lines files.
"""

import gzip
import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, Features, Translation, load_dataset
from torch.utils.data import Sampler
from transformers import PreTrainedTokenizerBase

TABULAR_SUFFIXES = (".tsv", ".jsonl", ".json")
# Output split names -> file stems of Multi30k task 1 (../shared/data/multi30k), named like the Hub's splits.
MULTI30K_SPLITS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}


def load_parallel_corpus(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    source_lang: str,
    target_lang: str,
    config_name: str | None = None,
    splits: Mapping[str, str] | None = None,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Sentence pairs as a `DatasetDict` with a `translation` column.

    `source` is one of:
    - a folder of Moses-style files `{split}.{lang}` or `{split}.{lang}.gz`, aligned by line (Multi30k's layout);
      `splits` maps output split names to file stems, e.g. `{"validation": "val"}`; by default every stem with
      files for both languages becomes a split of its own name;
    - a mapping of split name to a TSV file (a header row naming the two languages) or a JSON-lines file (objects
      `{"translation": {lang: text}}` or `{lang: text}`); a single such file is the `train` split;
    - otherwise the id of a Hub dataset, with `config_name`: either with a `translation` column (`wmt/wmt14`,
      `de-en`) or with one text column per language (`bentrevett/multi30k`: rows `{"en": ..., "de": ...}`), whose
      two columns become the `translation` column.
    A path that does not exist (it starts with `.`, `/` or `~`, or has more than one `/`) is named in a
    `FileNotFoundError` rather than looked up on the Hub; a file of another kind (a zip, say) is a `ValueError`.
    """
    if source_lang == target_lang:
        raise ValueError(f"source and target language are both {source_lang!r}")
    if isinstance(source, Mapping):
        files = {split: Path(path) for split, path in source.items()}
        return DatasetDict(
            {split: _tabular_split(path, source_lang, target_lang, cache_dir) for split, path in files.items()}
        )
    path = Path(source)
    if path.is_dir():
        return _moses_folder(path, source_lang, target_lang, splits, cache_dir)
    if path.suffix in TABULAR_SUFFIXES:
        return DatasetDict({"train": _tabular_split(path, source_lang, target_lang, cache_dir)})
    if path.is_file():
        raise ValueError(
            f"{path} is no file of sentence pairs ({', '.join(TABULAR_SUFFIXES)}) and no folder; another format is"
            " read by its own loader: a Penn Treebank zip by corpus.load_corpus(..., dataset_format='treebank')"
            " (in a recipe: dataset_format: treebank)"
        )
    if not is_hub_repo_id(str(source)):
        raise FileNotFoundError(f"no folder or file {source} (a Hub dataset id is NAME or OWNER/NAME)")
    return _hub_dataset(str(source), config_name, source_lang, target_lang, cache_dir)


def is_hub_repo_id(source: str) -> bool:
    """Whether `source` names a Hub repo (a dataset or a tokenizer: NAME or OWNER/NAME) rather than a local path: it
    does not exist here and does not look like a path (starting with `.`, `/` or `~`, or with more than one `/`)."""
    return not Path(source).exists() and not source.startswith((".", "/", "~")) and source.count("/") <= 1


def _moses_folder(
    folder: Path, source_lang: str, target_lang: str, splits: Mapping[str, str] | None, cache_dir: str | None
) -> DatasetDict:
    by_stem: dict[str, dict[str, Path]] = {}
    for path in folder.iterdir():
        name = path.name.removesuffix(".gz")
        stem, _, lang = name.rpartition(".")
        if stem and lang:
            by_stem.setdefault(stem, {})[lang] = path
    languages = sorted({lang for files in by_stem.values() for lang in files})
    for lang in (source_lang, target_lang):
        if lang not in languages:
            raise ValueError(f"language {lang!r} has no files in {folder}; languages there: {languages}")
    if splits is None:
        splits = {stem: stem for stem, files in sorted(by_stem.items()) if {source_lang, target_lang} <= files.keys()}
    result = {}
    for split, stem in splits.items():
        pair = []
        for lang in (source_lang, target_lang):
            path = by_stem.get(stem, {}).get(lang)
            if path is None:
                raise FileNotFoundError(f"split {split!r}: no file {folder / f'{stem}.{lang}'}(.gz)")
            pair.append(path)
        result[split] = _aligned_files_split(pair[0], pair[1], source_lang, target_lang, split, cache_dir)
    return DatasetDict(result)


def _lines(path: Path) -> Iterator[str]:
    """The file's lines without their line ends, read lazily (gzip or plain), with a clear error for bad UTF-8."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="\n") as f:
            for line in f:
                yield line.rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not valid UTF-8: {error}") from error
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:  # not gzip, cut short, or corrupted
        raise ValueError(
            f"{path} cannot be read as gzip ({error}): it is truncated, damaged or not gzip-compressed; copy it again,"
            " or decompress it and drop the .gz from its name"
        ) from error


def _aligned_files_split(
    source_file: Path, target_file: Path, source_lang: str, target_lang: str, split: str, cache_dir: str | None
) -> Dataset:
    counts = {}
    for path in (source_file, target_file):
        counts[path] = sum(1 for _ in _lines(path))
        if counts[path] == 0:
            raise ValueError(f"{path} is empty")
    if counts[source_file] != counts[target_file]:
        raise ValueError(
            f"{source_file} has {counts[source_file]} lines but {target_file} has {counts[target_file]}:"
            " parallel files must align line by line"
        )
    return _cached_dataset(
        _moses_pairs,
        dict(source_file=str(source_file), target_file=str(target_file)),
        [source_file, target_file],
        source_lang,
        target_lang,
        cache_dir,
    )


def _moses_pairs(source_file: str, target_file: str, source_lang: str, target_lang: str, stamps: str) -> Iterator[dict]:
    for source_text, target_text in zip(_lines(Path(source_file)), _lines(Path(target_file)), strict=True):
        yield {"translation": {source_lang: source_text, target_lang: target_text}}


def _tabular_split(path: Path, source_lang: str, target_lang: str, cache_dir: str | None) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    rows = list(_tabular_pairs(str(path), source_lang, target_lang, ""))
    if not rows:
        raise ValueError(f"{path} holds no sentence pairs")
    return _cached_dataset(_tabular_pairs, dict(file=str(path)), [path], source_lang, target_lang, cache_dir)


def _tabular_pairs(file: str, source_lang: str, target_lang: str, stamps: str) -> Iterator[dict]:
    path = Path(file)
    langs = (source_lang, target_lang)
    lines = list(_lines(path))
    if path.suffix == ".tsv":
        header = lines[0].split("\t") if lines else []
        missing = [lang for lang in langs if lang not in header]
        if missing:
            raise ValueError(f"{path}: the header row {header} names no column for {missing}")
        columns = [header.index(lang) for lang in langs]
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) != len(header):
                raise ValueError(f"{path}:{number}: {len(fields)} tab-separated fields, the header has {len(header)}")
            yield {"translation": {lang: fields[column] for lang, column in zip(langs, columns, strict=True)}}
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error}); each line holds one pair") from error
        pair = record.get("translation", record) if isinstance(record, dict) else record
        if not isinstance(pair, dict):
            raise ValueError(
                f"{path}:{number}: {json.dumps(pair)[:80]} is not an object of"
                ' {"translation": {lang: text}} or {lang: text}'
            )
        missing = [lang for lang in langs if lang not in pair]
        if missing:
            raise ValueError(f"{path}:{number}: no text for {missing}; keys there: {sorted(pair)}")
        for lang in langs:
            if not isinstance(pair[lang], str):
                raise ValueError(f"{path}:{number}: the {lang!r} text is {json.dumps(pair[lang])[:80]}, not a string")
        yield {"translation": {lang: pair[lang] for lang in langs}}


def _cached_dataset(generator, gen_kwargs: dict, files: list[Path], source_lang, target_lang, cache_dir) -> Dataset:
    # The files' sizes and modification times are part of the cache key, so an edited file is read again.
    # (gen_kwargs hold no lists: `datasets` would take a list for shards.)
    stamps = json.dumps([[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in files])
    return Dataset.from_generator(
        generator,
        features=Features({"translation": Translation(languages=[source_lang, target_lang])}),
        gen_kwargs={**gen_kwargs, "source_lang": source_lang, "target_lang": target_lang, "stamps": stamps},
        cache_dir=cache_dir,
    )


def _hub_dataset(
    name: str, config_name: str | None, source_lang: str, target_lang: str, cache_dir: str | None
) -> DatasetDict:
    corpus = load_dataset(name, config_name, cache_dir=cache_dir)
    where = name if config_name is None else f"{name} ({config_name})"
    pairs = {}
    for split, dataset in corpus.items():
        feature = dataset.features.get("translation")
        # a Translation feature (wmt/wmt14) or a struct of one string per language
        languages = feature.languages if isinstance(feature, Translation) else list(feature or dataset.features)
        missing = [lang for lang in (source_lang, target_lang) if lang not in languages]
        if missing:
            found = f"its translation column has {languages}" if feature else f"its columns are {languages}"
            raise ValueError(
                f"{where} split {split!r} has no text for {missing}: {found}; a translation corpus has a"
                " 'translation' column of {language: text} or one text column per language"
            )
        pairs[split] = dataset if feature else _flat_columns_to_translation(dataset, source_lang, target_lang)
    return DatasetDict(pairs)


def _flat_columns_to_translation(dataset: Dataset, source_lang: str, target_lang: str) -> Dataset:
    """Rows {"en": ..., "de": ..., ...} -> rows {"translation": {"en": ..., "de": ...}}, cached by `datasets`."""

    def pair(batch: dict) -> dict:
        return {
            "translation": [
                {source_lang: source, target_lang: target}
                for source, target in zip(batch[source_lang], batch[target_lang], strict=True)
            ]
        }

    features = Features({"translation": Translation(languages=[source_lang, target_lang])})
    return dataset.map(pair, batched=True, remove_columns=dataset.column_names, features=features)


def preprocess(
    corpus: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    source_lang: str,
    target_lang: str,
    max_source_tokens: int = 256,
    max_target_tokens: int = 256,
    max_length_ratio: float | None = 3.0,
    filter_splits: tuple[str, ...] = ("train",),
    num_proc: int | None = None,
) -> DatasetDict:
    """Tokenize every split (`input_ids`, `attention_mask`, `labels`, and their lengths) with `datasets.map`,
    batched and cached. In `filter_splits` only (training data: evaluation sets stay whole), drop pairs with an
    empty side, more tokens than the maxima, or a token-length ratio above `max_length_ratio`."""

    def tokenize(batch: dict) -> dict:
        sources = [pair[source_lang] for pair in batch["translation"]]
        targets = [pair[target_lang] for pair in batch["translation"]]
        encoded = tokenizer(sources, text_target=targets)
        encoded["source_length"] = [len(ids) for ids in encoded["input_ids"]]
        encoded["target_length"] = [len(ids) for ids in encoded["labels"]]
        return encoded

    def drop_reason(pair: dict, source_length: int, target_length: int) -> str | None:
        """Why the filter drops a pair (the first filter it fails, with the argument that sets it), or None."""
        if not pair[source_lang].strip() or not pair[target_lang].strip():
            return "an empty side"
        if source_length > max_source_tokens:
            return f"more than max_source_tokens={max_source_tokens} source tokens"
        if target_length > max_target_tokens:
            return f"more than max_target_tokens={max_target_tokens} target tokens"
        longer, shorter = max(source_length, target_length), min(source_length, target_length)
        if max_length_ratio is not None and longer > max_length_ratio * shorter:
            return f"a length ratio above max_length_ratio={max_length_ratio}"
        return None

    def keep(batch: dict) -> list[bool]:
        rows = zip(batch["translation"], batch["source_length"], batch["target_length"], strict=True)
        return [drop_reason(*row) is None for row in rows]

    tokenized = corpus.map(tokenize, batched=True, num_proc=num_proc, desc="Tokenizing")
    result = {}
    for split, dataset in tokenized.items():
        if split in filter_splits:
            result[split] = dataset.filter(keep, batched=True, num_proc=num_proc, desc=f"Filtering {split}")
            if len(result[split]) == 0 and len(dataset) > 0:  # nothing to train on: say which filters took what
                columns = zip(dataset["translation"], dataset["source_length"], dataset["target_length"], strict=True)
                reasons = Counter(drop_reason(*row) for row in columns)
                dropped = "; ".join(f"{count} with {reason}" for reason, count in reasons.most_common())
                raise ValueError(
                    f"the length filters drop all {len(dataset)} pairs of split {split!r} ({dropped}): raise those"
                    " limits (max_source_tokens, max_target_tokens, max_length_ratio) or check the data"
                )
        else:
            result[split] = dataset
    return DatasetDict(result)


def padded_size(batch: list[int], source_lengths: list[int], target_lengths: list[int]) -> int:
    """Padded source + padded target tokens of a batch of example indices: what `max_tokens` bounds."""
    return len(batch) * (max(source_lengths[i] for i in batch) + max(target_lengths[i] for i in batch))


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of sentence pairs of similar length holding at most `max_tokens` padded source + padded target
    tokens each, as the paper's ~25,000 + 25,000-token batches (Sec. 5.1).

    Batches are formed once (examples sorted by length, ties broken by `seed`), so every epoch has the same number
    of steps; each epoch visits them in a new order drawn from `seed` and the epoch (`set_epoch`). The batch count
    is made a multiple of `num_replicas` by halving the largest batches, so that the `BatchSamplerShard` of
    `accelerate` gives each process a disjoint share with the same number of steps, and no example is repeated.
    """

    def __init__(
        self,
        source_lengths: list[int],
        target_lengths: list[int],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
    ):
        if len(source_lengths) != len(target_lengths):
            raise ValueError(f"{len(source_lengths)} source lengths but {len(target_lengths)} target lengths")
        if not source_lengths:
            raise ValueError("cannot batch an empty dataset")
        if max_tokens <= 0 or num_replicas <= 0:
            raise ValueError(f"max_tokens and num_replicas must be positive, got {max_tokens} and {num_replicas}")
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.batches = self._split_to_multiple(
            self._form_batches(torch.tensor(list(source_lengths)), torch.tensor(list(target_lengths))), num_replicas
        )

    def _form_batches(self, source_lengths: torch.Tensor, target_lengths: torch.Tensor) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(source_lengths), generator=generator)  # random order within equal lengths
        order = order[torch.argsort(target_lengths[order], stable=True)]
        order = order[torch.argsort(source_lengths[order], stable=True)]
        batches, batch, longest_source, longest_target = [], [], 0, 0
        source_list, target_list = source_lengths.tolist(), target_lengths.tolist()
        for index in order.tolist():
            source, target = source_list[index], target_list[index]
            if source + target > self.max_tokens:
                raise ValueError(
                    f"example {index} has {source} source + {target} target tokens, more than max_tokens="
                    f"{self.max_tokens}: filter long pairs (max_source_tokens / max_target_tokens) or raise max_tokens"
                )
            grown_source, grown_target = max(longest_source, source), max(longest_target, target)
            if batch and (len(batch) + 1) * (grown_source + grown_target) > self.max_tokens:
                batches.append(batch)
                batch, grown_source, grown_target = [], source, target
            batch.append(index)
            longest_source, longest_target = grown_source, grown_target
        batches.append(batch)
        return batches

    @staticmethod
    def _split_to_multiple(batches: list[list[int]], num_replicas: int) -> list[list[int]]:
        while len(batches) % num_replicas:
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            if len(batches[largest]) < 2:
                raise ValueError(f"{len(batches)} examples cannot be spread over {num_replicas} processes")
            batch = batches.pop(largest)
            half = math.ceil(len(batch) / 2)
            batches[largest:largest] = [batch[:half], batch[half:]]
        return batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            yield from self.batches
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for position in torch.randperm(len(self.batches), generator=generator).tolist():
            yield self.batches[position]

    def __len__(self) -> int:
        return len(self.batches)
