"""``python -m xlstm bench ...`` and ``python -m xlstm train ...``."""

from __future__ import annotations

import sys

COMMANDS = {
    "bench": ("xlstm.bench.cli", "time forward and forward+backward against torch.nn.LSTM"),
    "train": ("xlstm.training.cli", "train a character-level language model"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: python -m xlstm {bench,train} [options]", ""]
        lines += [f"  {name:6} {summary}" for name, (_, summary) in COMMANDS.items()]
        asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
        print("\n".join(lines), file=sys.stdout if asked_for_help else sys.stderr)
        return 0 if asked_for_help else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
