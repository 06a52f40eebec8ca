"""Constrained decoding for parsing as translation (Sec. 6.3): every output is a well-formed linearized tree whose
leaves are exactly the input words, in order, as sequence-to-sequence parsers since Vinyals et al. (2015) decode.

The output representation is the one the parser is trained on (`treebank.linearize`), with the existing shared
byte-level BPE: no added tokens, so no retraining and no recipe change. It makes the constraint exact and cheap:
- the byte-level pre-tokenizer splits the text at every space, the space going with the text after it, so the
  token ids of `(S (NP The cat ) ...` are the concatenation of the ids of its *items*, each encoded with its
  leading space: an opening bracket is " (" then the pieces of its label, a closing bracket is " )", a word is the
  pieces of " word" (the first item, the root's bracket, has no space: "(" then the label's pieces). The ids of
  each input word in that context are computed once per sentence, and the concatenation is checked, so the
  constraint allows exactly the tokenization the model was trained on;
- a token that begins with a space begins an item and no other token does, so the state of a hypothesis (depth,
  words emitted, progress in the current item) is a few sums over its tokens, computed for every beam at once with
  no state kept between steps: it stays right whatever the search reorders (transformers' beam search and
  generation_vaswani.py's loops alike).
Placeholders (`XX`, whose count the constraint would fix) were not chosen: trained with them, our small model
ignored the sentence (docs/parsing/report.md). Brackets and labels as added tokens would change the tokenizer, so
every parser would need retraining, and buy nothing here: the constraint is already exact on the BPE pieces.
"""

import math
from collections.abc import Iterable, Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

NO_TOKEN = -1  # padding in the piece tables


def _ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


