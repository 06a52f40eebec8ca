"""Parsing as translation (Sec. 6.3): repair, EVALB-convention scoring, the right-branching baseline, and decoding
with the paper's parsing settings. The treebank loader and linearization are in tests/test_treebank.py."""

import os
import random
import shlex
import subprocess
import sys
import types
from collections import Counter

import pytest
from helpers import GOLD, ROOT, WORDS, tiny_model, tree, with_placeholder_tags

from vaswani_hf.cli.train import parse_arguments
from vaswani_hf.cli.train_tokenizer import main as train_tokenizer_main
from vaswani_hf.parsing import (
    bracket_scores,
    evalb_view,
    evaluate_parser,
    labeled_brackets,
    right_branching_tree,
)
from vaswani_hf.tokenization import load_tokenizer, train_tokenizer, train_tokenizer_command
from vaswani_hf.treebank import (
    Tree,
    delinearize,
    linearize,
    linearized_words,
    tree_from_linearized,
)


def predicted(linearized: str) -> Tree:
    return delinearize(linearized, WORDS)


def test_a_parsing_recipes_tokenizer_command_reads_the_treebank(treebank_zip, tmp_path):
    recipe = str(ROOT / "recipes" / "ptb_parsing_cpu.yaml")
    _, data_args, _ = parse_arguments([recipe, "--dataset", str(treebank_zip), "--use_cpu", "true"])
    command = shlex.split(train_tokenizer_command(data_args, tmp_path / "tokenizer"))
    assert command[0] == "vaswani-train-tokenizer" and command[command.index("--dataset_format") + 1] == "treebank"
    train_tokenizer_main([*command[1:-2], "--vocab_size", "500"])
    assert {"NP", "VP"} <= set(load_tokenizer(tmp_path / "tokenizer").tokenize("(NP the cat ) (VP sat )"))  # trees


def test_scores_of_a_parse_with_one_wrong_constituent_and_one_missing():
    # predicted S 0-6, NP 0-3, VP 3-6, NP 4-6: 2 of 4 match the 5 gold brackets -> P 50, R 40, F1 4/9
    scores = bracket_scores([predicted("(S (NP The cat sat ) (VP on (NP the mat ) ) . )")], [tree(GOLD)])
    assert (scores["matched_brackets"], scores["predicted_brackets"], scores["gold_brackets"]) == (2, 4, 5)
    assert scores["precision"] == pytest.approx(50.0)
    assert scores["recall"] == pytest.approx(40.0)
    assert scores["f1"] == pytest.approx(100 * 4 / 9)
    assert scores["exact_match"] == 0.0


def test_punctuation_is_deleted_before_spans_are_compared():
    # the "." inside the VP and PP: with it deleted, VP 2-6 and PP 3-6 match, so the parse is exact
    scores = bracket_scores([predicted("(S (NP The cat ) (VP sat (PP on (NP the mat ) . ) ) )")], [tree(GOLD)])
    assert (scores["f1"], scores["exact_match"]) == (100.0, 100.0)
    # a constituent of punctuation only is no bracket
    only_punctuation = predicted("(S (NP The cat ) (VP sat (PP on (NP the mat ) ) ) (X . ) )")
    assert "X" not in {label for label, _, _ in labeled_brackets(only_punctuation, tree(GOLD))}
    assert bracket_scores([only_punctuation], [tree(GOLD)])["f1"] == 100.0


def test_advp_and_prt_are_the_same_label_and_brackets_match_as_multisets():
    gold = tree("(S (NP (NP (PRP He))) (VP (VBD gave) (PRT (RP up))))")
    # one NP of the gold's unary NP-NP chain, ADVP for PRT: 4 predicted, all matched, of 5 gold
    scores = bracket_scores([delinearize("(S (NP He ) (VP gave (ADVP up ) ) )", ["He", "gave", "up"])], [gold])
    assert (scores["matched_brackets"], scores["predicted_brackets"], scores["gold_brackets"]) == (4, 4, 5)
    assert scores["precision"] == 100.0 and scores["recall"] == 80.0


