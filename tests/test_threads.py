"""The NumPy engine's batch split: two halves of the batch in two threads give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

import xlstm
from xlstm import _threads

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture
def forced_split(monkeypatch):
    """Make every call split (no size thresholds) and count the splits."""
    monkeypatch.setattr(_threads, "MIN_WORK", 0)
    monkeypatch.setattr(_threads, "MIN_ROWS", 1)
    calls = []
    pool = _threads._pool()

    class CountingPool:
        def submit(self, fn, *args):
            calls.append(args)
            return pool.submit(fn, *args)

    monkeypatch.setattr(_threads, "_pool", lambda: CountingPool())
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        yield calls


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("with_dc", [False, True])
def test_split_batch_matches_generic(forced_split, recompute, with_dc):
    rng = np.random.default_rng(3)
    n_x, n_a, n_y, m, t_x = 5, 6, 3, 7, 9
    parameters = xlstm.init_parameters(n_x, n_a, n_y, dtype="float64", seed=1)
    x = rng.standard_normal((n_x, m, t_x))
    a0 = rng.standard_normal((n_a, m))
    c0 = rng.standard_normal((n_a, m))
    da = rng.standard_normal((n_a, m, t_x))
    dc = rng.standard_normal((n_a, m, t_x)) if with_dc else None

    fast = xlstm.lstm_forward(x, a0, parameters, c0, recompute=recompute)
    fast_grads = xlstm.lstm_backward(da, fast[3], dc)
    assert len(forced_split) >= 2, "the batch split did not run"
    assert all(rows == (slice(m // 2, m),) for rows in forced_split)

    generic = xlstm.lstm_forward(x, a0, parameters, c0, fused=False)
    generic_grads = xlstm.lstm_backward(da, generic[3], dc, fused=False)
    for ours, reference in zip(fast[:3], generic[:3], strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-13)
    for key, reference in generic_grads.items():
        np.testing.assert_allclose(fast_grads[key], reference, rtol=1e-11, atol=1e-12, err_msg=key)


def test_no_split_when_blas_is_not_two_threads(forced_split):
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        parameters = xlstm.init_parameters(3, 4, 2, dtype="float64", seed=0)
        x = np.ones((3, 4, 5))
        xlstm.lstm_forward(x, np.zeros((4, 4)), parameters)
    assert forced_split == []
