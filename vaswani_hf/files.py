"""Files written whole and atomically, and read with errors that name them: text of one sentence a line, JSON, and
folders built beside their place and swapped in (`atomic_folder`) or files renamed into one
(`files_replaced_in`), so that a reader never sees half of one."""

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Every character str.splitlines() breaks at: a translation holding one would become two lines for some reader.
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """One sentence a line, UTF-8 (`split_text_lines`; a clear error names the file otherwise)."""
    return split_text_lines(Path(path).read_bytes(), str(path))


def split_text_lines(data: bytes, name: str) -> list[str]:
    """UTF-8 `data` split at "\n" only (a trailing "\r" is dropped), so that line N is line N for `wc -l`, `sed`
    and `paste` too; `name` (a file, or standard input) and the line are named if it is not UTF-8. A byte-order mark
    at the start (Windows editors write one) is dropped, not read as part of the first line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{name} is not valid UTF-8 (line {line}): {error}") from error
    lines = text.split("\n")
    if lines[-1] == "":  # the newline ending the last line starts no new one
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def as_one_line(text: str) -> str:
    """`text` with its line breaks (of any kind) replaced by spaces, so it cannot shift the lines after it."""
    return LINE_BREAKS.sub(" ", text)


def as_text_lines(lines: list[str]) -> str:
    """One line per item (`as_one_line`), each ended by "\n"."""
    return "".join(as_one_line(line) + "\n" for line in lines)


def write_text_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Write `as_text_lines(lines)` in UTF-8, atomically (`write_text`)."""
    write_text(path, as_text_lines(lines))


# What a command that builds a folder whole records beside it (`atomic_folder(built_by=...)`): the folder's file names,
# so the same command may later rebuild it without an overwrite flag, as long as it holds nothing else.
BUILT_BY_SUFFIX = ".built-by.json"


def _built_by_record(path: Path) -> Path:
    return path.with_name(f".{path.name}{BUILT_BY_SUFFIX}")


