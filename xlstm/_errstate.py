"""Non-finite numbers: the one place that states how NaN and infinity are treated.

Policy (``docs/api.md``, "Non-finite inputs"): inputs and parameters are not checked for NaN
or infinity; they propagate through forward and backward passes as IEEE arithmetic makes
them, on every engine and backend, and without warnings.  NumPy would warn ("overflow",
"invalid value") from inside an engine, which under ``-W error`` is an exception from deep
in the code; the public entry points therefore run with NumPy's floating-point error
reporting off.  Other libraries (torch, JAX, CuPy, numba kernels) do not warn.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

F = TypeVar("F", bound=Callable[..., Any])


def ieee_arithmetic(function: F) -> F:
    """Decorate a public entry point: NumPy floating-point warnings off while it runs.

    A fresh ``np.errstate`` per call (an ``errstate`` object is not re-entrant), restored
    on the way out, also when the function raises.  Thread-safe (NumPy keeps the state in
    a context variable).
    """

    @functools.wraps(function)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)

    return quiet  # type: ignore[return-value]


__all__ = ["ieee_arithmetic"]
