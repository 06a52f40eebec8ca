"""Checkpoints written so that a kill never leaves one that loads but is wrong: completion markers, the complete
checkpoints of a run, their rotation and selection by metric, and resuming from the last complete one (their
averaging: averaging.py)."""

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from accelerate import PartialState
from safetensors import SafetensorError, safe_open
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .arguments import VaswaniTrainingArguments
from .files import read_json

logger = logging.getLogger(__name__)

# Written last, atomically, recording what the save wrote: a checkpoint without it, or whose files differ from its
# record, is not resumed from.
COMPLETE_MARKER = "checkpoint_complete"
# The Trainer's own checkpoint folders; other names (a user's checkpoint-12-backup) are never read or moved.
CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
# Where a checkpoint that is not complete is moved: a name neither the Trainer's rotation nor ours matches.
SET_ASIDE_PREFIX = "incomplete-"


def safetensors_names(path: Path) -> list[str]:
    """The tensor names a safetensors file's header lists (reading the header only)."""
    with safe_open(path, framework="pt") as weights:
        return sorted(weights.keys())


def checkpoint_record(folder: Path) -> dict:
    """What a checkpoint's save wrote, for its completion marker: each file's size in bytes, and the tensor names of
    each safetensors file. Hashes are left out: sizes and headers find a truncated, missing or rewritten file, and a
    resume reads every checkpoint's record."""
    files = {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }
    tensors = {name: safetensors_names(folder / name) for name in files if name.endswith(".safetensors")}
    return {"files": files, "tensors": tensors}


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """None if `folder` is a complete checkpoint, otherwise what is wrong with it, naming the file. Complete means: its
    completion marker is there, every file the marker records has the recorded size, and each safetensors file's
    header reads and lists the recorded tensors. (Trainer 5 resumes without a missing optimizer.pt, scheduler.pt or
    rng_state.pth with at most a log line, and initialises a missing tensor at random.)"""
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"{marker} is missing: the save that wrote the checkpoint did not finish"
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        files, tensors = dict(record["files"]), dict(record["tensors"])
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{marker} does not record the checkpoint's files ({type(error).__name__}: {error})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, not the {size} its save wrote"
    for name, expected in tensors.items():
        try:
            found = safetensors_names(folder / name)
        except SafetensorError as error:
            return f"{folder / name} cannot be read ({error})"
        if found != sorted(expected):
            missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
            return f"{folder / name} lacks the tensors {missing} and holds the unexpected tensors {unexpected}"
    return None


def checkpoint_step(folder: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(folder.name).group(1))


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The folders of `output_dir` named as the Trainer names its checkpoints (`checkpoint-<step>`), oldest first."""
    folders = [p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted((p for p in folders if p.is_dir()), key=checkpoint_step)


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders written to the end and still whole (`checkpoint_problem`), oldest first."""
    return [folder for folder in checkpoint_folders(output_dir) if checkpoint_problem(folder) is None]


def logged_metric(args: TrainingArguments) -> str | None:
    """The name under which the Trainer logs `args.metric_for_best_model` (bleu: eval_bleu), or None if unset."""
    metric = args.metric_for_best_model
    return None if metric is None else metric if metric.startswith("eval_") else f"eval_{metric}"


def checkpoint_metric(folder: str | os.PathLike, metric: str) -> float | None:
    """The validation `metric` (as the Trainer logs it: eval_bleu for metric_for_best_model bleu) of the evaluation at
    the checkpoint's own update, from the log history its trainer_state.json holds (so it survives a resume and the
    deletion of other checkpoints); None if that update was not evaluated."""
    state = read_json(Path(folder) / "trainer_state.json")
    at_step = (entry for entry in reversed(state["log_history"]) if entry.get("step") == state["global_step"])
    return next((entry[metric] for entry in at_step if metric in entry), None)


