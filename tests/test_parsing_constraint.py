"""Constrained decoding for parsing (Sec. 6.3): the processor allows exactly the continuations of well-formed
linearized trees over the input words (checked against a reference that reasons on the text), and beam search at the
paper's settings, in transformers' loop and in ours, returns only such trees."""

import json
import math
import random

import pytest
import torch
from helpers import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GenerationConfig, LogitsProcessorList

from vaswani_hf.cli import evaluate_parsing
from vaswani_hf.parsing import parse
from vaswani_hf.parsing_constraint import TreeConstraintLogitsProcessor, TreeVocabulary
from vaswani_hf.tokenization import train_tokenizer
from vaswani_hf.treebank import Tree, linearize, linearized_words, read_trees, tree_from_linearized

# Words that byte-level BPE splits into several pieces, punctuation, PTB escapes; labels with several pieces.
WORD_POOL = (
    "The cat sat on the mat . , Pierre Vinken 61 years old Nov. 29 's n't U.S. -LRB- -RRB- unbelievably $ % `` '' "
    "board director Ütopia 1,000"
).split()
LABELS = ["S", "NP", "VP", "PP", "SBAR", "ADVP|PRT", "WHNP", "X"]


def random_tree(rng: random.Random, words: list[str], labels: list[str] = LABELS) -> Tree:
    """A random constituency tree over `words` (unary chains, single-word constituents and flat ones included)."""

    def build(span: list[str], depth: int) -> Tree:
        if len(span) == 1 and (depth > 3 or rng.random() < 0.5):
            children = (Tree("XX", (span[0],)),)
        elif rng.random() < 0.15 and depth < 4:  # a unary chain
            children = (build(span, depth + 1),)
        else:
            cuts = sorted(rng.sample(range(1, len(span)), min(len(span) - 1, rng.randint(0, 2))))
            parts = [span[a:b] for a, b in zip([0, *cuts], [*cuts, len(span)], strict=True)]
            children = tuple(
                Tree("XX", (part[0],)) if len(part) == 1 and rng.random() < 0.6 else build(part, depth + 1)
                for part in parts
            )
        return Tree(rng.choice(labels), children)

    return build(words, 0)


@pytest.fixture(scope="module")
def tokenizer():
    rng = random.Random(0)
    texts = []
    for _ in range(300):
        words = rng.sample(WORD_POOL, rng.randint(1, 8))
        texts += [" ".join(words), linearize(random_tree(rng, words))]
    return train_tokenizer(texts, vocab_size=330)  # small: many words and labels in several pieces


@pytest.fixture(scope="module")
def vocabulary(tokenizer):
    return TreeVocabulary(tokenizer, LABELS)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def item_state(items: list[str], words: list[str], labels: list[str]) -> tuple[int, int, bool] | None:
    """(depth, words emitted, whether the last item opened a constituent) after `items`, complete items of a
    linearized tree over `words`; None if they begin no well-formed tree over them."""
    depth, emitted, after_open = 0, 0, False
    for position, item in enumerate(items):
        if position > 0 and depth == 0:
            return None  # after the root is closed
        if item.startswith("("):
            if item[1:] not in labels or emitted == len(words):
                return None
            depth, after_open = depth + 1, True
        elif item == ")":
            if position == 0 or after_open or (depth == 1 and emitted < len(words)):
                return None
            depth, after_open = depth - 1, False
        else:
            if position == 0 or emitted == len(words) or item != words[emitted]:
                return None
            emitted, after_open = emitted + 1, False
    return depth, emitted, after_open


def reference_next_tokens(tokenizer, words: list[str], labels: list[str], prefix: list[int]) -> set[int]:
    """The tokens t such that prefix + [t] begins the tokenization of a well-formed linearized tree over `words`
    with `labels` (end-of-sentence when prefix is one), found from the text: the current item is completed in every
    allowed way, followed by every allowed next item, and the tokenizer encodes the text."""
    text = tokenizer.decode(prefix)
    items = text.split(" ") if prefix else [""]
    done, partial = items[:-1], items[-1]
    if item_state(done, words, labels) is None:
        return set()
    choices = [f"({label}" for label in labels] + [")"] + words
    result = set()
    for current in (c for c in choices if c.startswith(partial) and item_state(done + [c], words, labels)):
        continuations = [[current]] + [[current, c] for c in choices if item_state(done + [current, c], words, labels)]
        for continuation in continuations:
            tokens = ids(tokenizer, " ".join(done + continuation))
            if tokens[: len(prefix)] == prefix and len(tokens) > len(prefix):
                result.add(tokens[len(prefix)])
    state = item_state(items, words, labels)
    if prefix and state is not None and state[0] == 0 and ids(tokenizer, text) == prefix:
        result.add(tokenizer.eos_token_id)
    return result


