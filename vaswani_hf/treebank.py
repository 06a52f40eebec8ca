"""Penn Treebank trees as sentence pairs for parsing as translation (Sec. 6.3): reading `.mrg` files, cleaning the
trees, and the linearized form the model learns to output.

The linearization is that of Vinyals et al. (2015), "Grammar as a Foreign Language", which Sec. 6.3 follows: a
depth-first bracketing of the tree without part-of-speech tags (they found that dropping the tags scored about 1 F1
higher than keeping them, and EVALB does not score them). Two changes, both for learning from ~3,400 sentences:
- the words are kept where Vinyals et al. write a placeholder `XX`: the decoder then copies the source word by word,
  which tells its cross-attention where in the sentence it is; with `XX` it must count words, and our small model
  trained on this data produced trees that ignored the sentence (docs/parsing/report.md);
- closing brackets are unlabeled (`)` rather than `)NP`): the label is implied by the matching opening bracket.
`The cat sat on the mat .` -> `(S (NP The cat ) (VP sat (PP on (NP the mat ) ) ) . )`.
Scoring needs no word from the output: the k-th leaf of a generated tree is the sentence's k-th word.
"""

import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Translation

UNKNOWN_TAG = "XX"  # the part-of-speech tag of the words of generated trees (tags are not generated)
REPAIR_ROOT_LABEL = "S"  # the commonest root label: the root given to generated forests of several trees
# The NLTK sample of the WSJ Penn Treebank (files wsj_0001-wsj_0199), split by file number.
SPLIT_FILES = {"train": range(1, 160), "validation": range(160, 180), "test": range(180, 200)}
_BRACKET_TOKEN = re.compile(r"\([^\s()]*|\)|[^\s()]+")
_MRG_NAME = re.compile(r"wsj_(\d{4})\.mrg$")


@dataclass(frozen=True)
class Tree:
    """A constituency tree: a label and children, each a `Tree` or a word. A preterminal has one word child (its
    label is the part-of-speech tag)."""

    label: str
    children: tuple["Tree | str", ...]

    @property
    def is_preterminal(self) -> bool:
        return len(self.children) == 1 and isinstance(self.children[0], str)

    def words(self) -> list[str]:
        return [word for _, word in self.tagged_words()]

    def tagged_words(self) -> list[tuple[str, str]]:
        """(tag, word) of every preterminal, left to right."""
        if self.is_preterminal:
            return [(self.label, self.children[0])]
        return [pair for child in self.children if isinstance(child, Tree) for pair in child.tagged_words()]

    def __str__(self) -> str:
        return f"({self.label} {' '.join(str(child) for child in self.children)})"


def read_trees(text: str) -> list[Tree]:
    """The trees of a bracketed file (`.mrg`): each top-level bracket is one tree; the PTB's unlabeled outer bracket
    `( (S ...) )` is removed."""
    trees, stack = [], []
    for token in _BRACKET_TOKEN.findall(text):
        if token.startswith("("):
            stack.append((token[1:], []))
        elif token == ")":
            if not stack:
                raise ValueError("unbalanced brackets: ')' without an opening bracket")
            label, children = stack.pop()
            node = Tree(label, tuple(children))
            if len(children) == 1 and not label and isinstance(children[0], Tree):
                node = children[0]
            (stack[-1][1] if stack else trees).append(node)
        elif stack:
            stack[-1][1].append(token)
        else:
            raise ValueError(f"word {token!r} outside any bracket")
    if stack:
        raise ValueError(f"unbalanced brackets: {len(stack)} left open")
    return trees


def clean_label(label: str) -> str:
    """`NP-SBJ-1` -> `NP`, `PP-LOC=2` -> `PP`: function tags, indices and gap indices removed; labels that start with
    `-` (`-LRB-`, `-RRB-`, `-NONE-`) are kept whole."""
    if label.startswith("-"):
        return label
    return re.split(r"[-=]", label, maxsplit=1)[0]


def clean_tree(tree: Tree) -> Tree | None:
    """The tree without empty elements (`-NONE-` traces) and constituents left empty by their removal, with cleaned
    labels; None if nothing is left."""
    if tree.is_preterminal:
        return None if tree.label == "-NONE-" else Tree(clean_label(tree.label), tree.children)
    children = tuple(filter(None, (clean_tree(child) for child in tree.children if isinstance(child, Tree))))
    return Tree(clean_label(tree.label), children) if children else None


def linearize(tree: Tree) -> str:
    """The tree as one line of brackets without part-of-speech tags: `(S (NP The cat ) (VP sat ) . )`."""
    if tree.is_preterminal:
        return tree.children[0]
    return " ".join([f"({tree.label}", *(linearize(child) for child in tree.children), ")"])


