"""Checkpoint files are untrusted: every malformed one is a CheckpointError naming the file and
the problem, found before anything large is allocated.  And saving leaves no debris behind."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest
from _files import members as read_members
from _files import (
    npy,
    npy_header,
    small_model,
    with_meta,
    with_meta_text,
    write_zip,
)

import xlstm
from xlstm import checkpoint
from xlstm.checkpoint import CheckpointError
from xlstm.training import LSTMModel, load_model

MB = 2**20


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid training checkpoint and its members."""
    path = small_model().save(tmp_path_factory.mktemp("good") / "good.npz")
    return path, read_members(path)


def load_peak(path):
    """``load_model(path)``'s error, and the peak memory traced while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as error:
            load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(error.value), peak


def refused(tmp_path, files, match, *, name="bad.npz"):
    """Loading ``files`` fails with ``match``, allocating at most 2 MB + 3 x the file's size."""
    path = tmp_path / name
    write_zip(path, files)
    limit = 2 * MB + 3 * path.stat().st_size
    message, peak = load_peak(path)
    assert str(path) in message
    assert re.search(match, message), message
    assert peak < limit, f"{peak / MB:.1f} MB traced reading a {path.stat().st_size} B file"
    return message


# --------------------------------------------------------------------------- allocation


def test_a_header_declaring_a_terabyte_array_is_refused_before_allocating(good, tmp_path):
    _, files = good
    files = {**files, "param/Wf_l0.npy": npy_header("<f4", (2**20, 2**20))}
    refused(tmp_path, files, r"`param/Wf_l0` has shape \(1048576, 1048576\); the config says")


def test_meta_and_headers_agreeing_on_huge_sizes_are_refused_by_the_file_size(good, tmp_path):
    _, files = good
    n = 2**20
    crafted = with_meta(
        {"meta.npy": files["meta.npy"]}, **{"class": "LSTMModel"}, n_x=n, n_a=n, n_y=n,
        opt_step=None,
    )  # fmt: skip
    for key, shape in checkpoint.parameter_shapes(n, n, 1, False, n).items():
        crafted[f"param/{key}.npy"] = npy_header("<f4", shape)
    refused(tmp_path, crafted, r"`param/Wf_l0` holds 0 bytes of data; its header declares")


def test_a_zip_bomb_is_refused_without_decompressing(good, tmp_path):
    """The reported attack: a small .npz whose compressed member expands to hundreds of MiB
    (512 MiB in the report; 128 MiB here, which is as telling and faster to build)."""
    path = tmp_path / "bomb.npz"
    _, files = good
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            if name != "param/Wf_l0.npy":
                archive.writestr(name, data)
        info = zipfile.ZipInfo("param/Wf_l0.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            member.write(npy_header("<f4", (2**13, 2**12)))
            zeros = bytes(MB)
            for _ in range(128):
                member.write(zeros)
    assert path.stat().st_size < MB
    message, peak = load_peak(path)
    assert "is compressed" in message
    assert peak < 2 * MB


def test_a_compressed_but_honest_file_is_refused_with_the_reason(good, tmp_path):
    _, files = good
    path = tmp_path / "compressed.npz"
    write_zip(path, files, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match=r"compressed.*numpy.savez, not savez_compressed"):
        load_model(path)


def test_a_member_claiming_more_bytes_than_the_file_has_is_refused(good, tmp_path):
    path, _ = good
    raw = bytearray(path.read_bytes())
    # The central directory's uncompressed-size field of the last member: claim 1 GiB.
    directory = raw.rfind(b"PK\x01\x02")
    raw[directory + 20 : directory + 28] = (2**30).to_bytes(4, "little") * 2
    bad = tmp_path / "claims.npz"
    bad.write_bytes(bytes(raw))
    message, peak = load_peak(bad)
    assert "claims more bytes than the file holds" in message
    assert peak < 2 * MB


# --------------------------------------------------------------------------- members


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([("../escape.npy", b"")], r"unexpected member '../escape.npy'"),
        ([("/absolute.npy", b"")], r"unexpected member '/absolute.npy'"),
        ([("param/../meta.npy", b"")], r"unexpected member 'param/../meta.npy'"),
        ([("param/", b"")], r"unexpected member 'param/'"),
        ([("notes.txt", b"hello")], r"unexpected member 'notes.txt'"),
        ([("param\\Wf_l0.npy", b"")], r"unexpected member"),
        ([("param/Wf_l0.npy", None)], r"member 'param/Wf_l0.npy' appears twice"),
    ],
    ids=["dot-dot", "absolute", "dot-dot inside", "folder", "not npy", "backslash", "duplicate"],
)
def test_member_names_are_checked(good, tmp_path, entries, match):
    _, files = good
    extra = [(name, files[name] if data is None else data) for name, data in entries]
    path = tmp_path / "names.npz"
    write_zip(path, [*files.items(), *extra])
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_a_member_that_is_not_npy_is_refused(good, tmp_path):
    _, files = good
    refused(tmp_path, {**files, "param/Wy.npy": b"not an array"}, r"`param/Wy` has no valid .npy")


