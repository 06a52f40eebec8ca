"""The shared source-target BPE vocabulary (Sec. 5.1), learned with `tokenizers`.

Byte-level BPE: every string, in any script, encodes without `<unk>` and decodes back to itself (after the NFKC
normalisation applied on the way in), so BLEU is computed on exactly detokenized text. The result is a generic
transformers fast tokenizer (`tokenizer.json`), which `AutoTokenizer` loads with no custom code.

Text never produces control tokens: a literal "<pad>", "<s>", "</s>" or "<unk>" in a sentence is tokenized as the
characters it is (transformers' `split_special_tokens=True`, saved in `tokenizer_config.json`), and only the
post-processor adds the real `</s>`. Otherwise "The tag </s> ends it." would end the source in its middle, and
"use the <pad> key" would decode without its word.
"""

import os
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .arguments import DataArguments
from .files import atomic_folder, read_json, write_json

# Ids 0-3, in this order, match VaswaniConfig's pad/bos(decoder start)/eos defaults.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Learn one BPE vocabulary from source and target sentences (pass both sides in `texts`).

    Encoding appends `</s>`; `tokenizer(sources, text_target=targets)` gives `input_ids`, `attention_mask` and
    `labels`, each ending in `</s>`.
    """
    if vocab_size <= len(special_tokens) + 256:
        raise ValueError(
            f"vocab_size must exceed the {len(special_tokens)} special tokens + 256 bytes, got {vocab_size}"
        )
    if len(special_tokens) != 4:
        raise ValueError(f"special_tokens must name pad, bos, eos and unk in that order, got {special_tokens}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_non_empty(texts), trainer=trainer)
    pad, bos, eos, unk = special_tokens
    eos_id = tokenizer.token_to_id(eos)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        clean_up_tokenization_spaces=False,  # the byte-level decoder already restores the exact text
        model_max_length=model_max_length,
        padding_side="right",
        split_special_tokens=True,
    )


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    seen = False
    for text in texts:
        if text:
            seen = True
            yield text
    if not seen:
        raise ValueError("cannot train a tokenizer on no text: every input string was empty")


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained`, but a local folder without `tokenizer.json` fails naming the folder and what it
    holds (transformers would say only that no backend tokenizer could be built), a truncated one naming it, and
    special-token strings in text are tokenized as text even for a tokenizer saved without `split_special_tokens`
    (saved again, it has it)."""
    folder = Path(name_or_path)
    if folder.is_dir() and not (folder / "tokenizer.json").is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"{folder} has no tokenizer.json (the BPE vocabulary and merges); it holds {present or 'nothing'}"
        )
    if folder.is_dir():  # transformers' JSONDecodeError for a truncated file would not name it
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (folder / name).is_file():
                read_json(folder / name)
    return AutoTokenizer.from_pretrained(name_or_path, split_special_tokens=True)


# Written beside a learned tokenizer (train(), vaswani-train-tokenizer): what it was learned for, compared on reuse.
TOKENIZER_RECORD = "learned_for.json"


def save_learned_tokenizer(
    tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike, languages: list[str], vocab_size: int
) -> None:
    """Save a tokenizer just learned, atomically, with the record of its languages and requested vocabulary size
    (`TOKENIZER_RECORD`) that a run reusing the folder compares with its recipe. The folder must be new or empty:
    the atomic save replaces it whole."""
    if Path(folder).is_dir() and any(Path(folder).iterdir()):
        present = sorted(p.name for p in Path(folder).iterdir())
        raise FileExistsError(f"{folder} already holds {present}: save the tokenizer to a new or empty folder")
    with atomic_folder(folder) as staging:
        tokenizer.save_pretrained(staging)
        write_json(staging / TOKENIZER_RECORD, {"languages": languages, "vocab_size": vocab_size})


def train_tokenizer_command(data_args: DataArguments, folder: str | os.PathLike) -> str:
    """The vaswani-train-tokenizer command line that learns the recipe's BPE into `folder`."""
    command = ["vaswani-train-tokenizer", data_args.dataset, data_args.source_lang, data_args.target_lang, str(folder)]
    if data_args.dataset_format != "translation":
        command += ["--dataset_format", data_args.dataset_format]
    if data_args.dataset_config:
        command += ["--config_name", data_args.dataset_config]
    if data_args.train_split != "train":
        command += ["--split", data_args.train_split]
    return shlex.join([*command, "--vocab_size", str(data_args.vocab_size)])


def check_tokenizer_fits(
    tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike, data_args: DataArguments
) -> None:
    """Refuse a reused tokenizer learned for another vocabulary size or other languages than the recipe's, naming
    both values: a model built on it would not be the recipe's, and resuming would mix two runs."""
    record_path = Path(folder) / TOKENIZER_RECORD
    fix = "set vocab_size and the languages to the tokenizer's, or choose another tokenizer or output_dir"
    if record_path.is_file():
        record = read_json(record_path)
        if record["vocab_size"] != data_args.vocab_size:
            raise ValueError(
                f"the tokenizer in {folder} was learned with vocab_size {record['vocab_size']}, but the recipe asks "
                f"for vocab_size {data_args.vocab_size}: {fix}"
            )
        languages = [data_args.source_lang, data_args.target_lang]
        if sorted(record["languages"]) != sorted(languages):  # one shared BPE serves both directions
            raise ValueError(
                f"the tokenizer in {folder} was learned for the languages {record['languages']}, but the recipe "
                f"translates {languages}: {fix}"
            )
    # Without a record only the size can be checked. BPE learns at most vocab_size tokens and fewer when a small
    # corpus runs out of pairs to merge, so only a larger vocabulary proves that the tokenizer is not the recipe's.
    elif len(tokenizer) > data_args.vocab_size:
        raise ValueError(
            f"the tokenizer in {folder} has {len(tokenizer)} tokens, more than the recipe's vocab_size "
            f"{data_args.vocab_size}: {fix}"
        )
