"""``python -m xlstm predict``: the softmax outputs of a saved model for a large input file.

::

    python -m xlstm predict --model CHECKPOINT --input X.npy --output Y.npy
        [--batch-chunk K] [--scheduler ADDRESS | --workers N]
        [--backend numpy|cupy] [--engine E]

The input is memory-mapped, never read whole: floats ``x (n_x, m, T)`` or integer ids
``(m, T)`` (one-hot encoded on the workers, for a character model).  It is cut along the
batch ``m`` into chunks of ``K`` sequences, each one task on a dask worker; the workers
read their chunk from the file themselves, so it must be visible to them at the same path
(always true for ``--workers``; on a cluster, a shared filesystem).  The output ``y (n_y,
m, T)`` is written chunk by chunk into a temporary ``.npy`` next to ``--output``, which
replaces ``--output`` only when complete: an interrupted run leaves no half-written
file under that name.

Where the work runs: ``--workers N`` starts a local cluster of ``N`` single-threaded
worker processes; ``--scheduler ADDRESS`` joins a running cluster; neither uses dask's
threads in this process.  A progress bar goes to stderr when it is a terminal.  Bad
arguments, a bad checkpoint or input file give one line on stderr and exit status 2; a
chunk whose task keeps killing workers, exit status 1 with a line naming the chunk;
Ctrl-C, 130.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._cli import Parser, UsageError, positive_int
from .cluster import connect

PROG = "python -m xlstm predict"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Softmax outputs y (n_y, m, T) of a saved model, computed on dask workers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="checkpoint (.npz)")
    parser.add_argument(
        "--input", type=Path, required=True, help=".npy: floats (n_x, m, T) or int ids (m, T)"
    )
    parser.add_argument("--output", type=Path, required=True, help=".npy written: (n_y, m, T)")
    parser.add_argument(
        "--batch-chunk",
        type=positive_int,
        default=None,
        help="sequences per task (default: about four tasks per worker)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="address of a running dask scheduler")
    where.add_argument(
        "--workers", type=positive_int, default=None, help="start N local worker processes"
    )
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    parser.add_argument("--engine", default="auto", help="engine of each task (xlstm.engines)")
    return parser


# --------------------------------------------------------------------------- the model


class Predictor:
    """What each task needs from a model: ``n_x``, ``n_y``, dtype and a chunk's outputs.

    A one-layer model runs as the seed's parameter dict through
    :func:`xlstm.dask.lstm_forward` (the engine of ``--engine``); a stacked one
    (``num_layers > 1``) runs whole in each task through its own ``forward``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.n_x, self.n_y = int(model.n_x), int(model.n_y)
        self.dtype = np.dtype(str(model.dtype))
        self.parameters = seed_parameters(model)

    def outputs(self, x: Any, engine: str) -> Any:
        """``y (n_y, m, T)`` as a dask array, for ``x`` chunked along the batch."""
        from . import _common
        from .inference import lstm_forward

        if self.parameters is not None:
            return lstm_forward(x, None, self.parameters, engine=engine)[1]
        import array_api_compat
        import dask.array as da
        from dask.base import tokenize

        # Only what a task needs travels: the model without its optimiser state.
        light = copy.copy(self.model)
        light.opt_state = None
        if engine != "auto":
            weights = next(iter(light.parameters.values()))
            xp = array_api_compat.array_namespace(weights)
            _common.check_engine(engine, xp, weights.dtype)
            light.engine = engine
        client = _common.default_client(None)
        shipped = _common.ship(light, client, "model")
        return da.blockwise(
            _model_block, "yjt", x, "ijt" if x.ndim == 3 else "jt", shipped, None,
            new_axes={"y": self.n_y}, concatenate=True, dtype=self.dtype,
            meta=_common.output_meta(x, 3, self.dtype),
            name=_common.FORWARD_PREFIX + tokenize(x, shipped),
        )  # fmt: skip


