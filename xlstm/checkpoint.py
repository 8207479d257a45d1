"""Checkpoints: one ``.npz`` format for every model of the :class:`xlstm.LSTM` family.

A checkpoint is a zip of ``.npy`` members (``numpy.savez``): the parameters
(``param/<key>``, keys of :func:`parameter_shapes`), the optimiser state of a training
model (``opt/<slot>/<key>``) and one JSON string ``meta``::

    format, version       "xlstm-checkpoint", 2
    class                 "LSTM" | "LSTMModel" | "CharLSTM"
    n_x, n_a, n_y         sizes (n_y: models with an output layer)
    num_layers, bidirectional, dropout
    dtype, gate_order     "float32" | "float64", ["i", "f", "o", "g"]
    vocab                 CharLSTM: the characters, in id order
    optimizer, clip_norm, opt_step     training models
    extra                 JSON data of the user's (training progress, ...)

Version 1 files (one layer, the seed's keys ``Wf ... by``) are read as version 2.

Files are written to a temporary file in the target's folder that replaces the old one
only when complete (:func:`write`), so an interrupted save never leaves a broken
checkpoint.  Files handed to :func:`read` are untrusted: everything is checked before a
model is built, and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._layout import GATE_KEYS, GATE_ORDER, layer_key

FORMAT = "xlstm-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DTYPES = ("float32", "float64")
CLASSES = ("LSTM", "LSTMModel", "CharLSTM")
"""Model classes a checkpoint may hold (``xlstm.LSTM`` and the training models)."""


class CheckpointError(ValueError):
    """A file that is not a valid xlstm checkpoint (a ``ValueError``)."""


def dtype_name(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` for any spelling of those dtypes."""
    for name in DTYPES:
        if str(dtype).endswith(name):
            return name
    raise TypeError(f"`dtype` = {dtype!r}; expected 'float32' or 'float64'")


