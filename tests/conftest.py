"""pytest configuration: the one ``xp`` fixture, parametrised over every array backend.

Backends: numpy, array_api_strict, torch (CPU), jax (CPU, float64 enabled) and cupy (only with a
CUDA device). A backend that does not import is skipped with its reason. The fixture returns the
array-api-compat namespace of the library, i.e. what ``array_namespace`` returns for its arrays.
"""

from __future__ import annotations

import os

# JAX: CPU only, and float64 must be switched on before any jax array is created.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest
from _helpers import BACKENDS, WORST, require_backend
from hypothesis import settings

settings.register_profile("xlstm", deadline=None)
settings.load_profile("xlstm")


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
