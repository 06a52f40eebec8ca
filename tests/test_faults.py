"""Faults: non-finite gradients, bad model inputs and broken files get a defined outcome with a clear message."""

import ast
import errno
import importlib
import inspect
import json
import logging
import os
import pkgutil
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    HANG_GUARD_SECONDS,
    ROOT,
    folder_state,
    fp16_trainer,
    padded_batch,
    recipe,
    run,
    tiny_model,
    tiny_run_arguments,
    trainer_for,
)
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, GenerationConfig, HfArgumentParser, modeling_utils, pipeline

from vaswani_hf import devices
from vaswani_hf.arguments import DataArguments, ModelArguments, VaswaniTrainingArguments
from vaswani_hf.averaging import average_checkpoints
from vaswani_hf.callbacks import NonFiniteGradientGuard
from vaswani_hf.checkpoints import COMPLETE_MARKER, checkpoint_step, complete_checkpoints, last_complete_checkpoint
from vaswani_hf.cli import evaluate
from vaswani_hf.cli import translate as translate_command
from vaswani_hf.evaluation import bleu, translate
from vaswani_hf.files import read_text_lines
from vaswani_hf.hub import RUN_FILES, build_repo_folder
from vaswani_hf.tokenization import load_tokenizer, train_tokenizer
from vaswani_hf.training import _finished, train


