"""``python -m xlstm {bench,train,predict,export} ...``: one entry point, one module a command."""

from __future__ import annotations

import sys

COMMANDS = {
    "bench": ("xlstm.bench.cli", "time forward and forward+backward against torch.nn.LSTM"),
    "train": ("xlstm.training.cli", "train a character-level language model"),
    "predict": ("xlstm.dask.predict_cli", "batch inference of a saved model, chunked (Dask)"),
    "export": ("xlstm.export_cli", "write a saved model as an ONNX file"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"usage: python -m xlstm {{{','.join(COMMANDS)}}} [options]", ""]
        lines += [f"  {name:8} {summary}" for name, (_, summary) in COMMANDS.items()]
        asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
        print("\n".join(lines), file=sys.stdout if asked_for_help else sys.stderr)
        return 0 if asked_for_help else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
