"""Shared helpers for the xlstm tests.

Shape legend (the seed's): n_x inputs, n_a hidden units, n_y outputs, m batch, T time steps.
x (n_x, m, T); a0, c0 (n_a, m); W* (n_a, n_a + n_x) acting on [a_prev; x_t]; b* (n_a, 1);
Wy (n_y, n_a); by (n_y, 1).

Everything random is drawn with NumPy (``numpy.random.default_rng``) in float64 and moved to a
backend with ``xp.asarray(..., dtype=...)``; every comparison happens in NumPy via ``to_numpy``.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field

import array_api_compat as aac
import numpy as np
import pytest

PARAM_KEYS = ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo", "Wy", "by")
GATE_KEYS = ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo")
SEQ_GRAD_KEYS = ("dx", "da0", "dc0", "dWf", "dbf", "dWi", "dbi", "dWc", "dbc", "dWo", "dbo")
CELL_GRAD_KEYS = (
    "dxt",
    "da_prev",
    "dc_prev",
    "dWf",
    "dbf",
    "dWi",
    "dbi",
    "dWc",
    "dbc",
    "dWo",
    "dbo",
)
# gradient key -> the input it differentiates
SEQ_GRAD_OF = {"dx": "x", "da0": "a0", "dc0": "c0", **{f"d{k}": k for k in GATE_KEYS}}
CELL_GRAD_OF = {"dxt": "xt", "da_prev": "a_prev", "dc_prev": "c_prev"}
CELL_GRAD_OF.update({f"d{k}": k for k in GATE_KEYS})

# (n_x, m, T, n_a, n_y): a generic case plus every degenerate size the issue names.
SHAPES = [
    (3, 4, 5, 5, 2),
    (1, 1, 1, 1, 1),
    (2, 3, 1, 4, 3),
    (4, 1, 3, 2, 2),
    (2, 3, 4, 1, 2),
]
SHAPE_IDS = ["generic", "all-ones", "T1", "m1", "na1"]

# Worst errors seen during the run, printed by conftest.pytest_terminal_summary.
WORST: dict[str, tuple[float, str]] = {}


def record_worst(category: str, err: float, label: str) -> None:
    """Remember ``err`` if it is the worst seen so far in ``category``; print it for ``-s``."""
    print(f"[{category}] {label}: worst relative error {err:.3e}")
    if category not in WORST or err > WORST[category][0]:
        WORST[category] = (err, label)


def to_numpy(x) -> np.ndarray:
    """Copy any supported backend's array (numpy, torch, jax, array_api_strict, cupy) to NumPy."""
    if isinstance(x, np.ndarray | np.generic | float | int):
        return np.array(x, copy=True)
    if aac.is_torch_array(x):
        return x.detach().cpu().numpy().copy()
    if aac.is_cupy_array(x):
        return x.get()
    if aac.is_jax_array(x):
        return np.array(x, copy=True)
    # array_api_strict (and anything else speaking DLPack on the CPU)
    return np.array(np.from_dlpack(x), copy=True)


def backend_name(xp) -> str:
    """Short name of an array namespace: numpy, torch, jax, cupy or array_api_strict."""
    checks = (
        ("numpy", aac.is_numpy_namespace),
        ("torch", aac.is_torch_namespace),
        ("jax", aac.is_jax_namespace),
        ("cupy", aac.is_cupy_namespace),
        ("array_api_strict", aac.is_array_api_strict_namespace),
    )
    for name, check in checks:
        if check(xp):
            return name
    raise AssertionError(f"unknown namespace {xp!r}")


def float_tol(xp, dtype: str = "float64") -> float:
    """Relative tolerance for comparing a backend's result with NumPy float64 references."""
    if dtype == "float32":
        return 2e-4
    return 1e-12 if backend_name(xp) == "numpy" else 1e-11


def asxp(xp, a, dtype: str = "float64"):
    return xp.asarray(np.ascontiguousarray(a), dtype=getattr(xp, dtype))


def params_to(xp, params: dict, dtype: str = "float64") -> dict:
    return {k: asxp(xp, v, dtype) for k, v in params.items()}


def random_parameters(rng: np.random.Generator, n_x: int, n_a: int, n_y: int, scale=0.5) -> dict:
    p = {}
    for g in "fico":
        p[f"W{g}"] = scale * rng.standard_normal((n_a, n_a + n_x))
        p[f"b{g}"] = scale * rng.standard_normal((n_a, 1))
    p["Wy"] = scale * rng.standard_normal((n_y, n_a))
    p["by"] = scale * rng.standard_normal((n_y, 1))
    return p


@dataclass
class Problem:
    """A random LSTM problem in NumPy float64.

    Ga, Gc weight the loss L = sum(a Ga) + sum(c Gc), so that da = Ga and dc = Gc.
    """

    n_x: int
    m: int
    T: int
    n_a: int
    n_y: int
    x: np.ndarray
    a0: np.ndarray
    c0: np.ndarray
    params: dict
    Ga: np.ndarray
    Gc: np.ndarray
    arrays: dict = field(init=False)

    def __post_init__(self):
        self.arrays = {"x": self.x, "a0": self.a0, "c0": self.c0, **self.params}

    def to(self, xp, dtype: str = "float64") -> dict:
        """All arrays on backend ``xp``: keys x, a0, c0, Ga, Gc and ``params`` (a dict)."""
        out = {k: asxp(xp, getattr(self, k), dtype) for k in ("x", "a0", "c0", "Ga", "Gc")}
        out["params"] = params_to(xp, self.params, dtype)
        return out


