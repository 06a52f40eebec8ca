"""Constituency parsing with the translation model (Sec. 6.3): decoding with the paper's parsing settings,
well-formedness repair, labeled-bracket scoring in the EVALB convention, and a right-branching baseline.

The scorer implements EVALB (Sekine and Collins) with its `COLLINS.prm` parameters, as used for the WSJ results
the paper compares with:
- a bracket is (label, first word, last word) of every constituent above the part-of-speech level; preterminals are
  not brackets;
- words whose gold part-of-speech tag is `,` `:` `` `` `` `''` or `.` are deleted before spans are computed
  (`DELETE_LABEL`), so a bracket differing only by punctuation at its edge still matches, and a constituent
  holding only such words is not a bracket; `TOP` and `-NONE-` are removed with the tree cleaning
  (`treebank.clean_tree`);
- `ADVP` and `PRT` are the same label (`EQ_LABEL`);
- brackets are matched as multisets; precision = matched / predicted, recall = matched / gold, summed over the
  corpus; F1 their harmonic mean.
Not implemented: EVALB's separate figures for sentences up to 40 words, and its skipping of sentences whose words
differ from the gold (here every predicted tree is built over the gold words, so none are skipped).
"""

import copy
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformers import (
    AutoModelForSeq2SeqLM,
    BatchEncoding,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .evaluation import translate
from .files import write_json, write_text_lines
from .generation_vaswani import target_length_limits
from .parsing_constraint import TreeConstraintLogitsProcessor, TreeVocabulary
from .tokenization import load_tokenizer
from .treebank import SPLIT_FILES, UNKNOWN_TAG, Tree, linearized_words, read_treebank, tree_from_linearized

EVALB_DELETED_TAGS = frozenset({",", ":", "``", "''", "."})
EVALB_EQUAL_LABELS = {"PRT": "ADVP"}
# Sec. 6.3: "We increased the maximum output length to input length + 300. We used a beam size of 21 and alpha = 0.3"
PARSING_NUM_BEAMS = 21
PARSING_LENGTH_PENALTY = 0.3
PARSING_LENGTH_OFFSET = 300


def labeled_brackets(tree: Tree, gold: Tree) -> Counter:
    """The EVALB brackets of `tree`, a tree over the same words as `gold`, whose tags decide the punctuation."""
    if tree.words() != gold.words():
        raise ValueError(f"the trees cover different words: {tree.words()} and {gold.words()}")
    kept = [tag not in EVALB_DELETED_TAGS for tag, _ in gold.tagged_words()]
    # position of each word among the kept words (a deleted word gets the position of the next kept one)
    position = [sum(kept[:i]) for i in range(len(kept) + 1)]
    brackets: Counter = Counter()

    def visit(node: Tree, start: int) -> int:
        if node.is_preterminal:
            return start + 1
        end = start
        for child in node.children:
            end = visit(child, end)
        if position[end] > position[start]:
            brackets[(EVALB_EQUAL_LABELS.get(node.label, node.label), position[start], position[end])] += 1
        return end

    visit(tree, 0)
    return brackets


def bracket_scores(predicted: list[Tree], gold: list[Tree]) -> dict:
    """Corpus labeled-bracket precision, recall and F1 (percent) in the EVALB convention, with the counts."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted trees but {len(gold)} gold trees")
    matched = predicted_count = gold_count = exact = 0
    for tree, reference in zip(predicted, gold, strict=True):
        test_brackets, gold_brackets = labeled_brackets(tree, reference), labeled_brackets(reference, reference)
        overlap = sum((test_brackets & gold_brackets).values())
        matched += overlap
        predicted_count += sum(test_brackets.values())
        gold_count += sum(gold_brackets.values())
        exact += test_brackets == gold_brackets
    precision = 100 * matched / predicted_count if predicted_count else 0.0
    recall = 100 * matched / gold_count if gold_count else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "matched_brackets": matched,
        "predicted_brackets": predicted_count,
        "gold_brackets": gold_count,
        "exact_match": 100 * exact / len(gold) if gold else 0.0,
        "sentences": len(gold),
    }


def right_branching_tree(words: list[str], label: str, root_label: str = "S") -> Tree:
    """The right-branching tree: a `root_label` root over all n words, then `label` brackets over words 2..n,
    3..n, ..., (n-1)..n (none for a single word)."""
    leaves = [Tree(UNKNOWN_TAG, (word,)) for word in words]
    tail = leaves[-1]
    for leaf in reversed(leaves[1:-1]):
        tail = Tree(label, (leaf, tail))
    return Tree(root_label, (leaves[0], tail) if len(leaves) > 1 else (tail,))


def most_common_label(trees: list[Tree]) -> str:
    """The commonest constituent label below the roots: the label of the right-branching baseline's brackets."""
    counts: Counter = Counter()

    def visit(node: Tree) -> None:
        for child in node.children:
            if isinstance(child, Tree) and not child.is_preterminal:
                counts[child.label] += 1
                visit(child)

    for tree in trees:
        visit(tree)
    return counts.most_common(1)[0][0]


def constituent_labels(trees: list[Tree]) -> list[str]:
    """Every label of a constituent above the part-of-speech level, the roots' included: what a parse may open."""
    labels = set()

    def visit(node: Tree) -> None:
        if not node.is_preterminal:
            labels.add(node.label)
            for child in node.children:
                visit(child)

    for tree in trees:
        visit(tree)
    return sorted(labels)


def parse(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    batch_size: int = 16,
    num_beams: int = PARSING_NUM_BEAMS,
    length_penalty: float = PARSING_LENGTH_PENALTY,
    progress_bar: bool = True,
    labels: Iterable[str] | None = None,
    word_slots: bool = False,
) -> list[str]:
    """Linearized trees generated with the paper's parsing settings (Sec. 6.3) unless told otherwise: beam 21,
    length penalty 0.3, each output at most its source length + 300 tokens (the model's per-sentence length limit).
    With `labels` (`constituent_labels` of the training trees) decoding is constrained
    (`TreeConstraintLogitsProcessor`): every output is a well-formed tree over its sentence's words (separated by
    single spaces), with those labels, closed within the length limit; `word_slots`: hypotheses ranked by their
    structure only (`TreeConstraintLogitsProcessor`'s `word_slots`). A progress bar counts the sentences on a
    terminal (beam 21 takes minutes) unless `progress_bar=False`."""
    config = copy.deepcopy(model.generation_config)
    config.num_beams = num_beams
    config.length_penalty = length_penalty
    config.max_new_tokens_offset = PARSING_LENGTH_OFFSET
    # Sec. 6.3's per-sentence limit replaces any fixed length a saved generation config holds (a model saved by a
    # plain Seq2SeqTrainer after evaluating holds max_length=20).
    config.max_length = config.max_new_tokens = None
    constraint = None
    if labels is not None:
        vocabulary = TreeVocabulary(tokenizer, labels)

        def constraint(sources: list[str], batch: BatchEncoding) -> LogitsProcessorList:
            limits = target_length_limits(model.config, batch["attention_mask"], PARSING_LENGTH_OFFSET)
            words = [source.split(" ") for source in sources]
            processor = TreeConstraintLogitsProcessor(vocabulary, words, limits.tolist(), word_slots=word_slots)
            return LogitsProcessorList([processor])

    return translate(
        model,
        tokenizer,
        sentences,
        batch_size=batch_size,
        progress_bar=progress_bar,
        description="Parsing",
        batch_logits_processor=constraint,
        generation_config=config,
    )


def evaluate_parser(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    gold_trees: list[Tree],
    batch_size: int = 16,
    **decoding,
) -> tuple[dict, list[str]]:
    """Parse `sentences` (words separated by spaces, as in the gold trees; `decoding`: `num_beams`, `length_penalty`,
    `progress_bar`, `labels`, `word_slots` of `parse`), repair malformed outputs, and score them: (bracket scores plus
    the percent of `well_formed` outputs and of outputs whose leaves are exactly the sentence's words,
    `words_copied`; generated linearizations)."""
    generated = parse(model, tokenizer, sentences, batch_size, **decoding)
    repaired = [tree_from_linearized(text, gold.words()) for text, gold in zip(generated, gold_trees, strict=True)]
    scores = bracket_scores([tree for tree, _ in repaired], gold_trees)
    scores["well_formed"] = 100 * sum(well_formed for _, well_formed in repaired) / len(repaired)
    copied = [linearized_words(text) == gold.words() for text, gold in zip(generated, gold_trees, strict=True)]
    scores["words_copied"] = 100 * sum(copied) / len(copied)
    return scores, generated


def evalb_view(tree: Tree, gold: Tree) -> str:
    """`tree` as COLLINS.prm makes EVALB see it, for a scorer without parameters: the words whose gold tag is
    deleted removed with the constituents they leave empty, PRT written ADVP, the gold tags on the words."""
    tags = iter(tag for tag, _ in gold.tagged_words())

    def visit(node: Tree) -> str | None:
        if node.is_preterminal:
            tag = next(tags)
            return None if tag in EVALB_DELETED_TAGS else f"({tag} {node.children[0]})"
        children = [text for text in map(visit, node.children) if text]
        return f"({EVALB_EQUAL_LABELS.get(node.label, node.label)} {' '.join(children)})" if children else None

    return visit(tree)


def with_gold_tags(tree: Tree, gold: Tree) -> Tree:
    """`tree` (over the words of `gold`) with `gold`'s part-of-speech tags: the model predicts no tags, and EVALB
    deletes punctuation by its tag (`DELETE_LABEL`), so with the gold tags it deletes the same words in both trees
    (its tagging accuracy is then meaningless)."""
    tags = iter(tag for tag, _ in gold.tagged_words())

    def tagged(node: Tree) -> Tree:
        if node.is_preterminal:
            return Tree(next(tags), node.children)
        return Tree(node.label, tuple(tagged(child) for child in node.children))

    return tagged(tree)


def evaluate_parsing_run(
    model_name_or_path: str | os.PathLike,
    treebank: str | os.PathLike,
    split: str = "test",
    metrics_file: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    num_beams: int = PARSING_NUM_BEAMS,
    length_penalty: float = PARSING_LENGTH_PENALTY,
    constrained: bool = True,
    output_file: str | os.PathLike | None = None,
    word_slots: bool = True,
) -> dict:
    """Score a saved parser on a treebank split beside the right-branching baseline; optionally write the metrics
    JSON (numbers only: no treebank text) and the predicted trees, one per line in the Penn Treebank's bracket form
    with the gold tags (`with_gold_tags`), for EVALB (`output_file`: treebank text, keep it out of the repository).
    Decoding is constrained to well-formed trees over each sentence with the training trees' labels unless
    `constrained=False`, its hypotheses ranked by their structure only unless `word_slots=False` (`parse`; measured
    in docs/parsing/report.md)."""
    word_slots = word_slots and constrained
    trees = read_treebank(treebank)
    for needed in dict.fromkeys(("train", split)):  # the labels come from the training trees
        if not trees[needed]:
            files = SPLIT_FILES[needed]
            raise ValueError(
                f"{treebank} holds no trees of the {needed} split (wsj_{files[0]:04d}.mrg to wsj_{files[-1]:04d}.mrg)"
            )
    gold = trees[split][:limit]
    label = most_common_label(trees["train"])
    baseline = bracket_scores([right_branching_tree(t.words(), label) for t in gold], gold)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path)
    tokenizer = load_tokenizer(model_name_or_path)
    sentences = [" ".join(t.words()) for t in gold]
    labels = constituent_labels(trees["train"]) if constrained else None
    scores, generated = evaluate_parser(
        model,
        tokenizer,
        sentences,
        gold,
        batch_size,
        num_beams=num_beams,
        length_penalty=length_penalty,
        labels=labels,
        word_slots=word_slots,
    )
    if output_file is not None:
        predicted = [tree_from_linearized(text, t.words())[0] for text, t in zip(generated, gold, strict=True)]
        write_text_lines(output_file, [str(with_gold_tags(tree, t)) for tree, t in zip(predicted, gold, strict=True)])
    metrics = {
        "model": str(model_name_or_path),
        "split": split,
        "decoding": {
            "num_beams": num_beams,
            "length_penalty": length_penalty,
            "max_new_tokens": f"source length + {PARSING_LENGTH_OFFSET}",
            "constrained": constrained,
            "word_slots": word_slots,
        },
        "parser": scores,
        "right_branching": {"label": label, **baseline},
    }
    if metrics_file is not None:
        write_json(Path(metrics_file), metrics)
    return metrics
