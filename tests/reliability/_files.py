"""Building good and crafted checkpoint files for the reliability tests (no test here).

A checkpoint is a zip of ``.npy`` members (``xlstm.checkpoint``).  ``members(path)`` reads
one into ``{name: bytes}``; ``write_zip`` writes such a dict back (duplicates and any names
allowed); ``npy`` / ``npy_header`` make member bytes, honest or lying.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np

from xlstm.training import CharLSTM

VOCAB = "abcdefgh \n"
TEXT = "abc defg\nhab cdef gh\n" * 4


def small_model(**options) -> CharLSTM:
    """A trained-one-step CharLSTM (optimiser state included): 10 characters, n_a = 4."""
    model = CharLSTM(VOCAB, 4, seed=0, **options)
    ids = model.encode(TEXT[:33]).reshape(1, 33)
    model.train_step(ids[:, :-1], ids[:, 1:])
    return model


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_zip(path, entries, *, compression=zipfile.ZIP_STORED) -> None:
    """``entries``: a dict or a list of ``(name, bytes)`` (a list may repeat names)."""
    items = entries.items() if isinstance(entries, dict) else entries
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, data in items:
                archive.writestr(name, data)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_header(descr: str, shape, *, fortran_order: bool = False, version=(1, 0)) -> bytes:
    """A ``.npy`` header claiming any dtype and shape (no data follows unless added)."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran_order, "shape": tuple(shape)}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buffer, header)
    else:
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def meta_of(files: dict[str, bytes]) -> dict:
    array = np.lib.format.read_array(io.BytesIO(files["meta.npy"]), allow_pickle=False)
    return json.loads(str(array))


def with_meta(files: dict[str, bytes], **updates) -> dict[str, bytes]:
    meta = meta_of(files)
    meta.update(updates)
    return {**files, "meta.npy": npy(np.asarray(json.dumps(meta)))}


def with_meta_text(files: dict[str, bytes], text: str) -> dict[str, bytes]:
    return {**files, "meta.npy": npy(np.asarray(text))}
