"""The exit codes and the error wrapper shared by every command (fer-infer, fer-train, fer-export, fer-quantize, fer-analyze).

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

from fer_runtime.errors import FerError, missing_dependency

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

    ``OSError`` counts as the user's (a missing file, a full disk, a read-only folder). A closed stdout
    pipe exits 141 without a word. Anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except BrokenPipeError:  # the reader of stdout went away: nothing left to say to anyone
        _quiet_stdout()
        raise typer.Exit(code=PIPE_CLOSED) from None
    except (FerError, OSError, *user_errors) as e:
        raise fatal(_message(e)) from None
    except ModuleNotFoundError as e:  # an optional package not installed is the user's to fix; other imports are bugs
        if (missing := missing_dependency(e)) is None:
            raise
        raise fatal(missing) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(code=INTERRUPTED) from None


def _message(e: BaseException) -> str:
    """What a user needs from ``e``: an OSError's file and reason, a KeyError's key without repr quotes."""
    if isinstance(e, OSError) and not isinstance(e, FerError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if getattr(e, "filename", None) else e.strerror
    if isinstance(e, KeyError) and not isinstance(e, FerError) and len(e.args) == 1:
        return str(e.args[0])
    return str(e)


def run_app(app: Callable[..., object], prog_name: str) -> None:
    """Run a typer app as a console script; a closed stdout pipe ends it quietly with exit code 141.

    Inside a command :func:`cli_errors` turns the pipe error into exit 141. Output still buffered when the
    command ends (``--help | head -c1``) is flushed here, so that the interpreter's own flush at exit
    cannot fail with "Exception ignored ... BrokenPipeError" and exit code 120.
    """
    try:
        try:
            app(prog_name=prog_name)  # a typer app in standalone mode always ends in SystemExit
        finally:
            sys.stdout.flush()
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
