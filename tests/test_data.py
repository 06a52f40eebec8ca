"""Loading parallel corpora, preprocessing with datasets.map, and token-based batching."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from accelerate.data_loader import BatchSamplerShard
from helpers import HANG_GUARD_SECONDS, ROOT

from benchmarks.harness import padding_share
from vaswani_hf.data import MULTI30K_SPLITS, TokenBatchSampler, load_parallel_corpus, padded_size, preprocess
from vaswani_hf.tokenization import train_tokenizer


@pytest.mark.parametrize("target_lang", ["de", "fr"])
def test_multi30k_pair_counts(multi30k_dir, target_lang):
    corpus = load_parallel_corpus(multi30k_dir, "en", target_lang, splits=MULTI30K_SPLITS)
    assert {split: len(data) for split, data in corpus.items()} == {"train": 29000, "validation": 1014, "test": 1000}
    assert set(corpus["train"][0]["translation"]) == {"en", target_lang}


def test_reverse_direction_and_default_splits(multi30k_dir):
    corpus = load_parallel_corpus(multi30k_dir, "de", "en")
    assert set(corpus) == {"train", "val", "test_2016_flickr"}
    assert corpus["val"][0]["translation"]["de"].startswith("Eine Gruppe von Männern")


# The loads to try, each (dataset, source, target, config): run in a fresh interpreter, since huggingface_hub and
# datasets read HF_ENDPOINT when they are imported; each gives its pairs by split, or its ValueError.
LOAD_FROM_THE_HUB = """
    import json, sys
    from vaswani_hf.data import load_parallel_corpus
    results = []
    for name, source_lang, target_lang, config_name in json.loads(sys.argv[1]):
        try:
            corpus = load_parallel_corpus(name, source_lang, target_lang, config_name=config_name)
            result = {split: list(data["translation"]) for split, data in corpus.items()}
            results.append({**result, "features": str(corpus["train"].features)})
        except ValueError as error:
            results.append({"error": str(error)})
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
"""


def load_from_the_hub(endpoint: str, loads: list[tuple], tmp_path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "ds"))
    code, results = textwrap.dedent(LOAD_FROM_THE_HUB), tmp_path / "loaded.json"
    loaded = subprocess.run(
        [sys.executable, "-c", code, json.dumps(loads), str(results)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    return json.loads(results.read_text())


def test_multi30k_served_as_the_hubs_flat_rows_loads_through_load_dataset_as_translation_pairs(multi30k_dir, tmp_path):
    """tests/hub_server.py's serving mode gives the whole of Multi30k as bentrevett/multi30k (rows {"en", "de"});
    the real load_dataset reads it from there, and load_parallel_corpus turns the flat language columns into the
    translation column, pair for pair the local files; a language the dataset lacks is named with its columns."""
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "hub_server.py"), "--serve-multi30k", str(multi30k_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        announced = server.stdout.readline()  # printed once the repo is served
        endpoint = announced.strip().rpartition("HF_ENDPOINT=")[2]
        assert announced.startswith("serving bentrevett/multi30k") and endpoint.startswith("http://127.0.0.1:")
        loads = [("bentrevett/multi30k", "en", "de", None), ("bentrevett/multi30k", "en", "fr", None)]
        de, fr = load_from_the_hub(endpoint, loads, tmp_path)
    finally:
        server.kill()
        server.wait()
    local = load_parallel_corpus(multi30k_dir, "en", "de", splits=MULTI30K_SPLITS)
    for split in ("train", "validation", "test"):
        assert de[split] == list(local[split]["translation"]), split
    assert "Translation(languages=['en', 'de'])" in de["features"]
    assert fr["error"] == (
        "bentrevett/multi30k split 'train' has no text for ['fr']: its columns are ['en', 'de']; a translation corpus"
        " has a 'translation' column of {language: text} or one text column per language"
    )


WMT14_CARD = """---
configs:
- config_name: de-en
  data_files:
  - {split: train, path: de-en/train-*}
  - {split: validation, path: de-en/validation-*}
  - {split: test, path: de-en/test-*}
- config_name: fr-en
  data_files:
  - {split: train, path: fr-en/train-*}
  - {split: validation, path: fr-en/validation-*}
  - {split: test, path: fr-en/test-*}
