"""Without a distributed client: dask's local schedulers, the parameters one graph key.

No client may exist while these run, so they live in a module of their own.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask.distributed")

import dask
import dask.array as da
from _dask_helpers import relative_error, seed_problem

import xlstm
import xlstm.dask as xd
from xlstm.training import loss_and_gradients


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_forward_on_a_local_scheduler(scheduler):
    parameters, x, a0, _, _ = seed_problem(dtype="float32")
    a, y, c, final = xd.lstm_forward(da.from_array(x, chunks=(5, 4, 6)), a0, parameters)
    graph = dict(y.__dask_graph__())
    assert sum(str(key).startswith("xlstm-parameters-") for key in graph) == 1  # once
    found = dask.compute(a, y, c, *final, scheduler=scheduler)
    expected = xlstm.lstm_forward(x, a0, parameters)
    assert found[1].dtype == np.float32
    np.testing.assert_allclose(found[1], expected[1], rtol=1e-5, atol=1e-6)


def test_gradients_on_the_local_scheduler():
    parameters, x, a0, c0, targets = seed_problem()
    loss, grads, (a_t, c_t) = xd.loss_and_gradients(
        da.from_array(x, chunks=(5, 3, 6)), targets, parameters, a0=a0, c0=c0
    )
    expected = loss_and_gradients(x, targets, parameters, a0, c0)
    assert relative_error(loss, expected[0]) <= 1e-12
    for key, value in expected[1].items():
        assert relative_error(grads[key], value) <= 1e-12, key
    assert relative_error(a_t.compute(), expected[2][0]) <= 1e-12
