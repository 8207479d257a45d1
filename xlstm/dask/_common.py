"""What the distributed functions share: inputs aligned on the batch chunks, the
parameters shipped once, the client, and errors that name the chunk.

Shape legend: ``x (n_x, m, T)`` or integer ids ``(m, T)``; states ``(n_a, m)``; ``lengths
(m,)``; ``targets, mask (m, T)``.  The batch axis ``m`` is the only axis split into chunks.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

import array_api_compat
import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.utils import parse_bytes

from .. import _direction, _validation
from .._backend import library_name, namespace_of
from .._engines.dispatch import engine_option
from ..training.loss import one_hot

FORWARD_PREFIX = "xlstm-forward-"
GRADIENT_PREFIX = "xlstm-gradients-"
"""Names of the per-chunk task layers; their keys are ``(name, chunk index)``."""
CHUNK_TASKS = {FORWARD_PREFIX: "the forward pass", GRADIENT_PREFIX: "the gradient pass"}


def check_collection(name: str, value: Any) -> None:
    """``value`` is a dask array whose chunk sizes are known."""
    if not isinstance(value, da.Array):
        kind = type(value).__name__
        msg = (
            f"`{name}` must be a dask array (got {kind}); for arrays in memory use the "
            "functions of xlstm itself, or wrap it with dask.array.from_array"
        )
        raise TypeError(msg)
    if any(math.isnan(size) for size in value.shape):
        msg = (
            f"`{name}` has unknown chunk sizes {value.chunks}; call "
            f"`{name}.compute_chunk_sizes()` first"
        )
        raise ValueError(msg)


def model_namespace(parameters: Any) -> tuple[Any, _validation.Sizes]:
    """Check the notebook parameter dict; return its namespace and sizes."""
    _validation.check_parameter_dict(parameters)
    xp = namespace_of(_validation.named_parameters(parameters))
    return xp, _validation.parameter_sizes(parameters)


def check_engine(engine: Any, xp: Any, dtype: Any, *, lengths: bool = False) -> None:
    """A named engine that cannot run is an error here, before any task runs."""
    _direction.select(xp, dtype, engine_option(engine), lengths=lengths)


def check_inputs(x: Any, parameters: Any, sizes: _validation.Sizes) -> tuple[int, int, bool]:
    """``x`` is ``(n_x, m, T)`` floating or ``(m, T)`` integer ids; return ``(m, T, ids)``.

    The library, device and dtype of the chunks (read from ``x._meta``) must match the
    parameters', as for :func:`xlstm.lstm_forward`.
    """
    check_collection("x", x)
    meta = x._meta
    ids = x.ndim == 2 and np.issubdtype(x.dtype, np.integer)
    if ids:
        m, t_x = (int(s) for s in x.shape)
        if library_name(meta) != library_name(parameters["Wf"]):
            msg = (
                f"`x` has {library_name(meta)} chunks but the parameters are "
                f"{library_name(parameters['Wf'])} arrays; move them with xlstm.to_backend"
            )
            raise TypeError(msg)
        if m < 1 or t_x < 1:
            raise ValueError(f"`x` has shape {(m, t_x)}; expected ids (m, T) with m, T >= 1")
        return m, t_x, True
    namespace_of({"x": meta, **_validation.named_parameters(parameters)})
    m, t_x = _validation.sequence_sizes(x, sizes)
    return m, t_x, False


def batch_array(
    name: str, value: Any, shape: tuple[int, ...], legend: str, batch_axis: int, x: da.Array
) -> da.Array | None:
    """``value`` as a dask array chunked along ``batch_axis`` like ``x`` along its batch.

    ``None`` stays ``None``.  A dask array is rechunked (one chunk along every other
    axis); an array in memory (NumPy, CuPy) or a sequence is cut into the same slices.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple, range)):
        value = np.asarray(value)
    if not isinstance(value, da.Array) and not array_api_compat.is_array_api_obj(value):
        msg = f"`{name}` must be an array (dask, NumPy or CuPy), got {type(value).__name__}"
        raise TypeError(msg)
    if isinstance(value, da.Array):
        check_collection(name, value)
    _validation.check_shape(name, value, shape, legend)
    batch = x.chunks[-2] if x.ndim == 3 else x.chunks[0]
    chunks = tuple(batch if axis == batch_axis else (size,) for axis, size in enumerate(shape))
    if isinstance(value, da.Array):
        return value if value.chunks == chunks else value.rechunk(chunks)
    # NumPy arrays are sliced into the graph here, one piece per chunk.
    return da.from_array(value, chunks=chunks, name=f"{name}-{tokenize(value, chunks)}")


def batch_x(x: da.Array) -> da.Array:
    """``x`` with one chunk along every axis but the batch."""
    if x.ndim == 3:
        chunks = ((x.shape[0],), x.chunks[1], (x.shape[2],))
    else:
        chunks = (x.chunks[0], (x.shape[1],))
    return x if x.chunks == chunks else x.rechunk(chunks)