def test_a_plain_npy_file_is_named_as_such(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(CheckpointError, match=r"a plain \.npy array, not an \.npz checkpoint"):
        load_model(path)


def test_a_directory_a_device_and_a_fifo_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*' is not a readable .*it is a directory"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_model(os.devnull)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.npz"
        os.mkfifo(fifo)
        with pytest.raises(CheckpointError, match="not a regular file"):  # and no hang
            load_model(fifo)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a zip archive"):
        load_model(tmp_path / "empty.npz")


# --------------------------------------------------------------------------- meta


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


META_CASES = {
    "n_a a string": ({"n_a": "8"}, r"sizes .* are not positive ints"),
    "n_a a float": ({"n_a": 4.0}, r"sizes .* are not positive ints"),
    "n_a a bool": ({"n_a": True}, r"sizes .* are not positive ints"),
    "vocab an int": ({"vocab": 5}, r"vocabulary does not match"),
    "extra a list": ({"extra": []}, r"`extra` is not a dict"),
    "optimizer an int": ({"optimizer": 3}, r"bad optimiser record"),
    "optimizer lr a string": ({"optimizer": {"name": "Adam", "lr": "0.1"}}, r"bad optimiser"),
    "optimizer lr infinite": ({"optimizer": {"name": "Adam", "lr": 1e400}}, r"bad optimiser"),
    "optimizer unknown field": ({"optimizer": {"name": "SGD", "speed": 1}}, r"bad optimiser"),
    "clip_norm a string": ({"clip_norm": "5"}, r"`clip_norm` = '5'"),
    "clip_norm negative": ({"clip_norm": -1}, r"`clip_norm` = -1"),
    "opt_step negative": ({"opt_step": -1}, r"optimiser step -1"),
    "opt_step a bool": ({"opt_step": True}, r"optimiser step True"),
    "dropout NaN": ({"dropout": float("nan")}, r"`dropout` = nan"),
    "dropout a string": ({"dropout": "0"}, r"`dropout` = '0' is not a number"),
    "version a bool": ({"version": True}, r"format version True"),
    "version 99": ({"version": 99}, r"format version 99"),
    "class unknown": ({"class": "GRU"}, r"unknown model class 'GRU'"),
    "bidirectional a string": ({"bidirectional": "no"}, r"`bidirectional` = 'no'"),
    "dtype int32": ({"dtype": "int32"}, r"dtype 'int32'"),
    "a billion layers": ({"num_layers": 10**9}, r"`num_layers` = 1000000000 but the file has"),
    "huge n_a": ({"n_a": 10**30}, r"`param/Wf_l0` has shape \(4, 14\); the config says"),
}


@pytest.mark.parametrize("case", list(META_CASES), ids=list(META_CASES))
def test_wrong_types_in_meta_are_checkpoint_errors(good, tmp_path, case):
    updates, match = META_CASES[case]
    _, files = good
    refused(tmp_path, with_meta(files, **updates), match)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", r"`meta` record is not valid JSON \(JSONDecodeError\)"),
        (_nested(100_000), r"not valid JSON \(RecursionError\)"),
        ('{"format": "xlstm-checkpoint", "extra": ' + _nested(40) + "}", r"nested more than 32"),
        ("[1, 2]", r"its format is None"),
        ('"a string"', r"its format is None"),
        ('{"n": ' + "9" * 5000 + "}", r"not valid JSON \(ValueError\)"),
        ('{"format": "\\ud800"}', r"not valid JSON|format is"),
    ],
    ids=["broken", "recursion", "deep", "list", "string", "huge int", "surrogate"],
)
def test_bad_meta_json(good, tmp_path, text, match):
    _, files = good
    refused(tmp_path, with_meta_text(files, text), match)


