"""CUDA source of the fused LSTM step kernels, and their lazy, memoized build.

Layout (see :mod:`xlstm._layout`): one step works on ``rows`` batch rows of
``units`` (= n_a) hidden units.  The stacked gate arrays are ``(rows, 4 units)``
with the blocks in ``GATE_ORDER`` = (i, f, o, g): gate block ``k`` of row ``r``
starts at ``r * 4 * units + k * units``.  State arrays are ``(rows, units)``.
Every array a kernel touches is C-contiguous; one thread handles one
``(row, unit)`` element (a grid-stride loop covers the rest).

Variable-length batches: the rows are stored sorted by decreasing length, so the
sequences still running at a step are the first ``active`` elements (``active =
running rows * units``).  Elements past ``active`` belong to finished sequences:
forward carries their states unchanged and stores zeros as their gates and
``tanh(c)``; backward writes ``dz = 0`` for them and leaves their ``dc`` alone (the
gradient passes straight through).  Without lengths ``active`` is every element.

Types: every template takes a *storage* type ``S`` (what the arrays hold) and an
*arithmetic* type ``A`` (what the element math runs in): ``(float, float)``,
``(double, double)`` and ``(__half, float)`` -- float16 arrays, float32 math, one
rounding when a result is stored.  ``xlstm_load`` / ``xlstm_store`` convert.

The source is three layers, kept apart so that tests can compile the very same
strings with ``nvcc`` -- for the device, and for the host to check the
arithmetic without a GPU:

* :data:`PREAMBLE` -- the shared device functions: ``tanh`` for float and
  double, the sigmoid in its ``tanh`` form, which cannot overflow, and the
  identity conversions of float and double (plus :data:`STORAGE`, the
  conversions of a half-precision storage type and its header);
* :data:`ELEMENTS` -- the work on one element, as ``__host__ __device__``
  templates (forward step or carry, backward step or skip, gate recomputation);
* :data:`KERNELS` -- thin ``__global__`` templates looping over the elements.

Equations (z: pre-activations, in GATE_ORDER; derivatives written from the
activations, ``sigma' = s (1 - s)``, ``tanh' = 1 - t^2``)::

    forward   i, f, o = sigma(z_i, z_f, z_o);  g = tanh(z_g)
              c = f c_prev + i g;  tanh_c = tanh(c);  h = o tanh_c
    backward  dh = dh_external + dh_recurrent
              dc = dc_next (+ dc_external) + dh o (1 - tanh_c^2)
              dz_i = dc g i (1 - i);  dz_f = dc c_prev f (1 - f)
              dz_o = dh tanh_c o (1 - o);  dz_g = dc i (1 - g^2);  dc_prev = dc f

No kernel reduces across threads (each element is written by one thread, no
atomics), so the kernels are deterministic; the reductions (``dW``, ``db``) are
cuBLAS products in the engine.

Nothing here imports CuPy until :func:`step_kernels` is called.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

THREADS_PER_BLOCK = 256

KERNEL_TYPES: dict[str, tuple[str, str]] = {
    "float32": ("float", "float"),
    "float64": ("double", "double"),
    "float16": ("__half", "float"),
}
"""dtype name -> (storage C type, arithmetic C type) of the kernel instantiations."""

UNSUPPORTED_DTYPES = {
    "bfloat16": (
        "CuPy has no bfloat16 dtype of its own (only an experimental one through "
        "ml_dtypes), so the kernels are not instantiated for it; the templates take "
        "__nv_bfloat16 storage unchanged once it has one"
    ),
}
"""Floating dtypes the kernels leave out on purpose, and why."""

PREAMBLE = r"""
// ---- xlstm preamble: device functions shared by every xlstm kernel ----------
#define XLSTM_FN __host__ __device__ __forceinline__

XLSTM_FN float xlstm_tanh(float v) { return tanhf(v); }
XLSTM_FN double xlstm_tanh(double v) { return tanh(v); }

// sigma(v) = 1 / (1 + exp(-v)) = tanh(v / 2) / 2 + 1 / 2: the tanh form has no
// exp, so it cannot overflow; it saturates to exactly 0 or 1.
template <typename A>
XLSTM_FN A xlstm_sigmoid(A v) { return A(0.5) * xlstm_tanh(A(0.5) * v) + A(0.5); }

