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
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .files import read_json

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