def output_meta(x: da.Array, ndim: int, dtype: Any) -> Any:
    """An empty chunk of the library of ``x``'s chunks (NumPy or CuPy)."""
    return meta_from_array(x._meta, ndim=ndim, dtype=dtype)


def default_client(client: Any) -> Any:
    """``client``, else the active ``distributed`` client, else ``None`` (local scheduler)."""
    if client is not None:
        return client
    try:
        from distributed import default_client as active
    except ImportError:  # dask without distributed: the local schedulers
        return None
    try:
        return active()
    except ValueError:  # no client is running
        return None


def ship_parameters(parameters: Mapping[str, Any], client: Any) -> Any:
    """A reference to the parameter dict that every task shares (see :func:`ship`)."""
    return ship({key: parameters[key] for key in parameters}, client, "parameters")


def ship(value: Any, client: Any, label: str) -> Any:
    """``value`` as one key of its own that tasks take as an argument: it travels once.

    The key has a fresh name every time.  A name derived from the content, or the keys
    of a scattered dict, can name data the workers already hold: new weights under an
    old name would be ignored, and the same weights sent again can meet the release of
    the previous call's copy under that name.

    With a client the key is persisted, not scattered: the scheduler keeps the recipe
    (the value itself), so a copy lost with a worker is made again.  Scattered data has
    none; the active memory manager soon trims a broadcast to one replica, and once the
    worker holding it dies the tasks that need it are cancelled, which also turns a task
    that keeps killing workers into "lost dependencies" instead of an error naming it.
    """
    shipped = unsent(value, label)
    if client is None:
        return shipped
    with allow_in_graph(value):
        return client.persist(shipped)


def unsent(value: Any, label: str) -> Any:
    """``value`` as a ``dask.delayed`` under a fresh name (see :func:`ship`), not yet sent:
    it travels with the first graph that needs it, under :func:`allow_in_graph`."""
    return dask.delayed(value, name=f"xlstm-{label}-{uuid.uuid4().hex}", traverse=False)


def allow_in_graph(value: Any) -> Any:
    """A ``dask.config`` context in which a graph may carry ``value`` without a warning.

    The warning advises embedding large data once, in a delayed object: this is that.
    """
    size = sum(int(getattr(item, "nbytes", 0)) for item in _arrays_of(value))
    threshold = dask.config.get("distributed.admin.large-graph-warning-threshold")
    limit = max(parse_bytes(threshold), size + (1 << 20))
    return dask.config.set({"distributed.admin.large-graph-warning-threshold": limit})


def _arrays_of(value: Any) -> list:
    if isinstance(value, Mapping):
        return list(value.values())
    parameters = getattr(value, "parameters", None)
    return list(parameters.values()) if isinstance(parameters, Mapping) else []


def chunk_error(error: BaseException) -> RuntimeError | None:
    """A ``RuntimeError`` naming the chunk whose task killed workers, else ``None``.

    The per-chunk tasks are named ``(xlstm-forward-..., j)`` or ``(xlstm-gradients-...,
    j)``; after dask's graph optimisation an output's task, ``(y-xlstm-forward-..., 0, j,
    0)``, may run the recurrence instead.  ``j`` is the chunk's index along the batch.
    """
    try:
        from distributed import KilledWorker
    except ImportError:
        return None
    if not isinstance(error, KilledWorker):
        return None
    key = error.task
    where = f"task {key!r}"
    if isinstance(key, str) and key.startswith(("xlstm-sum-", "xlstm-mean-")):
        where = "the sum of the gradients"
    if isinstance(key, tuple) and len(key) >= 2 and isinstance(key[0], str):
        for prefix, what in CHUNK_TASKS.items():
            if prefix in key[0]:
                where = f"{what} of batch chunk {key[1] if len(key) == 2 else key[2]}"
    msg = (
        f"{where} killed {error.allowed_failures + 1} workers in a row and was given up "
        "(out of memory? a crash in a native library?)"
    )
    return RuntimeError(msg)


def inputs_block(x: Any, parameters: Mapping[str, Any]) -> Any:
    """One chunk of ``x`` as ``(n_x, k, T)`` floats of the parameters' backend.

    Integer ids ``(k, T)`` become one-hot columns here, on the worker, so that only the
    ids travel.  Built time-major and viewed as ``(n_x, k, T)``: the engines read it
    step by step, contiguously.
    """
    weights = parameters["Wf"]
    xp = array_api_compat.array_namespace(weights)
    n_x = int(weights.shape[1]) - int(weights.shape[0])
    if x.ndim == 3:
        return x
    ids = xp.asarray(x, device=array_api_compat.device(weights))
    if bool(xp.any((ids < 0) | (ids >= n_x))):
        raise ValueError(f"`x` holds ids outside [0, {n_x}) (n_x of the model)")
    hot = one_hot(xp.permute_dims(ids, (1, 0)), n_x, axis=-1, dtype=weights.dtype)
    return xp.permute_dims(hot, (2, 1, 0))


def pick(parts: tuple, index: int) -> Any:
    """Item ``index`` of a per-chunk result tuple."""
    return parts[index]