// Storage <-> arithmetic.  float and double are computed in themselves.  Each
// half-precision storage type adds its pair below (STORAGE), declared before the
// templates: overloads on built-in types are not found by argument lookup.
XLSTM_FN float xlstm_load(float v) { return v; }
XLSTM_FN double xlstm_load(double v) { return v; }
XLSTM_FN void xlstm_store(float* p, float v) { *p = v; }
XLSTM_FN void xlstm_store(double* p, double v) { *p = v; }
"""

STORAGE = {
    "__half": r"""
// ---- xlstm float16 storage: __half arrays, float math, rounded to nearest ---
#include <cuda_fp16.h>
XLSTM_FN float xlstm_load(__half v) { return __half2float(v); }
XLSTM_FN void xlstm_store(__half* p, float v) { *p = __float2half_rn(v); }
""",
    "__nv_bfloat16": r"""
// ---- xlstm bfloat16 storage: __nv_bfloat16 arrays, float math ---------------
#include <cuda_bf16.h>
XLSTM_FN float xlstm_load(__nv_bfloat16 v) { return __bfloat162float(v); }
XLSTM_FN void xlstm_store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
""",
}
"""Half-precision storage types: their header and conversions (inserted after the preamble).

Kept out of the float/double module on purpose: if a machine's NVRTC cannot find or
compile ``cuda_fp16.h``, only float16 calls fail; float32 and float64 build without it.
"""

ELEMENTS = r"""
// ---- xlstm element functions: one (row, unit) element of one step -----------
// idx = row * units + unit indexes the (rows, units) state arrays; `gate` is the
// offset of the i block of that element in the (rows, 4 units) gate arrays.
// S: storage type, A: arithmetic type (see the module docstring).

// z of gate block k: input projection + recurrent product + bias, summed in A.
template <typename S, typename A>
XLSTM_FN A xlstm_preactivation(
    const S* gates, const S* __restrict__ recurrent, const S* __restrict__ bias,
    long long gate, int unit, int units, int k)
{
    const long long at = gate + (long long)k * units;
    return A(xlstm_load(gates[at])) + A(xlstm_load(recurrent[at]))
        + A(xlstm_load(bias[unit + k * units]));
}

// Forward step.  `gates` holds x_t W_x^T on entry and the activated gates on
// exit; `recurrent` is h_{t-1} W_h^T; `bias` is the stacked (4 units) bias.
template <typename S, typename A>
XLSTM_FN void xlstm_forward_element(
    long long idx, int units,
    S* gates, const S* __restrict__ recurrent, const S* __restrict__ bias,
    const S* __restrict__ c_prev, S* __restrict__ c_next,
    S* __restrict__ tanh_c, S* __restrict__ h_next)
{
    const long long row = idx / units;
    const int unit = (int)(idx - row * units);
    const long long gate = row * 4 * units + unit;
    const A in_gate = xlstm_sigmoid(
        xlstm_preactivation<S, A>(gates, recurrent, bias, gate, unit, units, 0));
    const A forget_gate = xlstm_sigmoid(
        xlstm_preactivation<S, A>(gates, recurrent, bias, gate, unit, units, 1));
    const A out_gate = xlstm_sigmoid(
        xlstm_preactivation<S, A>(gates, recurrent, bias, gate, unit, units, 2));
    const A candidate = xlstm_tanh(
        xlstm_preactivation<S, A>(gates, recurrent, bias, gate, unit, units, 3));
    const A cell = forget_gate * A(xlstm_load(c_prev[idx])) + in_gate * candidate;
    const A tanh_cell = xlstm_tanh(cell);
    xlstm_store(&gates[gate], in_gate);
    xlstm_store(&gates[gate + units], forget_gate);
    xlstm_store(&gates[gate + 2 * units], out_gate);
    xlstm_store(&gates[gate + 3 * units], candidate);
    xlstm_store(&c_next[idx], cell);
    xlstm_store(&tanh_c[idx], tanh_cell);
    xlstm_store(&h_next[idx], out_gate * tanh_cell);
}

// Forward step of a finished sequence: the identity.  The states are copied as
// stored (bit for bit); zeros are stored as its gates and tanh(c).
template <typename S, typename A>
XLSTM_FN void xlstm_carry_element(
    long long idx, int units,
    S* gates, const S* __restrict__ c_prev, S* __restrict__ c_next,
    S* __restrict__ tanh_c, const S* __restrict__ h_prev, S* __restrict__ h_next)
{
    const long long row = idx / units;
    const int unit = (int)(idx - row * units);
    const long long gate = row * 4 * units + unit;
    for (int k = 0; k < 4; ++k) {
        xlstm_store(&gates[gate + (long long)k * units], A(0));
    }
    xlstm_store(&tanh_c[idx], A(0));
    c_next[idx] = c_prev[idx];
    h_next[idx] = h_prev[idx];
}

