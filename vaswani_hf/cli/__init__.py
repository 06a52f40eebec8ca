"""The command-line programs, one module each, installed as console commands by pyproject.toml's
[project.scripts] (`vaswani-train`, `vaswani-translate`, ...); `scripts/*.py` are thin fronts of the same `main`
functions, for `accelerate launch scripts/train.py` from a clone."""

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def input_errors_as_messages() -> Iterator[None]:
    """A command's bad input (missing or unreadable files, values it refuses: the message names the problem) ends it
    with `error: MESSAGE` and exit status 1, not a traceback."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
