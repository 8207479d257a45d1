"""Checkpoints: one ``.npz`` format for every model of the :class:`xlstm.LSTM` family.

A checkpoint is a zip of uncompressed ``.npy`` members (``numpy.savez``): the parameters
(``param/<key>``, keys of :func:`parameter_shapes`), the optimiser state of a training
model (``opt/<slot>/<key>``), optionally the carried state ``state/a``, ``state/c`` of a
truncated-BPTT run (``(num_layers * D, n_a, m)``, so that it continues exactly) and one JSON
string ``meta``::

    format, version       "xlstm-checkpoint", 2
    class                 "LSTM" | "LSTMModel" | "CharLSTM"
    n_x, n_a, n_y         sizes (n_y: models with an output layer)
    num_layers, bidirectional, dropout
    dtype, gate_order     "float32" | "float64", ["i", "f", "o", "g"]
    vocab                 CharLSTM: the characters, in id order
    optimizer, clip_norm, opt_step     training models
    extra                 JSON data of the user's (training progress, ...)

Version 1 files (one layer, the seed's keys ``Wf ... by``) are read as version 2.

Writing (:func:`write`) goes through :func:`xlstm._atomic.replacing`: a temporary file
``<name>.<random>.tmp`` in the target's folder that replaces the old file only when
complete, so an interrupted save never leaves a broken checkpoint, and two processes saving
the same checkpoint at once both succeed (the last rename wins).  A save killed outright
(``SIGKILL``, power loss) leaves its temporary file behind; the next save of the same
checkpoint removes it.  A new checkpoint gets the usual mode of new files (``0o666`` less
the umask); replacing one keeps its mode.

Reading (:func:`read`): files are untrusted. Nothing is unpickled, and everything is checked
before it is allocated, in this order: the file is a regular file and a zip whose member
names are exactly ``meta.npy``, ``param/<key>.npy``, ``opt/<slot>/<key>.npy`` and
``state/a.npy``, ``state/c.npy`` (no folders, duplicates or other names), stored
uncompressed (so no member can expand beyond the file's own size); the ``meta`` record (at
most :data:`MAX_META_CHARS` characters of JSON nested at most :data:`MAX_META_DEPTH` deep)
and every field's type; the set of members the record calls for; each member's ``.npy``
header (dtype, shape, size, against the record and the zip directory). Only then is array
data read, exactly the declared number of bytes of each member, CRC-checked; parameters and
optimiser buffers must be finite. Any problem is a :class:`CheckpointError` naming the file
and the problem.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from . import _atomic
from ._layout import GATE_KEYS, GATE_ORDER, HEADS
from ._schema import Schema

FORMAT = "xlstm-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DTYPES = ("float32", "float64")
CLASSES = ("LSTM", "LSTMModel", "CharLSTM")
"""Model classes a checkpoint may hold (``xlstm.LSTM`` and the training models)."""

MAX_META_CHARS = 1 << 22
"""Largest ``meta`` record read or written, in characters of JSON (4 Mi)."""

MAX_META_DEPTH = 32
"""Deepest nesting of lists and objects in the ``meta`` record (``extra`` included)."""

_MEMBER = re.compile(r"meta|param/[A-Za-z0-9_]+|opt/[A-Za-z0-9_]+/[A-Za-z0-9_]+|state/[ac]")
_STATE = ("state/a", "state/c")  # the carried (a, c) of a training model, optional
_HEADER_LIMIT = 10_000  # bytes of a .npy header dict (NumPy's own default limit)


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
    return Schema(n_x, n_a, num_layers, bidirectional, n_y).shapes()


def _depth(value: Any) -> int:
    """Nesting depth of lists and dicts in a JSON value (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_META_DEPTH:
                break
            stack.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


# --------------------------------------------------------------------------- writing


def write(path: str | os.PathLike, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``meta`` and host ``arrays`` as a checkpoint, atomically; return the path.

    ``".npz"`` is appended when ``path`` has no suffix.  Stale temporary files of earlier,
    killed saves of the same path are removed first (see the module docstring).

    Raises
    ------
    TypeError
        ``meta`` (``extra`` included) is not JSON-serialisable.
    ValueError
        ``meta`` is larger than :data:`MAX_META_CHARS` or nested deeper than
        :data:`MAX_META_DEPTH`, or an array holds NaN or infinity: :func:`read` would
        refuse the file, so it is not written.
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".npz")
    record = {"format": FORMAT, "version": FORMAT_VERSION, **meta}
    try:
        meta_text = json.dumps(record)
    except (TypeError, ValueError, RecursionError) as error:
        raise TypeError(f"`extra` must be JSON-serialisable: {error}") from None
    if len(meta_text) > MAX_META_CHARS:
        msg = (
            f"`meta` (with `extra`) is {len(meta_text)} characters of JSON; checkpoints hold at "
            f"most {MAX_META_CHARS} (keep large data out of `extra`)"
        )
        raise ValueError(msg)
    if _depth(record) > MAX_META_DEPTH:
        raise ValueError(f"`extra` is nested more than {MAX_META_DEPTH - 1} levels deep")
    for name, value in arrays.items():
        if not _MEMBER.fullmatch(name) or name == "meta":
            raise ValueError(
                f"`arrays` has a key {name!r} that is not param/<key>, opt/<slot>/<key> or "
                "state/<a|c>"
            )
        if not bool(np.isfinite(value).all()):
            msg = (
                f"`{name}` holds NaN or infinity; a checkpoint must hold finite numbers "
                "(the model diverged: lower the learning rate)"
            )
            raise ValueError(msg)
    payload = {**arrays, "meta": np.asarray(meta_text)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic.replacing(path) as file:
        np.savez(file, **payload)
    return path


# --------------------------------------------------------------------------- reading

_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,  # an unsupported zip feature
    RuntimeError,  # an encrypted member
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    struct.error,
    MemoryError,
)


class _Reader:
    """Reads one checkpoint file, validating before allocating (see :func:`read`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    # messages ------------------------------------------------------------------------
    def unreadable(self, reason: str) -> CheckpointError:
        return CheckpointError(
            f"`path` {str(self.path)!r} is not a readable xlstm checkpoint ({reason})"
        )

    def invalid(self, reason: str) -> CheckpointError:
        return CheckpointError(
            f"`path` {str(self.path)!r} is not a valid xlstm checkpoint: {reason}"
        )

    # the archive ---------------------------------------------------------------------
    def open(self, file) -> zipfile.ZipFile:
        size = os.fstat(file.fileno()).st_size
        try:
            archive = zipfile.ZipFile(file)
        except _ZIP_ERRORS as error:
            file.seek(0)
            if file.read(6) == b"\x93NUMPY":
                raise self.unreadable("a plain .npy array, not an .npz checkpoint") from None
            raise self.unreadable(f"not a zip archive: {type(error).__name__}: {error}") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in archive.infolist():
            name = info.filename
            stem = name[:-4] if name.endswith(".npy") else None
            if stem is None or not _MEMBER.fullmatch(stem):
                raise self.invalid(
                    f"unexpected member {name!r} (members are meta.npy, param/<key>.npy, "
                    "opt/<slot>/<key>.npy and state/<a|c>.npy)"
                )
            if stem in self.members:
                raise self.invalid(f"member {name!r} appears twice")
            if info.flag_bits & 0x1:
                raise self.invalid(f"member {name!r} is encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                raise self.invalid(
                    f"member {name!r} is compressed; xlstm checkpoints are written uncompressed "
                    "(numpy.savez, not savez_compressed)"
                )
            if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
                raise self.unreadable(f"member {name!r} claims more bytes than the file holds")
            total += info.file_size
            self.members[stem] = info
        if total > size:
            raise self.unreadable("its members claim more bytes than the file holds")
        self.archive = archive
        return archive

    def member(self, stem: str, name: str):
        """Member ``stem`` opened for reading (its local header checked by zipfile)."""
        try:
            return self.archive.open(self.members[stem])
        except _ZIP_ERRORS as error:
            raise self.unreadable(f"`{name}`: {type(error).__name__}: {error}") from None

    def header(self, stream, name: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
        """``(shape, dtype, fortran_order, header_bytes)`` of member ``name``'s ``.npy`` header."""
        try:
            version = npy_format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(
                    stream, max_header_size=_HEADER_LIMIT
                )
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(
                    stream, max_header_size=_HEADER_LIMIT
                )
            else:
                raise ValueError(f".npy format version {version} is not 1.0 or 2.0")
        except (*_ZIP_ERRORS, TypeError, KeyError, SyntaxError, RecursionError) as error:
            raise self.unreadable(f"`{name}` has no valid .npy header: {error}") from None
        return shape, dtype, fortran, stream.tell()

    def data(self, stream, name: str, nbytes: int) -> bytearray:
        """Exactly ``nbytes`` of ``name``'s data, then its end (which checks the CRC)."""
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        done = 0
        try:
            while done < nbytes:
                chunk = stream.read(min(1 << 20, nbytes - done))
                if not chunk:
                    break
                view[done : done + len(chunk)] = chunk
                done += len(chunk)
            trailing = stream.read(1)
        except _ZIP_ERRORS as error:
            raise self.unreadable(f"`{name}`: {type(error).__name__}: {error}") from None
        if done < nbytes or trailing:
            raise self.unreadable(f"`{name}` does not hold the {nbytes} bytes its header declares")
        return buffer

    # meta ----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        info = self.members.get("meta")
        if info is None:
            raise self.invalid("it has no `meta` record (was it written by xlstm's save?)")
        with self.member("meta", "meta") as stream:
            shape, dtype, _, offset = self.header(stream, "meta")
            if shape != () or dtype.kind != "U":
                raise self.invalid("it has no `meta` record (was it written by xlstm's save?)")
            if dtype.itemsize > 4 * MAX_META_CHARS:
                msg = f"its `meta` record is over {MAX_META_CHARS} characters"
                raise self.invalid(msg)
            if offset + dtype.itemsize != info.file_size:
                raise self.unreadable("`meta` is not the size its header declares")
            raw = self.data(stream, "meta", dtype.itemsize)
        try:
            text = str(np.frombuffer(raw, dtype=dtype)[0])
            text.encode("utf-8")
            meta = json.loads(text)
        except (ValueError, RecursionError) as error:  # JSONDecodeError, Unicode errors
            msg = f"its `meta` record is not valid JSON ({type(error).__name__})"
            raise self.invalid(msg) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise self.invalid(f"its format is {found!r}, expected {FORMAT!r}")
        if _depth(meta) > MAX_META_DEPTH:
            raise self.invalid(
                f"its `meta` record is nested more than {MAX_META_DEPTH} levels deep"
            )
        version = meta.get("version")
        if not _is_int(version) or version not in READABLE_VERSIONS:
            raise self.invalid(f"format version {version!r}; this xlstm reads {READABLE_VERSIONS}")
        return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_meta(meta: dict[str, Any], fail, n_members: int) -> dict[str, tuple[int, ...]]:
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
    if not all(_is_int(s) and s >= 1 for s in sizes):
        raise fail(f"sizes {names} = {tuple(sizes)} are not positive ints")
    if not isinstance(meta.get("bidirectional"), bool):
        raise fail(f"`bidirectional` = {meta.get('bidirectional')!r} is not a bool")
    dropout = meta.get("dropout")
    if not _is_number(dropout):
        raise fail(f"`dropout` = {dropout!r} is not a number")
    if not 0.0 <= dropout < 1.0:
        raise fail(f"`dropout` = {dropout!r} is not in [0, 1)")
    head = meta.get("head", "per_step")
    if not isinstance(head, str) or head not in HEADS:
        raise fail(f"`head` = {head!r}; expected one of {HEADS}")
    if meta["class"] == "CharLSTM" and head != "per_step":
        raise fail(f"a character model predicts every step; its `head` is {head!r}")
    if meta["class"] == "CharLSTM" and meta["bidirectional"]:
        raise fail("a character model cannot be bidirectional (it would read the future)")
    if meta["class"] == "CharLSTM":
        vocab, n_x = meta.get("vocab"), meta["n_x"]
        if not isinstance(vocab, str) or len(vocab) != n_x or n_x != meta["n_y"]:
            raise fail("its vocabulary does not match n_x = n_y")
        if len(set(vocab)) != n_x:
            raise fail("its vocabulary repeats a character")
    # Each parameter is one member: more layers than members cannot be right, and
    # listing them would allocate in proportion to a number the file chose.
    directions = 2 if meta["bidirectional"] else 1
    if meta["num_layers"] * directions * len(GATE_KEYS) > n_members:
        raise fail(f"`num_layers` = {meta['num_layers']} but the file has {n_members} members")
    return parameter_shapes(
        meta["n_x"], meta["n_a"], meta["num_layers"], meta["bidirectional"],
        meta["n_y"] if has_output else None,
    )  # fmt: skip


def _check_training_record(meta, fail, optimizer_slots) -> tuple[str, ...] | None:
    """The optimiser slots whose buffers the file must hold (``None``: no optimiser state)."""
    if meta["class"] == "LSTM":
        return None
    if optimizer_slots is None:
        raise fail(f"it holds a training model ({meta['class']}); load it with load_model")
    try:
        slots = tuple(optimizer_slots(meta.get("optimizer")))
    except (ValueError, TypeError) as error:
        raise fail(f"bad optimiser record ({error})") from None
    clip = meta.get("clip_norm")
    if clip is not None and not (_is_number(clip) and 0 < clip < float("inf")):
        raise fail(f"`clip_norm` = {clip!r} is not a positive number or null")
    step = meta.get("opt_step")
    if step is None:
        return None
    if not _is_int(step) or step < 0:
        raise fail(f"optimiser step {step!r} is not a non-negative int")
    return slots


def read(
    path: str | os.PathLike,
    *,
    optimizer_slots: Callable[[Any], tuple[str, ...]] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a checkpoint: ``(meta, arrays)`` with host NumPy arrays.

    Every consistency check happens here, before anything is built and before any array
    data is read (see the module docstring): the archive's members, format and version,
    the model record (class, sizes, dtype, gate order, vocabulary), the optimiser record
    and ``extra``, every member's ``.npy`` header (shape, dtype, size).  Then the data,
    which must be finite.

    Parameters
    ----------
    path : str or path
    optimizer_slots : callable, optional
        Maps the ``optimizer`` record to the names of its state slots, raising
        ``ValueError``/``TypeError`` for a bad record (the training models pass theirs).
        Without it, a file with an optimiser record is refused.

    Returns
    -------
    meta : dict
        The record, version 1 upgraded to version 2.
    arrays : dict
        ``param/<key>``, ``opt/<slot>/<key>`` (version 2 keys) and, if saved, ``state/a``,
        ``state/c``; native byte order.

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        Anything else wrong with the file (a folder, a device, not a zip, a bad member,
        record or header, truncation, a CRC error, NaN or infinity); it names the file and
        the problem.
    """
    path = Path(path)
    reader = _Reader(path)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)  # non-blocking: a FIFO must not hang the open
    except IsADirectoryError:
        raise reader.unreadable("it is a directory") from None
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:  # ValueError: a NUL in the name
        reason = getattr(error, "strerror", None) or error
        raise reader.unreadable(f"cannot open it: {reason}") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise reader.unreadable("it is a directory" if stat.S_ISDIR(mode) else "not a regular file")
    with os.fdopen(descriptor, "rb") as file, reader.open(file):
        return _read_checked(reader, optimizer_slots)


def _state_shape(meta, found: tuple[int, ...], fail, name: str) -> tuple[int, ...]:
    """A carried state's shape: ``(num_layers * D, n_a, m)`` for any ``m >= 1`` (its size is
    then checked against the zip directory like every member's)."""
    rows = meta["num_layers"] * (2 if meta["bidirectional"] else 1)
    if len(found) != 3 or found[:2] != (rows, meta["n_a"]) or found[2] < 1:
        raise fail(f"`{name}` has shape {found}; expected ({rows}, {meta['n_a']}, m)")
    return found


def _read_checked(reader: _Reader, optimizer_slots) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    fail = reader.invalid
    meta = reader.meta()
    if meta["version"] == 1:
        meta.setdefault("num_layers", 1)
        meta.setdefault("bidirectional", False)
        meta.setdefault("dropout", 0.0)
    expected = _check_meta(meta, fail, len(reader.members))
    slots = _check_training_record(meta, fail, optimizer_slots)
    if not isinstance(meta.get("extra", {}), dict):
        raise fail("`extra` is not a dict")

    # Version 1 files name the one layer's parameters with the seed's keys (Wf, not Wf_l0).
    def stored(key: str) -> str:
        return key[: -len("_l0")] if meta["version"] == 1 and key.endswith("_l0") else key

    wanted: dict[str, tuple[str, tuple[int, ...] | None]] = {}  # member -> (name, shape)
    for key, shape in expected.items():
        member = f"param/{stored(key)}"
        if member not in reader.members:
            raise fail(f"`param/{key}` is missing")
        wanted[member] = (f"param/{key}", shape)
    found_slots: dict[str, set[str]] = {}
    by_stored = {stored(key): key for key in expected}
    for member in reader.members:
        if member == "meta" or member in wanted:
            continue
        parts = member.split("/")
        if parts[0] == "opt" and parts[2] in by_stored:
            key = by_stored[parts[2]]
            found_slots.setdefault(parts[1], set()).add(key)
            wanted[member] = (f"opt/{parts[1]}/{key}", expected[key])
            continue
        if member in _STATE and meta["class"] != "LSTM":
            wanted[member] = (member, None)  # (L D, n_a, m): m from the header, below
            continue
        raise fail(f"unexpected array `{member}`")
    if sum(member in reader.members for member in _STATE) == 1:
        raise fail("a carried state needs both `state/a` and `state/c`")
    if found_slots and meta["class"] == "LSTM":
        raise fail("optimiser buffers in a model without an optimiser")
    if slots is None and found_slots:
        raise fail("optimiser buffers without an optimiser step")
    if slots is not None:
        if set(found_slots) != set(slots):
            msg = f"optimiser state has slots {sorted(found_slots)}; it needs {sorted(slots)}"
            raise fail(msg)
        for slot, keys in found_slots.items():
            missing = [k for k in expected if k not in keys]
            if missing:
                raise fail(f"optimiser slot {slot!r} lacks buffers for {missing}")

    # Every header before any data: a bad last member costs nothing.
    dtype = np.dtype(meta["dtype"])
    layouts = {}
    for member, (name, shape) in wanted.items():
        info = reader.members[member]
        with reader.member(member, name) as stream:
            found_shape, found_dtype, fortran, offset = reader.header(stream, name)
        if found_dtype.kind != "f" or found_dtype.newbyteorder("=") != dtype.newbyteorder("="):
            raise fail(f"`{name}` has dtype {found_dtype}; the config says {meta['dtype']}")
        if shape is None:
            shape = _state_shape(meta, found_shape, fail, name)
        if found_shape != shape:
            raise fail(f"`{name}` has shape {found_shape}; the config says {shape}")
        nbytes = dtype.itemsize * math.prod(shape)
        if offset + nbytes != info.file_size:
            held = info.file_size - offset
            msg = f"`{name}` holds {held} bytes of data; its header declares {nbytes}"
            raise reader.unreadable(msg)
        layouts[member] = (name, shape, found_dtype, fortran, nbytes)

    if _STATE[0] in layouts and layouts[_STATE[0]][1] != layouts[_STATE[1]][1]:
        raise fail("`state/a` and `state/c` differ in shape")
    arrays: dict[str, np.ndarray] = {}
    for member, (name, shape, found_dtype, fortran, nbytes) in layouts.items():
        with reader.member(member, name) as stream:
            reader.header(stream, name)
            raw = reader.data(stream, name, nbytes)
        flat = np.frombuffer(raw, dtype=found_dtype)
        array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
        if not found_dtype.isnative:
            array = array.astype(dtype)
        if not bool(np.isfinite(array).all()):
            raise fail(f"`{name}` holds NaN or infinity")
        arrays[name] = array
    return meta, arrays


__all__ = [
    "CLASSES",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_META_CHARS",
    "MAX_META_DEPTH",
    "CheckpointError",
    "dtype_name",
    "parameter_shapes",
    "read",
    "write",
]
