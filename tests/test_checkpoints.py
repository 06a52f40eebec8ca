"""Checkpoints: averaging, completion markers, which checkpoints are kept as a run goes, selection by metric."""

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import folder_state, scripted_trainer, tiny_model
from safetensors.torch import load_file
from transformers import (
    TrainerCallback,
)

from vaswani_hf.averaging import average_checkpoints, load_averaged_model
from vaswani_hf.checkpoints import (
    COMPLETE_MARKER,
    checkpoint_folders,
    checkpoint_record,
    checkpoint_step,
    checkpoints_to_keep,
    complete_checkpoints,
    last_complete_checkpoint,
    select_checkpoints,
)


def test_averaging_is_the_elementwise_mean_and_keeps_ties(tmp_path):
    folders = []
    for seed in range(5):
        folder = tmp_path / f"checkpoint-{seed}"
        tiny_model(seed=seed).save_pretrained(folder)
        folders.append(folder)
    averaged = average_checkpoints(folders)
    weights = [load_file(f / "model.safetensors") for f in folders]
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, sum(w[name] for w in weights) / 5, rtol=0, atol=1e-7)
    model = load_averaged_model(folders)
    assert model.lm_head.weight is model.model.shared.weight
    torch.testing.assert_close(model.model.shared.weight, averaged["model.shared.weight"])


def test_averaging_refuses_mismatched_checkpoints(tmp_path):
    tiny_model(seed=0).save_pretrained(tmp_path / "a")
    tiny_model(seed=0, vocab_size=50).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="has shape"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        average_checkpoints([tmp_path / "missing"])


def test_a_checkpoint_without_its_completion_marker_is_never_resumed_from(tmp_path):
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if complete:
            (folder / COMPLETE_MARKER).write_text(json.dumps(checkpoint_record(folder)))
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert not (tmp_path / "checkpoint-30").exists() and (tmp_path / "incomplete-checkpoint-30").is_dir()


# Validation scores of the evaluations after updates 1 to 10: the best is update 2's.
SCORES = [1.0, 5.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("setting", "kept"),
    [
        ({"checkpoints_to_average": 3}, [2, 8, 9, 10]),  # default: the 3 averaged, and the best
        ({"average_last_checkpoints": 3}, [2, 8, 9, 10]),  # the earlier spelling of the same
        ({"checkpoints_to_average": 0, "save_total_limit": 1}, [2, 10]),  # the newest, for resuming, and the best
        ({"checkpoints_to_average": 3, "save_total_limit": 0}, list(range(1, 11))),  # every one
        ({"average_checkpoints": "best", "checkpoints_to_average": 3}, [2, 3, 4, 10]),  # the best 3, and the newest
        # the 3 around the best, and the newest (3 - 1) // 2 + 1, which a later best would have around it
        ({"average_checkpoints": "around_best", "checkpoints_to_average": 3}, [1, 2, 3, 9, 10]),
    ],
)
def test_checkpoints_kept_are_the_averaged_ones_and_the_best_and_other_folders_are_untouched(tmp_path, setting, kept):
    """A checkpoint and an evaluation after each of 10 updates. As the run goes, complete checkpoints are deleted but
    the newest save_total_limit (by default checkpoints_to_average) and the best by metric_for_best_model, or with
    average_checkpoints 'best' the best save_total_limit and the newest (around_best: those around the best); a
    user's checkpoint-12-backup (older than every checkpoint, so first in the Trainer's mtime order) and a
    checkpoint set aside as incomplete stay as they were."""
    (tmp_path / "checkpoint-12-backup").mkdir(parents=True)
    (tmp_path / "checkpoint-12-backup" / "model.safetensors").write_bytes(b"the user's")
    os.utime(tmp_path / "checkpoint-12-backup", (0, 0))
    (tmp_path / "incomplete-checkpoint-5").mkdir()
    untouched = {name: folder_state(tmp_path / name) for name in ("checkpoint-12-backup", "incomplete-checkpoint-5")}
    trainer = scripted_trainer(tmp_path, SCORES, **setting)
    trainer.train()
    assert [checkpoint_step(folder) for folder in checkpoint_folders(tmp_path)] == kept
    assert [checkpoint_step(folder) for folder in complete_checkpoints(tmp_path)] == kept
    assert {name: folder_state(tmp_path / name) for name in untouched} == untouched
    assert trainer.args.save_total_limit == setting.get("save_total_limit", 3)  # as given, after the run too


