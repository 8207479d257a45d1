"""Whole-segment loops in compiled code: each step's product and its kernel, no Python between.

Why: a step of the per-step loop written in Python costs two calls from the interpreter (the
product through ``np.dot`` and the kernel through numba's dispatcher, which unboxes a dozen
arrays), a few microseconds each; at the small shapes that is as much as the step's work.
Here the loop over the steps of a segment is compiled: the product goes straight to BLAS
``sgemm``/``dgemm`` (:func:`product`, through numba's own wrapper ``numba_xxgemm``, the
function its ``np.dot`` calls, which looks SciPy's ``scipy.linalg.cython_blas`` up once),
and the step kernel (:mod:`.kernels`) is called as compiled code.  The engine calls each
loop once per segment (:func:`xlstm._engines.cache.segment_length`).

Layouts are those of :mod:`.kernels` (feature-major blocks stored time-major).  The
loops release the GIL and keep no state: the two directions of a bidirectional layer may
run them in two threads at once.  Results are those of the per-step Python loop they
replace, bit for bit: the same BLAS routine with the same shapes, the same kernels.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .kernels import backward_step, forward_step

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}

# numba's gemm wrapper (numba/_lapack.c): Fortran (column-major) gemm of kind "s" or "d"
# with every size passed by value and the arrays and scalars alpha, beta by address.
_XXGEMM = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(
        types.char, types.char, types.char, types.intp, types.intp, types.intp,
        types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,
        types.voidptr, types.voidptr, types.intp,
    ),
)  # fmt: skip
_NO_TRANSPOSE = 78  # ord("N")

# NumPy's own BLAS, called through its CBLAS entry point by address: the same library and
# thread pool as every other product of the call.  Why not SciPy's BLAS (numba's wrapper):
# a second OpenBLAS has a second thread pool, and the two pools' idle threads spin on the
# two cores against each other (measured: S2 inference 16 ms with both pools at two
# threads, 5.5 ms with NumPy's at one).
_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS = 101, 111


@intrinsic
def _cblas_gemm(typingctx, address, rows, columns, inner, alpha, a, lda, b, ldb, beta, c, ldc):
    """``cblas_?gemm(RowMajor, NoTrans, NoTrans, ...)`` called at ``address`` (an integer).

    Sizes are 64-bit integers, ``alpha``/``beta`` scalars of the arrays' type, ``a``, ``b``,
    ``c`` data addresses (integers).  An intrinsic rather than a typed function pointer so
    that the compiled loops, which take the address as an argument, stay cacheable.
    """
    signature = types.void(
        address, rows, columns, inner, alpha, a, lda, b, ldb, beta, c, ldc
    )  # fmt: skip

    def codegen(context, builder, sig, args):
        (address_, rows_, columns_, inner_, alpha_, a_, lda_, b_, ldb_, beta_, c_, ldc_) = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        pointer = ir.IntType(8).as_pointer()
        scalar = context.get_value_type(sig.args[4])
        function_type = ir.FunctionType(
            ir.VoidType(),
            [
                i32,
                i32,
                i32,
                i64,
                i64,
                i64,
                scalar,
                pointer,
                i64,
                pointer,
                i64,
                scalar,
                pointer,
                i64,
            ],
        )
        function = builder.inttoptr(address_, function_type.as_pointer())
        to_pointer = [builder.inttoptr(value, pointer) for value in (a_, b_, c_)]
        to_i64 = [
            builder.sext(v, i64) if v.type.width < 64 else v
            for v in (rows_, columns_, inner_, lda_, ldb_, ldc_)
        ]
        order, no_trans = ir.Constant(i32, _CBLAS_ROW_MAJOR), ir.Constant(i32, _CBLAS_NO_TRANS)
        builder.call(
            function,
            [
                order, no_trans, no_trans, to_i64[0], to_i64[1], to_i64[2], alpha_,
                to_pointer[0], to_i64[3], to_pointer[1], to_i64[4], beta_, to_pointer[2],
                to_i64[5],
            ],
        )  # fmt: skip
        return context.get_dummy_value()

    return signature, codegen


PRODUCTS, KERNELS = 1, 2
"""Bits of the loops' ``parts``: run the products, run the kernels (``PRODUCTS | KERNELS``:
the computation; one of them alone: the profile of ``python -m xlstm bench --profile``,
whose results are meaningless)."""
ALL = PRODUCTS | KERNELS


@numba.njit(**_JIT)
def product(a, b, out, columns, scalars, gemm):
    """``out[:, :columns] = a @ b[:, :columns]`` for 2-D ``a``, ``b``, ``out`` with unit
    column stride.

    ``a`` ``(R, K)``, ``b`` ``(K, m)``, ``out`` ``(R, m)``; only the first ``columns`` of
    ``b`` are read and of ``out`` written (the running sequences of a variable-length
    batch).  ``scalars`` holds ``(1, 0)`` in the arrays' dtype (gemm's alpha and beta).
    ``gemm``: the address of NumPy's CBLAS gemm of the arrays' type
    (:func:`.blas.numpy_gemm_addresses`), or 0 for SciPy's through numba's wrapper, where
    row-major ``out = a b`` is column-major ``out^T = b^T a^T``: one gemm with no
    transposition, the row strides as leading dimensions.
    """
    rows, inner = a.shape[0], a.shape[1]
    lda, ldb, ldo = (
        a.strides[0] // a.itemsize,
        b.strides[0] // b.itemsize,
        out.strides[0] // out.itemsize,
    )
    if gemm != 0:
        _cblas_gemm(
            gemm, rows, columns, inner, scalars[0], a.ctypes.data, lda, b.ctypes.data, ldb,
            scalars[1], out.ctypes.data, ldo,
        )  # fmt: skip
        return 0
    kind = 115 if out.itemsize == 4 else 100  # "s" or "d"
    status = _XXGEMM(
        kind, _NO_TRANSPOSE, _NO_TRANSPOSE, columns, rows, inner,
        scalars[0:].ctypes, b.ctypes, ldb, a.ctypes, lda, scalars[1:].ctypes, out.ctypes, ldo,
    )  # fmt: skip
    return status


@numba.njit(**_JIT)
def forward_steps(
    weights, rhs, P, G3, P3, HF, H, C2, TC2, running, start, stop, offset, n_a, fused, store,
    parts, gemm,
):  # fmt: skip
    """Steps ``start:stop`` of the forward pass: per step the product, then :func:`forward_step`.

    ``weights`` ``(4 n_a, K)`` and ``rhs`` ``(., K, m)``: the step's product is
    ``weights @ rhs[now]`` into ``P`` ``(4 n_a, m)``; with ``fused`` ``rhs`` is the
    segment's blocks ``[h_{t-1}; x_t; 1]`` (step ``t`` at ``t - start``, ``h_t`` written by
    the kernel into the next block), otherwise two alternating blocks of ``h``, and
    ``G3[t - offset]`` holds the input projection made beforehand.  ``running[t]``: the
    sequences still running at step ``t`` (a prefix of the columns).  The other arguments
    are :func:`~.kernels.forward_step`'s; ``parts``: see :data:`PRODUCTS`; ``gemm``: see
    :func:`product`.  Returns 0, or
    gemm's non-zero status.
    """
    scalars = np.zeros(2, P.dtype)
    scalars[0] = 1
    for t in range(start, stop):
        if fused:
            now, new = t - start, t - start + 1
        else:
            now, new = t % 2, (t + 1) % 2
        columns = running[t]
        if parts & PRODUCTS:
            status = product(weights, rhs[now], P, columns, scalars, gemm)
            if status != 0:
                return status
        if parts & KERNELS:
            gate = t - offset if store or not fused else 0  # fused, not stored: unused
            forward_step(
                G3, P3, HF, H, C2, TC2, t, gate, now, new, n_a, columns, not fused, store
            )  # fmt: skip
    return 0


@numba.njit(**_JIT)
def backward_steps(
    A3, TC2, C2, dZ, dZ3, DA2, DC2, dh, dh1, dc1, recurrent_T, running, start, stop, a_offset,
    n_a, recompute, has_dc, parts, gemm,
):  # fmt: skip
    """Steps ``stop - 1 .. start`` backwards: per step :func:`backward_step`, then the product.

    ``dh`` ``(n_a, m)`` (``dh1`` its flat view) receives ``W_h^T dz_t`` (``recurrent_T``
    is ``W_h^T``, C-contiguous) over the running columns; ``dZ`` ``(span, 4 n_a, m)`` (``dZ3``
    its view by gate block) the step's gate gradients at ``t - start``.  The other
    arguments are :func:`~.kernels.backward_step`'s; ``parts``: see :data:`PRODUCTS`;
    ``gemm``: see :func:`product`.
    Returns 0, or gemm's status.
    """
    scalars = np.zeros(2, dh.dtype)
    scalars[0] = 1
    for t in range(stop - 1, start - 1, -1):
        columns = running[t]
        td = t - start
        if parts & KERNELS:
            backward_step(
                A3, TC2, C2, dZ3, DA2, DC2, dh1, dc1, t, t - a_offset, td, n_a, columns,
                recompute, has_dc,
            )  # fmt: skip
        if parts & PRODUCTS:
            status = product(recurrent_T, dZ[td], dh, columns, scalars, gemm)
            if status != 0:
                return status
    return 0


LOOPS = (product, forward_steps, backward_steps)
"""The compiled loops (compiled by :func:`xlstm._engines.numba.engine.compile_seconds`)."""

__all__ = ["ALL", "KERNELS", "LOOPS", "PRODUCTS", "backward_steps", "forward_steps", "product"]
