"""xlstm.dask.lstm_forward: the same numbers as xlstm.lstm_forward, a few tasks per chunk."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

import dask
import dask.array as da
from _dask_helpers import relative_error, seed_problem

import xlstm
import xlstm.dask as xd

TOLERANCE = 1e-12


def _local(x, a0, parameters, c0=None, lengths=None):
    a, y, c, caches = xlstm.lstm_forward(x, a0, parameters, c0, lengths=lengths)
    return a, y, c, xlstm.final_states(caches)


def _assert_close(found, expected):
    (a, y, c, (a_n, c_n)), (ra, ry, rc, (ra_n, rc_n)) = found, expected
    for name, value, reference in (
        ("a", a, ra), ("y", y, ry), ("c", c, rc), ("a_n", a_n, ra_n), ("c_n", c_n, rc_n),
    ):  # fmt: skip
        assert value.shape == reference.shape, name
        assert relative_error(value, reference) <= TOLERANCE, name


@pytest.mark.parametrize("states", ["numpy", "dask", "none"])
def test_forward_equals_local_call(thread_client, states):
    parameters, x, a0, c0, _ = seed_problem()
    if states == "none":
        a0 = c0 = None
        expected = _local(x, np.zeros((7, 10)), parameters)
    else:
        expected = _local(x, a0, parameters, c0)
    if states == "dask":
        a0, c0 = da.from_array(a0, chunks=(7, 5)), da.from_array(c0, chunks=(7, 2))
    outputs = xd.lstm_forward(da.from_array(x, chunks=(5, 3, 6)), a0, parameters, c0=c0)
    a, y, c, (a_n, c_n) = outputs
    for array in (a, y, c):
        assert array.chunks[1] == (3, 3, 3, 1)
        assert array.dtype == np.float64
        assert isinstance(array._meta, np.ndarray)
    assert a_n.chunks == ((7,), (3, 3, 3, 1))
    computed = dask.compute(a, y, c, a_n, c_n)
    _assert_close((*computed[:3], computed[3:]), expected)


@pytest.mark.parametrize("kind", ["numpy", "list", "dask"])
def test_lengths_chunked_along_the_batch(thread_client, kind):
    parameters, x, a0, c0, _ = seed_problem()
    lengths = np.array([6, 1, 3, 4, 6, 2, 5, 5, 1, 6])
    expected = _local(x, a0, parameters, c0, lengths=lengths)
    given = {"numpy": lengths, "list": lengths.tolist(), "dask": da.from_array(lengths, 4)}
    a, y, c, final = xd.lstm_forward(
        da.from_array(x, chunks=(5, 3, 6)), a0, parameters, c0=c0, lengths=given[kind]
    )
    computed = dask.compute(a, y, c, *final)
    _assert_close((*computed[:3], computed[3:]), expected)


def test_integer_ids_are_one_hot_encoded_in_each_task(thread_client):
    parameters = xlstm.init_parameters(6, 8, 6, dtype="float64", seed=1)
    ids = np.random.default_rng(1).integers(0, 6, (9, 5))
    x = np.moveaxis(np.eye(6)[ids], -1, 0)
    expected = _local(x, np.zeros((8, 9)), parameters)
    a, y, c, final = xd.lstm_forward(da.from_array(ids, chunks=(4, 5)), None, parameters)
    computed = dask.compute(a, y, c, *final)
    _assert_close((*computed[:3], computed[3:]), expected)


def test_ids_outside_the_vocabulary_fail_in_the_task(thread_client):
    parameters = xlstm.init_parameters(6, 8, 6, dtype="float64", seed=1)
    ids = da.from_array(np.full((4, 3), 6), chunks=(2, 3))
    y = xd.lstm_forward(ids, None, parameters)[1]
    with pytest.raises(ValueError, match=r"ids outside \[0, 6\)"):
        y.compute()


def test_graph_has_a_few_tasks_per_chunk():
    parameters, x, a0, c0, _ = seed_problem(m=40)
    chunks = 8
    y = xd.lstm_forward(da.from_array(x, chunks=(5, 5, 6)), a0, parameters, c0=c0)[1]
    # Per chunk: x, a0, c0 slices, the recurrence, the pick of y; plus the parameters.
    assert len(y.__dask_graph__()) <= 5 * chunks + 2
    everything = xd.lstm_forward(da.from_array(x, chunks=(5, 5, 6)), None, parameters)
    keys = set().union(*(dict(array.__dask_graph__()) for array in everything[:3]))
    # Per chunk: x, the recurrence, one pick per output.
    assert len(keys) <= 5 * chunks + 2


def test_other_axes_are_rechunked_to_one_chunk(thread_client):
    parameters, x, a0, c0, _ = seed_problem()
    y = xd.lstm_forward(da.from_array(x, chunks=(2, 5, 2)), a0, parameters)[1]
    assert y.chunks == ((4,), (5, 5), (6,))
    assert relative_error(y.compute(), _local(x, a0, parameters)[1]) <= TOLERANCE


def test_compute_helper_returns_what_dask_compute_does(thread_client):
    parameters, x, a0, c0, _ = seed_problem()
    a, y, c, final = xd.lstm_forward(da.from_array(x, chunks=(5, 3, 6)), a0, parameters)
    found_y, found_a_n = xd.compute(y, final[0])
    expected = _local(x, a0, parameters)
    assert relative_error(found_y, expected[1]) <= TOLERANCE
    assert relative_error(found_a_n, expected[3][0]) <= TOLERANCE


# --------------------------------------------------------------------------- errors


def test_core_function_rejects_dask_arrays_pointing_to_xlstm_dask():
    parameters, x, a0, _, _ = seed_problem()
    with pytest.raises(TypeError, match=r"`x` is a dask array; use xlstm\.dask"):
        xlstm.lstm_forward(da.from_array(x), a0, parameters)
    with pytest.raises(TypeError, match=r"`a0` is a dask array; use xlstm\.dask"):
        xlstm.lstm_forward(x, da.from_array(a0), parameters)


def test_x_in_memory_is_a_type_error():
    parameters, x, a0, _, _ = seed_problem()
    with pytest.raises(TypeError, match=r"`x` must be a dask array"):
        xd.lstm_forward(x, a0, parameters)


def test_cache_true_is_a_value_error():
    parameters, x, a0, _, _ = seed_problem()
    with pytest.raises(ValueError, match=r"`cache` must be False.*loss_and_gradients"):
        xd.lstm_forward(da.from_array(x), a0, parameters, cache=True)


def test_dtype_mismatch_names_both_arguments():
    parameters, x, a0, _, _ = seed_problem()
    with pytest.raises(TypeError, match=r"`parameters\['Wf'\]` has dtype float64 but `x`"):
        xd.lstm_forward(da.from_array(x.astype(np.float32)), None, parameters)
    with pytest.raises(TypeError, match=r"`parameters\['Wf'\]` has dtype float64 but `a0`"):
        xd.lstm_forward(da.from_array(x), a0.astype(np.float32), parameters)


def test_shapes_are_checked_before_anything_runs():
    parameters, x, a0, _, _ = seed_problem()
    with pytest.raises(ValueError, match=r"`a0` has shape \(7, 9\); expected \(n_a, m\)"):
        xd.lstm_forward(da.from_array(x), a0[:, :9], parameters)
    with pytest.raises(ValueError, match=r"`x` has shape \(4, 10, 6\) with n_x = 4"):
        xd.lstm_forward(da.from_array(x[:4]), a0, parameters)
    with pytest.raises(ValueError, match=r"`lengths` has shape \(3,\); expected \(m,\)"):
        xd.lstm_forward(da.from_array(x), a0, parameters, lengths=[1, 2, 3])
    with pytest.raises(TypeError, match=r"`lengths` has dtype float64"):
        xd.lstm_forward(da.from_array(x), a0, parameters, lengths=np.full(10, 2.0))


def test_unknown_chunk_sizes_are_a_value_error():
    parameters, x, a0, _, _ = seed_problem()
    unknown = da.from_array(x, chunks=(5, 5, 6))
    unknown = unknown[:, da.from_array(np.ones(10, dtype=bool)), :]
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes"):
        xd.lstm_forward(unknown, a0, parameters)


def test_an_engine_that_cannot_run_fails_before_any_task():
    parameters, x, a0, _, _ = seed_problem()
    with pytest.raises(ValueError, match=r"`engine='cupy'` cannot run this call"):
        xd.lstm_forward(da.from_array(x), a0, parameters, engine="cupy")
    with pytest.raises(ValueError, match=r"`engine` = 'bogus'"):
        xd.lstm_forward(da.from_array(x), a0, parameters, engine="bogus")