def test_meta_that_is_not_a_string_or_too_large(good, tmp_path):
    _, files = good
    refused(tmp_path, {**files, "meta.npy": npy(np.zeros(3))}, r"no `meta` record")
    refused(tmp_path, {**files, "meta.npy": npy(np.asarray(["a", "b"]))}, r"no `meta` record")
    refused(tmp_path, {k: v for k, v in files.items() if k != "meta.npy"}, r"no `meta` record")


def test_a_meta_header_declaring_gigabytes_is_refused_before_reading(good, tmp_path):
    _, files = good
    files = {**files, "meta.npy": npy_header("<U500000000", ())}
    refused(tmp_path, files, r"`meta` record is over 4194304 characters")


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (npy_header("|O", (4, 14)), r"`param/Wf_l0` has dtype object"),
        (npy_header("<i4", (4, 14)), r"`param/Wf_l0` has dtype int32"),
        (npy_header("<f2", (4, 14)), r"`param/Wf_l0` has dtype float16"),
        (npy_header("<f8", (4, 14)), r"`param/Wf_l0` has dtype float64; the config says float32"),
        (npy_header("<f4", (14, 4)), r"`param/Wf_l0` has shape \(14, 4\)"),
        (npy_header("<f4", (4, 14)), r"`param/Wf_l0` holds 0 bytes of data; its header declares"),
        (b"\x93NUMPY\x03\x00" + bytes(8), r"`param/Wf_l0` has no valid .npy header"),
        (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 200, r"`param/Wf_l0` has no valid .npy header"),
    ],
    ids=["object", "int", "float16", "float64", "shape", "no data", "version 3", "bad dict"],
)
def test_bad_headers(good, tmp_path, header, match):
    _, files = good
    refused(tmp_path, {**files, "param/Wf_l0.npy": header}, match)


def test_truncated_data_is_refused(good, tmp_path):
    _, files = good
    data = files["param/Wy.npy"]
    refused(tmp_path, {**files, "param/Wy.npy": data[:-4]}, r"`param/Wy` holds .* bytes of data")
    refused(tmp_path, {**files, "param/Wy.npy": data + b"1234"}, r"`param/Wy` holds .* bytes")


def test_fortran_order_and_big_endian_members_load_the_same_values(good, tmp_path):
    path, files = good
    reference = load_model(path).parameters
    fortran = np.asfortranarray(reference["Wf_l0"])
    swapped = reference["Wy"].astype(">f4")
    files = {**files, "param/Wf_l0.npy": npy(fortran), "param/Wy.npy": npy(swapped)}
    other = tmp_path / "layouts.npz"
    write_zip(other, files)
    loaded = load_model(other).parameters
    np.testing.assert_array_equal(loaded["Wf_l0"], reference["Wf_l0"])
    np.testing.assert_array_equal(loaded["Wy"], reference["Wy"])
    assert loaded["Wy"].dtype == np.float32
    assert loaded["Wy"].dtype.isnative


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("member", ["param/Wf_l0", "opt/m/by"])
def test_nan_and_inf_weights_are_refused(good, tmp_path, value, member):
    _, files = good
    array = np.load(io.BytesIO(files[member + ".npy"]))
    array.flat[0] = value
    refused(tmp_path, {**files, member + ".npy": npy(array)}, rf"`{member}` holds NaN or infinity")