// Backward step.  `dc` holds the gradient reaching c_t from step t + 1 on
// entry and the gradient reaching c_{t-1} on exit (same element, same thread).
// `dz` receives the pre-activation gradients in GATE_ORDER.
template <typename S, typename A, bool HasCellGrad>
XLSTM_FN void xlstm_backward_element(
    long long idx, int units,
    const S* __restrict__ dh_external, const S* __restrict__ dh_recurrent,
    const S* __restrict__ dc_external, S* __restrict__ dc,
    const S* __restrict__ gates, const S* __restrict__ c_prev,
    const S* __restrict__ tanh_c, S* __restrict__ dz)
{
    const long long row = idx / units;
    const int unit = (int)(idx - row * units);
    const long long gate = row * 4 * units + unit;
    const A in_gate = xlstm_load(gates[gate]);
    const A forget_gate = xlstm_load(gates[gate + units]);
    const A out_gate = xlstm_load(gates[gate + 2 * units]);
    const A candidate = xlstm_load(gates[gate + 3 * units]);
    const A tanh_cell = xlstm_load(tanh_c[idx]);
    const A dh = A(xlstm_load(dh_external[idx])) + A(xlstm_load(dh_recurrent[idx]));
    A dcell = xlstm_load(dc[idx]);
    if (HasCellGrad) {
        dcell += A(xlstm_load(dc_external[idx]));
    }
    dcell += dh * out_gate * (A(1) - tanh_cell * tanh_cell);
    xlstm_store(&dz[gate], dcell * candidate * in_gate * (A(1) - in_gate));
    xlstm_store(&dz[gate + units],
                dcell * A(xlstm_load(c_prev[idx])) * forget_gate * (A(1) - forget_gate));
    xlstm_store(&dz[gate + 2 * units], dh * tanh_cell * out_gate * (A(1) - out_gate));
    xlstm_store(&dz[gate + 3 * units], dcell * in_gate * (A(1) - candidate * candidate));
    xlstm_store(&dc[idx], dcell * forget_gate);
}

// Backward step of a finished sequence: no gradient reaches its pre-activations;
// dc (and dh, which the recurrent product leaves alone) pass through unchanged.
template <typename S, typename A>
XLSTM_FN void xlstm_skip_element(long long idx, int units, S* __restrict__ dz)
{
    const long long row = idx / units;
    const int unit = (int)(idx - row * units);
    const long long gate = row * 4 * units + unit;
    for (int k = 0; k < 4; ++k) {
        xlstm_store(&dz[gate + (long long)k * units], A(0));
    }
}

// One element of a step of a variable-length batch: the first `active` elements
// are running sequences, the others finished ones (all active without lengths).
template <typename S, typename A>
XLSTM_FN void xlstm_forward_step_element(
    long long idx, long long active, int units,
    S* gates, const S* __restrict__ recurrent, const S* __restrict__ bias,
    const S* __restrict__ c_prev, S* __restrict__ c_next, S* __restrict__ tanh_c,
    const S* __restrict__ h_prev, S* __restrict__ h_next)
{
    if (idx < active) {
        xlstm_forward_element<S, A>(
            idx, units, gates, recurrent, bias, c_prev, c_next, tanh_c, h_next);
    } else {
        xlstm_carry_element<S, A>(idx, units, gates, c_prev, c_next, tanh_c, h_prev, h_next);
    }
}

template <typename S, typename A, bool HasCellGrad>
XLSTM_FN void xlstm_backward_step_element(
    long long idx, long long active, int units,
    const S* __restrict__ dh_external, const S* __restrict__ dh_recurrent,
    const S* __restrict__ dc_external, S* __restrict__ dc,
    const S* __restrict__ gates, const S* __restrict__ c_prev,
    const S* __restrict__ tanh_c, S* __restrict__ dz)
{
    if (idx < active) {
        xlstm_backward_element<S, A, HasCellGrad>(
            idx, units, dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz);
    } else {
        xlstm_skip_element<S, A>(idx, units, dz);
    }
}