def poison_forward(model, at_calls: set[int]) -> None:
    """Make the decoder's output (so the loss and every gradient) NaN on the given forward calls, counted from 1."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] in at_calls else output

    model.get_decoder().layers[-1].ffn_layer_norm.register_forward_hook(hook)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_nan_gradient_stops_training_naming_the_update_before_the_weights_change(tmp_path, precision):
    model = tiny_model(seed=7)
    poison_forward(model, at_calls=set(range(4, 100)))
    trainer = trainer_for(tmp_path, model, max_steps=10, bf16=precision == "bf16")
    with pytest.raises(FloatingPointError, match="at update 4"):
        trainer.train()
    assert trainer.state.global_step == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_policy_drops_only_the_bad_update(tmp_path):
    model = tiny_model(seed=7)
    poison_forward(model, at_calls={4})
    trainer = trainer_for(tmp_path, model, max_steps=10, nonfinite_gradients="skip")
    trainer.train()
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NonFiniteGradientGuard))
    assert guard.skipped_steps == [4] and trainer.state.global_step == 10
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_torch"])
def test_under_fp16_the_scalers_overflow_updates_are_left_to_it_and_training_goes_on(tmp_path, optim):
    """Loss scale 2^24: the first updates' gradients overflow float16 for real; GradScaler skips each and halves
    its scale until they fit, then trains. The guard (policy stop) lets it, recording the updates skipped, with the
    fused AdamW (the default, which GradScaler lets skip inside its own step) and the plain one."""
    model = tiny_model(seed=7)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    dtypes = set()
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    trainer = fp16_trainer(tmp_path, model, init_scale=2.0**24, max_steps=20, optim=optim)
    trainer.train()
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NonFiniteGradientGuard))
    skipped = len(guard.skipped_steps)
    assert dtypes == {torch.float16}  # autocast ran the projections in float16
    assert 0 < skipped < 20 and guard.skipped_steps == list(range(1, skipped + 1))  # overflows, then none
    assert trainer.accelerator.scaler.get_scale() == 2.0**24 / 2**skipped
    assert trainer.state.global_step == 20
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, initial[name]) for name, p in model.named_parameters())  # it trained


def test_under_fp16_a_run_whose_updates_are_skipped_in_a_row_stops_naming_them(tmp_path):
    """A NaN loss (a diverged run) makes GradScaler skip every update; lowering the scale never helps. Two skips in
    a row (updates 4 and 5, 8 and 9) pass under a limit of 3; the third in a row (update 14) stops training."""
    model = tiny_model(seed=7)
    poison_forward(model, at_calls={4, 5, 8, 9, *range(12, 100)})
    trainer = fp16_trainer(tmp_path, model, init_scale=2.0**8, max_steps=30, max_consecutive_fp16_skips=3)
    with pytest.raises(FloatingPointError, match=r"skipped 3 updates in a row \(updates 12 to 14\)"):
        trainer.train()
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NonFiniteGradientGuard))
    assert guard.skipped_steps == [4, 5, 8, 9, 12, 13, 14] and trainer.state.global_step == 13
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_negative_fp16_skip_limit_is_refused():
    with pytest.raises(ValueError, match="max_consecutive_fp16_skips must be 0 \\(no limit\\) or more, got -1"):
        VaswaniTrainingArguments(output_dir="unused", use_cpu=True, report_to=[], max_consecutive_fp16_skips=-1)


def test_unknown_nonfinite_policy_is_refused():
    with pytest.raises(ValueError, match="nonfinite_gradients must be 'stop' or 'skip'"):
        NonFiniteGradientGuard("ignore")


def test_ids_outside_the_vocabulary_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match="input_ids holds id 200, outside the vocabulary of 97 tokens"):
        model(input_ids=torch.tensor([[5, 200]]), decoder_input_ids=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="decoder_input_ids holds id -1"):
        model(input_ids=torch.tensor([[5, 6]]), decoder_input_ids=torch.tensor([[1, -1]]))


@pytest.mark.parametrize("training", [True, False])
def test_bad_labels_and_label_smoothing_are_named(training):
    model = tiny_model().train(training)  # both loss paths: fused in training, from the logits otherwise
    batch = {"input_ids": torch.tensor([[5, 6, 2]]), "decoder_input_ids": torch.tensor([[1, 7, 8]])}
    with pytest.raises(ValueError, match="labels hold id 97, neither -100 .ignored. nor in the vocabulary of 97"):
        model(**batch, labels=torch.tensor([[7, 97, 2]]))
    with pytest.raises(ValueError, match=r"labels of shape \(1, 2\) do not match the decoder output's \(1, 3\)"):
        model(**batch, labels=torch.tensor([[7, 2]]))
    with pytest.raises(ValueError, match="label_smoothing must be in .0, 1., got 1.5"):
        model(**batch, labels=torch.tensor([[7, 8, 2]]), label_smoothing=1.5)


def test_a_mask_of_another_shape_is_refused_instead_of_broadcast():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\) but input_ids has \(1, 2\)"):
        model(input_ids=torch.tensor([[5, 6]]), attention_mask=torch.ones(1, 3), decoder_input_ids=torch.tensor([[1]]))
    embeddings = model.get_input_embeddings()  # the same checks for embeddings given instead of ids
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\) but inputs_embeds has \(1, 2\)"):
        model(
            inputs_embeds=embeddings(torch.tensor([[5, 6]])),
            attention_mask=torch.ones(1, 3),
            decoder_input_ids=torch.tensor([[1]]),
        )
    with pytest.raises(ValueError, match=r"decoder_attention_mask has shape \(1, 1\) but decoder_inputs_embeds has"):
        model(
            input_ids=torch.tensor([[5, 6]]),
            decoder_inputs_embeds=embeddings(torch.tensor([[1, 7, 8]])),
            decoder_attention_mask=torch.ones(1, 1),
        )


@pytest.mark.parametrize("as_embeddings", [False, True])
def test_padding_before_the_tokens_is_refused_where_positions_would_shift(as_embeddings):
    # positions count from each row's first column (Sec. 3.5): left padding would give a sentence other positions
    model = tiny_model()
    batch = padded_batch()  # right-padded, as the tokenizer pads: accepted
    left = batch["attention_mask"].flip(1)
    inputs = {"input_ids": batch["input_ids"].flip(1)}
    if as_embeddings:
        inputs = {"inputs_embeds": model.get_input_embeddings()(inputs["input_ids"])}
    decoder_input_ids = torch.ones(3, 2, dtype=torch.long)
    model(**batch, decoder_input_ids=decoder_input_ids)
    with pytest.raises(ValueError, match="attention_mask pads some row before its tokens .left padding.."):
        model(**inputs, attention_mask=left, decoder_input_ids=decoder_input_ids)
    with pytest.raises(ValueError, match="decoder_attention_mask pads some row before its tokens"):
        model(
            **batch, decoder_input_ids=decoder_input_ids, decoder_attention_mask=torch.tensor([[1, 1], [0, 1], [1, 1]])
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_all_padding_rows_give_finite_outputs_in_every_dtype(dtype, attn_implementation):
    """Fully masked rows use the dtype's minimum in the mask, never -inf arithmetic: no NaN even in half precision."""
    model = tiny_model(attn_implementation=attn_implementation).to(dtype)
    batch = padded_batch()
    batch["attention_mask"][1] = 0  # a source that is all padding
    decoder_attention_mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0]])
    with torch.no_grad():
        logits = model(
            **batch, decoder_input_ids=torch.tensor([[1, 5, 6]] * 3), decoder_attention_mask=decoder_attention_mask
        ).logits
    assert torch.isfinite(logits).all()