def test_corpus_scores_sum_brackets_over_sentences():
    gold = [tree(GOLD), tree("(S (NP (PRP He)) (VP (VBD left)))")]
    parses = [predicted("(S (NP The cat sat ) (VP on (NP the mat ) ) . )"), delinearize("(S He left )", ["He", "left"])]
    # sentence 1: 2 of 4 predicted, 5 gold; sentence 2: 1 of 1 predicted, 3 gold -> P 3/5, R 3/8
    scores = bracket_scores(parses, gold)
    assert scores["precision"] == pytest.approx(60.0) and scores["recall"] == pytest.approx(37.5)
    assert scores["f1"] == pytest.approx(2 * 60 * 37.5 / 97.5)


@pytest.mark.parametrize(
    ("generated", "repaired"),
    [
        # brackets left open
        ("(S (NP The cat ) (VP sat (PP on (NP the mat", "(S (NP The cat ) (VP sat (PP on (NP the mat ) ) ) . )"),
        ("(S (NP The cat ) ) ) (VP sat on the mat )", "(S (S (NP The cat ) ) (VP sat on the mat ) . )"),  # ")", 2 trees
        ("(S (NP The cat sat on the mat . . ) )", "(S (NP The cat sat on the mat . ) )"),  # more leaves than words
        ("(S (NP The cat ) (VP sat ) )", "(S (NP The cat ) (VP sat ) on the mat . )"),  # fewer leaves than words
        ("(S (NP The cat ) (VP ) (PP sat on the mat . ) )", "(S (NP The cat ) (PP sat on the mat . ) )"),  # empty VP
        (") )", "(S The cat sat on the mat . )"),  # nothing usable
    ],
)
def test_malformed_output_is_repaired_into_a_tree_over_the_words(generated, repaired):
    result, well_formed = tree_from_linearized(generated, WORDS)
    assert not well_formed
    assert linearize(result) == repaired and result.words() == WORDS


def test_well_formed_output_is_recognised_and_takes_the_sentences_words():
    result, well_formed = tree_from_linearized("(S  (NP The cat )\t(VP sat (PP on (NP the mat ) ) ) . )", WORDS)
    assert well_formed and result == with_placeholder_tags(tree(GOLD))
    miscopied = "(S (NP A cat ) (VP sat (PP on (NP the mat ) ) ) . )"
    assert tree_from_linearized(miscopied, WORDS) == (result, True)
    assert linearized_words(miscopied) == ["A", *WORDS[1:]]
    with pytest.raises(ValueError, match="not a well-formed"):
        delinearize("(S (NP The cat ) )", WORDS)


def test_right_branching_baseline_shape():
    baseline = right_branching_tree(["a", "b", "c", "d"], "NP")
    assert linearize(baseline) == "(S a (NP b (NP c d ) ) )"
    assert baseline.words() == ["a", "b", "c", "d"]
    assert linearize(right_branching_tree(["a"], "NP")) == "(S a )"


def test_evaluate_parser_decodes_with_the_papers_parsing_settings(treebank):
    gold = treebank["test"][:2]
    sentences = [" ".join(t.words()) for t in gold]
    tokenizer = train_tokenizer(sentences + [linearize(t) for t in gold], vocab_size=300)
    model = tiny_model(vocab_size=len(tokenizer))
    model.generation_config.max_length = 20  # as older runs saved it: not the parsing limit
    used = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        used.append(kwargs["generation_config"])
        return generate(*args, **kwargs)

    model.generate = recording_generate
    scores, generated = evaluate_parser(model, tokenizer, sentences, gold)
    assert [(c.num_beams, c.length_penalty, c.max_new_tokens_offset, c.max_length) for c in used] == [
        (21, 0.3, 300, None)
    ]
    sources = [len(ids) for ids in tokenizer(sentences)["input_ids"]]
    outputs = [len(ids) for ids in tokenizer(generated)["input_ids"]]
    assert max(outputs) > max(sources) + 50  # a random model decodes past the translation limit (source + 50)
    assert model.generation_config.num_beams == 4  # the model's own translation defaults are untouched
    assert len(generated) == 2 and 0.0 <= scores["well_formed"] <= 100.0 and 0.0 <= scores["words_copied"] <= 100.0
    assert scores["sentences"] == 2 and scores["gold_brackets"] == bracket_scores(gold, gold)["matched_brackets"]