def check_output_folder(
    path: str | os.PathLike,
    overwrite: bool = False,
    keep: Iterable[tuple[str, str | os.PathLike]] = (),
    untouched: Iterable[tuple[str, str | os.PathLike]] = (),
    built_by: str | None = None,
) -> None:
    """Refuse `path` as a folder to build and replace whole (`atomic_folder`) where that would lose something: the
    current directory or a folder holding it; a folder in `keep` ((what, folder) pairs, such as ("the training run",
    run_dir)) or a folder holding one; a folder inside one in `untouched`; something that is not a folder; or an
    existing non-empty folder, unless `overwrite` or `built_by` built it (its record beside it lists exactly what it
    holds). The first four are refused even with `overwrite`. Raises a `FileExistsError` naming the problem."""
    path = Path(path)
    target = path.resolve()
    if Path.cwd().resolve().is_relative_to(target):
        where = "is" if Path.cwd().resolve() == target else "holds"
        raise FileExistsError(
            f"{path} {where} the current directory: replacing it would delete it; choose another folder"
        )
    for what, folder in keep:
        if Path(folder).exists() and Path(folder).resolve().is_relative_to(target):
            where = "is" if Path(folder).resolve() == target else "holds"
            raise FileExistsError(
                f"{path} {where} {what} {folder}: replacing it would delete {what}; choose another folder"
            )
    for what, folder in untouched:
        if Path(folder).exists() and target.is_relative_to(Path(folder).resolve()):
            raise FileExistsError(
                f"{path} is inside {what} {folder}: writing there would change it; choose another folder"
            )
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileExistsError(f"{path} exists and is not a folder; choose another path")
    present = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    if not present or overwrite:
        return
    if built_by is not None and _built_by_record(path).is_file():
        try:
            record = json.loads(_built_by_record(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        if record.get("built_by") == built_by:
            others = sorted(set(present) - set(record.get("files", [])))
            if not others:
                return
            raise FileExistsError(
                f"{path} was built by {built_by} but now also holds {others}; move them, or pass --overwrite "
                "(overwrite=True) to replace the folder"
            )
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    raise FileExistsError(
        f"{path} exists and is not empty ({shown}); choose another folder, or pass --overwrite (overwrite=True) to "
        "replace it"
    )


def _swap_folders(path: Path) -> tuple[Path, Path]:
    """Where `atomic_folder` builds the new folder for `path`, and where it moves the old one during the swap."""
    path = Path(os.path.abspath(path))  # "." and ".." have no name to put beside them (they are refused later)
    return path.with_name(f".{path.name}.atomic-new"), path.with_name(f".{path.name}.atomic-old")


def recover_interrupted_swap(path: str | os.PathLike) -> None:
    """Finish what a kill inside `atomic_folder` left beside `path`, with a warning: an old folder moved aside while
    nothing is at `path` (killed between the two renames) is put back; one moved aside while the new folder is in
    place (killed before deleting it) is deleted; a new folder that was never renamed in is deleted. `atomic_folder`
    calls it first; running it again after a kill inside it goes on where it stopped."""
    path = Path(path)
    if not Path(os.path.abspath(path)).name:  # the root: never built (check_output_folder refuses it)
        return
    new, old = _swap_folders(path)
    if old.is_dir():
        if path.exists() or path.is_symlink():
            logger.warning("%s: deleting %s, the old folder an interrupted replacement left aside", path, old)
            shutil.rmtree(old)
        else:
            logger.warning("%s: an interrupted replacement left it missing; putting back the old folder %s", path, old)
            os.replace(old, path)
    if new.is_dir():
        logger.warning("%s: deleting %s, a new folder an interrupted build never put in place", path, new)
        shutil.rmtree(new)


@contextmanager
def atomic_folder(
    path: str | os.PathLike,
    overwrite: bool = False,
    keep: Iterable[tuple[str, str | os.PathLike]] = (),
    untouched: Iterable[tuple[str, str | os.PathLike]] = (),
    built_by: str | None = None,
) -> Iterator[Path]:
    """Yield an empty folder beside `path` to build in; on success it replaces `path`, on failure it is removed, so
    a reader never sees a half-built folder. The swap moves the old folder aside, renames the new one in, then
    deletes the old one: a kill at any moment leaves the old folder or the new one at `path`, or the old one aside
    with nothing at `path`, which the next call puts back first (`recover_interrupted_swap`). `path` is checked by
    `check_output_folder` (same arguments): nothing it refuses is ever replaced. With `built_by`, the folder's file
    names are recorded beside it so that the same command may rebuild it."""
    path = Path(path)
    keep, untouched = list(keep), list(untouched)
    recover_interrupted_swap(path)
    check_output_folder(path, overwrite=overwrite, keep=keep, untouched=untouched, built_by=built_by)
    path.parent.mkdir(parents=True, exist_ok=True)
    new, old = _swap_folders(path)
    new.mkdir()
    try:
        yield new
        # again: the build may have run long enough for something to be written there meanwhile
        check_output_folder(path, overwrite=overwrite, keep=keep, untouched=untouched, built_by=built_by)
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
        record = _built_by_record(path)
        if built_by is None:
            record.unlink(missing_ok=True)
        else:
            write_json(record, {"built_by": built_by, "files": sorted(entry.name for entry in path.iterdir())})
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in `path`; a file that is not valid JSON (a truncated write, say) is a `ValueError` naming it
    (json's own error names only the line and column)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON (truncated or damaged?): {error}") from error


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON atomically (`write_text`)."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically (`write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically: a reader sees the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(staging, "xb") as f:  # a plain new file: the usual permissions (tempfile's would be 0600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


@contextmanager
def files_replaced_in(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder inside `folder`; on success each file written there replaces its namesake in
    `folder` by a rename, so a reader sees every file whole (old or new), never half-written. For a folder that
    also holds what must stay (a run's checkpoints), where `atomic_folder` would replace everything."""
    folder = Path(folder)
    staging = folder / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        yield staging
        for entry in sorted(staging.iterdir()):
            if entry.is_dir():  # a tokenizer's or model's subfolder: its files, one by one
                for file in sorted(p for p in entry.rglob("*") if p.is_file()):
                    target = folder / file.relative_to(staging)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(file, target)
            else:
                os.replace(entry, folder / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