def seed_parameters(model: Any) -> dict[str, Any] | None:
    """The seed's dict ``Wf ... by`` of a one-layer model, else ``None``.

    Reads the older checkpoints' models (``.parameters`` is already the seed's dict) and
    the current ones (flat keys ``Wf_l0 ...``; the recurrent part is ``model.lstm``).
    """
    from .._layout import GATE_KEYS, OUTPUT_KEYS, PARAMETER_KEYS

    parameters = model.parameters
    if all(key in parameters for key in PARAMETER_KEYS):
        return {key: parameters[key] for key in PARAMETER_KEYS}
    if int(getattr(model, "num_layers", 1)) != 1 or not hasattr(model, "lstm"):
        return None
    layer = model.lstm.layers[0]
    return {**{key: layer[key] for key in GATE_KEYS}, **{k: parameters[k] for k in OUTPUT_KEYS}}


def _model_block(x: Any, model: Any) -> Any:
    """One chunk through a whole (stacked) model: ``y (n_y, k, T)``."""
    if x.ndim == 2:
        x = model.inputs(x)
    return model.forward(x)[0]


def _load_model(path: Path, backend: str) -> Predictor:
    from ..training import load_model

    try:
        model = load_model(path, backend=backend)
    except FileNotFoundError:
        raise UsageError(f"--model {str(path)!r}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--model {str(path)!r} is a directory") from None
    except ImportError as error:
        raise UsageError(f"--backend {backend}: {error}") from None
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        raise UsageError(str(error)) from None
    return Predictor(model)


# --------------------------------------------------------------------------- the input