def tree_from_linearized(text: str, words: list[str]) -> tuple[Tree, bool]:
    """The tree a linearized parse describes over `words`, and whether the text was well formed.

    Generated text may be malformed; it is repaired so that every sentence gets a tree over exactly its words:
    a `)` with nothing open is dropped, brackets left open are closed at the end, several top-level trees are
    joined under an `S` root, any leaf token counts as a word slot, slots beyond the sentence's words are dropped,
    constituents left without words are dropped, and words without a slot are attached to the root. The text is
    well formed when its brackets are, token for token, those of the tree returned (preterminals get the tag `XX`):
    balanced, one root, no empty constituent, and as many leaves as words. The leaves' text is not checked (the
    tree takes the sentence's words; `linearized_words` gives the generated ones).
    """
    if not words:
        raise ValueError("a tree needs at least one word")
    tokens = _BRACKET_TOKEN.findall(text)
    forest: list = []
    stack = [forest]
    for token in tokens:
        if token.startswith("("):
            node = [token[1:] or "X", []]
            stack[-1].append(node)
            stack.append(node[1])
        elif token == ")":
            if len(stack) > 1:
                stack.pop()
        else:
            stack[-1].append(token)
    if len(forest) == 1 and isinstance(forest[0], list):
        label, children = forest[0]
    else:
        label, children = REPAIR_ROOT_LABEL, forest
    remaining = iter(words)
    root = _build(label, children, remaining)
    missing = tuple(Tree(UNKNOWN_TAG, (word,)) for word in remaining)
    if root is None:
        root = Tree(REPAIR_ROOT_LABEL, missing)
    elif missing:
        root = Tree(root.label, root.children + missing)
    return root, _shape(linearize(root).split()) == _shape(tokens)


def _shape(tokens: list[str]) -> list[str]:
    return [token if token.startswith("(") or token == ")" else "" for token in tokens]


def linearized_words(text: str) -> list[str]:
    """The leaves of a linearized tree, in order: the words a model generated."""
    return [token for token in _BRACKET_TOKEN.findall(text) if not token.startswith("(") and token != ")"]


def _build(label: str, children: list, words: Iterator[str]) -> Tree | None:
    built = []
    for child in children:
        if isinstance(child, list):
            subtree = _build(child[0], child[1], words)
            if subtree is not None:
                built.append(subtree)
        else:
            word = next(words, None)
            if word is not None:
                built.append(Tree(UNKNOWN_TAG, (word,)))
    return Tree(label, tuple(built)) if built else None


def delinearize(text: str, words: list[str]) -> Tree:
    """The tree of a well-formed linearization over `words` (preterminals tagged `XX`, leaves taken from `words`); a
    ValueError otherwise."""
    tree, well_formed = tree_from_linearized(text, words)
    if not well_formed:
        raise ValueError(f"not a well-formed linearized tree over {len(words)} words: {text!r}")
    return tree


def read_treebank(path: str | os.PathLike) -> dict[str, list[Tree]]:
    """Cleaned trees of each split (`SPLIT_FILES`) from a zip of `.mrg` files (e.g. NLTK's `treebank.zip`, read
    without extracting it) or a folder holding them."""
    path = Path(path)
    texts: dict[int, str] = {}
    if path.is_dir():
        for file in path.rglob("*.mrg"):
            if match := _MRG_NAME.search(file.name):
                texts[int(match.group(1))] = file.read_text(encoding="utf-8")
    else:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if match := _MRG_NAME.search(name):
                    texts[int(match.group(1))] = archive.read(name).decode("utf-8")
    if not texts:
        raise FileNotFoundError(f"no wsj_NNNN.mrg files in {path}")
    result = {}
    for split, numbers in SPLIT_FILES.items():
        trees = [tree for number in numbers if number in texts for tree in read_trees(texts[number])]
        result[split] = [cleaned for tree in trees if (cleaned := clean_tree(tree)) is not None]
    return result


def load_treebank_corpus(path: str | os.PathLike, source_lang: str = "en", target_lang: str = "tree") -> DatasetDict:
    """The treebank as a `DatasetDict` of train / validation / test with a `translation` column
    `{source_lang: sentence, target_lang: linearized tree}` (words joined by spaces, in the PTB's tokenization), the
    shape of `data.load_parallel_corpus`, so the translation training trains a parser unchanged."""
    features = Features({"translation": Translation(languages=[source_lang, target_lang])})
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {"translation": [{source_lang: " ".join(t.words()), target_lang: linearize(t)} for t in trees]},
                features=features,
            )
            for split, trees in read_treebank(path).items()
        }
    )