class TreeVocabulary:
    """The token ids a linearized tree is made of, for one tokenizer and label set: the opening bracket (with and
    without its leading space), the closing bracket, each label's pieces, end-of-sentence, and which tokens begin
    an item (begin with a space). Built once, shared by the per-batch processors."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, labels: Iterable[str]):
        labels = sorted(set(labels))
        if not labels:
            raise ValueError("constrained parsing needs at least one constituent label, got none")
        for label in labels:
            if not label or any(c.isspace() or c in "()" for c in label):
                raise ValueError(f"a constituent label has no spaces or brackets, got {label!r}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sentence token")
        self.tokenizer = tokenizer
        self.labels = labels
        self.eos = tokenizer.eos_token_id
        (close,) = _single_tokens(tokenizer, [" )"])
        self.close = close
        spaced, first = (
            _ids(tokenizer, [f" ({label}" for label in labels]),
            _ids(tokenizer, [f"({label}" for label in labels]),
        )
        self.open, self.first_open = spaced[0][0], first[0][0]
        pieces = []
        for label, with_space, without in zip(labels, spaced, first, strict=True):
            if with_space[0] != self.open or without[0] != self.first_open or with_space[1:] != without[1:]:
                raise ValueError(
                    f"the tokenizer does not split the bracket of label {label!r} from it: ' ({label}' is "
                    f"{tokenizer.convert_ids_to_tokens(with_space)}, '({label}' is "
                    f"{tokenizer.convert_ids_to_tokens(without)}"
                )
            pieces.append(with_space[1:])
        self.label_pieces = _padded(pieces)  # (labels, most pieces)
        self.label_lengths = torch.tensor([len(p) for p in pieces])
        # One decode of every single token (in Rust): which begin with a space, i.e. begin an item.
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        self.starts_item = torch.tensor([text.startswith(" ") for text in texts])
        if self.starts_item[self.label_pieces[self.label_pieces != NO_TOKEN]].any():
            raise ValueError("a label piece begins with a space: the tokenizer does not split at spaces only")

    def word_pieces(self, words: list[str]) -> list[list[int]]:
        """The ids of each word in output context (with its leading space), checked to be those the tokenizer gives
        the words of a linearized tree."""
        if not words:
            raise ValueError("a sentence to parse needs at least one word")
        for word in words:
            if not word or any(c.isspace() or c in "()" for c in word):
                raise ValueError(
                    f"word {word!r}: a linearized tree cannot hold words with spaces or brackets (the Penn Treebank "
                    f"writes -LRB- and -RRB-)"
                )
        pieces = _ids(self.tokenizer, [f" {word}" for word in words])
        (joined,) = _ids(self.tokenizer, [" " + " ".join(words)])
        if joined != [i for p in pieces for i in p] or any(
            not self.starts_item[p[0]] or self.starts_item[p[1:]].any() for p in pieces
        ):
            raise ValueError(
                f"the tokenizer does not encode {' '.join(words)!r} as its words' tokens one after the other, each "
                f"beginning with the space before it: constrained decoding needs a tokenizer that splits at spaces"
            )
        return pieces


def _single_tokens(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    result = []
    for text, ids in zip(texts, _ids(tokenizer, texts), strict=True):
        if len(ids) != 1:
            raise ValueError(
                f"{text!r} must be one token for constrained parsing, got {tokenizer.convert_ids_to_tokens(ids)}"
            )
        result.append(ids[0])
    return result


def _padded(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    """The rows as one (rows x width) tensor, NO_TOKEN after each row's end; width: the longest row's by default."""
    table = torch.full((len(rows), width or max(map(len, rows))), NO_TOKEN, dtype=torch.long)
    for i, row in enumerate(rows):
        table[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return table


_WORD_COLUMN = 2  # the column of `_candidates` that holds the next word piece


class TreeConstraintLogitsProcessor(LogitsProcessor):
    """Only continuations that keep each hypothesis a prefix of a well-formed linearized tree over its sentence's
    words, in order (the others get -inf): open a constituent with one of `vocabulary.labels` (the first token is
    always the root's), close one (never an empty one; the root only after the last word), or emit the next piece of
    the next word; end-of-sentence exactly when the root is closed. With `max_new_tokens` (per sentence: the tokens
    allowed before end-of-sentence) a constituent is opened only if the tree can still be closed within it, so a
    length limit never cuts a tree.

    Sentence i owns rows i * k ... (i + 1) * k - 1 of the batch, k = rows / sentences (`generate` repeats each
    source once per beam). `prompt_length`: the decoder tokens before the output (its start token).

    `word_slots=True` scores the sentence's next piece as the model's mass on any word piece there (a piece beginning
    a word, or continuing one), not on that piece alone: the words are given, so a hypothesis is ranked by its
    structure only, as with Vinyals et al.'s `XX` placeholders, and a word the model would spell otherwise no longer
    loses to a bracket."""

    def __init__(
        self,
        vocabulary: TreeVocabulary,
        sentences: Sequence[list[str]],
        max_new_tokens: Sequence[int] | None = None,
        prompt_length: int = 1,
        word_slots: bool = False,
    ):
        if max_new_tokens is not None and len(max_new_tokens) != len(sentences):
            raise ValueError(f"{len(max_new_tokens)} length limits for {len(sentences)} sentences")
        self.vocabulary = vocabulary
        self.prompt_length = prompt_length
        self.word_slots = word_slots
        self._slot_masks_for = None  # (vocabulary size, device) of the cached word-slot masks
        words = [vocabulary.word_pieces(list(sentence)) for sentence in sentences]
        most_words = max(map(len, words))
        most_pieces = max(len(piece) for sentence in words for piece in sentence)
        empty = [[]] * most_words
        # (sentences, words, pieces): the ids of word k of sentence i, NO_TOKEN-padded
        self.pieces = torch.stack([_padded(w + empty[len(w) :], most_pieces) for w in words])
        self.word_lengths = (self.pieces != NO_TOKEN).sum(-1)
        # pieces still to emit from word k on (k = 0 ... number of words): part of the cost of finishing a tree
        self.remaining_pieces = torch.nn.functional.pad(self.word_lengths.flip(1).cumsum(1).flip(1), (0, 1))
        self.num_words = torch.tensor([len(w) for w in words])
        unlimited = torch.iinfo(torch.long).max // 4
        self.max_new_tokens = torch.tensor(
            list(max_new_tokens) if max_new_tokens is not None else [unlimited] * len(words)
        )
        self.label_pieces, self.label_lengths = vocabulary.label_pieces, vocabulary.label_lengths
        self.starts_item = vocabulary.starts_item

    _TABLES = (
        "pieces",
        "word_lengths",
        "remaining_pieces",
        "num_words",
        "max_new_tokens",
        "label_pieces",
        "label_lengths",
        "starts_item",
    )

    def _tables_on(self, device: torch.device) -> None:
        if self.pieces.device != device:
            for name in self._TABLES:
                setattr(self, name, getattr(self, name).to(device))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab_size = scores.shape
        sentences = len(self.num_words)
        if rows % sentences:
            raise ValueError(f"{rows} hypotheses for {sentences} sentences: not a whole number per sentence")
        self._tables_on(scores.device)
        sentence = torch.arange(rows, device=scores.device) // (rows // sentences)
        candidates = self._candidates(sentence, input_ids[:, self.prompt_length :], vocab_size)
        # -inf everywhere, then the candidates' scores: one pass over the scores (a boolean mask would take three);
        # a row's "no token" entries point at its first column with -inf, which "amax" leaves as it is.
        unused = candidates == vocab_size
        candidates = candidates.masked_fill(unused, 0)
        kept = scores.gather(1, candidates).masked_fill_(unused, -math.inf)
        if self.word_slots and candidates.shape[1] > _WORD_COLUMN:  # not at the first token, the root's bracket
            kept[:, _WORD_COLUMN] = self._word_slot_scores(scores, candidates[:, _WORD_COLUMN], unused[:, _WORD_COLUMN])
        return torch.full_like(scores, -math.inf).scatter_reduce_(1, candidates, kept, reduce="amax")

    def _word_slot_scores(self, scores: torch.Tensor, word: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
        """Per row, the log-sum-exp of the scores of the pieces that could stand where `word` stands: those that
        begin a word (a space, not a bracket or the end) where it begins one, those without a space where it goes on
        one; -inf where the row has no word candidate."""
        begins, goes_on = self._slot_masks(scores.shape[1], scores.device)
        slot = torch.where(begins[word][:, None], begins[None], goes_on[None])
        return torch.logsumexp(scores.masked_fill(~slot, -math.inf), dim=1).masked_fill_(unused, -math.inf)

    def _slot_masks(self, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(pieces that begin a word, pieces that go on one), built once per vocabulary size and device."""
        if self._slot_masks_for != (vocab_size, device):
            vocabulary = self.vocabulary
            known = min(vocab_size, self.starts_item.shape[0])
            begins = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            begins[:known] = self.starts_item[:known]
            goes_on = ~begins
            goes_on[known:] = False  # ids beyond the tokenizer's never occur
            structure = [vocabulary.open, vocabulary.first_open, vocabulary.close, vocabulary.eos]
            begins[structure] = goes_on[structure] = False
            self._slot_masks_for, self._slot_masks_cached = (vocab_size, device), (begins, goes_on)
        return self._slot_masks_cached

    def _candidates(self, sentence: torch.Tensor, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """(rows x candidates) token ids each row may emit, `vocab_size` for none. The state is recomputed from the
        tokens: sums over them and gathers at the current item's start, the same few tensor operations for every
        beam. A row that is not a prefix of a tree (one beam search keeps at -inf when too few continuations are
        allowed) gets arbitrary candidates but indexes nothing out of range."""
        rows, length = tokens.shape
        none = torch.full((rows,), vocab_size, dtype=torch.long, device=tokens.device)
        vocabulary = self.vocabulary
        if length == 0:  # the root's bracket, without a space
            return torch.full((rows, 1), vocabulary.first_open, dtype=torch.long, device=tokens.device)
        starts_item = self.starts_item
        if starts_item.shape[0] < vocab_size:  # ids beyond the tokenizer's (a padded model vocabulary) never occur
            starts_item = torch.nn.functional.pad(starts_item, (0, vocab_size - starts_item.shape[0]), value=True)
        starts = starts_item[tokens.clamp(0, vocab_size - 1)]
        starts[:, 0] = True
        opens = tokens == vocabulary.open
        opens[:, 0] = tokens[:, 0] == vocabulary.first_open
        closes = tokens == vocabulary.close
        words = starts & ~opens & ~closes
        depth = opens.sum(1) - closes.sum(1)  # constituents open, the current item's included
        words_started = words.sum(1)
        positions = torch.arange(length, device=tokens.device)
        item_start = torch.where(starts, positions, 0).amax(1)
        progress = length - item_start  # tokens of the current item so far
        in_open = opens.gather(1, item_start[:, None])[:, 0]
        in_close = closes.gather(1, item_start[:, None])[:, 0]
        in_word = ~in_open & ~in_close

        # in a word: its next piece, if any is left
        word = (words_started - 1).clamp(0, self.pieces.shape[1] - 1)
        word_left = in_word & (progress < self.word_lengths[sentence, word])
        next_piece = self.pieces[sentence, word, progress.clamp(max=self.pieces.shape[2] - 1)]

        # in an opening bracket: the next pieces of the labels its pieces so far begin
        label_pieces, label_lengths = self.label_pieces, self.label_lengths
        label_so_far = progress - 1
        offsets = torch.arange(label_pieces.shape[1], device=tokens.device)
        seen = tokens.gather(1, (item_start[:, None] + 1 + offsets).clamp(max=length - 1))
        consistent = (
            in_open[:, None]
            & ((label_pieces[None] == seen[:, None]) | (offsets >= label_so_far[:, None])[:, None]).all(-1)
            & (label_lengths >= label_so_far[:, None])
        )  # (rows, labels)
        label_left = consistent & (label_lengths > label_so_far[:, None])
        label_next = label_pieces[:, label_so_far.clamp(0, label_pieces.shape[1] - 1)].t()  # (rows, labels)
        label_done = (consistent & (label_lengths == label_so_far[:, None])).any(1)

        # after a complete item: open, close, the next word's first piece, or end-of-sentence
        item_done = in_close | (in_word & ~word_left) | (in_open & label_done)
        words_done = words_started.clamp(max=self.pieces.shape[1])
        remaining = self.num_words[sentence] - words_done
        inside = item_done & (depth >= 1)
        # opening costs at most 1 + the longest label's pieces, and one more " )" to finish
        finish = self.remaining_pieces[sentence, words_done] + depth + 1
        fits = length + 1 + label_pieces.shape[1] + finish <= self.max_new_tokens[sentence]
        open_ok = inside & (remaining > 0) & fits
        close_ok = inside & ~in_open & ((depth > 1) | (remaining == 0))
        first_piece = self.pieces[sentence, words_done.clamp(max=self.pieces.shape[1] - 1), 0]
        word_next = torch.where(word_left, next_piece, torch.where(inside & (remaining > 0), first_piece, none))
        end_ok = item_done & (depth == 0)
        candidates = torch.cat(
            [
                torch.where(open_ok, vocabulary.open, none)[:, None],
                torch.where(close_ok, vocabulary.close, none)[:, None],
                word_next[:, None],
                torch.where(end_ok, vocabulary.eos, none)[:, None],
                torch.where(label_left, label_next, none[:, None]),
            ],
            dim=1,
        )
        return candidates.masked_fill(candidates < 0, vocab_size)
