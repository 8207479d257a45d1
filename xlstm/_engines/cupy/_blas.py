"""The CuPy engine's matrix products, issued to cuBLAS itself (``cublasGemmEx``).

Why not ``cupy.matmul``: CuPy 14 refuses every cuBLAS call while a stream is
being captured.  Its ``cupy_backends.cuda.libs.cublas.setStream`` raises
``NotImplementedError('calling cuBLAS API during stream capture is currently
unsupported')`` when the stream is capturing, and every one of its low-level
wrappers (``sgemm``, ``dgemm``, ``gemmEx``, ...) first calls ``_setStream(handle)``
with CuPy's current stream, so the guard fires for them too, not only for
``cupy.matmul`` (CuPy v14.2.0, ``cupy_backends/cuda/libs/cublas.pyx``:
``setStream``, ``_setStream``, ``gemmEx``; cupy/cupy#6290).  And ``cupy.matmul``
with a 1 x 1 result takes a reduction path that allocates from the memory pool
(``cupy/_core/_routines_linalg.pyx``, ``tensordot_core``), which a graph must not.

So the engine calls ``cublasGemmEx`` through ``ctypes`` on the very libcublas
CuPy loaded, on a cuBLAS handle of its own (one per thread and device: nothing
else resets its stream or workspace).  Everything that changes the handle's
state -- its stream (CuPy's ``cublas.setStream``, which is only refused *during*
a capture), a workspace of our own (``cublasSetWorkspace``), host pointer mode
-- happens before a capture begins; inside it only ``cublasGemmEx`` runs.  cuBLAS
supports stream capture given a user workspace (cuBLAS documentation, "CUDA
Graphs Support" and ``cublasSetWorkspace``; ``cublasSetStream`` resets the
workspace to cuBLAS's default pool, so the workspace is set after the stream).
Eager and captured runs issue the same call with the same arguments, compute
type and workspace size, so they give the same bits.

Numbers identical to what ``cupy.matmul`` computed before (CuPy 14.2,
``tensordot_core_v11``): ``cublasGemmEx`` with float32 alpha/beta and
``CUBLAS_COMPUTE_32F`` for float16 (float16 storage, float32 accumulation) and
float32 (``CUBLAS_COMPUTE_32F_FAST_TF32`` when CuPy's compute type for float32 is
TF32, i.e. ``CUPY_TF32=1``), double alpha/beta and ``CUBLAS_COMPUTE_64F`` for
float64, ``CUBLAS_GEMM_DEFAULT_TENSOR_OP`` from compute capability 8.0 on (7.0
for float16), beta = 0 (the output is overwritten), and the same choice of
transpose and leading dimension for each operand layout (below).

Row-major to column-major (cuBLAS is column-major).  For ``out = a @ b`` with
``a`` (n, k), ``b`` (k, m), ``out`` (n, m) stored row-major with row stride
``ldc``: the same memory read column-major is ``out^T`` (m x n, leading dimension
``ldc``), and ``out^T = b^T a^T``.  So cuBLAS's ``A`` is ``b``'s memory and its
``B`` is ``a``'s, ``M = m``, ``N = n``, ``K = k``.  An operand stored row-major
(unit stride along its rows, row stride ``s``), read column-major with leading
dimension ``s``, already *is* its transpose: op ``N``, ``ld = s``.  One stored
column-major (``x = w.T`` of a row-major ``w``: unit stride down its columns,
column stride ``s``) reads as itself: op ``T``, ``ld = s``.  Where both layouts
fit (a dimension of 1), ``b`` is taken column-major and ``a`` row-major, as CuPy
does; a leading dimension is never below what cuBLAS requires.

Nothing here imports CuPy: the library (:class:`CublasLibrary`) is handed in, so
the CPU tests run this code against a NumPy model of ``cublasGemmEx``.
"""

from __future__ import annotations

import ctypes
import os
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# cuBLAS / CUDA enumerations (cublas_api.h, library_types.h; the same values as
# CuPy v14.2.0's cupy_backends/cuda/libs/cublas.pxd and api/_runtime_enum.pxd).
OP_N, OP_T = 0, 1
POINTER_MODE_HOST = 0
CUDA_R_32F, CUDA_R_64F, CUDA_R_16F = 0, 1, 2
COMPUTE_32F, COMPUTE_32F_PEDANTIC, COMPUTE_32F_FAST_TF32 = 68, 69, 77
COMPUTE_64F, COMPUTE_64F_PEDANTIC = 70, 71
GEMM_DEFAULT, GEMM_DEFAULT_TENSOR_OP = -1, 99