def test_a_truncated_or_corrupted_checkpoint_fails_at_load_naming_the_file(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    content = weights.read_bytes()
    for broken in (content[: len(content) // 2], b"\0" * 100):
        weights.write_bytes(broken)
        with pytest.raises(ValueError, match=f"{tmp_path}: model.safetensors cannot be read, it is truncated"):
            AutoModelForSeq2SeqLM.from_pretrained(tmp_path)


def test_weights_of_another_vocabulary_size_fail_naming_the_shapes(tmp_path):
    tiny_model().save_pretrained(tmp_path / "ours")
    tiny_model(vocab_size=120).save_pretrained(tmp_path / "other")
    shutil.copyfile(tmp_path / "other" / "model.safetensors", tmp_path / "ours" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.shared.weight: checkpoint \(120, 32\) vs config \(97, 32\)"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ours")


def test_a_tokenizer_folder_without_its_vocabulary_fails_naming_it(tmp_path):
    train_tokenizer(["a man rides a bike", "zwei hunde spielen"] * 20, vocab_size=300).save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer.json .* it holds \['tokenizer_config.json'\]"):
        load_tokenizer(tmp_path)


def test_a_full_disk_during_a_save_fails_loudly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    saves = {"n": 0}
    real_save = modeling_utils.safe_save_file

    def save_until_the_disk_is_full(*args, **kwargs):
        saves["n"] += 1
        if saves["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_until_the_disk_is_full)
    trainer = trainer_for(tmp_path, tiny_model(seed=8), max_steps=6, save_strategy="steps", save_steps=2)
    with pytest.raises(OSError, match="No space left on device"):
        trainer.train()
    assert not (tmp_path / "checkpoint-4" / COMPLETE_MARKER).exists()  # the failed save is not marked complete
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert not (tmp_path / "checkpoint-4").exists()  # moved aside, so nothing resumes from it and nothing is lost
    assert (tmp_path / "incomplete-checkpoint-4").is_dir()
    AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "checkpoint-2")  # the previous one is whole


@pytest.mark.slow
def test_kills_at_random_moments_and_during_a_save_lose_nothing(small_corpus, tmp_path):
    """Kill a real run three times, each at a moment the run pauses for (so the same moments on any machine): during
    a save (weights written, completion marker not), then at seeded random updates, inside one (gradients computed,
    weights not yet changed) and right after a checkpoint, in a seeded order; resume it each time, and end with
    exactly the weights of an uninterrupted run."""
    steps = dict(max_steps=60, save_steps=2, average_last_checkpoints=0, resume_from_checkpoint="last")
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    run([sys.executable], recipe(small_corpus, reference_dir, **steps), tmp_path)
    chance = random.Random(0)
    for phase in ("save", *chance.sample(["update", "saved"], 2)):
        done = complete_checkpoints(killed_dir) if killed_dir.exists() else []
        resumes_at = checkpoint_step(done[-1]) if done else 0
        # any update, or a checkpoint's (a multiple of save_steps) with an older one to resume from, within 19
        # updates of where the run resumes: three kills fit in the 60 updates
        step = resumes_at + (chance.randint(1, 19) if phase == "update" else 2 * chance.randint(2, 9))
        run([sys.executable], recipe(small_corpus, killed_dir, **steps), tmp_path, kill_at=(phase, step))
        checkpoint = killed_dir / f"checkpoint-{step}"
        if phase == "save":
            assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / COMPLETE_MARKER).exists()
            # as a kill in the middle of the write would leave it: resuming from this folder would now fail, so the
            # run must resume from checkpoint step - 2
            weights = (checkpoint / "model.safetensors").read_bytes()
            (checkpoint / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        else:  # killed after checkpoint `step` (saved), or inside update `step` (update): nothing newer is on disk
            done = [checkpoint_step(folder) for folder in complete_checkpoints(killed_dir)]
            newest = step if phase == "saved" else (step - 1) // 2 * 2
            assert done[-1:] == ([newest] if newest else [])
            assert not (killed_dir / "model.safetensors").exists()
    run([sys.executable], recipe(small_corpus, killed_dir, **steps), tmp_path)
    assert json.loads((killed_dir / "checkpoint-60" / "trainer_state.json").read_text())["global_step"] == 60
    reference, resumed = load_file(reference_dir / "model.safetensors"), load_file(killed_dir / "model.safetensors")
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_every_torch_load_on_the_training_and_loading_paths_is_weights_only():
    """No pickle code runs from a checkpoint: the package never calls torch.load, and every torch.load of the Trainer
    (which resumes optimizer, scheduler and RNG states) passes weights_only=True."""
    import transformers.trainer

    import vaswani_hf

    modules = [
        transformers.trainer,
        *(importlib.import_module(f"vaswani_hf.{m.name}") for m in pkgutil.iter_modules(vaswani_hf.__path__)),
    ]
    calls = 0
    for module in modules:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls += 1
                keywords = {k.arg: k.value for k in node.keywords}
                assert (
                    isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                ), f"{module.__name__}: {ast.unparse(node)}"
    assert calls >= 5  # the Trainer's resume loads were found


def test_a_text_file_that_is_not_utf8_is_named(tmp_path):
    source = tmp_path / "source.en"
    source.write_bytes(b"A dog runs.\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match=f"{source} is not valid UTF-8"):
        read_text_lines(source)


@pytest.mark.slow
def test_resuming_a_finished_run_keeps_its_final_weights(small_corpus, tmp_path):
    """Trainer takes one step past max_steps when resumed from the final checkpoint; train() must not."""
    steps = dict(max_steps=12, save_steps=6, average_last_checkpoints=0, resume_from_checkpoint="last")
    run([sys.executable], recipe(small_corpus, tmp_path / "done", **steps), tmp_path)
    shutil.copytree(tmp_path / "done" / "checkpoint-12", tmp_path / "again" / "checkpoint-12")
    shutil.copytree(tmp_path / "done" / "tokenizer", tmp_path / "again" / "tokenizer")
    run([sys.executable], recipe(small_corpus, tmp_path / "again", **steps), tmp_path)
    final, checkpoint = (
        load_file(tmp_path / "again" / "model.safetensors"),
        load_file(tmp_path / "done" / "model.safetensors"),
    )
    for name, tensor in checkpoint.items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=0, msg=name)
    # the resumed run reports the training time its checkpoint recorded, not the nothing it added
    done, again = (json.loads((tmp_path / f / "metrics.json").read_text())["train"] for f in ("done", "again"))
    assert again["trained_minutes"] > 0 and again["trained_minutes"] <= done["trained_minutes"]


def test_default_length_limit_stays_within_a_learned_position_table():
    """Source length + 50 may exceed a learned table; generate's default limit stops at the table's end instead of
    failing in the middle of decoding."""
    model = tiny_model(position_encoding="learned", max_position_embeddings=12)
    generated = model.generate(**padded_batch(), num_beams=1)
    assert generated.shape[1] <= 12 + 1  # the start token, then at most 12 positions
    with pytest.raises(ValueError, match="longer than max_position_embeddings=12"):
        model.generate(**padded_batch(), num_beams=1, max_new_tokens=20)


def test_undecodable_bytes_from_a_file_get_a_defined_result_or_a_named_error(tiny_translator, tmp_path):
    model, tokenizer = tiny_translator
    translator = pipeline("translation", model=model, tokenizer=tokenizer, max_new_tokens=5)
    source = tmp_path / "source.en"
    source.write_bytes(b"A dog \xff\xfe runs.\n")
    # replaced: U+FFFD is ordinary text, translated like any other
    replaced = source.read_text(encoding="utf-8", errors="replace").strip()
    assert "\ufffd" in replaced and isinstance(translator(replaced)[0]["translation_text"], str)
    # kept as lone surrogates: not Unicode text, refused naming the input and the character
    escaped = source.read_text(encoding="utf-8", errors="surrogateescape").strip()
    with pytest.raises(ValueError, match=r"input 1 is not valid Unicode text: surrogates not allowed at character 6"):
        translator(["A dog runs.", escaped])
    with pytest.raises(TypeError):  # the tokenizer alone refuses them too (tokenizers' own TypeError)
        tokenizer(escaped)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A VaswaniTrainer run of 4 updates with complete checkpoints at 2 and 4: weights, optimizer, scheduler, RNG and
    trainer state, each recorded in its completion marker."""
    folder = tmp_path_factory.mktemp("saved") / "run"
    trainer_for(folder, tiny_model(seed=4), max_steps=4, save_strategy="steps", save_steps=2).train()
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    shutil.copytree(folder, tmp_path / "run")
    return tmp_path / "run"


def test_resume_moves_aside_only_the_trainers_incomplete_checkpoints(saved_run, tmp_path, caplog):
    run_dir = copy_of(saved_run, tmp_path)
    # a kill during the save of checkpoint-6: weights and optimizer written, the completion marker not
    shutil.copytree(run_dir / "checkpoint-4", run_dir / "checkpoint-6")
    (run_dir / "checkpoint-6" / COMPLETE_MARKER).unlink()
    # the user's folders: a complete checkpoint kept as a backup, and notes
    shutil.copytree(run_dir / "checkpoint-4", run_dir / "checkpoint-4-backup")
    (run_dir / "checkpoint-notes").mkdir()
    (run_dir / "checkpoint-notes" / "todo.txt").write_text("compare the learning rates")
    users = {name: folder_state(run_dir / name) for name in ("checkpoint-4-backup", "checkpoint-notes")}
    with caplog.at_level(logging.WARNING, logger="vaswani_hf.checkpoints"):
        assert last_complete_checkpoint(run_dir) == run_dir / "checkpoint-4"
    assert {name: folder_state(run_dir / name) for name in users} == users  # untouched
    assert complete_checkpoints(run_dir) == [run_dir / "checkpoint-2", run_dir / "checkpoint-4"]
    # set aside, not deleted, under a name neither the Trainer's rotation nor ours matches; said in the log
    assert not (run_dir / "checkpoint-6").exists()
    assert (run_dir / "incomplete-checkpoint-6" / "optimizer.pt").is_file()
    assert f"{run_dir / 'checkpoint-6'} is not a complete checkpoint" in caplog.text
    assert f"moved to {run_dir / 'incomplete-checkpoint-6'}" in caplog.text
    # killed at the same save once more: set aside beside the first, which stays as it was
    shutil.copytree(run_dir / "incomplete-checkpoint-6", run_dir / "checkpoint-6")
    last_complete_checkpoint(run_dir)
    assert (run_dir / "incomplete-checkpoint-6").is_dir() and (run_dir / "incomplete-checkpoint-6-2").is_dir()


def test_on_two_nodes_only_the_saving_process_moves_checkpoints_and_the_other_looks_after_it(saved_run, tmp_path):
    """Two processes, each its node's main process (a two-node run on a shared file system), look up the checkpoint
    to resume from as train() does: process 0, which saves, moves the incomplete checkpoint aside while process 1
    waits; process 1 then looks, moves nothing, and finds the same checkpoint (tests/checkpoint_lookup.py makes
    process 0 hold its move until process 1 is either looking or waiting, so a race shows on any machine)."""
    run_dir = copy_of(saved_run, tmp_path)
    shutil.copytree(run_dir / "checkpoint-4", run_dir / "checkpoint-6")  # killed during the save of checkpoint-6
    (run_dir / "checkpoint-6" / COMPLETE_MARKER).unlink()
    signals = tmp_path / "signals"
    signals.mkdir()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    processes = []
    for rank in (0, 1):
        node = {"RANK": str(rank), "GROUP_RANK": str(rank), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
        world = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        env = {**os.environ, **node, **world}
        script = [sys.executable, str(ROOT / "tests" / "checkpoint_lookup.py"), str(run_dir), str(signals)]
        processes.append(
            subprocess.Popen(
                [*script, str(tmp_path / f"result-{rank}.json")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [process.communicate(timeout=HANG_GUARD_SECONDS)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    first, second = (json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1))
    assert first["world_size"] == second["world_size"] == 2 and first["local_main"] and second["local_main"]
    assert first["moved"] == ["checkpoint-6"] and second["moved"] == []
    assert second["0_done_when_1_looked"] is True
    assert first["found"] == second["found"] == "checkpoint-4"
    assert (run_dir / "incomplete-checkpoint-6").is_dir() and not (run_dir / "incomplete-checkpoint-6-2").exists()


def delete(name: str):
    return lambda folder: (folder / name).unlink()


def truncate_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def rename_a_tensor(folder: Path) -> None:
    """The same number of bytes and a header that reads, but one tensor under another name (so missing)."""
    path = folder / "model.safetensors"
    name = sorted(load_file(path))[0]
    path.write_bytes(path.read_bytes().replace(f'"{name}"'.encode(), f'"{name[:-1]}X"'.encode(), 1))


@pytest.mark.parametrize(
    ("file_name", "damage", "said"),
    [
        ("optimizer.pt", delete("optimizer.pt"), "is missing"),  # Adam would restart from zero
        ("scheduler.pt", delete("scheduler.pt"), "is missing"),  # Eq. 3 would restart from step 1
        ("rng_state.pth", delete("rng_state.pth"), "is missing"),
        ("trainer_state.json", delete("trainer_state.json"), "is missing"),
        ("model.safetensors", truncate_weights, r"has \d+ bytes, not the \d+ its save wrote"),
        ("model.safetensors", rename_a_tensor, "lacks the tensors"),  # would be initialised at random
    ],
)
def test_a_damaged_checkpoint_is_not_resumed_from_and_its_file_is_named(
    saved_run, tmp_path, caplog, file_name, damage, said
):
    run_dir = copy_of(saved_run, tmp_path)
    damage(run_dir / "checkpoint-4")
    assert complete_checkpoints(run_dir) == [run_dir / "checkpoint-2"]  # nor averaged
    with caplog.at_level(logging.WARNING, logger="vaswani_hf.checkpoints"):
        assert last_complete_checkpoint(run_dir) == run_dir / "checkpoint-2"  # the previous complete one
    assert re.search(f"{re.escape(str(run_dir / 'checkpoint-4' / file_name))} {said}", caplog.text)
    assert (run_dir / "incomplete-checkpoint-4").is_dir() and not (run_dir / "checkpoint-4").exists()
    # with no complete checkpoint to go back to, resuming stops naming the file, and moves nothing
    damage(run_dir / "checkpoint-2")
    with pytest.raises(ValueError, match=f"{re.escape(str(run_dir / 'checkpoint-2' / file_name))} {said}"):
        last_complete_checkpoint(run_dir)
    assert (run_dir / "checkpoint-2").is_dir()


def test_resuming_from_a_named_damaged_checkpoint_is_refused_naming_the_file(saved_run, small_corpus, tmp_path):
    run_dir = copy_of(saved_run, tmp_path)
    checkpoint = run_dir / "checkpoint-4"
    (checkpoint / "scheduler.pt").unlink()
    arguments = tiny_run_arguments(small_corpus, tmp_path / "out", resume_from_checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match=re.escape(f"cannot resume from {checkpoint}: {checkpoint}/scheduler.pt is")):
        train(*arguments)


def test_averaging_names_a_truncated_weights_file(saved_run, tmp_path):
    run_dir = copy_of(saved_run, tmp_path)
    truncate_weights(run_dir / "checkpoint-2")
    weights = run_dir / "checkpoint-2" / "model.safetensors"
    with pytest.raises(ValueError, match=re.escape(f"{weights} cannot be read, it is truncated or corrupted")):
        average_checkpoints([run_dir / "checkpoint-4", run_dir / "checkpoint-2"])


def test_a_save_over_an_existing_checkpoint_unmarks_it_first(saved_run, tmp_path, monkeypatch):
    """Resumed from checkpoint-2, the run saves checkpoint-4 over the one there. A save that fails half-way (weights
    written, the optimizer not) leaves files of two saves, and the old marker must not vouch for them: files of the
    same model have the same sizes, so only removing the marker before the save tells."""
    run_dir = copy_of(saved_run, tmp_path)
    real_save = torch.save

    def fail_on_the_optimizer(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fail_on_the_optimizer)
    trainer = trainer_for(run_dir, tiny_model(seed=4), max_steps=4, save_strategy="steps", save_steps=2)
    with pytest.raises(OSError, match="No space left on device"):
        trainer.train(resume_from_checkpoint=str(run_dir / "checkpoint-2"))
    assert not (run_dir / "checkpoint-4" / COMPLETE_MARKER).exists()
    assert complete_checkpoints(run_dir) == [run_dir / "checkpoint-2"]


def write_lines(path, lines: list[str]) -> str:
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    return str(path)


def test_evaluate_splits_lines_at_newlines_only_and_refuses_files_that_do_not_align(
    tiny_translator_folder, tmp_path, capsys
):
    """U+2028 and form feed inside a line leave it one line (str.splitlines() would make four of these two), so
    two sources give two hypotheses; files whose line counts differ, or empty ones, are refused naming them."""
    sources = write_lines(tmp_path / "src.en", ["A man\u2028rides a bike.", "Two dogs\fplay."])
    references = write_lines(tmp_path / "ref.de", ["Ein Mann\u2028fährt Rad.", "Zwei Hunde\fspielen."])
    hypotheses = tmp_path / "hyp.de"
    model = str(tiny_translator_folder)
    evaluate.main([model, sources, references, "--output_file", str(hypotheses), "--num_beams", "1"])
    assert hypotheses.read_bytes().count(b"\n") == 2
    assert json.loads(capsys.readouterr().out)["bleu"] >= 0

    longer = write_lines(tmp_path / "three.de", ["Ein Mann", "fährt Rad.", "Zwei Hunde spielen."])
    empty = tmp_path / "empty.de"
    empty.write_bytes(b"")
    for reference, message in (
        (longer, f"{sources} has 2 lines but {longer} has 3: the sources and references must align line by line"),
        (str(empty), f"{empty} is empty"),
    ):
        with pytest.raises(SystemExit) as refused:
            evaluate.main([model, sources, reference])
        assert refused.value.code == 1
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([model, str(empty), str(empty)])
    assert f"{empty} is empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no sentences to score"):
        bleu([], [])


@pytest.mark.parametrize("num_beams", [0, -1])
def test_a_beam_count_below_one_is_refused_naming_it(tiny_translator, num_beams):
    model, tokenizer = tiny_translator
    message = f"num_beams must be a whole number of at least 1 .1: greedy search., got {num_beams}"
    batch = tokenizer(["A dog runs."], return_tensors="pt")
    with pytest.raises(ValueError, match=message):
        model.generate(**batch, num_beams=num_beams)
    with pytest.raises(ValueError, match=message):
        model.generate(**batch, generation_config=GenerationConfig(num_beams=num_beams, max_new_tokens=5))
    with pytest.raises(ValueError, match=message):
        translate(model, tokenizer, ["A dog runs."], num_beams=num_beams)
    with pytest.raises(ValueError, match=message):
        pipeline("translation", model=model, tokenizer=tokenizer)("A dog runs.", num_beams=num_beams)


@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
def test_generate_on_no_rows_or_no_tokens_is_refused_naming_the_shape(shape):
    model = tiny_model()
    for num_beams in (1, 4):
        with pytest.raises(ValueError, match=rf"input_ids has shape \({shape[0]}, {shape[1]}\): generate needs"):
            model.generate(input_ids=torch.zeros(shape, dtype=torch.long), num_beams=num_beams)


def test_truncated_json_files_are_named(tmp_path):
    """tokenizer.json, a checkpoint's trainer_state.json and a run's metrics.json, cut short by a failed copy."""
    tokenizer_folder = tmp_path / "tokenizer"
    train_tokenizer(["a man rides a bike", "zwei hunde spielen"] * 20, vocab_size=300).save_pretrained(tokenizer_folder)
    checkpoint = tmp_path / "run" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4, "stateful_callbacks": {}}))
    run_dir = tmp_path / "run"
    for name in RUN_FILES:
        (run_dir / name).write_text("{}")
    (run_dir / "metrics.json").write_text(json.dumps({"settings": {}, "evaluation": {}}))
    for path in (tokenizer_folder / "tokenizer.json", checkpoint / "trainer_state.json", run_dir / "metrics.json"):
        whole = path.read_text()
        path.write_text(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"{tokenizer_folder / 'tokenizer.json'} is not valid JSON .truncated"):
        load_tokenizer(tokenizer_folder)
    arguments = VaswaniTrainingArguments(output_dir=str(run_dir), use_cpu=True, report_to=[], max_steps=10)
    with pytest.raises(ValueError, match=f"{checkpoint / 'trainer_state.json'} is not valid JSON .truncated"):
        _finished(checkpoint, arguments)
    with pytest.raises(ValueError, match=f"{run_dir / 'metrics.json'} is not valid JSON .truncated"):
        build_repo_folder(run_dir, tmp_path / "repo", "org/name")


def test_the_commands_name_a_model_folder_without_a_tokenizer(tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_model().save_pretrained(folder)
    sources = write_lines(tmp_path / "src.en", ["A dog runs."])
    commands = ((translate_command.main, [str(folder), "A dog."]), (evaluate.main, [str(folder), sources, sources]))
    for main, argv in commands:
        with pytest.raises(SystemExit) as refused:
            main(argv)
        assert refused.value.code == 1
        assert f"{folder} has no tokenizer.json (the BPE vocabulary and merges); it holds" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("file_splits", "split", "argument", "present"),
    [
        ("train=train,test=test_2016_flickr", "validation", "validation_split", ["test", "train"]),
        ("validation=val,test=test_2016_flickr", "train", "train_split", ["test", "validation"]),
    ],
)
def test_a_missing_split_names_the_splits_there_and_the_argument(
    small_corpus, tmp_path, file_splits, split, argument, present
):
    values = recipe(small_corpus, tmp_path / "out", file_splits=file_splits)
    parser = HfArgumentParser((ModelArguments, DataArguments, VaswaniTrainingArguments))
    with pytest.raises(ValueError) as refused:
        train(*parser.parse_dict(values))
    assert str(refused.value) == (
        f"{small_corpus} has no {split!r} split ({argument}); its splits are {present}: set"
        f" {argument} to one of them, or file_splits (split=stem pairs) for a folder's files"
    )
    assert not (tmp_path / "out" / "tokenizer").exists()  # refused before anything was learned from the data


def test_the_pipeline_names_a_model_folder_without_a_tokenizer_or_with_a_damaged_one(tiny_translator_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_translator_folder, folder)
    tokenizer_file = folder / "tokenizer.json"
    whole = tokenizer_file.read_text()
    tokenizer_file.write_text(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"the tokenizer in {folder} cannot be loaded: Expecting"):
        pipeline("translation", model=str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder} has no tokenizer.json .* it holds .*'config.json'"):
        pipeline("translation", model=str(folder))
    with pytest.raises(ValueError, match="no tokenizer could be loaded for the model: pass tokenizer="):
        pipeline("translation", model=tiny_model())
    assert pipeline("translation", model=str(tiny_translator_folder))("A dog runs.", max_new_tokens=3)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"fp16": True}, "fp16 trains on GPUs only"),
        ({"bf16_full_eval": True}, "bf16_full_eval would not change this run's evaluations"),
        ({"fp16_full_eval": True}, "fp16_full_eval would not change"),
    ],
)
def test_precision_settings_that_would_do_nothing_on_a_cpu_are_refused_before_the_data_is_read(
    tmp_path, setting, message
):
    arguments = VaswaniTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **setting)
    with pytest.raises(ValueError, match=message):
        train(ModelArguments(), DataArguments(dataset=str(tmp_path / "no_data_here")), arguments)
    assert not (tmp_path / "out").exists()


def test_bf16_training_on_a_cpu_without_bf16_units_is_warned_about(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(devices, "cpu_has_native_bfloat16", lambda: False)
    arguments = VaswaniTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", bf16=True)
    with caplog.at_level("WARNING"), pytest.raises((OSError, ValueError)):  # then the missing data stops it
        train(ModelArguments(), DataArguments(dataset=str(tmp_path / "no_data_here")), arguments)
    assert any("bf16 training is emulated and slower than float32" in r.getMessage() for r in caplog.records)
