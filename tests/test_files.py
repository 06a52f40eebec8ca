"""Nothing is deleted that a command did not build: the one rule for folders built whole and renamed into place
(`vaswani_hf.files.check_output_folder`, applied by `atomic_folder`), which publishing, the CTranslate2 export
and checkpoint averaging use. Publishing's, the export's and averaging's own cases are in
tests/test_hub.py, tests/test_convert.py and tests/test_averaging.py."""

import itertools
import logging
import os
import shutil
import signal
import traceback
from pathlib import Path

import pytest
from helpers import user_folder

from vaswani_hf.files import atomic_folder, files_replaced_in, recover_interrupted_swap, write_bytes


def build(path, **policy) -> None:
    with atomic_folder(path, **policy) as staging:
        (staging / "built.txt").write_text("new")


def test_a_non_empty_folder_is_refused_and_kept_unless_overwrite_is_asked(tmp_path):
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match=r"mine exists and is not empty \(mine.txt\).*--overwrite"):
        build(mine)
    assert (mine / "mine.txt").read_text() == "keep me" and not (mine / "built.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging folder left behind
    build(mine, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["built.txt"]
    (tmp_path / "empty").mkdir()
    build(tmp_path / "empty")  # an empty folder, like a new one, needs no flag
    assert (tmp_path / "empty" / "built.txt").is_file()
    (tmp_path / "file").write_text("a file")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        build(tmp_path / "file", overwrite=True)


def test_the_current_directory_and_folders_holding_it_are_never_targets(tmp_path, monkeypatch):
    work = user_folder(tmp_path / "parent" / "work")
    monkeypatch.chdir(work)
    for target, where in ((".", "is"), (str(work), "is"), ("..", "holds"), (str(tmp_path), "holds")):
        with pytest.raises(FileExistsError, match=f"{where} the current directory"):
            build(target, overwrite=True)
    assert [p.name for p in work.iterdir()] == ["mine.txt"] and (work / "mine.txt").read_text() == "keep me"


def test_kept_folders_and_folders_holding_them_are_never_targets_even_with_overwrite(tmp_path):
    run = user_folder(tmp_path / "runs" / "run")
    keep = [("the training run", run)]
    for target, where in ((run, "is"), (tmp_path / "runs", "holds"), (tmp_path, "holds")):
        with pytest.raises(FileExistsError, match=f"{where} the training run .*replacing it would delete"):
            build(target, overwrite=True, keep=keep)
    assert (run / "mine.txt").read_text() == "keep me"
    build(run / "hub" / "repo", keep=keep)  # inside the kept folder is allowed, unless it is to stay untouched
    with pytest.raises(FileExistsError, match="is inside the checkpoint"):
        build(run / "sub", untouched=[("the checkpoint", run)])


def test_a_folder_the_same_command_built_is_rebuilt_unless_it_holds_something_else(tmp_path):
    folder = tmp_path / "repo"
    build(folder, built_by="vaswani-publish")
    build(folder, built_by="vaswani-publish")  # its own earlier build: no flag needed
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        build(folder, built_by="vaswani-other")  # another command did not build it
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"was built by vaswani-publish but now also holds \['notes.txt'\]"):
        build(folder, built_by="vaswani-publish")
    assert (folder / "notes.txt").read_text() == "mine"
    build(folder, overwrite=True)  # without built_by the record goes: the next build is not "its own" any more
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        build(folder, built_by="vaswani-publish")


def files_of(folder: Path) -> dict[str, str] | None:
    """{relative path: text} of every file under `folder`, or None when there is no folder."""
    if not folder.is_dir():
        return None
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def replace_and_die(target: Path, files: dict[str, str], kill_at: int) -> int:
    """Replace `target` by a folder of `files` with `atomic_folder` in a forked child that SIGKILLs itself just before
    its `kill_at`-th call (from 1) of os.replace, os.rename, os.unlink, os.rmdir or shutil.rmtree once the build is
    done: every call through which the swap changes folders, shutil.rmtree's own unlink and rmdir calls included (a
    kill halfway through a deletion). Returns the child's wait status. The fault is injected here, by patching."""
    child = os.fork()
    if child == 0:  # the child: build, swap, die on cue; never back into pytest
        calls, swapped = {"n": 0}, False
        try:

            def counted(function):
                def call(*args, **kwargs):
                    calls["n"] += 1
                    if calls["n"] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return function(*args, **kwargs)

                return call

            with atomic_folder(target, overwrite=True, built_by="vaswani-test") as staging:
                for name, text in files.items():
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    (staging / name).write_text(text)
                changing = ((os, "replace"), (os, "rename"), (os, "unlink"), (os, "rmdir"), (shutil, "rmtree"))
                for module, name in changing:
                    setattr(module, name, counted(getattr(module, name)))
            swapped = True
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0 if swapped else 1)
    return os.waitpid(child, 0)[1]