def test_a_crc_error_is_refused(good, tmp_path):
    path, files = good
    raw = bytearray(path.read_bytes())
    start = raw.find(files["param/Wy.npy"])
    raw[start + len(files["param/Wy.npy"]) - 1] ^= 0x01  # last data byte: header intact
    bad = tmp_path / "crc.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"not a readable.*Bad CRC-32"):
        load_model(bad)


def test_an_lstm_checkpoint_with_optimiser_buffers_is_refused(tmp_path):
    model = xlstm.LSTM(3, 4, seed=0)
    path = model.save(tmp_path / "plain.npz")
    files = read_members(path)
    files["opt/m/Wf_l0.npy"] = files["param/Wf_l0.npy"]
    refused(tmp_path, files, r"optimiser buffers in a model without an optimiser")
    assert xlstm.LSTM.load(path).n_a == 4


# --------------------------------------------------------------------------- writing


def test_write_refuses_what_read_would_refuse(tmp_path):
    model = LSTMModel(3, 4, 2, seed=0)
    model.extra = {"deep": json.loads(_nested(40))}
    with pytest.raises(ValueError, match=r"`extra` is nested more than 31 levels deep"):
        model.save(tmp_path / "deep.npz")
    model.extra = {"big": "x" * (checkpoint.MAX_META_CHARS + 1)}
    with pytest.raises(ValueError, match=r"checkpoints hold at most 4194304"):
        model.save(tmp_path / "big.npz")
    parameters = model.parameters
    parameters["Wy"] = parameters["Wy"] * np.float32(np.nan)
    diverged = LSTMModel(3, 4, 2, parameters=parameters)
    with pytest.raises(ValueError, match=r"`param/Wy` holds NaN or infinity"):
        diverged.save(tmp_path / "nan.npz")
    assert list(tmp_path.iterdir()) == []


def test_a_new_checkpoint_respects_the_umask_and_a_replaced_one_keeps_its_mode(tmp_path):
    model = LSTMModel(3, 4, 2, seed=0)
    old = os.umask(0o022)
    try:
        path = model.save(tmp_path / "fresh.npz")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(model.save(tmp_path / "private.npz").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    path.chmod(0o640)
    model.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_leftover_temporary_file_is_removed_by_the_next_save(tmp_path):
    model = LSTMModel(3, 4, 2, seed=0)
    leftover = tmp_path / "model.npz.k3j9x_0a.tmp"  # what a killed save leaves
    leftover.write_bytes(b"half a checkpoint")
    others = [
        tmp_path / "model.npz.notours.tmp",  # not our pattern
        tmp_path / "other.npz.abcdefgh.tmp",  # another checkpoint's
        tmp_path / "model.npz.abcdefgh.tmp.keep",
    ]
    for other in others:
        other.write_bytes(b"user data")
    model.save(tmp_path / "model.npz")
    assert not leftover.exists()
    assert all(other.read_bytes() == b"user data" for other in others)
    assert load_model(tmp_path / "model.npz").n_a == 4


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_temporary_file_of_a_save_in_progress_is_left_alone(tmp_path):
    import fcntl

    model = LSTMModel(3, 4, 2, seed=0)
    busy = tmp_path / "model.npz.abcd1234.tmp"
    with open(busy, "wb") as file:  # another writer, holding its lock
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        model.save(tmp_path / "model.npz")
        assert busy.exists()
    model.save(tmp_path / "model.npz")
    assert not busy.exists()


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from xlstm.training import LSTMModel

    real = np.savez

    def slow_savez(file, **arrays):
        file.write(b"PK partial")
        file.flush()
        print("writing", flush=True)
        time.sleep(60)

    np.savez = slow_savez
    LSTMModel(3, 4, 2, seed=0).save(sys.argv[1])
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_save_killed_mid_write_leaves_nothing_behind_after_the_next_save(tmp_path):
    target = tmp_path / "model.npz"
    LSTMModel(3, 4, 2, seed=1).save(target)
    before = target.read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "writing\n"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1, leftovers
    assert target.read_bytes() == before  # the old checkpoint survived
    LSTMModel(3, 4, 2, seed=2).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
