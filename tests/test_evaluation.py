"""evaluation.py: the paper's metric, tokenized BLEU with compound splitting as tensor2tensor's get_ende_bleu.sh
computed it, on hand-made sentences whose n-gram counts are worked out by hand below; translate()'s progress bar."""

import io
import math
import sys

import pytest
from helpers import tiny_model

from vaswani_hf.evaluation import TOKENIZED_BLEU_LABEL, bleu, tokenize_as_t2t, tokenized_bleu, translate
from vaswani_hf.parsing import parse
from vaswani_hf.tokenization import train_tokenizer


def test_text_is_tokenized_and_compounds_split_as_get_ende_bleu_does():
    # punctuation set apart (13a), a hyphen between two non-space characters becomes the token ##AT##-##AT##; 13a
    # already sets apart a hyphen after a digit, so "3-4" has no compound left to split
    assert tokenize_as_t2t("A rich-text format, 3-4 times.") == "A rich ##AT##-##AT## text format , 3 - 4 times ."
    # Perl's s{(\S)-(\S)}{...}g does not overlap matches: the second hyphen of a-b-c stays, as in t2t's scores; a
    # hyphen with a space (a quote set apart) on one side is no compound
    assert tokenize_as_t2t('a-b-c "Anti-Terror"-Gesetz') == 'a ##AT##-##AT## b-c " Anti ##AT##-##AT## Terror " -Gesetz'


def test_corpus_bleu_counts_the_split_compounds_unsmoothed_with_the_brevity_penalty():
    hypotheses, references = ["a-b c d f", "x y"], ["a-b c d e", "x y z"]
    # tokens: "a ##AT##-##AT## b c d f" (6) and "x y" (2) against "a ##AT##-##AT## b c d e" (6) and "x y z" (3):
    # matches / totals are 1-grams 5+2 / 6+2, 2-grams 4+1 / 5+1, 3-grams 3+0 / 4+0, 4-grams 2+0 / 3+0;
    # brevity penalty exp(1 - 9/8)
    result = tokenized_bleu(hypotheses, references)
    assert result["counts"] == [7, 5, 3, 2] and result["totals"] == [8, 6, 4, 3]
    assert (result["sys_len"], result["ref_len"]) == (8, 9)
    expected = 100 * math.exp(1 - 9 / 8) * (7 / 8 * 5 / 6 * 3 / 4 * 2 / 3) ** 0.25
    assert result["score"] == pytest.approx(expected)
    assert result["label"] == TOKENIZED_BLEU_LABEL
    assert "tok:none" in result["signature"] and "smooth:none" in result["signature"]
    # sacreBLEU (13a, hyphens kept inside words, exp smoothing) scores the same text differently
    assert bleu(hypotheses, references)["score"] != pytest.approx(result["score"])


def test_a_missing_n_gram_order_scores_zero_as_multi_bleu_does():
    # "a b c d" against "a b x d": no 3-gram matches, and multi-bleu.perl does not smooth (sacreBLEU's default does)
    assert tokenized_bleu(["a b c d"], ["a b x d"])["score"] == 0.0
    assert bleu(["a b c d"], ["a b x d"])["score"] > 0
    assert tokenized_bleu(["Das rich-text Format."], ["Das rich-text Format."])["score"] == pytest.approx(100.0)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_translation_shows_a_progress_bar_on_a_terminal_only(monkeypatch):
    tokenizer = train_tokenizer(["a man rides a bike", "zwei hunde spielen im schnee"] * 20, vocab_size=300)
    model = tiny_model(vocab_size=len(tokenizer))
    sources = ["a man", "two dogs", "a bike"]
    shown = {}
    for name, stream, progress_bar in (
        ("terminal", Terminal(), True),
        ("off", Terminal(), False),
        ("pipe", io.StringIO(), True),
    ):
        monkeypatch.setattr(sys, "stderr", stream)
        translations = translate(
            model, tokenizer, sources, batch_size=2, progress_bar=progress_bar, description="test", max_new_tokens=3
        )
        shown[name] = stream.getvalue()
        assert len(translations) == 3
    # parsing decodes through translate() with its own bar (beam 21 takes minutes on a real parser)
    monkeypatch.setattr(sys, "stderr", Terminal())
    parse(model, tokenizer, sources, num_beams=1)
    shown["parsing"] = sys.stderr.getvalue()
    monkeypatch.undo()
    assert "test: 100%" in shown["terminal"] and "3/3" in shown["terminal"]
    assert shown["off"] == "" and shown["pipe"] == ""
    assert "Parsing: 100%" in shown["parsing"]