def allowed(processor, prefix: list[int], vocab_size: int) -> set[int]:
    scores = processor(torch.tensor([[1, *prefix]]), torch.zeros(1, vocab_size))
    return set(torch.isfinite(scores[0]).nonzero()[:, 0].tolist())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_processor_allows_exactly_the_continuations_of_well_formed_trees(tokenizer, vocabulary, data):
    words = data.draw(st.lists(st.sampled_from(WORD_POOL), min_size=1, max_size=5), label="words")
    processor = TreeConstraintLogitsProcessor(vocabulary, [words])
    prefix: list[int] = []
    for _ in range(40):  # a random walk through allowed tokens, compared with the reference at every step
        expected = reference_next_tokens(tokenizer, words, LABELS, prefix)
        assert allowed(processor, prefix, len(tokenizer)) == expected, tokenizer.decode(prefix)
        token = data.draw(st.sampled_from(sorted(expected)))
        if token == tokenizer.eos_token_id:
            assert tree_from_linearized(tokenizer.decode(prefix), words)[1]
            break
        prefix.append(token)


def test_every_prefix_of_a_random_tree_continues_with_its_next_token(tokenizer, vocabulary):
    rng = random.Random(1)
    for _ in range(60):
        words = rng.sample(WORD_POOL, rng.randint(1, 7))
        tokens = ids(tokenizer, linearize(random_tree(rng, words))) + [tokenizer.eos_token_id]
        processor = TreeConstraintLogitsProcessor(vocabulary, [words])
        for n in range(len(tokens)):
            scores = processor(torch.tensor([[1, *tokens[:n]]]), torch.zeros(1, len(tokenizer)))
            assert math.isfinite(scores[0, tokens[n]]), (words, tokenizer.decode(tokens[:n]))


def test_a_tree_cannot_be_cut_by_the_length_limit(tokenizer, vocabulary):
    words = ["Pierre", "Vinken", "61"]
    pieces = sum(len(ids(tokenizer, f" {w}")) for w in words)
    # the smallest tree: "(S" (2 + pieces of S) + the words + " )"; with 3 tokens to spare nothing else fits
    limit = 1 + len(ids(tokenizer, "S")) + pieces + 1 + 3
    processor = TreeConstraintLogitsProcessor(vocabulary, [words], max_new_tokens=[limit])
    rng = random.Random(0)
    for _ in range(200):  # random walks: every one ends in a complete tree within the limit
        prefix = []
        while (token := rng.choice(sorted(allowed(processor, prefix, len(tokenizer))))) != tokenizer.eos_token_id:
            prefix.append(token)
        assert len(prefix) <= limit and tree_from_linearized(tokenizer.decode(prefix), words)[1]


def test_bad_input_is_refused_with_the_reason(tokenizer, vocabulary):
    with pytest.raises(ValueError, match="brackets"):
        TreeConstraintLogitsProcessor(vocabulary, [["a", "(b)"]])
    with pytest.raises(ValueError, match="at least one word"):
        TreeConstraintLogitsProcessor(vocabulary, [[]])
    with pytest.raises(ValueError, match="label"):
        TreeVocabulary(tokenizer, ["NP", "N P"])
    processor = TreeConstraintLogitsProcessor(vocabulary, [["a"], ["b"]])
    with pytest.raises(ValueError, match="3 hypotheses for 2 sentences"):
        processor(torch.ones(3, 1, dtype=torch.long), torch.zeros(3, len(tokenizer)))


def well_formed_over(text: str, words: list[str]) -> bool:
    return tree_from_linearized(text, words)[1] and linearized_words(text) == words


def test_beam_21_of_a_random_model_gives_trees_of_the_input_words_in_both_loops(tokenizer, vocabulary):
    """Untrained weights (the least likely to close a tree on their own), beam 21 and length penalty 0.3: the fast
    loops of generation_vaswani.py and transformers' own beam search return the same trees, all well formed."""
    sentences = [["The", "cat", "sat"], ["Pierre", "Vinken", ",", "61", "years", "old", "."], ["unbelievably"]]
    model = tiny_model(vocab_size=len(tokenizer))
    batch = tokenizer([" ".join(s) for s in sentences], return_tensors="pt", padding=True)
    offset = 12  # a short length limit: the constraint must close every tree within it
    limits = (batch["attention_mask"].sum(-1) + offset).tolist()
    config = GenerationConfig(**{**model.generation_config.to_dict(), "num_beams": 21, "length_penalty": 0.3})
    config.max_new_tokens_offset = offset

    def generate(**kwargs):
        processor = TreeConstraintLogitsProcessor(vocabulary, sentences, limits)
        return model.generate(
            **batch, generation_config=config, logits_processor=LogitsProcessorList([processor]), **kwargs
        )

    fast = generate()
    reference = generate(return_dict_in_generate=True).sequences  # not the fast loops' case: GenerationMixin's
    assert torch.equal(fast, reference)
    texts = tokenizer.batch_decode(fast, skip_special_tokens=True)
    assert all(well_formed_over(text, words) for text, words in zip(texts, sentences, strict=True)), texts
    generated = (fast[:, 1:] != tokenizer.pad_token_id).sum(-1) - 1  # the tokens before </s>
    assert (generated <= torch.tensor(limits)).all()
    assert max(text.count("(") for text in texts) > 1  # not only the smallest trees: the model chose among many
    greedy = tokenizer.batch_decode(generate(num_beams=1), skip_special_tokens=True)
    assert all(well_formed_over(text, words) for text, words in zip(greedy, sentences, strict=True)), greedy


