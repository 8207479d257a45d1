"""``python -m xlstm predict``: the outputs of a saved model for a large input file.

::

    python -m xlstm predict --model CHECKPOINT --input X.npy --output Y.npy
        [--batch-chunk K] [--scheduler ADDRESS | --workers N]
        [--backend numpy|cupy] [--engine E]

The model: a training model's checkpoint (``CharLSTM``, ``LSTMModel``: the softmax outputs
``y (n_y, m, T)``) or an :class:`xlstm.LSTM`'s (``model.save(...)``: the last layer's
hidden states ``a (D n_a, m, T)``, ``D = 2`` when bidirectional).

The input is memory-mapped, never read whole: floats ``x (n_x, m, T)`` or integer ids
``(m, T)`` (one-hot encoded on the workers, for a character model).  It must be a regular
file (a FIFO or a device is refused, not waited on) and not the output file, under any name
(symbolic or hard link).  It is cut along the batch ``m`` into chunks of ``K`` sequences,
each one task on a dask worker; the default ``K`` gives about four tasks per worker, fewer
sequences where the memory available (and the process's address-space limit) calls for
it.  The workers read their chunk from the file themselves, so it must be visible to them
at the same path (always true for ``--workers``; on a cluster, a shared filesystem).

The output is written chunk by chunk with ordinary writes (no memory map: a full disk is an
error, not a ``SIGBUS``) into a temporary file beside ``--output``, allocated in full first,
which replaces ``--output`` only when complete (:func:`xlstm._atomic.replacing`): an
interrupted run leaves no half-written file under that name, and a run killed outright
leaves a temporary file that the next run removes.

Where the work runs: ``--workers N`` starts a local cluster of ``N`` single-threaded
worker processes; ``--scheduler ADDRESS`` joins a running cluster; neither uses dask's
threads in this process.  A progress bar goes to stderr when it is a terminal.  Bad
arguments, a bad checkpoint or input file give one line on stderr and exit status 2; a
failing chunk (one that raises, or keeps killing workers) or a full disk, exit status 1
with one line; Ctrl-C, 130.  A reader of stdout that went away is not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .. import _atomic
from .. import dask as _needs_dask  # noqa: F401  (without the `dask` extra: one ImportError here)
from ._common import Parser, UsageError, positive_int, report, run_command
from .cluster import connect

PROG = "python -m xlstm predict"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description=(
            "Outputs of a saved model, computed on dask workers: softmax y (n_y, m, T) of a "
            "training model, hidden states a (D n_a, m, T) of an xlstm.LSTM."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="checkpoint (.npz)")
    parser.add_argument(
        "--input", type=Path, required=True, help=".npy: floats (n_x, m, T) or int ids (m, T)"
    )
    parser.add_argument(
        "--output", type=Path, required=True, help=".npy written: (n_y, m, T) or (D n_a, m, T)"
    )
    parser.add_argument(
        "--batch-chunk",
        type=positive_int,
        default=None,
        help="sequences per task (default: about four tasks per worker, within memory)",
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

    A one-layer training model runs as the seed's parameter dict through
    :func:`xlstm.dask.lstm_forward` (the engine of ``--engine``); a stacked one
    (``num_layers > 1``) and an :class:`xlstm.LSTM` (no output layer: ``n_y`` is its
    ``D n_a`` hidden states) run whole in each task through their own ``forward``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.bare = not hasattr(model, "n_y")  # an xlstm.LSTM: hidden states out
        self.n_x = int(model.n_x)
        self.n_y = int(model.directions * model.n_a) if self.bare else int(model.n_y)
        self.dtype = np.dtype(str(model.dtype))
        self.parameters = None if self.bare else seed_parameters(model)

    def sequence_bytes(self, t_x: int, ids: bool) -> int:
        """A generous estimate of the memory one task holds per sequence of ``t_x`` steps.

        Its input (the ids and their one-hot floats), per layer and direction the
        forward's states, cells and gates (eight ``n_a`` per position), the output, and
        one copy of the output on its way to the file.
        """
        model = self.model
        layers = int(getattr(model, "num_layers", 1)) * int(getattr(model, "directions", 1))
        per_position = 2 * self.n_x + 8 * layers * int(model.n_a) + 3 * self.n_y
        return t_x * (self.dtype.itemsize * per_position + (8 if ids else 0))

    def outputs(self, x: Any, engine: str) -> Any:
        """``y (n_y, m, T)`` as a dask array, for ``x`` chunked along the batch."""
        from ..dask import _common
        from ..dask.inference import lstm_forward

        if self.parameters is not None:
            return lstm_forward(x, None, self.parameters, engine=engine)[1]
        import array_api_compat
        import dask.array as da
        from dask.base import tokenize

        # Only what a task needs travels: the model without its optimiser state.
        light = copy.copy(self.model)
        if hasattr(light, "opt_state"):
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
    """One chunk through a whole (stacked) model: ``y (n_y, k, T)`` (or ``a`` of an LSTM)."""
    if x.ndim == 2:
        x = model.inputs(x)
    return model.forward(x)[0]


def _load_model(path: Path, backend: str) -> Predictor:
    from ..model import LSTM
    from ..training import load_model

    try:
        try:
            model = load_model(path, backend=backend)
        except ValueError as error:  # CheckpointError: maybe an xlstm.LSTM's checkpoint
            try:
                model = LSTM.load(path, backend=backend)
            except ValueError:
                raise error from None
    except FileNotFoundError:
        raise UsageError(f"--model {str(path)!r}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--model {str(path)!r} is a directory") from None
    except ImportError as error:
        raise UsageError(f"--backend {backend}: {error}") from None
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        raise UsageError(str(error)) from None
    return Predictor(model)


# --------------------------------------------------------------------------- the files


def _regular_file(path: Path, option: str) -> os.stat_result:
    """``path``'s status, if it is a regular file (opened without blocking: a FIFO must
    not hang the run); otherwise a :class:`UsageError` naming ``option``."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise UsageError(f"{option} {str(path)!r}: no such file") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL in the name
        reason = getattr(error, "strerror", None) or error
        raise UsageError(f"{option} {str(path)!r}: cannot open it ({reason})") from None
    try:
        status = os.fstat(descriptor)
    finally:
        os.close(descriptor)
    if not stat.S_ISREG(status.st_mode):
        kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file"
        raise UsageError(f"{option} {str(path)!r} is {kind}")
    return status


