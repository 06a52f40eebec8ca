"""treebank.py: the Penn Treebank sample split by file, tree cleaning, linearization and its inverse."""

from helpers import GOLD, tree, with_placeholder_tags

from vaswani_hf.treebank import (
    clean_tree,
    delinearize,
    linearize,
)


def test_splits_by_file_have_the_documented_sentence_counts(treebank):
    # wsj_0001-0159 train, 0160-0179 validation, 0180-0199 test: 3,914 sentences of the NLTK sample
    assert {split: len(trees) for split, trees in treebank.items()} == {"train": 3396, "validation": 273, "test": 245}


def test_every_test_tree_survives_linearize_then_delinearize(treebank):
    for gold in treebank["test"]:
        assert delinearize(linearize(gold), gold.words()) == with_placeholder_tags(gold)


def test_cleaning_removes_traces_empty_constituents_and_function_tags():
    raw = tree(
        "( (S (NP-SBJ-1 (-NONE- *T*-1)) (NP-SBJ=2 (PRP It)) (VP (VBZ is) (ADJP-PRD (-LRB- -LRB-) (JJ odd) "
        "(-RRB- -RRB-)) (SBAR (-NONE- 0) (S (-NONE- *T*-2)))) (. .)) )"
    )
    assert str(clean_tree(raw)) == "(S (NP (PRP It)) (VP (VBZ is) (ADJP (-LRB- -LRB-) (JJ odd) (-RRB- -RRB-))) (. .))"


def test_linearization_drops_tags_and_labels_closing_brackets_not():
    assert linearize(tree(GOLD)) == "(S (NP The cat ) (VP sat (PP on (NP the mat ) ) ) . )"