def select_checkpoints(
    scores: dict[int, float | None], selection: str, count: int, greater_is_better: bool = True
) -> list[int]:
    """The steps of the `count` checkpoints that `selection` names among `scores` ({step: metric, None where not
    evaluated}), oldest first: the newest ('last', Sec. 6.1), the best by metric ('best'; of equal scores the older),
    or the consecutive ones centred on the best ('around_best': (count - 1) // 2 before it and count // 2 after it,
    fewer at the ends). Checkpoints without a score are never ranked."""
    steps = sorted(scores)
    if count <= 0:
        return []
    if selection == "last":
        return steps[-count:]
    scored = [step for step in steps if scores[step] is not None]
    ranked = sorted(scored, key=lambda step: scores[step], reverse=greater_is_better)  # stable: ties stay in order
    if selection == "best":
        return sorted(ranked[:count])
    if selection != "around_best":
        raise ValueError(f"checkpoint selection {selection!r} is not one of 'last', 'best', 'around_best'")
    if not ranked:
        return []
    best = steps.index(ranked[0])
    return steps[max(best - (count - 1) // 2, 0) : best + count // 2 + 1]


def checkpoints_to_keep(
    scores: dict[int, float | None], selection: str, limit: int, greater_is_better: bool = True
) -> set[int]:
    """The steps of the checkpoints that a run averaging by `selection` keeps, `limit` of them being what the final
    averaging may read (`select_checkpoints`), besides the best by metric (never deleted) and the newest (to resume
    from): at most `limit` + 1 checkpoints, and for 'around_best' also the newest (limit - 1) // 2, which a later
    best would have before it (at most limit + (limit - 1) // 2 + 1)."""
    steps = sorted(scores)
    kept = set(select_checkpoints(scores, selection, limit, greater_is_better)) | set(steps[-1:])
    kept |= set(select_checkpoints(scores, "best", 1, greater_is_better))
    if selection == "around_best":
        kept |= set(steps[-((limit - 1) // 2) - 1 :])
    return kept


def checkpoint_scores(checkpoints: Iterable[Path], metric: str | None) -> dict[int, float | None]:
    """{step: its validation `metric` (`checkpoint_metric`), or None} of `checkpoints`; all None without a metric."""
    return {checkpoint_step(folder): checkpoint_metric(folder, metric) if metric else None for folder in checkpoints}


def delete_old_checkpoints(output_dir: str | os.PathLike, keep: Iterable[int]) -> list[Path]:
    """Delete the complete checkpoints of `output_dir` but those of the steps in `keep` (`checkpoints_to_keep`), and
    return them. Only complete `checkpoint-<step>` folders are deleted: one that is not complete is left for
    `last_complete_checkpoint` to set aside, and folders of other names (a user's checkpoint-12-backup) are never
    touched. Each loses its completion marker first, so that a kill during the deletion leaves a checkpoint that no
    longer counts, never a damaged one that does."""
    kept = set(keep)
    deleted = [folder for folder in complete_checkpoints(output_dir) if checkpoint_step(folder) not in kept]
    for folder in deleted:
        (folder / COMPLETE_MARKER).unlink()
        shutil.rmtree(folder)
        logger.info("deleted %s (save_total_limit)", folder)
    return deleted


def set_aside(folder: Path) -> Path:
    """Move `folder` to a free name starting with `SET_ASIDE_PREFIX` beside it, and return that name."""
    aside = folder.with_name(SET_ASIDE_PREFIX + folder.name)
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = folder.with_name(f"{SET_ASIDE_PREFIX}{folder.name}-{suffix}")
    folder.rename(aside)
    return aside


def last_complete_checkpoint(output_dir: str | os.PathLike, move_aside: bool = True) -> Path | None:
    """The newest complete checkpoint of `output_dir`, to resume from. Checkpoint folders that are not complete are
    moved aside (`set_aside`, with a warning naming the file at fault) so that neither the Trainer nor a reader
    picks them up and the resumed run can save its own: those a kill left without their marker, and damaged ones (a
    recorded file missing, of another size, or unreadable). A damaged checkpoint with no complete one to go back to
    is an error naming the file. Folders not named `checkpoint-<step>` are never touched, and with
    `move_aside=False` none is (the look of a process that leaves the moving to another: `resumable_checkpoint`)."""
    complete, not_complete, damaged = [], [], []
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            complete.append(folder)
        else:
            not_complete.append((folder, problem))
            if (folder / COMPLETE_MARKER).is_file():
                damaged.append(problem)
    if damaged and not complete:
        raise ValueError(
            f"no complete checkpoint to resume from in {output_dir}: {'; '.join(damaged)}. Restore the file, or "
            "move the checkpoint folders away to train from the start"
        )
    for folder, problem in not_complete if move_aside else ():
        logger.warning("%s is not a complete checkpoint (%s): moved to %s", folder, problem, set_aside(folder))
    return complete[-1] if complete else None


def resumable_checkpoint(output_dir: str | os.PathLike, training_args: VaswaniTrainingArguments) -> Path | None:
    """`last_complete_checkpoint` for every process of a run. The processes that save checkpoints
    (`training_args.should_save`: the main one, or each node's with `save_on_each_node`) look first and move the
    incomplete ones aside while the others wait; the others then look without moving anything. (Each node's main
    process first, as `main_process_first` orders them, would have the nodes move the same folders of a shared
    file system at once.)"""
    state = PartialState()
    if training_args.should_save:
        try:
            return last_complete_checkpoint(output_dir)
        finally:  # also when it fails: the others then find the same fault and fail with it instead of waiting
            state.wait_for_everyone()
    state.wait_for_everyone()
    return last_complete_checkpoint(output_dir, move_aside=False)