@pytest.fixture(scope="module")
def pyevalb(tmp_path_factory):
    """PYEVALB 0.1.3, an independent EVALB in Python, installed without its dependencies (they would downgrade the
    environment's); `pytablewriter`, which it uses only to print tables, stands in as an empty module."""
    target = tmp_path_factory.mktemp("pyevalb")
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(target),
        "PYEVALB==0.1.3",
    ]
    if subprocess.run(command, capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("pip could not install PYEVALB")
        pytest.skip("pip could not install PYEVALB (no package index?)")
    sys.path.insert(0, str(target))
    sys.modules.setdefault("pytablewriter", types.ModuleType("pytablewriter"))
    try:
        from PYEVALB import parser, scorer
    finally:
        sys.path.remove(str(target))
    return parser, scorer.Scorer()


@pytest.mark.slow
def test_the_scorer_agrees_with_pyevalb_but_for_repeated_brackets(treebank, pyevalb):
    parser, scorer = pyevalb
    gold = treebank["test"]

    def pyevalb_f1(predicted: list[Tree]) -> tuple[float, int]:
        counts = Counter()
        for tree, reference in zip(predicted, gold, strict=True):  # noqa: F402 (a tree, not helpers.tree)
            result = scorer.score_trees(
                parser.create_from_bracket_string(evalb_view(reference, reference)),
                parser.create_from_bracket_string(evalb_view(tree, reference)),
            )
            counts.update(matched=result.matched_brackets, gold=result.gold_brackets, test=result.test_brackets)
        return 200 * counts["matched"] / (counts["gold"] + counts["test"]), counts["matched"]

    right_branching = [right_branching_tree(t.words(), "NP") for t in gold]  # no bracket occurs twice in it
    assert round(pyevalb_f1(right_branching)[0], 2) == round(bracket_scores(right_branching, gold)["f1"], 2)
    # PYEVALB matches brackets as a set: a bracket repeated in both trees (a unary chain X -> X, often left by a
    # deleted comma) is matched once, where EVALB matches it as often as it occurs in both; no other difference
    rng = random.Random(0)
    for predicted in (gold, [relabeled(t, rng) for t in gold]):
        _, matched = pyevalb_f1(predicted)
        assert matched == bracket_scores(predicted, gold)["matched_brackets"] - repeated_matches(predicted, gold)
    assert repeated_matches(gold, gold) > 0 and pyevalb_f1(gold)[0] < 100.0


def relabeled(tree: Tree, rng: random.Random) -> Tree:
    """`tree` with a third of its constituents relabeled at random (its brackets otherwise kept)."""
    if tree.is_preterminal:
        return tree
    label = rng.choice(["NP", "VP", "S", "PP"]) if rng.random() < 0.33 else tree.label
    return Tree(label, tuple(relabeled(child, rng) for child in tree.children))


def repeated_matches(predicted: list[Tree], gold: list[Tree]) -> int:
    """The matches beyond the first of each (label, span) EVALB bracket, over the sentences."""
    total = 0
    for tree, reference in zip(predicted, gold, strict=True):  # noqa: F402 (a tree, not helpers.tree)
        matched = labeled_brackets(tree, reference) & labeled_brackets(reference, reference)
        total += sum(count - 1 for count in matched.values())
    return total
