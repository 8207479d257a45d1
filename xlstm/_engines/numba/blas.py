"""Where NumPy's own BLAS gemm lives, found without importing numba (cheap: ctypes only).

The compiled loops (:mod:`.loops`) call NumPy's CBLAS ``sgemm``/``dgemm`` by address, so that
every product of a call runs on one BLAS library and one thread pool.  Why not SciPy's BLAS
(numba's own wrapper calls it): a second OpenBLAS brings a second thread pool, and the two
pools' idle threads spin on the cores against each other (measured on this project's 2-core
machine: S2 inference 16 ms with both pools at two threads, 5.5 ms with NumPy's at one, 5.05
ms calling NumPy's BLAS).  Where NumPy's library cannot be found (NumPy built against
another BLAS), the loops fall back to SciPy's.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

ILP64_CBLAS_GEMM = (
    ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"),
    ("cblas_sgemm64_", "cblas_dgemm64_"),
)
"""Names of the 64-bit-integer CBLAS gemm in the OpenBLAS builds NumPy's wheels bundle."""


def numpy_blas_libraries() -> list[str]:
    """Shared libraries bundled with NumPy's wheels that may hold its BLAS."""
    package = os.path.dirname(np.__file__)
    patterns = (
        os.path.join(package, os.pardir, "numpy.libs", "*openblas*"),  # Linux, Windows
        os.path.join(package, ".dylibs", "*openblas*"),  # macOS
    )
    return sorted({path for pattern in patterns for path in glob.glob(pattern)})


@functools.cache
def numpy_gemm_addresses() -> tuple[int, int]:
    """Addresses of NumPy's BLAS ``cblas_sgemm`` / ``cblas_dgemm`` (64-bit integer sizes).

    ``(0, 0)`` when they cannot be found.
    """
    for path in numpy_blas_libraries():
        try:
            library = ctypes.CDLL(path)  # already loaded by NumPy: the same copy
        except OSError:
            continue
        for names in ILP64_CBLAS_GEMM:
            try:
                functions = [getattr(library, name) for name in names]
            except AttributeError:
                continue
            addresses = [ctypes.cast(function, ctypes.c_void_p).value for function in functions]
            return addresses[0], addresses[1]
    return 0, 0
