"""dtype and backend of every output: float32 in -> float32 out, float64 in -> float64 out, on the
inputs' backend; float32 results close to float64 ones."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from _helpers import (
    CELL_GRAD_KEYS,
    SEQ_GRAD_KEYS,
    backend_name,
    random_problem,
    rel_err,
    to_numpy,
)

import xlstm


def run_everything(xp, prob, dtype, with_dc=True):
    """Forward + backward of the sequence and of one cell; returns {name: array}."""
    d = prob.to(xp, dtype)
    out = {}
    a, y, c, caches = xlstm.lstm_forward(d["x"], d["a0"], d["params"], d["c0"])
    out.update(a=a, y=y, c=c)
    grads = xlstm.lstm_backward(d["Ga"], caches, dc=d["Gc"] if with_dc else None)
    out.update({f"seq {k}": v for k, v in grads.items()})
    a_next, c_next, yt, cache = xlstm.lstm_cell_forward(
        d["x"][:, :, 0], d["a0"], d["c0"], d["params"]
    )
    out.update(a_next=a_next, c_next=c_next, yt_pred=yt)
    for name, item in zip(("ft", "it", "cct", "ot"), cache[4:8], strict=True):
        out[f"cache {name}"] = item
    cell = xlstm.lstm_cell_backward(d["Ga"][:, :, 0], d["Gc"][:, :, 0], cache)
    out.update({f"cell {k}": v for k, v in cell.items()})
    out["sigmoid"] = xlstm.sigmoid(d["x"])
    out["softmax"] = xlstm.softmax(d["x"])
    assert len(out) == 3 + len(SEQ_GRAD_KEYS) + 3 + 4 + len(CELL_GRAD_KEYS) + 2
    return out


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=None", "dc"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_output_dtype_follows_input(xp, dtype, with_dc):
    prob = random_problem(1000, 3, 4, 5, 5, 2)
    want = getattr(xp, dtype)
    for name, value in run_everything(xp, prob, dtype, with_dc).items():
        assert value.dtype == want, f"{name}: {value.dtype} != {dtype}"


def test_outputs_on_input_backend(xp):
    prob = random_problem(1001, 2, 3, 4, 3, 2)
    name = backend_name(xp)
    for key, value in run_everything(xp, prob, "float64").items():
        assert backend_name(array_api_compat.array_namespace(value)) == name, key
        if name != "numpy":
            assert not isinstance(value, np.ndarray), key


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=None", "dc"])
def test_float32_close_to_float64(xp, with_dc):
    prob = random_problem(1002, 3, 4, 6, 5, 3)
    low = run_everything(xp, prob, "float32", with_dc)
    high = run_everything(xp, prob, "float64", with_dc)
    worst = {k: rel_err(to_numpy(low[k]).astype(np.float64), high[k]) for k in high}
    bad = {k: f"{e:.2e}" for k, e in worst.items() if e > 2e-5}
    assert not bad, bad
    # float32 really computed in float32: not bit-identical to float64 everywhere.
    assert max(worst.values()) > 1e-9
