"""What the command-line tools share: exit statuses, one-line usage errors, number parsers,
a help formatter, a progress line.

Every ``python -m xlstm`` command reports a bad argument as exactly one line on stderr
and exit status 2, before any work starts; progress goes to stderr, rewritten in place on
a terminal and as plain lines (or nothing) otherwise.  :func:`run_command` maps what ends
a command to its exit status (:data:`EXIT_USAGE`, :data:`EXIT_INTERRUPTED`, quiet on a
closed pipe), for ``python -m xlstm`` and for the commands' own ``main`` functions.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

EXIT_USAGE = 2
"""Exit status of a bad command line or input (one line on stderr, nothing done)."""

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as a shell reports it)."""


class UsageError(Exception):
    """A bad command line or input file: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors raise :class:`UsageError` (no exit, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except where there is nothing to show: a
    default of ``None`` (the help text says what happens) or a help text that already
    states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


def quiet_closed_stdout() -> None:
    """Point standard output at ``os.devnull`` after its reader went away, so that Python's
    final flush does not print ``Exception ignored ... BrokenPipeError``."""
    try:
        descriptor = os.open(os.devnull, os.O_WRONLY)
        os.dup2(descriptor, sys.stdout.fileno())
        os.close(descriptor)
    except (OSError, ValueError, AttributeError):
        pass  # no descriptor (a StringIO in tests): nothing will flush it at exit


def run_command(
    prog: str, body: Callable[[], int], *, stderr: TextIO | None = None,
    interrupted: str = "interrupted",
) -> int:  # fmt: skip
    """``body()``'s exit status, with what ends every command handled the same way.

    A :class:`UsageError` is one line ``prog: error: ...`` and :data:`EXIT_USAGE`;
    ``--help`` (argparse's ``SystemExit``) its own status; Ctrl-C one line
    ``prog: <interrupted>`` and :data:`EXIT_INTERRUPTED`; a closed standard output
    (``... | head``) ends quietly with status 0.
    """
    stream = sys.stderr if stderr is None else stderr
    try:
        return body()
    except SystemExit as exit_:  # --help, --version
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=stream)  # sys.exit("message"), as Python itself reports it
        return 1
    except UsageError as error:
        print(f"{prog}: error: {error}", file=stream)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=stream)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        quiet_closed_stdout()
        return 0


def number(text: str, convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str):
    """``convert(text)`` if it parses and ``accept`` s it; otherwise a one-line usage error."""
    try:
        value = convert(text)
    except (ValueError, OverflowError):
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer ``>= 1``."""
    return number(text, int, lambda value: value >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer ``>= 0``."""
    return number(text, int, lambda value: value >= 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """A finite number ``> 0``."""
    return number(
        text, float, lambda value: value > 0 and math.isfinite(value), "a positive number"
    )


def non_negative_float(text: str) -> float:
    """A finite number ``>= 0`` (seconds, for example)."""
    return number(
        text, float, lambda value: value >= 0 and math.isfinite(value), "a finite number >= 0"
    )


def fraction(high: float) -> Callable[[str], float]:
    """A parser of numbers in ``[0, high]``."""

    def parse(text: str) -> float:
        return number(text, float, lambda value: 0.0 <= value <= high, f"a number in [0, {high}]")

    return parse


def report(text: str, stream: TextIO | None) -> None:
    """Print the closing line of a command; a reader that went away is not an error.

    ``python -m xlstm predict ... | head -0``: the write raises ``BrokenPipeError`` after the
    work is done.  The line is dropped, and a real descriptor is pointed at ``os.devnull``
    so that Python's final flush is silent too (``None``: stdout was closed at start-up).
    """
    if stream is None:
        return
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        try:
            descriptor = os.open(os.devnull, os.O_WRONLY)
            os.dup2(descriptor, stream.fileno())
            os.close(descriptor)
        except (OSError, ValueError, AttributeError):
            pass  # no descriptor (a StringIO): nothing will flush it at exit


class Progress:
    """One progress line on a terminal (a bar, redrawn at most 5 times a second).

    Parameters
    ----------
    stream : text stream
        Where it goes (stderr).
    bar : bool
        Draw the bar in place (a terminal); otherwise only forced updates are written,
        one plain line each.
    """

    def __init__(self, stream: TextIO, *, bar: bool) -> None:
        self.stream = stream
        self.bar = bar
        self.last_draw = 0.0
        self.width = 0

    def update(self, fraction: float, text: str, *, force: bool = False) -> None:
        """Show ``text`` with the bar ``fraction`` full (``force``: also as a plain line)."""
        now = time.monotonic()
        if self.bar:
            if not force and now - self.last_draw < 0.2:
                return
            filled = int(24 * min(1.0, max(0.0, fraction)))
            line = f"[{'#' * filled}{'.' * (24 - filled)}] {text}"
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
            self.last_draw = now
        elif force:
            self.stream.write(text + "\n")
            self.stream.flush()

    def clear(self) -> None:
        """Remove the bar (before other output)."""
        if self.bar and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "HelpFormatter",
    "Parser",
    "Progress",
    "UsageError",
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "number",
    "positive_float",
    "positive_int",
    "quiet_closed_stdout",
    "report",
    "run_command",
]
