"""pytest configuration: the one ``xp`` fixture, parametrised over every array backend.

Backends: numpy, array_api_strict, torch (CPU), jax (CPU, float64 enabled) and cupy (only with a
CUDA device). A backend that does not import is skipped with its reason. The fixture returns the
array-api-compat namespace of the library, i.e. what ``array_namespace`` returns for its arrays.
"""

from __future__ import annotations

import functools
import importlib
import os

# JAX: CPU only, and float64 must be switched on before any jax array is created.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import array_api_compat
import pytest
from _helpers import WORST
from hypothesis import settings

settings.register_profile("xlstm", deadline=None)
settings.load_profile("xlstm")

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
    return array_api_compat.array_namespace(zero), None


def require_backend(name: str):
    """The namespace of backend ``name``, or skip the test."""
    ns, reason = load_backend(name)
    if ns is None:
        pytest.skip(reason)
    return ns


@pytest.fixture(
    params=[pytest.param(b, marks=pytest.mark.gpu) if b == "cupy" else b for b in BACKENDS]
)
def xp(request):
    """The array namespace of one backend (skipped when that backend is unavailable)."""
    return require_backend(request.param)


def pytest_terminal_summary(terminalreporter):
    if not WORST:
        return
    terminalreporter.section("xlstm numerical accuracy (worst relative errors)")
    for category, (err, label) in sorted(WORST.items()):
        terminalreporter.write_line(f"{category}: {err:.3e}  ({label})")