def test_a_kill_at_any_step_of_a_replacement_leaves_the_old_or_the_new_folder_and_the_next_call_recovers(
    tmp_path, caplog
):
    target = tmp_path / "target"
    old_files, new_files = {"old.txt": "old", "sub/deeper.txt": "old too"}, {"new.txt": "new"}
    recovered_to = []
    for kill_at in itertools.count(1):
        assert replace_and_die(target, old_files, kill_at=0) == 0  # the old folder, built whole (no kill)
        status = replace_and_die(target, new_files, kill_at)
        if os.WIFEXITED(status):  # the swap made fewer calls than kill_at: it ran to the end
            assert os.WEXITSTATUS(status) == 0 and files_of(target) == new_files
            break
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        # nothing lost: the old or the new folder is in place, or nothing is and the old one is aside, whole
        aside = files_of(tmp_path / ".target.atomic-old")
        assert files_of(target) in (old_files, new_files) or (files_of(target) is None and aside == old_files)
        with caplog.at_level(logging.WARNING, logger="vaswani_hf.evaluation"):
            recover_interrupted_swap(target)
        recovered_to.append("old" if files_of(target) == old_files else "new")
        assert files_of(target) in (old_files, new_files)
        assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["target"]  # nothing left beside it
    assert kill_at > 3 and set(recovered_to) == {"old", "new"}
    assert "putting back the old folder" in caplog.text and "the old folder an interrupted replacement" in caplog.text

    # the next atomic_folder call recovers by itself: the old folder is put back, then replaced as its builder may
    assert replace_and_die(target, old_files, kill_at=0) == 0
    assert os.WIFSIGNALED(replace_and_die(target, new_files, kill_at=2))  # old aside, new not yet in
    assert files_of(target) is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaswani_hf.evaluation"):
        with pytest.raises(FileExistsError, match="not empty"):  # the old folder is back, not this call's to replace
            build(target)
        assert "putting back the old folder" in caplog.text
    assert files_of(target) == old_files
    build(target, built_by="vaswani-test")  # its builder rebuilds it without overwrite, as before the kill
    assert files_of(target) == {"built.txt": "new"}


def test_files_built_in_the_staging_folder_replace_their_namesakes_and_leave_the_rest(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-200").mkdir(parents=True)
    (run / "checkpoint-200" / "model.safetensors").write_bytes(b"checkpoint")
    (run / "model.safetensors").write_bytes(b"old")
    (run / "tokenizer").mkdir()
    (run / "tokenizer" / "vocab.json").write_text("old")
    with files_replaced_in(run) as staging:
        (staging / "model.safetensors").write_bytes(b"new")
        (staging / "tokenizer").mkdir()
        (staging / "tokenizer" / "merges.txt").write_text("new")
        assert (run / "model.safetensors").read_bytes() == b"old"  # nothing in place before the end
    assert (run / "model.safetensors").read_bytes() == b"new"
    assert (run / "tokenizer" / "merges.txt").read_text() == "new"
    assert (run / "tokenizer" / "vocab.json").read_text() == "old"
    assert (run / "checkpoint-200" / "model.safetensors").read_bytes() == b"checkpoint"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-200", "model.safetensors", "tokenizer"]


def test_a_failure_while_building_replaces_nothing_and_leaves_no_staging_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"), files_replaced_in(tmp_path) as staging:
        (staging / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed while saving")
    assert (tmp_path / "model.safetensors").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    target = tmp_path / "training_curves.png"
    target.write_bytes(b"old")

    def fail(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        write_bytes(target, b"new image")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["training_curves.png"]
