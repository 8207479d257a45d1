"""``python -m xlstm export CHECKPOINT --onnx OUT.onnx``: a saved model as an ONNX file.

The checkpoint is read with :func:`xlstm.training.load_model` (a training model such as
``CharLSTM``: LSTM plus output layer) or, for a bare model, :meth:`xlstm.LSTM.load`; the ONNX
model (:func:`xlstm.convert.to_onnx`) is written by :func:`xlstm._atomic.replacing`: a
temporary file ``OUT.onnx.<random>.tmp`` that replaces ``OUT.onnx`` only when complete (one
left by a killed run is removed by the next), with the mode of any new file (``0o666`` less
the umask).  A bad checkpoint or a missing ``onnx`` package is one line on stderr and exit
status 2; a file that cannot be written, one line and status 1; a closed stdout is not an
error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from .. import _atomic
from ._common import Parser, UsageError, report, run_command

PROG = "python -m xlstm export"
_INSTALL = "pip install -e '.[onnx]' from a clone"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Write a saved xlstm model as an ONNX model (for ONNX Runtime).",
    )
    parser.add_argument("checkpoint", type=Path, help="a .npz checkpoint (model.save(...))")
    parser.add_argument(
        "--onnx", type=Path, required=True, metavar="OUT.onnx", help="file to write"
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 21)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="element type of the graph (default float32: ONNX Runtime's LSTM runs float32 only)",
    )
    parser.add_argument(
        "--output",
        choices=("softmax", "logits"),
        default=None,
        help="a model with an output layer: Y as probabilities (default) or logits",
    )
    parser.add_argument(
        "--initial-state", action="store_true", help="add graph inputs initial_h, initial_c"
    )
    parser.add_argument(
        "--sequence-lens", action="store_true", help="add the graph input sequence_lens (m,)"
    )
    return parser


def load_checkpoint(path: Path) -> Any:
    """A training model (:func:`xlstm.training.load_model`) or an ``xlstm.LSTM``."""
    from ..convert.onnx import _model_class
    from ..training import load_model

    if not path.is_file():
        raise UsageError(f"no checkpoint file {str(path)!r}")
    try:
        return load_model(path)
    except OSError as error:
        raise UsageError(f"cannot read {str(path)!r}: {error}") from None
    except ValueError as error:
        # A bare LSTM's checkpoint is not a training model's: try its own loader.
        loader = getattr(_model_class(), "load", None)
        if loader is None:
            raise UsageError(str(error)) from None
        try:
            return loader(path)
        except (OSError, ValueError):
            raise UsageError(str(error)) from None


def main(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of ``python -m xlstm export``; returns the exit status."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    return run_command(PROG, lambda: _export(argv, stdout, stderr), stderr=stderr)


def _export(argv: list[str] | None, stdout: TextIO, stderr: TextIO) -> int:
    args = build_parser().parse_args(argv)
    try:
        import onnx  # noqa: F401 (only to fail early, before reading the checkpoint)
    except ImportError:
        raise UsageError(f"the onnx package is not installed: {_INSTALL}") from None
    if args.onnx.is_dir():
        raise UsageError(f"--onnx {str(args.onnx)!r} is a directory")
    try:
        model = load_checkpoint(args.checkpoint)
        from ..convert import to_onnx

        try:
            proto = to_onnx(
                model, None, opset=args.opset, dtype=args.dtype, output=args.output,
                initial_state=args.initial_state, sequence_lens=args.sequence_lens,
            )  # fmt: skip
        except (TypeError, ValueError) as error:
            raise UsageError(f"cannot export {str(args.checkpoint)!r}: {error}") from None
        args.onnx.parent.mkdir(parents=True, exist_ok=True)
        with _atomic.replacing(args.onnx) as file:
            file.write(proto.SerializeToString())
    except OSError as error:
        print(f"{PROG}: error: {error}", file=stderr)
        return 1
    opset = proto.opset_import[0].version
    report(f"wrote {args.onnx} ({type(model).__name__}, opset {opset})", stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
