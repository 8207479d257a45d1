"""``python -m xlstm COMMAND [options]``: one entry point, one table of commands.

Each command is a module of :mod:`xlstm.cli` with a ``main(argv) -> int``; this runner finds
it in :data:`COMMANDS`, imports it only when it is asked for (so ``python -m xlstm train``
never imports Dask or ONNX), and gives every command the same ends
(:func:`xlstm.cli._common.run_command`): a usage error is one line and status 2, Ctrl-C one
line and status 130, a closed output (``... | head``) a quiet end.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from .cli._common import EXIT_USAGE, UsageError, quiet_closed_stdout, run_command

PROG = "python -m xlstm"


class Command(NamedTuple):
    """Where a command lives and what it does (one line of ``--help``)."""

    module: str
    summary: str


COMMANDS = {
    "train": Command("xlstm.cli.train", "train a character-level language model"),
    "bench": Command("xlstm.cli.bench", "time forward and forward+backward against torch.nn.LSTM"),
    "predict": Command("xlstm.cli.predict", "batch inference of a saved model (Dask)"),
    "export": Command("xlstm.cli.export", "write a saved model as an ONNX file"),
}


def usage() -> str:
    """The runner's ``--help`` text."""
    lines = [
        f"usage: {PROG} [--version] {{{','.join(COMMANDS)}}} [options]",
        "",
        "commands (`python -m xlstm COMMAND --help` for each one's options):",
    ]
    lines += [f"  {name:8} {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this help and exit"]
    lines += ["  --version   show the version and exit"]
    return "\n".join(lines)


def _version() -> str:
    from . import __version__

    return f"xlstm {__version__}"


def _dispatch(argv: list[str]) -> int:
    if not argv:
        print(usage(), file=sys.stderr)
        return EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help"):
        print(usage())
        return 0
    if name == "--version":
        print(_version())
        return 0
    if name not in COMMANDS:
        what = "option" if name.startswith("-") else "command"
        raise UsageError(f"unknown {what} {name!r} (choose from {', '.join(COMMANDS)})")
    try:
        module = importlib.import_module(COMMANDS[name].module)
    except ImportError as error:  # an optional dependency of the command (its message says which)
        raise UsageError(f"{name}: {error}") from None
    return run_command(f"{PROG} {name}", lambda: module.main(rest))


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m xlstm ...`` with ``argv`` (default: the command line); the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    status = run_command("xlstm", lambda: _dispatch(argv))
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away after the last write
        quiet_closed_stdout()
    return status


if __name__ == "__main__":
    sys.exit(main())