def _open_input(path: Path, predictor: Predictor) -> np.ndarray:
    """The input memory-mapped and checked: shape, dtype, and ids within ``[0, n_x)``."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"--input {str(path)!r}: no such file") from None
    except (OSError, ValueError, EOFError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise UsageError(f"--input {str(path)!r} is not a readable .npy file ({reason})") from None
    if not isinstance(data, np.ndarray):  # an .npz archive
        raise UsageError(f"--input {str(path)!r} is an .npz archive; expected one .npy array")
    n_x = predictor.n_x
    if np.issubdtype(data.dtype, np.integer) and data.ndim == 2:
        _check_ids(data, n_x, path)
    elif np.issubdtype(data.dtype, np.floating) and data.ndim == 3:
        if data.shape[0] != n_x:
            msg = (
                f"--input {str(path)!r} has shape {data.shape}; the model expects "
                f"(n_x, m, T) with n_x = {n_x}"
            )
            raise UsageError(msg)
    else:
        msg = (
            f"--input {str(path)!r} is {data.ndim}-D {data.dtype}; expected floats "
            f"(n_x, m, T) with n_x = {n_x} or integer ids (m, T)"
        )
        raise UsageError(msg)
    if 0 in data.shape:
        raise UsageError(f"--input {str(path)!r} has shape {data.shape}; m and T must be >= 1")
    return data


def _check_ids(ids: np.ndarray, n_x: int, path: Path) -> None:
    # In slices, so that a large file is never read into memory at once.
    rows = max(1, (1 << 24) // max(1, ids.shape[1]))
    for start in range(0, ids.shape[0], rows):
        piece = ids[start : start + rows]
        bad = np.flatnonzero(((piece < 0) | (piece >= n_x)).any(axis=1))
        if bad.size:
            row = start + int(bad[0])
            msg = (
                f"--input {str(path)!r}: sequence {row} holds ids outside [0, {n_x}) "
                "(the model's vocabulary)"
            )
            raise UsageError(msg)


def _read_chunk(path: str, dtype: str, block_info: Any = None) -> np.ndarray:
    """One chunk of the input file, read by the worker that needs it."""
    location = block_info[None]["array-location"]
    data = np.load(path, mmap_mode="r", allow_pickle=False)
    piece = data[tuple(slice(start, stop) for start, stop in location)]
    if np.issubdtype(piece.dtype, np.integer):
        return np.array(piece)
    return np.array(piece, dtype=dtype)


def _input_array(path: Path, data: np.ndarray, chunk: int, predictor: Predictor, backend: str):
    import dask.array as da
    from dask.base import tokenize

    batch_axis = data.ndim - 2
    chunks = [(size,) for size in data.shape]
    m = data.shape[batch_axis]
    chunks[batch_axis] = (chunk,) * (m // chunk) + ((m % chunk,) if m % chunk else ())
    dtype = data.dtype if data.ndim == 2 else predictor.dtype
    stat = path.stat()
    name = "xlstm-input-" + tokenize(str(path), stat.st_mtime_ns, stat.st_size, chunk, str(dtype))
    x = da.map_blocks(
        _read_chunk, str(path), str(predictor.dtype), chunks=tuple(chunks), dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype=dtype), name=name,
    )  # fmt: skip
    if backend == "cupy":
        import cupy

        x = x.map_blocks(cupy.asarray, meta=cupy.empty((0,) * data.ndim, dtype=dtype))
    return x


# --------------------------------------------------------------------------- running


def _connect(args: argparse.Namespace, stack: contextlib.ExitStack) -> Any:
    """A client for ``--scheduler`` / ``--workers`` (closed by ``stack``), else ``None``."""
    return connect(args.scheduler, args.workers, stack)


def _check_workers_see(client: Any, path: Path) -> None:
    seen = client.run(os.path.isfile, str(path))
    blind = sorted(worker for worker, ok in seen.items() if not ok)
    if blind:
        msg = (
            f"--input {str(path)!r} is not readable by worker {blind[0]} at that path; the "
            "workers read their chunks themselves (put it on a shared filesystem)"
        )
        raise UsageError(msg)


def _to_host(block: Any) -> np.ndarray:
    return block.get() if hasattr(block, "get") and not isinstance(block, np.ndarray) else block


def _write(y: Any, target: np.memmap, client: Any, stderr: TextIO) -> None:
    """Compute ``y`` chunk by chunk into ``target`` as chunks complete."""
    from ..training.cli import Progress

    bar = Progress(stderr, bar=stderr.isatty())
    total = y.numblocks[1]
    if client is None:
        import dask.array as da

        if bar.bar:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=stderr):
                da.store(y, target, lock=False)
        else:
            da.store(y, target, lock=False)
        return
    from distributed import as_completed

    starts = np.cumsum((0, *y.chunks[1]))
    blocks = list(y.to_delayed().ravel())
    futures = client.compute(blocks)
    index = {future.key: j for j, future in enumerate(futures)}
    for done, (future, block) in enumerate(as_completed(futures, with_results=True), 1):
        j = index[future.key]
        target[:, starts[j] : starts[j + 1], :] = block
        future.release()
        bar.update(done / total, f"{done}/{total} chunks")
    bar.clear()


def _predict(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    predictor = _load_model(args.model, args.backend)
    path = args.input.resolve()
    data = _open_input(path, predictor)
    output = args.output
    if output.is_dir():
        raise UsageError(f"--output {str(output)!r} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"--output {str(output)!r}: no such directory {str(output.parent)!r}")
    m, t_x = data.shape[-2], data.shape[-1]
    with contextlib.ExitStack() as stack:
        client = _connect(args, stack)
        if client is not None:
            _check_workers_see(client, path)
            parallel = max(1, sum(client.nthreads().values()))
        else:
            parallel = os.cpu_count() or 1
        chunk = args.batch_chunk or max(1, math.ceil(m / (4 * parallel)))
        x = _input_array(path, data, min(chunk, m), predictor, args.backend)
        try:
            y = predictor.outputs(x, args.engine)
        except (TypeError, ValueError) as error:  # an engine that cannot run, ...
            raise UsageError(str(error)) from None
        if args.backend == "cupy":
            y = y.map_blocks(_to_host, meta=np.empty((0, 0, 0), dtype=predictor.dtype))
        handle, temporary = tempfile.mkstemp(
            prefix=f".{output.name}.", suffix=".tmp.npy", dir=output.parent
        )
        os.close(handle)
        started = time.perf_counter()
        try:
            target = np.lib.format.open_memmap(
                temporary, mode="w+", dtype=predictor.dtype, shape=(predictor.n_y, m, t_x)
            )
            _write(y, target, client, stderr)
            target.flush()
            del target
            # mkstemp makes the file private (0600); the output gets np.save's mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
            os.replace(temporary, output)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    seconds = time.perf_counter() - started
    shape = (predictor.n_y, m, t_x)
    print(f"wrote {output} {shape} {predictor.dtype} in {seconds:.1f}s", file=stdout)
    return 0


def main(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of ``python -m xlstm predict``; returns the exit status."""
    from ._common import chunk_error

    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        args = build_parser().parse_args(argv)
        return _predict(args, stdout, stderr)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output written", file=stderr)
        return 130
    except Exception as error:
        translated = chunk_error(error)
        if translated is None:
            raise
        print(f"{PROG}: error: {translated}", file=stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
