"""scripts/train.py that records, for each process, the tokenizer train() built, so a multi-process test can see
that every process used the same vocabulary.

    python tests/recorded_train.py RECORD_FOLDER recipe.yaml

Each process writes RECORD_FOLDER/rank-<RANK>.json: its rank, whether it learned a BPE itself, the tokenizer's size
and the SHA-256 of its definition (`fingerprint`: vocabulary, merges, special tokens). Recorded from test code by
wrapping `vaswani_hf.training.build_tokenizer` and `train_tokenizer`; the package has no test hooks.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from vaswani_hf import training
from vaswani_hf.cli.train import main


def fingerprint(tokenizer) -> str:
    """The SHA-256 of the tokenizer's definition: vocabulary, merges, special tokens, normalization and splitting
    (`tokenizer.json` as the tokenizers library writes it), less its padding and truncation, which are the state of
    the last call (a tokenizer that has padded a batch keeps its padding settings)."""
    definition = json.loads(tokenizer.backend_tokenizer.to_str())
    definition.pop("padding", None), definition.pop("truncation", None)
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def install(record_folder: Path) -> None:
    build_tokenizer, train_tokenizer = training.build_tokenizer, training.train_tokenizer
    learned = []

    def learn_and_count(*args, **kwargs):
        learned.append(True)
        return train_tokenizer(*args, **kwargs)

    def build_and_record(*args, **kwargs):
        tokenizer = build_tokenizer(*args, **kwargs)
        rank = int(os.environ.get("RANK", "0"))
        record = {"rank": rank, "learned": bool(learned), "size": len(tokenizer), "sha256": fingerprint(tokenizer)}
        (record_folder / f"rank-{rank}.json").write_text(json.dumps(record))
        return tokenizer

    # train() and build_tokenizer look them up in the module at each call
    training.build_tokenizer, training.train_tokenizer = build_and_record, learn_and_count


if __name__ == "__main__":
    record_folder, *argv = sys.argv[1:]
    install(Path(record_folder))
    main(argv)
