"""The exit codes and the error wrapper shared by all four commands (fer-infer, fer-train, fer-export, fer-quantize).

| code | meaning |
|---|---|
| 0 | done |
| 1 | done, but some inputs failed (each has an error row), or a gate refused the result |
| 2 | fatal: nothing usable was produced (bad arguments or data, missing model, unwritable output) |
| 130 | interrupted (Ctrl-C); outputs are left as they were |
| 141 | the reader of stdout went away (``fer-infer ... | head``); ends quietly |

A fatal error prints exactly one ``error: ...`` line on stderr, never a traceback.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import typer

from fer_runtime.errors import FerError

OK = 0
PARTIAL = 1
FATAL = 2
INTERRUPTED = 130
PIPE_CLOSED = 141


def one_line(message: object) -> str:
    """``message`` on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(message).split())


def fatal(message: object) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit(FATAL) for the caller to raise."""
    typer.echo(f"error: {one_line(message)}", err=True)
    return typer.Exit(code=FATAL)


@contextmanager
def cli_errors(*user_errors: type[BaseException]) -> Iterator[None]:
    """Turn the toolkit's typed errors (and ``user_errors``) into one line and exit 2; Ctrl-C into 130.

    ``OSError`` counts as the user's (a missing file, a full disk, a read-only folder). Anything
    else is a bug and keeps its traceback.
    """
    try:
        yield
    except (FerError, OSError, *user_errors) as e:
        if isinstance(e, BrokenPipeError):
            raise
        msg = e.strerror if isinstance(e, OSError) and e.strerror and not isinstance(e, FerError) else e
        if isinstance(e, OSError) and getattr(e, "filename", None) and not isinstance(e, FerError):
            msg = f"{e.filename}: {msg}"
        raise fatal(str(msg).strip("'\"")) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(code=INTERRUPTED) from None


def run_app(app: Callable[..., object], prog_name: str) -> None:
    """Run a typer app as a console script; a closed stdout pipe ends it quietly with exit code 141."""
    try:
        app(prog_name=prog_name)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(PIPE_CLOSED)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