def random_problem(seed, n_x, m, T, n_a, n_y, *, scale=0.5, input_scale=1.0) -> Problem:
    rng = np.random.default_rng(seed)
    params = random_parameters(rng, n_x, n_a, n_y, scale)
    x = input_scale * rng.standard_normal((n_x, m, T))
    a0 = rng.standard_normal((n_a, m))
    c0 = rng.standard_normal((n_a, m))
    Ga = rng.standard_normal((n_a, m, T))
    Gc = rng.standard_normal((n_a, m, T))
    return Problem(n_x, m, T, n_a, n_y, x, a0, c0, params, Ga, Gc)


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max(max |expected|, max |actual|); 0 when both are zero."""
    actual = np.asarray(to_numpy(actual), dtype=np.float64)
    expected = np.asarray(to_numpy(expected), dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.size == 0:
        return 0.0
    scale = max(np.max(np.abs(expected)), np.max(np.abs(actual)))
    if scale == 0.0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / scale)


def assert_rel_close(actual, expected, tol: float, what: str = "") -> float:
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"
    return err


# ---------------------------------------------------------------------------------------------
# Plain NumPy references, written from the seed notebook's equations (small, unoptimised).
# ---------------------------------------------------------------------------------------------
def ref_sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def ref_softmax(z, axis=0):
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def ref_cell_forward(xt, a_prev, c_prev, p):
    """The seed's lstm_cell_forward in NumPy; returns a_next, c_next, yt, (ft, it, cct, ot)."""
    concat = np.concatenate((a_prev, xt), axis=0)
    ft = ref_sigmoid(p["Wf"] @ concat + p["bf"])
    it = ref_sigmoid(p["Wi"] @ concat + p["bi"])
    cct = np.tanh(p["Wc"] @ concat + p["bc"])
    ot = ref_sigmoid(p["Wo"] @ concat + p["bo"])
    c_next = ft * c_prev + it * cct
    a_next = ot * np.tanh(c_next)
    yt = ref_softmax(p["Wy"] @ a_next + p["by"])
    return a_next, c_next, yt, (ft, it, cct, ot)


def ref_cell_backward(da_next, dc_next, xt, a_prev, c_prev, p):
    """The seed's lstm_cell_backward equations in NumPy (they are correct for one cell)."""
    n_a = a_prev.shape[0]
    _, c_next, _, (ft, it, cct, ot) = ref_cell_forward(xt, a_prev, c_prev, p)
    tc = np.tanh(c_next)
    dc = dc_next + da_next * ot * (1 - tc**2)
    dot = da_next * tc * ot * (1 - ot)
    dcct = dc * it * (1 - cct**2)
    dit = dc * cct * it * (1 - it)
    dft = dc * c_prev * ft * (1 - ft)
    concat = np.concatenate((a_prev, xt), axis=0)
    g = {}
    dconcat = np.zeros_like(concat)
    for key, dz in (("f", dft), ("i", dit), ("c", dcct), ("o", dot)):
        g[f"dW{key}"] = dz @ concat.T
        g[f"db{key}"] = np.sum(dz, axis=1, keepdims=True)
        dconcat = dconcat + p[f"W{key}"].T @ dz
    g["da_prev"] = dconcat[:n_a]
    g["dxt"] = dconcat[n_a:]
    g["dc_prev"] = dc * ft
    return g


def central_difference(loss, arrays: dict, names, *, step: float) -> dict:
    """dL/d(arrays[name]) for each name by central differences; ``arrays`` is never modified."""
    grads = {}
    for name in names:
        base = arrays[name]
        g = np.empty_like(base)
        for idx in np.ndindex(base.shape):
            values = []
            for delta in (step, -step):
                bumped = base.copy()
                bumped[idx] += delta
                values.append(loss({**arrays, name: bumped}))
            g[idx] = (values[0] - values[1]) / (2 * step)
        grads[name] = g
    return grads


# --------------------------------------------------------------------------- backends

BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")


@functools.cache
def load_backend(name: str):
    """Return (namespace, None) for an importable backend, else (None, reason)."""
    try:
        if name == "jax":
            jax = importlib.import_module("jax")
            jax.config.update("jax_enable_x64", True)
            lib = importlib.import_module("jax.numpy")
        else:
            lib = importlib.import_module(name)
        if name == "cupy" and lib.cuda.runtime.getDeviceCount() < 1:
            return None, "cupy imports but no CUDA device is present"
        zero = lib.asarray(0.0)
    except Exception as exc:  # any import or device failure just means: not available here
        return None, f"{name} not available: {type(exc).__name__}: {exc}"
    return aac.array_namespace(zero), None


def require_backend(name: str):
    """The namespace of backend ``name``, or skip the test."""
    ns, reason = load_backend(name)
    if ns is None:
        pytest.skip(reason)
    return ns