def parameter_shapes(
    n_x: int, n_a: int, num_layers: int, bidirectional: bool, n_y: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Every parameter key of a model and its shape, in ``torch.nn.LSTM`` order.

    Gate parameters ``Wf_l0, bf_l0, ..., Wf_l0_reverse, ...`` (``W* (n_a, n_a + n_in)``,
    ``b* (n_a, 1)``, ``n_in = n_x`` for layer 0 and ``D n_a`` above), then ``Wy (n_y, n_a)``
    and ``by (n_y, 1)`` when the model has an output layer (``n_y`` given).
    """
    directions = 2 if bidirectional else 1
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(num_layers):
        n_in = n_x if layer == 0 else directions * n_a
        for reverse in (False, True)[:directions]:
            for key in GATE_KEYS:
                shape = (n_a, n_a + n_in) if key[0] == "W" else (n_a, 1)
                shapes[layer_key(key, layer, reverse)] = shape
    if n_y is not None:
        shapes["Wy"], shapes["by"] = (n_y, n_a), (n_y, 1)
    return shapes


# --------------------------------------------------------------------------- writing


def write(path: str | os.PathLike, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``meta`` and host ``arrays`` as a checkpoint, atomically; return the path.

    ``".npz"`` is appended when ``path`` has no suffix.
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".npz")
    try:
        meta_text = json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **meta})
    except (TypeError, ValueError) as error:
        raise TypeError(f"`extra` must be JSON-serialisable: {error}") from None
    payload = {**arrays, "meta": np.asarray(meta_text)}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- reading


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file, read and CRC-checked, or :class:`CheckpointError`."""
    with open(path, "rb") as file:  # np.load leaks its own handle when the zip is bad
        try:
            with np.load(file, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
            reason = f"{type(error).__name__}: {error}"
            msg = f"`path` {str(path)!r} is not a readable xlstm checkpoint ({reason})"
            raise CheckpointError(msg) from None


def _upgrade_v1(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Version 1 (one layer, seed keys) to version 2 (layer keys), in place."""
    meta.setdefault("num_layers", 1)
    meta.setdefault("bidirectional", False)
    meta.setdefault("dropout", 0.0)
    renamed = {}
    for name, value in arrays.items():
        prefix, _, key = name.rpartition("/")
        if prefix and key in GATE_KEYS:
            renamed[f"{prefix}/{layer_key(key, 0)}"] = value
        else:
            renamed[name] = value
    arrays.clear()
    arrays.update(renamed)


def _check_meta(meta: dict[str, Any], fail) -> dict[str, tuple[int, ...]]:
    """Check the model record; return the expected parameter shapes."""
    if meta.get("class") not in CLASSES:
        raise fail(f"unknown model class {meta.get('class')!r}")
    if meta.get("gate_order") != list(GATE_ORDER):
        raise fail(f"gate order {meta.get('gate_order')!r}; expected {list(GATE_ORDER)}")
    if meta.get("dtype") not in DTYPES:
        raise fail(f"dtype {meta.get('dtype')!r}; expected one of {DTYPES}")
    has_output = meta["class"] != "LSTM"
    names = ("n_x", "n_a", "num_layers", *(("n_y",) if has_output else ()))
    sizes = [meta.get(k) for k in names]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise fail(f"sizes {names} = {tuple(sizes)} are not positive ints")
    if not isinstance(meta.get("bidirectional"), bool):
        raise fail(f"`bidirectional` = {meta.get('bidirectional')!r} is not a bool")
    dropout = meta.get("dropout")
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool)):
        raise fail(f"`dropout` = {dropout!r} is not a number")
    if not 0.0 <= dropout < 1.0:
        raise fail(f"`dropout` = {dropout!r} is not in [0, 1)")
    if has_output and meta["bidirectional"]:
        raise fail("a model with an output layer cannot be bidirectional")
    if meta["class"] == "CharLSTM":
        vocab, n_x = meta.get("vocab"), meta["n_x"]
        if not isinstance(vocab, str) or len(vocab) != n_x or n_x != meta["n_y"]:
            raise fail("its vocabulary does not match n_x = n_y")
        if len(set(vocab)) != n_x:
            raise fail("its vocabulary repeats a character")
    return parameter_shapes(
        meta["n_x"], meta["n_a"], meta["num_layers"], meta["bidirectional"],
        meta["n_y"] if has_output else None,
    )  # fmt: skip


def read(
    path: str | os.PathLike,
    *,
    optimizer_slots: Callable[[Any], tuple[str, ...]] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a checkpoint: ``(meta, arrays)`` with host NumPy arrays.

    Every consistency check happens here, before anything is built: format and version,
    the model record (class, sizes, dtype, gate order, vocabulary), every parameter's
    presence, shape and dtype, the optimiser record and its buffers, ``extra``.

    Parameters
    ----------
    path : str or path
    optimizer_slots : callable, optional
        Maps the ``optimizer`` record to the names of its state slots, raising
        ``ValueError``/``TypeError`` for a bad record (the training models pass theirs).
        Without it, a file with an optimiser record is refused.

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        Anything else wrong with the file; it names the file and the problem.
    """
    path = Path(path)
    arrays = _read_npz(path)

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"`path` {str(path)!r} is not a valid xlstm checkpoint: {reason}")

    if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].ndim != 0:
        raise fail("it has no `meta` record (was it written by xlstm's save?)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (json.JSONDecodeError, RecursionError) as error:
        raise fail(f"its `meta` record is not valid JSON ({type(error).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise fail(f"its format is {found!r}, expected {FORMAT!r}")
    if meta.get("version") not in READABLE_VERSIONS:
        raise fail(f"format version {meta.get('version')!r}; this xlstm reads {READABLE_VERSIONS}")
    if meta["version"] == 1:
        _upgrade_v1(meta, arrays)
    expected = _check_meta(meta, fail)
    for name, shape in expected.items():
        found = arrays.get(f"param/{name}")
        if found is None:
            raise fail(f"`param/{name}` is missing")
        if found.shape != shape:
            raise fail(f"`param/{name}` has shape {found.shape}; the config says {shape}")
    slots: dict[str, set[str]] = {}
    for name, value in arrays.items():
        if value.dtype != np.dtype(meta["dtype"]):
            raise fail(f"`{name}` has dtype {value.dtype}; the config says {meta['dtype']}")
        parts = name.split("/")
        if parts[0] == "param" and len(parts) == 2 and parts[1] in expected:
            continue
        if parts[0] == "opt" and len(parts) == 3 and parts[2] in expected:
            slots.setdefault(parts[1], set()).add(parts[2])
            if value.shape != expected[parts[2]]:
                raise fail(f"`{name}` has the wrong shape {value.shape}")
            continue
        raise fail(f"unexpected array `{name}`")
    if meta["class"] != "LSTM":
        if optimizer_slots is None:
            raise fail(f"it holds a training model ({meta['class']}); load it with load_model")
        try:
            wanted = set(optimizer_slots(meta.get("optimizer")))
        except (ValueError, TypeError) as error:
            raise fail(f"bad optimiser record ({error})") from None
        step = meta.get("opt_step")
        if step is not None:
            if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                raise fail(f"optimiser step {step!r} is not a non-negative int")
            if set(slots) != wanted:
                raise fail(f"optimiser state has slots {sorted(slots)}; it needs {sorted(wanted)}")
            for slot, keys in slots.items():
                missing = [k for k in expected if k not in keys]
                if missing:
                    raise fail(f"optimiser slot {slot!r} lacks buffers for {missing}")
        elif slots:
            raise fail("optimiser buffers without an optimiser step")
    elif slots:
        raise fail("optimiser buffers in a model without an optimiser")
    if not isinstance(meta.get("extra", {}), dict):
        raise fail("`extra` is not a dict")
    return meta, arrays


__all__ = [
    "CLASSES",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "dtype_name",
    "parameter_shapes",
    "read",
    "write",
]