def _check_output(output: Path, inputs: dict[str, os.stat_result]) -> None:
    """``--output`` may be replaced: a regular file or nothing, in an existing folder, and
    not one of the files read (``inputs``: option -> status), under any name."""
    if output.is_dir():
        raise UsageError(f"--output {str(output)!r} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"--output {str(output)!r}: no such directory {str(output.parent)!r}")
    try:
        status = os.stat(output)  # through a symbolic link: the file it names
    except FileNotFoundError:
        return
    except OSError as error:
        raise UsageError(f"--output {str(output)!r}: {error.strerror}") from None
    if not stat.S_ISREG(status.st_mode):
        raise UsageError(f"--output {str(output)!r} exists and is not a regular file")
    for option, read in inputs.items():
        if (status.st_dev, status.st_ino) == (read.st_dev, read.st_ino):
            msg = (
                f"--output {str(output)!r} is the {option} file (the same file under another "
                "name?); writing it would destroy what is read"
            )
            raise UsageError(msg)


def _open_input(path: Path, predictor: Predictor) -> np.ndarray:
    """The input memory-mapped and checked: shape, dtype, and ids within ``[0, n_x)``."""
    _regular_file(path, "--input")
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
        if predictor.bare:
            msg = (
                f"--input {str(path)!r} holds integer ids (m, T); an xlstm.LSTM checkpoint "
                f"takes floats (n_x, m, T) with n_x = {n_x}"
            )
            raise UsageError(msg)
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
    rows = max(1, (1 << 22) // max(1, ids.shape[1]))
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
    status = path.stat()
    name = "xlstm-input-" + tokenize(
        str(path), status.st_mtime_ns, status.st_size, chunk, str(dtype)
    )
    x = da.map_blocks(
        _read_chunk, str(path), str(predictor.dtype), chunks=tuple(chunks), dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype=dtype), name=name,
    )  # fmt: skip
    if backend == "cupy":
        import cupy

        x = x.map_blocks(cupy.asarray, meta=cupy.empty((0,) * data.ndim, dtype=dtype))
    return x


class NpyOutput:
    """A ``.npy`` file of shape ``(n_y, m, T)`` written in place by ``target[region] = block``.

    The header is written first and the data's space allocated (``posix_fallocate``), so
    that a full disk shows at once; blocks then go to their offsets with ordinary
    positioned writes (``os.pwrite``), safe from several threads.  A write that fails
    (a full disk where space could not be reserved) raises ``OSError``; nothing is
    memory-mapped, so nothing can fault.
    """

    def __init__(self, file: Any, shape: tuple[int, int, int], dtype: np.dtype) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.ndim = 3
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": shape,
        }
        np.lib.format.write_array_header_1_0(file, header)
        file.flush()
        self.descriptor = file.fileno()
        self.offset = file.tell()
        self.nbytes = self.dtype.itemsize * math.prod(shape)
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self.descriptor, self.offset, self.nbytes)
            except OSError as error:
                # Filesystems that cannot reserve space say EOPNOTSUPP/EINVAL: the
                # writes below still report a full disk.
                if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise

    def __setitem__(self, region: tuple[slice, ...], block: Any) -> None:
        bounds = [index.indices(size) for index, size in zip(region, self.shape, strict=True)]
        if any(step != 1 for _, _, step in bounds):
            raise ValueError(f"NpyOutput takes slices with step 1, got {region}")
        (i0, i1, _), (j0, j1, _), (t0, t1, _) = bounds
        block = np.broadcast_to(np.asarray(block, dtype=self.dtype), (i1 - i0, j1 - j0, t1 - t0))
        _, m, t_x = self.shape
        item = self.dtype.itemsize
        for i in range(i0, i1):
            if (t0, t1) == (0, t_x):  # sequences j0 .. j1 of output row i: one run
                self._write(self.offset + (i * m + j0) * t_x * item, block[i - i0])
                continue
            for j in range(j0, j1):
                start = self.offset + ((i * m + j) * t_x + t0) * item
                self._write(start, block[i - i0, j - j0])

    def _write(self, offset: int, values: Any) -> None:
        view = memoryview(np.ascontiguousarray(values)).cast("B")
        while view:
            written = os.pwrite(self.descriptor, view, offset)
            view, offset = view[written:], offset + written