// Gate recomputation (memory-saving mode): like the forward step, but c_t is
// known, so only the gates and tanh(c_t) are written.
template <typename S, typename A>
XLSTM_FN void xlstm_gates_element(
    long long idx, int units,
    S* gates, const S* __restrict__ recurrent, const S* __restrict__ bias,
    const S* __restrict__ c, S* __restrict__ tanh_c)
{
    const long long row = idx / units;
    const int unit = (int)(idx - row * units);
    const long long gate = row * 4 * units + unit;
    const A in_gate = xlstm_sigmoid(
        xlstm_preactivation<S, A>(gates, recurrent, bias, gate, unit, units, 0));
    const A forget_gate = xlstm_sigmoid(
        xlstm_preactivation<S, A>(gates, recurrent, bias, gate, unit, units, 1));
    const A out_gate = xlstm_sigmoid(
        xlstm_preactivation<S, A>(gates, recurrent, bias, gate, unit, units, 2));
    const A candidate = xlstm_tanh(
        xlstm_preactivation<S, A>(gates, recurrent, bias, gate, unit, units, 3));
    xlstm_store(&gates[gate], in_gate);
    xlstm_store(&gates[gate + units], forget_gate);
    xlstm_store(&gates[gate + 2 * units], out_gate);
    xlstm_store(&gates[gate + 3 * units], candidate);
    xlstm_store(&tanh_c[idx], xlstm_tanh(A(xlstm_load(c[idx]))));
}
"""

KERNELS = r"""
// ---- xlstm kernels: grid-stride loops over total = rows * units elements ----
#define XLSTM_FOR_EACH_ELEMENT(idx, total)                                       \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;      \
         idx < (total); idx += (long long)blockDim.x * gridDim.x)

template <typename S, typename A>
__global__ void xlstm_lstm_forward_step(
    S* gates, const S* __restrict__ recurrent, const S* __restrict__ bias,
    const S* __restrict__ c_prev, S* __restrict__ c_next, S* __restrict__ tanh_c,
    const S* __restrict__ h_prev, S* __restrict__ h_next,
    long long total, long long active, int units)
{
    XLSTM_FOR_EACH_ELEMENT(idx, total) {
        xlstm_forward_step_element<S, A>(
            idx, active, units, gates, recurrent, bias, c_prev, c_next, tanh_c, h_prev, h_next);
    }
}

template <typename S, typename A, bool HasCellGrad>
__global__ void xlstm_lstm_backward_step(
    const S* __restrict__ dh_external, const S* __restrict__ dh_recurrent,
    const S* __restrict__ dc_external, S* __restrict__ dc,
    const S* __restrict__ gates, const S* __restrict__ c_prev,
    const S* __restrict__ tanh_c, S* __restrict__ dz,
    long long total, long long active, int units)
{
    XLSTM_FOR_EACH_ELEMENT(idx, total) {
        xlstm_backward_step_element<S, A, HasCellGrad>(
            idx, active, units, dh_external, dh_recurrent, dc_external, dc,
            gates, c_prev, tanh_c, dz);
    }
}