def test_parse_with_labels_gives_trees_of_the_words_and_without_them_decodes_freely(tokenizer):
    sentences = ["The cat sat on the mat .", "Nov. 29", "Pierre Vinken , 61 years old ,"]
    model = tiny_model(vocab_size=len(tokenizer))
    constrained = parse(model, tokenizer, sentences, batch_size=2, labels=LABELS, progress_bar=False)
    assert all(well_formed_over(t, s.split(" ")) for t, s in zip(constrained, sentences, strict=True)), constrained
    free = parse(model, tokenizer, sentences, batch_size=2, num_beams=2, progress_bar=False)
    assert not any(well_formed_over(t, s.split(" ")) for t, s in zip(free, sentences, strict=True))


MRG = {  # a treebank of two files: wsj_0001 (train) and wsj_0180 (test), PTB bracket form
    "wsj_0001.mrg": "( (S (NP-SBJ (NNP Pierre) (NNP Vinken)) (VP (VBD sat)) (. .)) )\n"
    "( (S (NP (DT The) (NN cat)) (VP (VBD sat) (PP (IN on) (NP (DT the) (NN mat)))) (. .)) )\n",
    "wsj_0180.mrg": "( (S (NP (DT The) (NN cat)) (VP (VBD sat)) (. .)) )\n( (NP (NNP Pierre) (NNP Vinken)) )\n",
}


def test_evaluate_parsing_writes_the_predicted_trees_and_has_an_unconstrained_flag(tmp_path):
    treebank = tmp_path / "treebank"
    treebank.mkdir()
    for name, text in MRG.items():
        (treebank / name).write_text(text)
    gold = read_trees(MRG["wsj_0180.mrg"])
    texts = [t for trees in map(read_trees, MRG.values()) for tree in trees for t in (str(tree), linearize(tree))]
    tokenizer = train_tokenizer(texts * 20, vocab_size=300)
    model_dir = tmp_path / "model"
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    for flags, well_formed in (([], 100.0), (["--unconstrained"], None)):
        output, metrics_file = tmp_path / "trees.txt", tmp_path / "f1.json"
        evaluate_parsing.main(
            [
                str(model_dir),
                str(treebank),
                "--num_beams",
                "2",
                "--output",
                str(output),
                "--metrics_file",
                str(metrics_file),
            ]
            + flags
        )
        metrics = json.loads(metrics_file.read_text())
        assert metrics["decoding"]["constrained"] is not flags
        if well_formed is not None:
            assert metrics["parser"]["well_formed"] == well_formed and metrics["parser"]["words_copied"] == 100.0
        predicted = [read_trees(line)[0] for line in output.read_text().splitlines()]
        # one tree a line, over the gold words with the gold tags, scoring as the metrics say
        assert [t.tagged_words() for t in predicted] == [g.tagged_words() for g in gold]


def test_word_slots_allow_the_same_tokens_and_score_a_word_by_the_mass_of_every_piece_that_could_stand_there(
    tokenizer, vocabulary
):
    words = ["unbelievably", "Ütopia"]  # several pieces each
    plain = TreeConstraintLogitsProcessor(vocabulary, [words])
    slots = TreeConstraintLogitsProcessor(vocabulary, [words], word_slots=True)
    scores = torch.randn(1, len(tokenizer), generator=torch.Generator().manual_seed(3)).log_softmax(-1)
    structure = [vocabulary.open, vocabulary.first_open, vocabulary.close, tokenizer.eos_token_id]
    begins = vocabulary.starts_item.clone()
    begins[structure] = False
    goes_on = ~vocabulary.starts_item
    goes_on[structure] = False
    first, second = vocabulary.word_pieces(words)[0][:2]
    beginning, going_on = (ids(tokenizer, "(S (NP"), first, begins), ([*ids(tokenizer, "(S"), first], second, goes_on)
    for prefix, piece, pieces_there in (beginning, going_on):
        ranked, unranked = (p(torch.tensor([[1, *prefix]]), scores.clone())[0] for p in (slots, plain))
        assert torch.equal(torch.isfinite(ranked), torch.isfinite(unranked)) and torch.isfinite(ranked[piece])
        torch.testing.assert_close(ranked[piece], torch.logsumexp(scores[0][pieces_there], 0))
        others = torch.isfinite(unranked) & (torch.arange(len(tokenizer)) != piece)
        assert torch.equal(ranked[others], unranked[others]) and ranked[piece] > unranked[piece]


def test_a_treebank_without_training_trees_is_refused_naming_the_split_and_its_files(tmp_path, capsys):
    treebank = tmp_path / "treebank"
    treebank.mkdir()
    (treebank / "wsj_0180.mrg").write_text(MRG["wsj_0180.mrg"])
    with pytest.raises(SystemExit) as stopped:
        evaluate_parsing.main([str(tmp_path / "unused_model"), str(treebank)])
    assert stopped.value.code == 1
    message = f"error: {treebank} holds no trees of the train split (wsj_0001.mrg to wsj_0159.mrg)"
    assert message in capsys.readouterr().err