class CheckpointsOnDisk(TrainerCallback):
    """Records, after each save (the deletions done), the steps of the checkpoint folders on disk."""

    def __init__(self, output_dir: Path):
        self.output_dir, self.seen = output_dir, []

    def on_save(self, args, state, control, **kwargs):
        folders = checkpoint_folders(self.output_dir)
        assert folders == complete_checkpoints(self.output_dir)  # only complete checkpoints, none half-deleted
        self.seen.append([checkpoint_step(folder) for folder in folders])


# The best (9.0) comes early and stays the best to the end; the second best (5.0) comes late.
FADING_SCORES = [1.0, 9.0, 2.0, 3.0, 1.0, 4.0, 0.0, 5.0, 0.0, 0.0]


@pytest.mark.parametrize(("selection", "bound"), [("best", 2 + 1), ("around_best", 2 + 0 + 1)])
def test_checkpoints_on_disk_never_exceed_the_averaged_ones_plus_the_newest_and_the_best_is_never_deleted(
    tmp_path, selection, bound
):
    """With average_checkpoints 'best' (k = 2): after every save the disk holds exactly the best 2 so far by the
    validation metric and the newest, at most k + 1 checkpoints, the best of step 2 among them to the end although
    8 newer checkpoints came after it. 'around_best' (k = 2: the best and the one after it) likewise holds the window
    around the best so far and the newest (k - 1) // 2 + 1."""
    trainer = scripted_trainer(tmp_path, FADING_SCORES, average_checkpoints=selection, checkpoints_to_average=2)
    on_disk = CheckpointsOnDisk(tmp_path)
    trainer.add_callback(on_disk)
    trainer.train()
    assert len(on_disk.seen) == 10
    for step, kept in enumerate(on_disk.seen, start=1):
        scores = dict(enumerate(FADING_SCORES[:step], start=1))
        best = max(scores, key=scores.get)
        assert len(kept) <= bound and best in kept and step in kept, (step, kept)
        assert set(select_checkpoints(scores, selection, 2)) <= set(kept), (step, kept)
    assert on_disk.seen[-1] == ([2, 8, 10] if selection == "best" else [2, 3, 10])


def test_checkpoint_selection_ranks_by_metric_oldest_first_on_ties_and_centres_the_window_on_the_best():
    scores = {100: 1.0, 200: 3.0, 300: 3.0, 400: None, 500: 2.0, 600: 0.5}
    assert select_checkpoints(scores, "last", 2) == [500, 600]
    assert select_checkpoints(scores, "best", 2) == [200, 300]  # equal scores: the older first
    assert select_checkpoints(scores, "best", 3) == [200, 300, 500]  # never one without a score
    assert select_checkpoints(scores, "best", 2, greater_is_better=False) == [100, 600]  # a loss
    assert select_checkpoints(scores, "around_best", 3) == [100, 200, 300]
    assert select_checkpoints(scores, "around_best", 5) == [100, 200, 300, 400]  # fewer at the start
    assert select_checkpoints({1: None}, "around_best", 3) == []
    assert checkpoints_to_keep(scores, "best", 2) == {200, 300, 600}
    assert checkpoints_to_keep(scores, "last", 2) == {200, 500, 600}
    assert checkpoints_to_keep(scores, "around_best", 3) == {100, 200, 300, 500, 600}
