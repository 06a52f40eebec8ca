"""train(): the whole run, data to output folder: time budgets across a resume, the final model chosen among the
last weights and the averaged checkpoints, early stopping, the tokenizer it learns or checks, what it leaves behind,
and how it refuses to mix two runs."""

import json
import shlex
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import folder_state, recipe, run, tiny_run_arguments
from safetensors.torch import load_file

from vaswani_hf import training
from vaswani_hf.arguments import DataArguments, VaswaniTrainingArguments
from vaswani_hf.averaging import average_checkpoints
from vaswani_hf.checkpoints import checkpoint_folders, checkpoint_step, complete_checkpoints, select_checkpoints
from vaswani_hf.cli.train_tokenizer import main as train_tokenizer_main
from vaswani_hf.data import load_parallel_corpus
from vaswani_hf.evaluation import TOKENIZED_BLEU_LABEL, bleu, chrf, tokenized_bleu
from vaswani_hf.tokenization import check_tokenizer_fits, load_tokenizer, train_tokenizer
from vaswani_hf.trainer import VaswaniTrainer
from vaswani_hf.training import _print_summary, build_tokenizer, earlier_run_outputs, train


def test_a_resumed_run_trains_on_to_the_recipes_larger_time_budget(small_corpus, tmp_path, monkeypatch):
    """Trained for a 2-minute budget, then resumed with 4 minutes and a new mark: it trains on to 4 minutes, evaluating
    at the new mark (3) and not again at the one already passed (1). Each update takes one minute of a fake clock
    that only the updates move, so the counts are the same on any machine."""
    clock = [0.0]
    monkeypatch.setattr("vaswani_hf.callbacks.time.perf_counter", lambda: clock[0])
    training_step = VaswaniTrainer.training_step

    def one_minute_update(self, *args, **kwargs):
        clock[0] += 60
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(VaswaniTrainer, "training_step", one_minute_update)
    output_dir = tmp_path / "out"
    common = dict(average_last_checkpoints=0, max_eval_samples=4, resume_from_checkpoint="last")
    first = train(*tiny_run_arguments(small_corpus, output_dir, max_train_minutes=2, eval_at_minutes="1", **common))
    assert first["train"]["time_marks"] == [[1, 1], [2, 2]]
    again = train(*tiny_run_arguments(small_corpus, output_dir, max_train_minutes=4, eval_at_minutes="1,3", **common))
    assert again["train"]["time_marks"] == [[1, 1], [2, 2], [3, 3], [4, 4]]
    assert again["train"]["trained_minutes"] == 4  # the 2 minutes trained before count against the new budget
    assert [entry["step"] for entry in again["log_history"] if "eval_bleu" in entry] == [1, 3]
    assert json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4


def scripted_validation_bleu(monkeypatch, scores: list[float], final_average_wins: bool = True) -> None:
    """train()'s validation BLEU during training: the next of `scores` at each evaluation. With
    `final_average_wins`, the final evaluation scores the averaged model (the second candidate) 100 BLEU higher than
    sacreBLEU does, so that it is the one saved."""
    scripted = iter(scores)
    monkeypatch.setattr(training, "bleu_metric_for_trainer", lambda tokenizer: lambda p: {"bleu": next(scripted)})
    calls = []

    def final_bleu(hypotheses, references):
        calls.append(None)
        result = bleu(hypotheses, references)
        second_candidate = len(calls) > 2  # validation and test of the last weights come first
        return {**result, "score": result["score"] + 100} if final_average_wins and second_candidate else result

    monkeypatch.setattr(training, "bleu", final_bleu)


def test_the_final_model_is_the_average_of_the_best_k_checkpoints_and_metrics_name_them(
    small_corpus, tmp_path, monkeypatch, capsys
):
    """Evaluations and checkpoints every 2 updates for 12; the best 2 by validation BLEU are those of steps 4 (7.0)
    and 8 (6.0). The final model, chosen by validation BLEU over the last weights, holds exactly their average, and
    metrics.json names them with their validation BLEU. Early stopping with patience 5 counts 4 evaluations without
    improvement by the end: not stopped early."""
    scripted_validation_bleu(monkeypatch, [1.0, 7.0, 2.0, 6.0, 3.0, 5.0])
    output_dir = tmp_path / "out"
    selection = dict(average_checkpoints="best", checkpoints_to_average=2, metric_for_best_model="bleu")
    steps = dict(max_steps=12, eval_strategy="steps", eval_steps=2, save_steps=2, early_stopping_patience=5)
    metrics = train(*tiny_run_arguments(small_corpus, output_dir, max_eval_samples=4, **selection, **steps))
    assert metrics["final_model"] == "average of the best 2"
    averaged = metrics["evaluation"]["average of the best 2"]["checkpoints"]
    assert averaged == [{"step": 4, "eval_bleu": 7.0}, {"step": 8, "eval_bleu": 6.0}]
    assert json.loads((output_dir / "metrics.json").read_text())["evaluation"]["average of the best 2"]["checkpoints"]
    assert [checkpoint_step(folder) for folder in complete_checkpoints(output_dir)] == [4, 8, 12]
    expected = average_checkpoints([output_dir / "checkpoint-4", output_dir / "checkpoint-8"])
    saved = load_file(output_dir / "model.safetensors")
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
    assert metrics["train"]["stopped_early_at_step"] is None
    assert metrics["settings"]["training"]["average_checkpoints"] == "best"
    assert "    checkpoints averaged (validation metric): 4 (7.00), 8 (6.00)" in capsys.readouterr().out