template <typename S, typename A>
__global__ void xlstm_lstm_gates(
    S* gates, const S* __restrict__ recurrent, const S* __restrict__ bias,
    const S* __restrict__ c, S* __restrict__ tanh_c,
    long long total, int units)
{
    XLSTM_FOR_EACH_ELEMENT(idx, total) {
        xlstm_gates_element<S, A>(idx, units, gates, recurrent, bias, c, tanh_c);
    }
}
"""


def kernel_source(storage: str) -> str:
    """The translation unit handed to NVRTC for one storage C type."""
    return PREAMBLE + STORAGE.get(storage, "") + ELEMENTS + KERNELS


SOURCE = kernel_source("float")
"""The float/double translation unit (no half-precision header)."""


def kernel_names(storage: str, arithmetic: str) -> dict[str, str]:
    """Template instantiations (NVRTC name expressions) for one (storage, arithmetic) pair."""
    types = f"{storage}, {arithmetic}"
    return {
        "forward": f"xlstm_lstm_forward_step<{types}>",
        "backward": f"xlstm_lstm_backward_step<{types}, false>",
        "backward_dc": f"xlstm_lstm_backward_step<{types}, true>",
        "gates": f"xlstm_lstm_gates<{types}>",
    }


def module_of(dtype_name: str) -> tuple[str, tuple[str, ...]]:
    """``(source, name expressions)`` of the module holding ``dtype_name``'s kernels.

    float32 and float64 share one module; each half-precision storage type has its own.
    """
    source = kernel_source(KERNEL_TYPES[dtype_name][0])
    names = tuple(
        name
        for other, types in KERNEL_TYPES.items()
        if kernel_source(types[0]) == source
        for name in kernel_names(*types).values()
    )
    return source, names


NAME_EXPRESSIONS = module_of("float32")[1]
"""The instantiations in :data:`SOURCE` (float and double)."""


def dtype_reason(dtype_name: str) -> str | None:
    """Why the kernels do not run ``dtype_name`` (``None``: they do)."""
    if dtype_name in KERNEL_TYPES:
        return None
    supported = ", ".join(KERNEL_TYPES)
    why = UNSUPPORTED_DTYPES.get(dtype_name)
    if why is not None:
        return f"dtype {dtype_name} is not supported by the fused CUDA kernels: {why}"
    return f"dtype {dtype_name} is not supported by the fused CUDA kernels ({supported} are)"


def import_cupy() -> Any:
    """``import cupy``, or an ImportError that says what the fast path needs."""
    try:
        import cupy
    except ImportError as error:
        msg = (
            "xlstm's CuPy fast path needs CuPy and a CUDA GPU: install the `cuda13` "
            "or `cuda12` extra (pip install -e '.[cuda13]' from a clone), or pass "
            "fused=False for the generic path"
        )
        raise ImportError(msg) from error
    return cupy


@functools.cache
def _module(source: str, names: tuple[str, ...]) -> Any:
    """One ``RawModule`` per source (CuPy compiles it lazily, per device)."""
    cupy = import_cupy()
    return cupy.RawModule(code=source, name_expressions=names)


def _blocks(total: int) -> int:
    return max(1, -(-total // THREADS_PER_BLOCK))


class StepKernels:
    """The fused kernels for one dtype on one device, with array-level launchers.

    Shapes: ``gates``, ``recurrent``, ``dz`` are ``(rows, 4 units)``; ``bias``
    is ``(4 units,)``; every other array is ``(rows, units)``.  All must be
    C-contiguous: the kernels take raw pointers.  The engine guarantees it by
    construction (every array is a leading-axis slice of a contiguous buffer;
    the CPU tests assert it), so launches skip a per-array check, which would
    cost as much host time as the launch itself.  ``active_rows``: the first
    rows, those of sequences still running (all rows without lengths).
    Launches go to CuPy's current stream.
    """

    def __init__(self, module: Any, dtype_name: str):
        names = kernel_names(*KERNEL_TYPES[dtype_name])
        self.dtype_name = dtype_name
        self._functions = {key: module.get_function(name) for key, name in names.items()}

    def _launch(self, key: str, total: int, arguments: tuple) -> None:
        self._functions[key]((_blocks(total),), (THREADS_PER_BLOCK,), arguments)

    def forward_step(
        self, gates, recurrent, bias, c_prev, c_next, tanh_c, h_prev, h_next, active_rows
    ) -> None:
        """Activate ``gates`` in place and write ``c_next``, ``tanh_c``, ``h_next``.

        Rows from ``active_rows`` on are carried: ``c_next = c_prev``,
        ``h_next = h_prev``, zeros in ``gates`` and ``tanh_c``.
        """
        rows, units = c_next.shape
        arrays = (gates, recurrent, bias, c_prev, c_next, tanh_c, h_prev, h_next)
        counts = (np.int64(rows * units), np.int64(active_rows * units), np.int32(units))
        self._launch("forward", rows * units, (*arrays, *counts))

    def backward_step(
        self, dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz, active_rows
    ) -> None:
        """Write ``dz`` and replace ``dc`` (from step t + 1) by the gradient for c_{t-1}.

        ``dc_external`` may be ``None`` (no gradient reaches c_t from outside).
        Rows from ``active_rows`` on get ``dz = 0`` and keep their ``dc``.
        """
        key = "backward" if dc_external is None else "backward_dc"
        if dc_external is None:
            dc_external = dc  # never read by the HasCellGrad = false instantiation
        arrays = (dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz)
        rows, units = dc.shape
        counts = (np.int64(rows * units), np.int64(active_rows * units), np.int32(units))
        self._launch(key, rows * units, (*arrays, *counts))

    def gates(self, gates, recurrent, bias, c, tanh_c) -> None:
        """Activate ``gates`` in place (parts summed here); write ``tanh_c = tanh(c)``."""
        rows, units = c.shape
        total = rows * units
        arrays = (gates, recurrent, bias, c, tanh_c)
        self._launch("gates", total, (*arrays, np.int64(total), np.int32(units)))


@functools.cache
def step_kernels(dtype_name: str, device_id: int) -> StepKernels:
    """The kernels for ``dtype_name`` on device ``device_id``: built once, then memoized.

    Call with that device current.  The first call compiles the module (NVRTC;
    CuPy keeps the binary in its on-disk kernel cache).
    """
    reason = dtype_reason(dtype_name)
    if reason is not None:
        raise TypeError(reason)
    return StepKernels(_module(*module_of(dtype_name)), dtype_name)