# --------------------------------------------------------------------------- memory


def default_chunk(
    m: int, t_x: int, predictor: Predictor, *, ids: bool, parallel: int, memory: int | None
) -> int:
    """Sequences per task: about four tasks per worker, fewer if memory calls for it.

    ``memory`` is the bytes available to the ``parallel`` tasks that run at once (None:
    unknown); each task may use a quarter of its share, which leaves room for the chunks
    queued and finished beside it.  Raises :class:`UsageError` when not even one sequence
    fits.
    """
    chunk = max(1, math.ceil(m / (4 * parallel)))
    if memory is None:
        return chunk
    per_sequence = predictor.sequence_bytes(t_x, ids)
    budget = memory // (4 * parallel)
    if per_sequence > budget:
        msg = (
            f"--input: one sequence of T = {t_x} steps needs about {per_sequence / 2**20:.3g} "
            f"MiB in a task, more than the {budget / 2**20:.3g} MiB each of {parallel} tasks "
            "may use here (shorter sequences, or more memory)"
        )
        raise UsageError(msg)
    return max(1, min(chunk, budget // per_sequence))


def _workers_memory(client: Any) -> int | None:
    """The memory of the cluster's smallest worker per thread, times its thread count."""
    workers = client.scheduler_info().get("workers", {}).values()
    limits = [int(w.get("memory_limit") or 0) // max(1, int(w.get("nthreads", 1))) for w in workers]
    threads = sum(int(w.get("nthreads", 1)) for w in workers)
    if not limits or min(limits) <= 0:
        return None
    return min(limits) * threads


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


def _write(y: Any, target: NpyOutput, client: Any, stderr: TextIO) -> None:
    """Compute ``y`` chunk by chunk into ``target`` as chunks complete."""
    from ._common import Progress

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


class RunError(Exception):
    """A failure of the run itself (a chunk, the disk): one line, exit status 1."""


def _predict(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from ..bench._harness import available_memory

    model_status = _regular_file(args.model, "--model")
    predictor = _load_model(args.model, args.backend)
    path = args.input.resolve()
    input_status = _regular_file(path, "--input")
    output = args.output
    # Before anything is written: the output must not be a file that is read.
    _check_output(output, {"--input": input_status, "--model": model_status})
    data = _open_input(path, predictor)
    ids = data.ndim == 2
    m, t_x = data.shape[-2], data.shape[-1]
    shape = (predictor.n_y, m, t_x)
    with contextlib.ExitStack() as stack:
        client = _connect(args, stack)
        memory = None
        if client is not None:
            _check_workers_see(client, path)
            parallel = max(1, sum(client.nthreads().values()))
            memory = _workers_memory(client)
        else:
            parallel = os.cpu_count() or 1
        if memory is None:
            memory = available_memory()
        chunk = args.batch_chunk or default_chunk(
            m, t_x, predictor, ids=ids, parallel=parallel, memory=memory
        )
        x = _input_array(path, data, min(chunk, m), predictor, args.backend)
        try:
            y = predictor.outputs(x, args.engine)
        except (TypeError, ValueError) as error:  # an engine that cannot run, ...
            raise UsageError(str(error)) from None
        if args.backend == "cupy":
            y = y.map_blocks(_to_host, meta=np.empty((0, 0, 0), dtype=predictor.dtype))
        started = time.perf_counter()
        try:
            with _atomic.replacing(output) as file:
                _write(y, NpyOutput(file, shape, predictor.dtype), client, stderr)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                needed = predictor.dtype.itemsize * math.prod(shape)
                msg = (
                    f"cannot write --output {str(output)!r} ({needed / 2**20:.3g} MiB): "
                    f"{os.strerror(error.errno)}; nothing was written"
                )
                raise RunError(msg) from None
            raise
    seconds = time.perf_counter() - started
    report(f"wrote {output} {shape} {predictor.dtype} in {seconds:.1f}s", stdout)
    return 0


def main(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of ``python -m xlstm predict``; returns the exit status."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    body = lambda: _run(argv, stdout, stderr)  # noqa: E731
    return run_command(PROG, body, stderr=stderr, interrupted="interrupted; no output written")


def _run(argv: list[str] | None, stdout: TextIO, stderr: TextIO) -> int:
    from ..dask._common import chunk_error

    args = build_parser().parse_args(argv)
    try:
        return _predict(args, stdout, stderr)
    except UsageError:
        raise
    except RunError as error:
        print(f"{PROG}: error: {error}", file=stderr)
        return 1
    except Exception as error:  # a chunk's task failed: its error, in one line
        translated = chunk_error(error)
        if translated is None:
            text = " ".join(str(error).split()) or "(no message)"
            translated = f"{type(error).__name__}: {text}; no output written"
        print(f"{PROG}: error: {translated}", file=stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
