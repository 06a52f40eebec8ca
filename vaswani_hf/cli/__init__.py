"""The command-line programs, one module each, installed as console commands by pyproject.toml's
[project.scripts] (`vaswani-train`, `vaswani-translate`, ...); `scripts/*.py` are thin fronts of the same `main`
functions, for `accelerate launch scripts/train.py` from a clone."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def input_errors_as_messages() -> Iterator[None]:
    """A command's bad input (missing or unreadable files, values it refuses, an output it cannot write: the message
    names the problem) ends it with `PROG: error: MESSAGE` on standard error and exit status 1, as argparse reports
    bad options, not with a traceback."""
    try:
        yield
    except (OSError, ValueError) as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