---
"""


def test_a_hub_dataset_with_a_translation_column_loads_by_config_as_the_wmt14_recipes_ask(tmp_path):
    """wmt/wmt14's layout on the Hub (a config per pair, parquet files of a `translation` column), served locally:
    the recipes' dataset and dataset_config load through load_dataset, in either direction; a language the config
    lacks is named."""
    from datasets import Dataset, Features, Translation
    from hub_server import serve

    files, pairs = {"README.md": WMT14_CARD.encode()}, {}
    for config, lang in (("de-en", "de"), ("fr-en", "fr")):
        for split in ("train", "validation", "test"):
            pairs[config, split] = [{lang: f"{lang} {split} {i}", "en": f"en {split} {i}"} for i in range(3)]
            features = Features({"translation": Translation(languages=[lang, "en"])})
            Dataset.from_dict({"translation": pairs[config, split]}, features=features).to_parquet(tmp_path / "part")
            files[f"{config}/{split}-00000-of-00001.parquet"] = (tmp_path / "part").read_bytes()
    server, state = serve(token="unused")
    state.add_dataset("wmt/wmt14", files)
    try:
        loads = [("wmt/wmt14", "en", "de", "de-en"), ("wmt/wmt14", "fr", "en", "fr-en")]
        loads.append(("wmt/wmt14", "en", "de", "fr-en"))
        de_en, fr_en, missing = load_from_the_hub(f"http://127.0.0.1:{server.server_port}", loads, tmp_path)
    finally:
        server.shutdown()
    for split in ("train", "validation", "test"):
        assert de_en[split] == pairs["de-en", split] and fr_en[split] == pairs["fr-en", split]
    assert missing["error"].startswith("wmt/wmt14 (fr-en) split 'train' has no text for ['de']: its translation column")


def test_a_missing_local_folder_is_named_instead_of_looked_up_on_the_hub(tmp_path):
    for absent in (tmp_path / "multi30k", "../no_such_folder/multi30k"):
        with pytest.raises(FileNotFoundError, match=f"no folder or file {absent} .a Hub dataset id is NAME or"):
            load_parallel_corpus(absent, "en", "de")


def write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_mismatched_line_counts_name_both_files(tmp_path):
    write_gz(tmp_path / "train.en.gz", ["a", "b", "c"])
    write_gz(tmp_path / "train.de.gz", ["x", "y"])
    with pytest.raises(ValueError, match=r"train.en.gz has 3 lines but .*train.de.gz has 2"):
        load_parallel_corpus(tmp_path, "en", "de")


def test_missing_split_names_the_file(tmp_path, multi30k_dir):
    for name in ("train.en.gz", "train.de.gz"):
        shutil.copy(multi30k_dir / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match=r"split 'validation': no file .*val.en"):
        load_parallel_corpus(tmp_path, "en", "de", splits={"train": "train", "validation": "val"})


def test_unknown_language_is_named(multi30k_dir):
    with pytest.raises(ValueError, match=r"language 'cs' has no files .* languages there: \['de', 'en', 'fr'\]"):
        load_parallel_corpus(multi30k_dir, "en", "cs")


def test_empty_file_is_named(tmp_path):
    (tmp_path / "train.en").write_text("")
    (tmp_path / "train.de").write_text("")
    with pytest.raises(ValueError, match="train.en is empty"):
        load_parallel_corpus(tmp_path, "en", "de")


def test_tsv_and_jsonl_files(tmp_path):
    (tmp_path / "train.tsv").write_text("de\ten\nHallo Welt\tHello world\nJa\tYes\n")
    records = [{"translation": {"en": "One", "de": "Eins"}}, {"en": "Two", "de": "Zwei"}]
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    corpus = load_parallel_corpus({"train": tmp_path / "train.tsv", "validation": tmp_path / "dev.jsonl"}, "en", "de")
    assert corpus["train"]["translation"] == [{"en": "Hello world", "de": "Hallo Welt"}, {"en": "Yes", "de": "Ja"}]
    assert corpus["validation"]["translation"][1] == {"en": "Two", "de": "Zwei"}
    with pytest.raises(ValueError, match="no column for \\['fr'\\]"):
        load_parallel_corpus(tmp_path / "train.tsv", "en", "fr")


@pytest.fixture(scope="module")
def preprocessed(multi30k_dir):
    corpus = load_parallel_corpus(multi30k_dir, "en", "de", splits=MULTI30K_SPLITS)
    tokenizer = train_tokenizer((t for p in corpus["train"]["translation"] for t in p.values()), vocab_size=8000)
    return corpus, tokenizer, preprocess(corpus, tokenizer, "en", "de", max_source_tokens=64, max_target_tokens=64)


def test_preprocessing_filters_only_training_data(preprocessed):
    corpus, tokenizer, data = preprocessed
    assert len(data["validation"]) == 1014 and len(data["test"]) == 1000
    train = data["train"]
    assert 28000 < len(train) <= 29000
    assert max(train["source_length"]) <= 64 and max(train["target_length"]) <= 64
    assert all(
        length == len(ids) for length, ids in zip(train["target_length"][:100], train["labels"][:100], strict=True)
    )


def test_second_preprocessing_run_hits_the_datasets_cache(preprocessed):
    corpus, tokenizer, first = preprocessed
    again = preprocess(corpus, tokenizer, "en", "de", max_source_tokens=64, max_target_tokens=64)
    assert [f["filename"] for f in again["train"].cache_files] == [f["filename"] for f in first["train"].cache_files]


def test_token_batches_respect_max_tokens_and_cover_each_example_once(preprocessed):
    train = preprocessed[2]["train"]
    sources, targets = list(train["source_length"]), list(train["target_length"])
    sampler = TokenBatchSampler(sources, targets, max_tokens=4096, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert max(padded_size(b, sources, targets) for b in batches) <= 4096
        assert sorted(i for b in batches for i in b) == list(range(len(train)))
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0  # a new order each epoch
    sampler.set_epoch(0)
    assert list(sampler) == epoch0  # reproducible from the seed


def test_two_processes_get_disjoint_covering_shares_with_equal_steps(preprocessed):
    train = preprocessed[2]["train"]
    sampler = TokenBatchSampler(train["source_length"], train["target_length"], max_tokens=4096, num_replicas=2)
    shares = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1])
    seen = [i for share in shares for batch in share for i in batch]
    assert sorted(seen) == list(range(len(train)))  # disjoint and covering: every example exactly once


def test_padding_share_is_small(preprocessed):
    train = preprocessed[2]["train"]
    sources, targets = list(train["source_length"]), list(train["target_length"])
    batches = list(TokenBatchSampler(sources, targets, max_tokens=4096))
    assert padding_share(batches, sources, targets) <= 0.10


def test_an_example_longer_than_max_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match="example 1 has 300 source \\+ 10 target tokens"):
        TokenBatchSampler([5, 300], [5, 10], max_tokens=256)


def test_a_truncated_or_non_gzip_corpus_file_is_named(tmp_path):
    lines = [f"sentence number {i} of a corpus" for i in range(2000)]
    write_gz(tmp_path / "train.en.gz", lines)
    write_gz(tmp_path / "train.de.gz", lines)
    whole = (tmp_path / "train.de.gz").read_bytes()
    for broken in (whole[: len(whole) // 2], "\n".join(lines).encode()):  # cut short; plain text named .gz
        (tmp_path / "train.de.gz").write_bytes(broken)
        with pytest.raises(ValueError, match=r"train.de.gz cannot be read as gzip .*truncated, damaged or not gzip"):
            load_parallel_corpus(tmp_path, "en", "de")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"en": "Two", "de": ', r"dev.jsonl:2: not a JSON object \(Expecting value"),
        ('{"en": 3, "de": "Drei"}', r"dev.jsonl:2: the 'en' text is 3, not a string"),
        ('{"translation": {"en": "Two", "de": null}}', r"dev.jsonl:2: the 'de' text is null, not a string"),
        ('["Two", "Zwei"]', r'dev.jsonl:2: \["Two", "Zwei"\] is not an object of \{"translation"'),
    ],
)
def test_a_bad_jsonl_line_is_named_with_its_file_and_line(tmp_path, line, message):
    path = tmp_path / "dev.jsonl"
    path.write_text('{"en": "One", "de": "Eins"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_parallel_corpus({"validation": path}, "en", "de")


def test_a_filter_that_drops_every_pair_says_which_filter_dropped_how_many():
    from datasets import Dataset, DatasetDict

    tokenizer = train_tokenizer(["a man rides a bike", "zwei hunde spielen im schnee"] * 20, vocab_size=300)
    pairs = [
        {"en": "", "de": "zwei hunde"},  # an empty side
        {"en": "a man rides a bike and a man rides a bike", "de": "zwei"},  # source too long
        {"en": "a man", "de": "zwei hunde spielen im schnee und zwei hunde"},  # target too long
        {"en": "a man", "de": "   "},  # an empty side (whitespace only)
        {"en": "a", "de": "zwei hunde spielen"},  # 2 and 4 tokens: a length ratio of 2
    ]
    corpus = DatasetDict({split: Dataset.from_dict({"translation": pairs}) for split in ("train", "test")})
    with pytest.raises(ValueError) as refused:
        preprocess(corpus, tokenizer, "en", "de", max_source_tokens=6, max_target_tokens=6, max_length_ratio=1.5)
    assert str(refused.value) == (
        "the length filters drop all 5 pairs of split 'train' (2 with an empty side; 1 with more than"
        " max_source_tokens=6 source tokens; 1 with more than max_target_tokens=6 target tokens; 1 with a length"
        " ratio above max_length_ratio=1.5): raise those limits (max_source_tokens, max_target_tokens,"
        " max_length_ratio) or check the data"
    )
    # the same pairs with room for them: only the empty sides go, and the test split (not filtered) stays whole
    data = preprocess(corpus, tokenizer, "en", "de", max_source_tokens=20, max_target_tokens=20, max_length_ratio=9)
    assert (len(data["train"]), len(data["test"])) == (3, 5)