DATA_TYPES = {"float16": CUDA_R_16F, "float32": CUDA_R_32F, "float64": CUDA_R_64F}
"""dtype name -> cudaDataType of the operands and the result."""

# CuPy's own compute-type setting (cupy/_core/_routines_linalg.pxd, v14.2.0).
CUPY_COMPUTE_TYPE_PEDANTIC, CUPY_COMPUTE_TYPE_TF32 = 2, 7


def compute_type(dtype_name: str, cupy_setting: int) -> int:
    """The cuBLAS compute type ``cupy.matmul`` uses for ``dtype_name`` (CuPy 14.2).

    ``cupy_setting``: CuPy's ``get_compute_type(dtype)`` (TF32 when
    ``CUPY_TF32=1``, pedantic, or default).
    """
    if dtype_name == "float64":
        return COMPUTE_64F_PEDANTIC if cupy_setting == CUPY_COMPUTE_TYPE_PEDANTIC else COMPUTE_64F
    if cupy_setting == CUPY_COMPUTE_TYPE_PEDANTIC:
        return COMPUTE_32F_PEDANTIC
    if cupy_setting == CUPY_COMPUTE_TYPE_TF32 and dtype_name == "float32":
        return COMPUTE_32F_FAST_TF32
    return COMPUTE_32F  # float16 too: float16 storage, float32 accumulation


def algorithm(dtype_name: str, compute_capability: int) -> int:
    """``cublasGemmAlgo_t`` as CuPy 14.2 picks it (``compute_capability``: e.g. 90)."""
    if compute_capability >= 80 or (compute_capability >= 70 and dtype_name == "float16"):
        return GEMM_DEFAULT_TENSOR_OP
    return GEMM_DEFAULT


def workspace_bytes(compute_capability: int) -> int:
    """cuBLAS's recommended user workspace: 32 MiB on Hopper (9.x) and later, else 4 MiB."""
    return (32 if compute_capability >= 90 else 4) * 2**20


# --------------------------------------------------------------------------- the mapping


@dataclass(frozen=True)
class GemmShape:
    """The size and layout arguments of one ``cublasGemmEx`` call.

    cuBLAS's ``A`` is the right-hand operand ``b``, its ``B`` the left-hand ``a``
    (see the module docstring): ``C (m x n) = op(A) (m x k) @ op(B) (k x n)``.
    """

    transa: int
    transb: int
    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldc: int