def test_a_run_stopped_early_records_the_step(small_corpus, tmp_path, monkeypatch):
    scripted_validation_bleu(monkeypatch, [1.0, 7.0, 2.0, 6.0, 3.0, 5.0], final_average_wins=False)
    output_dir = tmp_path / "out"
    steps = dict(max_steps=12, eval_strategy="steps", eval_steps=2, save_steps=2, metric_for_best_model="bleu")
    arguments = tiny_run_arguments(small_corpus, output_dir, max_eval_samples=4, early_stopping_patience=2, **steps)
    metrics = train(*arguments)
    # 7.0 at step 4, then 2.0 and 6.0: two evaluations without improvement
    assert metrics["train"]["stopped_early_at_step"] == 8
    assert metrics["settings"]["training"]["early_stopping_patience"] == 2
    assert json.loads((output_dir / "checkpoint-8" / "trainer_state.json").read_text())["global_step"] == 8


@pytest.mark.slow
def test_a_run_killed_and_resumed_keeps_the_best_checkpoints_by_the_validation_bleu_recorded_before_the_kill(
    small_corpus, tmp_path
):
    """Real runs of scripts/train.py, validation BLEU (4 sentences) and a checkpoint every 2 updates, the best 2
    averaged: killed right after checkpoint 8 and resumed to 16, the disk holds at most 2 + 1 checkpoints at the kill
    and, at the end, the best 2 by the BLEU of all 8 evaluations (those before the kill read back from the checkpoints'
    trainer states) and the newest; the final evaluation averages those 2."""
    settings = dict(
        max_steps=16,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        max_eval_samples=4,
        metric_for_best_model="bleu",
        average_checkpoints="best",
        checkpoints_to_average=2,
        resume_from_checkpoint="last",
    )
    output_dir = tmp_path / "out"
    run([sys.executable], recipe(small_corpus, output_dir, **settings), tmp_path, kill_at=("saved", 8))
    at_kill = [checkpoint_step(folder) for folder in checkpoint_folders(output_dir)]
    assert len(at_kill) <= 3 and 8 in at_kill, at_kill
    run([sys.executable], recipe(small_corpus, output_dir, **settings), tmp_path)
    history = json.loads((output_dir / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
    scores = {entry["step"]: entry["eval_bleu"] for entry in history if "eval_bleu" in entry}
    assert sorted(scores) == list(range(2, 17, 2))
    best = select_checkpoints(scores, "best", 2)
    assert [checkpoint_step(folder) for folder in checkpoint_folders(output_dir)] == sorted({*best, 16})
    evaluation = json.loads((output_dir / "metrics.json").read_text())["evaluation"]
    assert [checkpoint["step"] for checkpoint in evaluation["average of the best 2"]["checkpoints"]] == best


@pytest.fixture(scope="module")
def filtered_corpus(small_corpus, tmp_path_factory) -> Path:
    """conftest's Multi30k slice with two training pairs the length filters drop: an empty target, and a target of
    40 words for a source of one (a length ratio far above 3)."""
    folder = tmp_path_factory.mktemp("filtered")
    for path in small_corpus.iterdir():
        shutil.copyfile(path, folder / path.name)
    with open(folder / "train.en", "a", encoding="utf-8") as english, open(folder / "train.de", "a") as german:
        english.write("A dog.\nHello.\n")
        german.write("\n" + "Hallo " * 40 + "\n")
    return folder


@pytest.fixture(scope="module")
def finished_run(filtered_corpus, tmp_path_factory):
    """A tiny run of 4 updates with checkpoints at 2 and 4, so that the final evaluation has two candidates (the last
    weights and the average of the two checkpoints): its output folder and the metrics train() returned."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    arguments = tiny_run_arguments(
        filtered_corpus, output_dir, max_steps=4, save_steps=2, average_last_checkpoints=2, tokenized_bleu=True
    )
    return output_dir, train(*arguments)


def test_a_run_asked_for_the_papers_metric_reports_it_labelled_beside_sacrebleu(finished_run, small_corpus, capsys):
    output_dir, metrics = finished_run
    references = (small_corpus / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    for result in metrics["evaluation"].values():
        hypotheses = (output_dir / result["test_predictions"]).read_text(encoding="utf-8").split("\n")[:-1]
        assert result["test_tokenized_bleu"] == tokenized_bleu(hypotheses, references)
        assert result["test_bleu"] == bleu(hypotheses, references)  # sacreBLEU stays the main score
        for role in ("validation", "test"):
            assert result[f"{role}_tokenized_bleu"]["label"] == TOKENIZED_BLEU_LABEL
    assert metrics["settings"]["training"]["tokenized_bleu"] is True
    _print_summary(metrics, output_dir)
    printed = capsys.readouterr().out
    scores = {role: metrics["evaluation"]["last"][f"{role}_tokenized_bleu"]["score"] for role in ("validation", "test")}
    shown = f"validation {scores['validation']:.2f}, test {scores['test']:.2f}"
    assert f"    {TOKENIZED_BLEU_LABEL}: {shown}" in printed.splitlines()


def test_a_multi_process_run_refuses_to_learn_a_bpe_of_a_large_corpus_and_gives_the_command(
    small_corpus, tmp_path, monkeypatch
):
    """The other processes would wait at main_process_first's barrier while one learns it (ddp_timeout 1,800 s):
    above the limit, every process refuses before the barrier, naming the vaswani-train-tokenizer command, and the
    command given learns a tokenizer the run then takes."""
    data_args = DataArguments(dataset=str(small_corpus), vocab_size=400, file_splits="train=train,validation=val")
    corpus = load_parallel_corpus(small_corpus, "en", "de", splits={"train": "train", "validation": "val"})
    monkeypatch.setattr(training, "MAX_PAIRS_TO_LEARN_BPE_IN_MULTI_PROCESS_RUN", 299)  # the slice holds 300
    two_processes = SimpleNamespace(world_size=2, ddp_timeout=1800)  # refused before any barrier is reached
    output_dir = tmp_path / "runs" / "run"
    with pytest.raises(ValueError) as refused:
        build_tokenizer(data_args, corpus, output_dir, two_processes)
    message = str(refused.value)
    folder = tmp_path / "runs" / "tokenizers" / "en_de_bpe400"
    command = f"vaswani-train-tokenizer {small_corpus} en de {folder} --vocab_size 400"
    assert "learning a BPE from 300 training pairs (more than 299) in a run of 2 processes" in message
    assert "ddp_timeout (1800 s)" in message and f"{command} and set tokenizer_name_or_path: {folder}" in message
    assert not output_dir.exists()
    train_tokenizer_main(shlex.split(command)[1:])
    reused = DataArguments(dataset=str(small_corpus), vocab_size=400, tokenizer_name_or_path=str(folder))
    assert len(build_tokenizer(reused, corpus, output_dir, two_processes)) == len(load_tokenizer(folder))
    # one process learns it itself, at any size
    one_process = VaswaniTrainingArguments(output_dir=str(output_dir), use_cpu=True)
    build_tokenizer(data_args, corpus, output_dir, one_process)
    assert (output_dir / "tokenizer" / "learned_for.json").is_file()


def test_a_tokenizer_folder_that_does_not_exist_is_named_with_the_command_that_learns_it(small_corpus, tmp_path):
    folder = "runs/tokenizers/en_de_bpe37000"
    data_args = DataArguments(
        dataset="wmt/wmt14", dataset_config="de-en", vocab_size=37000, tokenizer_name_or_path=folder
    )
    with pytest.raises(FileNotFoundError) as refused:
        build_tokenizer(data_args, {}, tmp_path, SimpleNamespace(world_size=8))
    assert str(refused.value) == (
        f"tokenizer_name_or_path {folder} does not exist: learn it first with vaswani-train-tokenizer wmt/wmt14 en de"
        f" {folder} --config_name de-en --vocab_size 37000"
    )


def test_a_run_writes_every_test_translation_and_chrf_beside_bleu(finished_run, small_corpus):
    output_dir, metrics = finished_run
    assert json.loads((output_dir / "metrics.json").read_text())["evaluation"] == metrics["evaluation"]
    references = (small_corpus / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    assert set(metrics["evaluation"]) == {"last", "average of 2"}
    files = {name: result["test_predictions"] for name, result in metrics["evaluation"].items()}
    saved = metrics["final_model"]
    assert files[saved] == "test_predictions.txt"
    assert files[next(name for name in files if name != saved)] in (
        "test_predictions_last.txt",
        "test_predictions_average.txt",
    )
    for name, file_name in files.items():
        lines = (output_dir / file_name).read_text(encoding="utf-8").split("\n")
        assert lines[-1] == "" and len(lines[:-1]) == len(references) == 20  # one a line, every test sentence
        result = metrics["evaluation"][name]
        assert lines[:5] == [" ".join(h.splitlines()) for h in result["test_hypotheses_head"]]
        # the written translations give the reported scores
        assert bleu(lines[:-1], references)["score"] == pytest.approx(result["test_bleu"]["score"])
        assert chrf(lines[:-1], references)["score"] == pytest.approx(result["test_chrf"]["score"])
        for split in ("validation", "test"):
            assert "|nc:6|nw:0|" in result[f"{split}_chrf"]["signature"]  # sacreBLEU's chrF: character 6-grams
    assert not list(output_dir.glob(".test_predictions*"))  # no staging file left


def test_a_run_records_the_pairs_read_filtered_and_kept(finished_run, capsys):
    _, metrics = finished_run
    # the two bad pairs are dropped from the training split; evaluation splits stay whole
    assert metrics["data"] == {
        "train": {"read": 302, "filtered": 2, "kept": 300},
        "validation": {"read": 20, "filtered": 0, "kept": 20},
        "test": {"read": 20, "filtered": 0, "kept": 20},
    }


def test_a_second_run_into_a_used_output_dir_is_refused_before_it_starts(finished_run, filtered_corpus):
    output_dir, _ = finished_run
    before = folder_state(output_dir)
    arguments = tiny_run_arguments(filtered_corpus, output_dir, max_steps=4, save_steps=2, average_last_checkpoints=2)
    with pytest.raises(FileExistsError) as refused:
        train(*arguments)
    message = str(refused.value)
    assert f"output_dir {output_dir} holds an earlier run (checkpoint-2, checkpoint-4, metrics.json" in message
    assert "--resume_from_checkpoint last" in message and "another --output_dir" in message
    assert folder_state(output_dir) == before  # nothing written, nothing removed


def test_resuming_with_another_vocabulary_size_is_refused_naming_both(finished_run, filtered_corpus):
    output_dir, _ = finished_run
    assert json.loads((output_dir / "tokenizer" / "learned_for.json").read_text()) == {
        "languages": ["en", "de"],
        "vocab_size": 400,
    }
    before = folder_state(output_dir)
    arguments = tiny_run_arguments(filtered_corpus, output_dir, vocab_size=500, resume_from_checkpoint="last")
    with pytest.raises(ValueError, match="learned with vocab_size 400, but the recipe asks for vocab_size 500"):
        train(*arguments)
    assert folder_state(output_dir) == before


def test_a_reused_tokenizer_must_fit_the_recipe(tmp_path):
    texts = ["a man rides a bike", "zwei hunde spielen im schnee"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    data_args = DataArguments(dataset="unused", source_lang="en", target_lang="de", vocab_size=300)
    # a tokenizer with no record: only a vocabulary larger than vocab_size proves it is not the recipe's
    tokenizer.save_pretrained(tmp_path)
    check_tokenizer_fits(tokenizer, tmp_path, data_args)
    check_tokenizer_fits(tokenizer, tmp_path, DataArguments(dataset="unused", vocab_size=len(tokenizer) + 100))
    with pytest.raises(ValueError, match=f"has {len(tokenizer)} tokens, more than the recipe's vocab_size 280"):
        check_tokenizer_fits(tokenizer, tmp_path, DataArguments(dataset="unused", vocab_size=280))
    # with the record train() writes: the requested size and the languages, in either direction
    (tmp_path / "learned_for.json").write_text(json.dumps({"languages": ["en", "de"], "vocab_size": 300}))
    check_tokenizer_fits(
        tokenizer, tmp_path, DataArguments(dataset="unused", source_lang="de", target_lang="en", vocab_size=300)
    )
    with pytest.raises(
        ValueError, match=r"learned for the languages \['en', 'de'\], but the recipe translates \['en', 'fr'\]"
    ):
        check_tokenizer_fits(tokenizer, tmp_path, DataArguments(dataset="unused", target_lang="fr", vocab_size=300))
    with pytest.raises(ValueError, match="learned with vocab_size 300, but the recipe asks for vocab_size 8000"):
        check_tokenizer_fits(tokenizer, tmp_path, DataArguments(dataset="unused"))


def test_what_counts_as_an_earlier_run(tmp_path):
    assert earlier_run_outputs(tmp_path / "missing") == []
    (tmp_path / "recipe.yaml").write_text("seed: 1")
    (tmp_path / "notes").mkdir()
    assert earlier_run_outputs(tmp_path) == []  # a folder holding other things is free to use
    for name in ("checkpoint-10", "tokenizer"):
        (tmp_path / name).mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert earlier_run_outputs(tmp_path) == ["checkpoint-10", "model.safetensors", "tokenizer"]
