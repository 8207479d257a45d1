"""Small problems and comparisons shared by the distributed tests."""

from __future__ import annotations

import numpy as np

import xlstm


def seed_problem(n_x=5, n_a=7, n_y=4, m=10, t_x=6, *, dtype="float64", seed=0):
    """Parameters, inputs ``x``, states and integer targets of one small problem."""
    rng = np.random.default_rng(seed)
    parameters = xlstm.init_parameters(n_x, n_a, n_y, dtype=dtype, seed=seed)
    x = rng.standard_normal((n_x, m, t_x)).astype(dtype)
    a0 = rng.standard_normal((n_a, m)).astype(dtype)
    c0 = rng.standard_normal((n_a, m)).astype(dtype)
    targets = rng.integers(0, n_y, (m, t_x))
    return parameters, x, a0, c0, targets


def relative_error(found, expected) -> float:
    """Largest difference relative to the largest magnitude of ``expected``."""
    found, expected = np.asarray(found), np.asarray(expected)
    scale = max(float(np.max(np.abs(expected))), np.finfo(expected.dtype).tiny)
    return float(np.max(np.abs(found - expected))) / scale