def _strides(array: Any) -> tuple[int, int, int, int]:
    """``(rows, cols, row stride, column stride)`` in elements; a vector is one row."""
    itemsize = array.dtype.itemsize
    if array.ndim == 1:
        (cols,), (stride,) = array.shape, array.strides
        return 1, int(cols), int(cols) * (stride // itemsize), stride // itemsize
    if array.ndim != 2:
        raise ValueError(f"a matrix product operand must have 1 or 2 dimensions, got {array.ndim}")
    (rows, cols), (s0, s1) = array.shape, array.strides
    for stride in (s0, s1):
        if stride % itemsize:
            raise ValueError(f"stride {stride} is not a multiple of the item size {itemsize}")
    return int(rows), int(cols), s0 // itemsize, s1 // itemsize


def _row_major(rows: int, cols: int, s0: int, s1: int) -> bool:
    """Unit stride along each row, rows at least a row apart (dimensions of 1 fit anything)."""
    return (cols == 1 or s1 == 1) and (rows == 1 or s0 >= cols)


def _column_major(rows: int, cols: int, s0: int, s1: int) -> bool:
    return (rows == 1 or s0 == 1) and (cols == 1 or s1 >= rows)


def _operand(array: Any, name: str, prefer_column_major: bool) -> tuple[int, int]:
    """``(op, ld)`` under which cuBLAS reads ``array``'s memory as ``array^T``."""
    rows, cols, s0, s1 = _strides(array)
    layouts = [
        (_row_major(rows, cols, s0, s1), OP_N, max(s0, cols, 1)),
        (_column_major(rows, cols, s0, s1), OP_T, max(s1, rows, 1)),
    ]
    if prefer_column_major:
        layouts.reverse()
    for fits, op, ld in layouts:
        if fits:
            return op, ld
    msg = (
        f"`{name}` (shape {tuple(array.shape)}, strides {tuple(array.strides)}) has no unit "
        "stride along either dimension; cuBLAS reads only strided matrices"
    )
    raise ValueError(msg)


def gemm_shape(a: Any, b: Any, out: Any) -> GemmShape:
    """The ``cublasGemmEx`` size and layout arguments of ``out = a @ b`` (row-major arrays).

    ``a`` is (n, k) or a vector (k,), ``b`` is (k, m), ``out`` (n, m) or (m,)
    with unit stride along its rows.
    """
    n, k, _, _ = _strides(a)
    kb, m, _, _ = _strides(b)
    rows, cols, c0, c1 = _strides(out)
    if k != kb or (rows, cols) != (n, m):
        msg = f"shapes {tuple(a.shape)} @ {tuple(b.shape)} -> {tuple(out.shape)} do not match"
        raise ValueError(msg)
    if not _row_major(rows, cols, c0, c1):
        raise ValueError(f"`out` (strides {tuple(out.strides)}) must have unit stride along rows")
    transa, lda = _operand(b, "b", prefer_column_major=True)
    transb, ldb = _operand(a, "a", prefer_column_major=False)
    return GemmShape(transa, transb, m, n, k, lda, ldb, max(c0, m, 1))


def _extent(array: Any) -> tuple[int, int]:
    """``[first, last)`` byte offsets spanned by a non-empty array, relative to its start."""
    lo = hi = 0
    for size, stride in zip(array.shape, array.strides, strict=True):
        if stride >= 0:
            hi += (size - 1) * stride
        else:
            lo += (size - 1) * stride
    return lo, hi + array.dtype.itemsize


# --------------------------------------------------------------------------- the library


class CublasLibrary(Protocol):
    """The cuBLAS entry points the engine uses (the CPU tests give a NumPy model)."""

    def create(self) -> int: ...

    def destroy(self, handle: int) -> None: ...

    def set_stream(self, handle: int, stream: int) -> None: ...

    def set_pointer_mode(self, handle: int, mode: int) -> None: ...

    def set_workspace(self, handle: int, pointer: int, size: int) -> None: ...

    def gemm_ex(
        self, handle: int, transa: int, transb: int, m: int, n: int, k: int, alpha: int,
        A: int, a_type: int, lda: int, B: int, b_type: int, ldb: int, beta: int,
        C: int, c_type: int, ldc: int, compute: int, algo: int,
    ) -> None: ...  # fmt: skip


_LIBCUBLAS = re.compile(r"(?:^|/)(libcublas\.so(?:\.\d+)*|cublas64_\d+\.dll)$")


def _loaded_libcublas() -> list[str]:
    """Paths of the libcublas mapped into this process (Linux: ``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    paths = {line.split(None, 5)[-1] for line in lines if len(line.split(None, 5)) == 6}
    return sorted(path for path in paths if _LIBCUBLAS.search(path))


class CupyCublas:
    """cuBLAS through CuPy (handles, stream, pointer mode) and ctypes (workspace, GemmEx).

    Handles, streams and pointer mode use CuPy's own wrappers
    (``cupy_backends.cuda.libs.cublas``: ``create``, ``destroy``, ``setStream``,
    ``setPointerMode``, ``check_status``, ``getVersion``); ``setStream`` is only
    ever called outside a capture.  ``cublasSetWorkspace_v2`` (CuPy 14 has no
    wrapper) and ``cublasGemmEx`` (CuPy's wrapper calls ``setStream``) are called
    through ctypes on the libcublas that CuPy itself loaded, so the handle is valid.
    """

    def __init__(self) -> None:
        from cupy.cuda import device
        from cupy_backends.cuda.libs import cublas

        self._cupy = cublas
        # CuPy's own handle (made on first use): libcublas is loaded, its version known.
        major = cublas.getVersion(device.get_cublas_handle()) // 10000
        loaded = _loaded_libcublas()
        if len(loaded) > 1:  # the handle must go back to the library that made it
            msg = f"several libcublas are loaded ({', '.join(loaded)}); cannot tell CuPy's apart"
            raise ImportError(msg)
        candidates = loaded or [f"libcublas.so.{major}", f"cublas64_{major}.dll"]
        self.path, library = self._open(candidates)
        self._gemm = library.cublasGemmEx
        self._gemm.restype = ctypes.c_int
        pointer, integer = ctypes.c_void_p, ctypes.c_int
        self._gemm.argtypes = [
            pointer, integer, integer, integer, integer, integer, pointer,
            pointer, integer, integer, pointer, integer, integer, pointer,
            pointer, integer, integer, integer, integer,
        ]  # fmt: skip
        self._workspace = library.cublasSetWorkspace_v2
        self._workspace.restype = ctypes.c_int
        self._workspace.argtypes = [pointer, pointer, ctypes.c_size_t]

    @staticmethod
    def _open(candidates: list[str]) -> tuple[str, ctypes.CDLL]:
        errors = []
        for candidate in candidates:
            try:
                return candidate, ctypes.CDLL(candidate)
            except OSError as error:
                errors.append(f"{candidate}: {error}")
        msg = (
            "xlstm's CuPy engine calls cuBLAS directly and could not open the libcublas "
            f"that CuPy uses ({'; '.join(errors)}); pass fused=False for the generic path"
        )
        raise ImportError(msg)

    def create(self) -> int:
        return int(self._cupy.create())

    def destroy(self, handle: int) -> None:
        self._cupy.destroy(handle)

    def set_stream(self, handle: int, stream: int) -> None:
        self._cupy.setStream(handle, stream)

    def set_pointer_mode(self, handle: int, mode: int) -> None:
        self._cupy.setPointerMode(handle, mode)

    def set_workspace(self, handle: int, pointer: int, size: int) -> None:
        self._cupy.check_status(self._workspace(handle, pointer, size))

    def gemm_ex(self, handle, transa, transb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb,
                beta, C, c_type, ldc, compute, algo) -> None:  # fmt: skip
        status = self._gemm(
            handle, transa, transb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta,
            C, c_type, ldc, compute, algo,
        )  # fmt: skip
        self._cupy.check_status(status)


# --------------------------------------------------------------------------- one handle


_SCALARS = {
    # compute type -> (alpha, beta) as host values of the type cuBLAS reads
    COMPUTE_32F: (ctypes.c_float(1.0), ctypes.c_float(0.0)),
    COMPUTE_32F_PEDANTIC: (ctypes.c_float(1.0), ctypes.c_float(0.0)),
    COMPUTE_32F_FAST_TF32: (ctypes.c_float(1.0), ctypes.c_float(0.0)),
    COMPUTE_64F: (ctypes.c_double(1.0), ctypes.c_double(0.0)),
    COMPUTE_64F_PEDANTIC: (ctypes.c_double(1.0), ctypes.c_double(0.0)),
}
_SCALAR_ADDRESSES = {
    compute: (ctypes.addressof(alpha), ctypes.addressof(beta))
    for compute, (alpha, beta) in _SCALARS.items()
}


class Gemm:
    """One cuBLAS handle of the engine's (one per thread and device) and its products.

    Parameters
    ----------
    library : CublasLibrary
        :class:`CupyCublas` on a GPU.
    address : callable
        ``address(array)``: the device address of an array's first element
        (``array.data.ptr`` on CuPy).
    allocate : callable
        ``allocate(nbytes)``: a device buffer (a workspace).
    workspace_size : int
        Bytes of each workspace (:func:`workspace_bytes`).
    compute_types : dict
        dtype name -> cuBLAS compute type (:func:`compute_type`).
    algorithms : dict
        dtype name -> ``cublasGemmAlgo_t`` (:func:`algorithm`).
    """

    def __init__(
        self, library: CublasLibrary, *, address: Callable[[Any], int],
        allocate: Callable[[int], Any], workspace_size: int,
        compute_types: dict[str, int], algorithms: dict[str, int],
    ) -> None:  # fmt: skip
        self.library = library
        self._address = address
        self._compute = compute_types
        self._algorithms = algorithms
        self._allocate = allocate
        self.workspace_bytes = int(workspace_size)
        self.handle = library.create()
        # Destroyed when this object goes (not at exit: CUDA may be torn down first).
        self._finalizer = weakref.finalize(self, library.destroy, self.handle)
        self._finalizer.atexit = False
        library.set_pointer_mode(self.handle, POINTER_MODE_HOST)  # alpha, beta on the host
        self.bound: tuple[int, int] | None = None  # (stream, workspace address)
        self._eager_workspaces: dict[int, Any] = {}

    def new_workspace(self) -> Any:
        """A device buffer of :attr:`workspace_bytes` (a graph plan owns one per plan)."""
        return self._allocate(self.workspace_bytes)

    def bind_eager(self, stream: int) -> None:
        """:meth:`bind` to ``stream`` with this handle's workspace for that stream.

        One workspace per stream: work on two streams may overlap, and must not
        share scratch memory.
        """
        workspace = self._eager_workspaces.get(stream)
        if workspace is None:
            workspace = self._eager_workspaces[stream] = self.new_workspace()
        self.bind(stream, workspace)

    def bind(self, stream: int, workspace: Any) -> None:
        """Issue later products on ``stream`` with ``workspace`` (a device buffer) as scratch.

        Call outside a stream capture: CuPy refuses ``setStream`` inside one.  The
        stream first, since ``cublasSetStream`` resets the workspace.  A no-op if
        already bound so.
        """
        pointer = self._address(workspace)
        if self.bound == (stream, pointer):
            return
        self.bound = None
        self.library.set_stream(self.handle, stream)
        self.library.set_workspace(self.handle, pointer, int(workspace.nbytes))
        self.bound = (stream, pointer)

    def matmul(self, a: Any, b: Any, out: Any) -> None:
        """``out = a @ b`` (overwritten, beta = 0), on the bound stream.

        Shapes: ``a`` (n, k) or (k,), ``b`` (k, m), ``out`` (n, m) or (m,); one
        dtype (float16, float32 or float64); ``out`` does not overlap the operands.
        """
        if self.bound is None:
            raise RuntimeError("Gemm.matmul before Gemm.bind: no stream and workspace bound")
        dtype = out.dtype
        if a.dtype != dtype or b.dtype != dtype or dtype.name not in DATA_TYPES:
            msg = f"matmul of {a.dtype} @ {b.dtype} -> {dtype}: one of {list(DATA_TYPES)} expected"
            raise TypeError(msg)
        shape = gemm_shape(a, b, out)
        if shape.m == 0 or shape.n == 0:
            return
        if shape.k == 0:
            raise ValueError("matmul with an empty inner dimension is not supported")
        pointers = [self._address(array) for array in (b, a, out)]
        spans = []
        for pointer, array in zip(pointers, (b, a, out), strict=True):
            lo, hi = _extent(array)
            spans.append((pointer + lo, pointer + hi))
        if any(lo < spans[2][1] and spans[2][0] < hi for lo, hi in spans[:2]):
            raise ValueError("matmul `out` overlaps an operand")  # cuBLAS: undefined
        compute = self._compute[dtype.name]
        alpha, beta = _SCALAR_ADDRESSES[compute]
        data_type = DATA_TYPES[dtype.name]
        self.library.gemm_ex(
            self.handle, shape.transa, shape.transb, shape.m, shape.n, shape.k, alpha,
            pointers[0], data_type, shape.lda, pointers[1], data_type, shape.ldb, beta,
            pointers[2], data_type, shape.ldc, compute, self._algorithms[dtype.name],
        )  # fmt: skip


def cupy_compute_types() -> dict[str, int]:
    """The compute type ``cupy.matmul`` would use for each dtype, from CuPy's own setting."""
    import cupy

    try:
        from cupy._core import _routines_linalg

        setting = _routines_linalg.get_compute_type
    except (ImportError, AttributeError):  # a CuPy without it: its documented default
        tf32 = int(os.environ.get("CUPY_TF32", "0")) > 0

        def setting(dtype):
            return CUPY_COMPUTE_TYPE_TF32 if tf32 and np.dtype(dtype).char == "f" else 1

    return {name: compute_type(name, int(setting(getattr(cupy, name)))) for name in DATA_TYPES}
