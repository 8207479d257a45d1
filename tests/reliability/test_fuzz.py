"""Fuzzing with hypothesis, bounded (a few seconds per test, small files, little memory).
``XLSTM_FUZZ_EXAMPLES=2000`` runs more examples (by hand, not in CI).

* ``python -m xlstm train`` arguments, valid and not, mixed (in-process, ``--steps 1``, tiny
  sizes): the exit status is 0 or 2, and 2 means exactly one line on stderr, never a traceback.
* Corrupted, truncated and crafted checkpoint files (bit flips, truncation, renamed members,
  crafted ``.npy`` headers, crafted ``meta``): reading raises ``CheckpointError`` (or, for a
  change that happens to be harmless, loads), never another exception, and the memory traced
  while reading a file under 100 KB stays under a few MB.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _files import TEXT, npy, npy_header, small_model, write_zip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlstm
from xlstm.checkpoint import CheckpointError
from xlstm.cli.train import main
from xlstm.training import load_model

# XLSTM_FUZZ_EXAMPLES=2000 for a deeper run by hand; the default keeps the file under ~30 s.
EXAMPLES = int(os.environ.get("XLSTM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MB = 2**20
PREFIX = "python -m xlstm train: error: "


# --------------------------------------------------------------------------- CLI arguments


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """Files the generated command lines point at."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "text.txt").write_text(TEXT * 6, encoding="utf-8")
    (root / "empty.txt").write_text(" \n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "a_file").write_text("x")
    (root / "corrupt.npz").write_bytes(b"PK\x03\x04 nothing")
    small_model().save(root / "good.npz")
    xlstm.LSTM(3, 4, seed=0).save(root / "plain.npz")
    (root / "folder").mkdir()
    return root


def _options(root: Path):
    """Per option: (valid values, invalid or hostile values)."""

    def files(*names):
        return [str(root / name) for name in names]

    bad_number = ["0", "-1", "x", "", "1.5", "1e3"]
    return {
        "--hidden": (["4", "8"], ["0", "-2", "q", "100000", "99999999999", "9" * 5000]),
        "--layers": (["1", "2"], ["0", "1000000000"]),
        "--dropout": (["0", "0.1", "0.5"], ["0.7", "-0.1", "nan", "inf", "y"]),
        "--dtype": (["float32", "float64"], ["float16", "int8"]),
        "--batch": (["1", "2", "4"], ["0", "100000000"]),
        "--seq-len": (["1", "4", "8"], ["0", "100000000"]),
        "--optimizer": (["adam", "adamw", "sgd"], ["rmsprop"]),
        "--lr": (["0.01", "1", "1e-300"], ["0", "-1", "inf", "nan", "z"]),
        "--clip": (["0.5", "1e300"], ["0", "-1", "inf", "nan"]),
        "--val-fraction": (["0", "0.1", "0.5"], ["0.7", "-0.1", "nan"]),
        "--seed": (["0", "7", "18446744073709551616"], ["-1", "2**64"]),
        "--sample-length": (["0", "3"], ["-1", "10000000000"]),
        "--sample-every": (["1", "2", "9" * 30], bad_number),
        "--eval-every": (["1", "2", "9" * 30], bad_number),
        "--checkpoint-every": (["1", "2", "9" * 30], bad_number),
        "--temperature": (["0.5", "1e-300", "1e300"], ["0", "-1", "inf", "nan"]),
        "--backend": (["numpy"], ["tensorflow", "", "cupy"]),
        "--device": (["cpu"], ["cuda:0", "tpu"]),
        "--text": (
            files("text.txt"),
            [*files("empty.txt", "latin1.txt", "a_file", "folder", "missing.txt", "corrupt.npz"),
             os.devnull, "", "nul\0byte"],
        ),
        "--resume": (
            files("good.npz"),
            [*files("plain.npz", "corrupt.npz", "folder", "nope"), "", "nul\0byte", os.devnull],
        ),
        "--steps": (["1", "2"], bad_number),
    }  # fmt: skip


@st.composite
def command_lines(draw, root: Path):
    """Mostly valid command lines (so that runs get deep), each with a few hostile parts."""
    options = _options(root)
    chosen = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=6))
    argv = ["--text", str(root / "text.txt"), "--hidden", "4", "--batch", "2", "--seq-len", "4"]
    argv += ["--no-progress", "--sample-length", "0", "--time-limit", "20"]
    for option in chosen:
        valid, hostile = options[option]
        pool = valid if draw(st.integers(0, 9)) < 8 else hostile
        argv += [option, draw(st.sampled_from(pool))]
    if "--steps" not in chosen:
        argv += ["--steps", "1"]
    if draw(st.integers(0, 9)) == 0:
        argv += ["--resume"]  # bare: OUT/checkpoint.npz (absent for a fresh OUT)
    if draw(st.integers(0, 19)) == 0:
        argv += [draw(st.sampled_from(["--epochs", "3", "--", "-x"]))]
    out = draw(st.sampled_from(["fresh"] * 8 + ["a_file", "under_a_file"]))
    return argv, out


_runs = itertools.count()


@given(data=st.data())
@settings(FUZZ, max_examples=max(1, EXAMPLES * 3 // 4))
def test_cli_arguments_exit_0_or_one_line_and_2(place, data):
    argv, out_kind = data.draw(command_lines(place))
    out = {
        "fresh": place / f"out{next(_runs)}",
        "a_file": place / "a_file",
        "under_a_file": place / "a_file" / "run",
    }[out_kind]
    argv = [*argv, "--out", str(out)]
    # Valid --steps values are at most 2 ("1e3" does not parse): no example runs long.
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(argv, stdout=stdout, stderr=stderr)
    err = stderr.getvalue()
    assert code in (0, 2), (argv, err)
    assert "Traceback" not in err
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith(PREFIX), (argv, err)
        assert stdout.getvalue() == ""
    else:
        assert load_model(out / "checkpoint.npz").step >= 1


# --------------------------------------------------------------------------- checkpoints


class Files(dict):
    """The good files' bytes, with a short repr for hypothesis's reports."""

    def __repr__(self) -> str:
        return f"<checkpoint bytes: {', '.join(f'{k} {len(v)} B' for k, v in self.items())}>"


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    training = small_model().save(root / "training.npz")
    plain = xlstm.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0).save(root / "plain.npz")
    return Files(training=training.read_bytes(), plain=plain.read_bytes())


def _read(raw: bytes, kind: str):
    """Read ``raw`` as a checkpoint of ``kind``: the result or the CheckpointError, and the
    traced peak.  Any other exception propagates (and fails the test)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.npz"
        path.write_bytes(raw)
        tracemalloc.start()
        try:
            try:
                result = load_model(path) if kind == "training" else xlstm.LSTM.load(path)
            except CheckpointError as error:
                result = error
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(raw) < 100_000
    assert peak < 4 * MB, f"{peak / MB:.1f} MB traced reading {len(raw)} bytes"
    if isinstance(result, CheckpointError):
        assert "fuzzed.npz" in str(result)
    return result


kinds = st.sampled_from(["training", "plain"])


@given(kind=kinds, flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), max_size=8))
@FUZZ
def test_bit_flips(good_files, kind, flips):
    raw = bytearray(good_files[kind])
    for where, bit in flips:
        raw[min(int(where * len(raw)), len(raw) - 1)] ^= 1 << bit
    _read(bytes(raw), kind)


@given(kind=kinds, keep=st.floats(0, 1), tail=st.binary(max_size=64))
@FUZZ
def test_truncation_and_trailing_bytes(good_files, kind, keep, tail):
    raw = good_files[kind]
    _read(raw[: int(keep * len(raw))] + tail, kind)


NAMES = st.one_of(
    st.sampled_from(["meta.npy", "param/Wy.npy", "param/Wf_l0.npy", "opt/m/by.npy", "../x.npy",
                     "/abs.npy", "param/", "param/Wq.npy", "opt/m/Wq.npy", "param/Wy",
                     "param/Wf_l0.npy/x.npy", "opt/x/y/z.npy"]),
    st.text(max_size=20),
)  # fmt: skip


def _zip_bytes(entries) -> bytes:
    buffer = io.BytesIO()
    write_zip(buffer, entries)
    return buffer.getvalue()


def _entries(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


@given(kind=kinds, data=st.data())
@FUZZ
def test_renamed_dropped_and_duplicated_members(good_files, kind, data):
    entries = _entries(good_files[kind])
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(entries) - 1))
        name, payload = entries[index]
        action = data.draw(st.sampled_from(["rename", "drop", "duplicate", "swap"]))
        if action == "rename":
            entries[index] = (data.draw(NAMES), payload)
        elif action == "drop" and len(entries) > 1:
            entries.pop(index)
        elif action == "duplicate":
            entries.append((name, payload))
        else:
            other = data.draw(st.integers(0, len(entries) - 1))
            entries[index] = (name, entries[other][1])
    try:
        raw = _zip_bytes(entries)
    except (UnicodeEncodeError, ValueError, IndexError):  # names zipfile cannot store ("")
        return
    _read(raw, kind)


SHAPES = st.lists(
    st.one_of(st.integers(0, 16), st.sampled_from([2**31, 2**40, 2**63 - 1, 10**30, -1])),
    max_size=4,
)
DESCRS = st.sampled_from(
    ["<f4", "<f8", ">f4", "|O", "<i8", "<U10", "<f2", "<c16", "|b1", "<V8", "[('a', '<f4')]", "x"]
)


@given(kind=kinds, data=st.data())
@FUZZ
def test_crafted_headers(good_files, kind, data):
    entries = _entries(good_files[kind])
    index = data.draw(st.integers(0, len(entries) - 1))
    descr, shape = data.draw(DESCRS), data.draw(SHAPES)
    fortran, version = data.draw(st.booleans()), data.draw(st.sampled_from([(1, 0), (2, 0)]))
    try:
        header = npy_header(descr, shape, fortran_order=fortran, version=version)
    except (ValueError, TypeError, OverflowError):  # NumPy refuses to write it: write raw
        header = b"\x93NUMPY\x01\x00" + data.draw(st.binary(max_size=80))
    payload = header + data.draw(st.binary(max_size=256))
    entries[index] = (entries[index][0], payload)
    _read(_zip_bytes(entries), kind)


def _containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    _containers,
    max_leaves=20,
)
META_KEYS = st.sampled_from(
    ["format", "version", "class", "n_x", "n_a", "n_y", "num_layers", "bidirectional", "dropout",
     "dtype", "gate_order", "vocab", "optimizer", "clip_norm", "opt_step", "extra"]
)  # fmt: skip


@given(kind=kinds, data=st.data())
@FUZZ
def test_crafted_meta(good_files, kind, data):
    entries = _entries(good_files[kind])
    index = next(i for i, (name, _) in enumerate(entries) if name == "meta.npy")
    meta = json.loads(str(np.load(io.BytesIO(entries[index][1]))))
    how = data.draw(st.sampled_from(["fields", "fields", "value", "text"]))
    if how == "fields":
        for key in data.draw(st.lists(META_KEYS, min_size=1, max_size=3)):
            if data.draw(st.booleans()):
                meta[key] = data.draw(JSON)
            else:
                meta.pop(key, None)
        text = json.dumps(meta)
    elif how == "value":
        text = json.dumps(data.draw(JSON))
    else:
        text = data.draw(st.text(max_size=200))
    entries[index] = ("meta.npy", npy(np.asarray(text)))
    result = _read(_zip_bytes(entries), kind)
    if not isinstance(result, CheckpointError):  # it loaded: then it computes
        assert result is not None


def test_the_fuzzed_files_start_valid(good_files):
    """The strategies mutate files that load: a failure above is the mutation's."""
    for kind in good_files:
        assert not isinstance(_read(good_files[kind], kind), CheckpointError)
    assert "opt/m/Wy.npy" in [name for name, _ in _entries(good_files["training"])]
