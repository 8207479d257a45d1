"""CUDA source of the fused LSTM step kernels, and their lazy, memoized build.

Layout (see :mod:`xlstm._layout`): one step works on ``rows`` batch rows of
``units`` (= n_a) hidden units.  The stacked gate arrays are ``(rows, 4 units)``
with the blocks in ``GATE_ORDER`` = (i, f, o, g): gate block ``k`` of row ``r``
starts at ``r * 4 * units + k * units``.  State arrays are ``(rows, units)``.
Every array a kernel touches is C-contiguous; one thread handles one
``(row, unit)`` element (a grid-stride loop covers the rest).

The source is three layers, kept apart so that tests can compile the very same
strings with ``nvcc`` -- for the device, and for the host to check the
arithmetic without a GPU:

* :data:`PREAMBLE` -- the shared device functions: ``tanh`` for float and
  double, and the sigmoid in its ``tanh`` form, which cannot overflow;
* :data:`ELEMENTS` -- the work on one element, as ``__host__ __device__``
  templates (forward step, backward step, gate recomputation);
* :data:`KERNELS` -- thin ``__global__`` templates looping over the elements.

Equations (z: pre-activations, in GATE_ORDER; derivatives written from the
activations, ``sigma' = s (1 - s)``, ``tanh' = 1 - t^2``)::

    forward   i, f, o = sigma(z_i, z_f, z_o);  g = tanh(z_g)
              c = f c_prev + i g;  tanh_c = tanh(c);  h = o tanh_c
    backward  dh = dh_external + dh_recurrent
              dc = dc_next (+ dc_external) + dh o (1 - tanh_c^2)
              dz_i = dc g i (1 - i);  dz_f = dc c_prev f (1 - f)
              dz_o = dh tanh_c o (1 - o);  dz_g = dc i (1 - g^2);  dc_prev = dc f

Nothing here imports CuPy until :func:`step_kernels` is called.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

THREADS_PER_BLOCK = 256

#: dtype name -> C type of the kernel template argument.
C_TYPES = {"float32": "float", "float64": "double"}

PREAMBLE = r"""
// ---- xlstm preamble: device functions shared by every xlstm kernel ----------
#define XLSTM_FN __host__ __device__ __forceinline__

XLSTM_FN float xlstm_tanh(float v) { return tanhf(v); }
XLSTM_FN double xlstm_tanh(double v) { return tanh(v); }

// sigma(v) = 1 / (1 + exp(-v)) = tanh(v / 2) / 2 + 1 / 2: the tanh form has no
// exp, so it cannot overflow; it saturates to exactly 0 or 1.
template <typename T>
XLSTM_FN T xlstm_sigmoid(T v) { return T(0.5) * xlstm_tanh(T(0.5) * v) + T(0.5); }
"""

ELEMENTS = r"""
// ---- xlstm element functions: one (row, unit) element of one step -----------
// idx = row * units + unit indexes the (rows, units) state arrays; `gate` is the
// offset of the i block of that element in the (rows, 4 units) gate arrays.

// Forward step.  `gates` holds x_t W_x^T on entry and the activated gates on
// exit; `recurrent` is h_{t-1} W_h^T; `bias` is the stacked (4 units) bias.
template <typename T>
XLSTM_FN void xlstm_forward_element(
    long long idx, int units,
    T* gates, const T* __restrict__ recurrent, const T* __restrict__ bias,
    const T* __restrict__ c_prev, T* __restrict__ c_next,
    T* __restrict__ tanh_c, T* __restrict__ h_next)
{
    const long long row = idx / units;
    const int unit = (int)(idx - row * units);
    const long long gate = row * 4 * units + unit;
    const T in_gate = xlstm_sigmoid(gates[gate] + recurrent[gate] + bias[unit]);
    const T forget_gate = xlstm_sigmoid(
        gates[gate + units] + recurrent[gate + units] + bias[unit + units]);
    const T out_gate = xlstm_sigmoid(
        gates[gate + 2 * units] + recurrent[gate + 2 * units] + bias[unit + 2 * units]);
    const T candidate = xlstm_tanh(
        gates[gate + 3 * units] + recurrent[gate + 3 * units] + bias[unit + 3 * units]);
    const T cell = forget_gate * c_prev[idx] + in_gate * candidate;
    const T tanh_cell = xlstm_tanh(cell);
    gates[gate] = in_gate;
    gates[gate + units] = forget_gate;
    gates[gate + 2 * units] = out_gate;
    gates[gate + 3 * units] = candidate;
    c_next[idx] = cell;
    tanh_c[idx] = tanh_cell;
    h_next[idx] = out_gate * tanh_cell;
}

// Backward step.  `dc` holds the gradient reaching c_t from step t + 1 on
// entry and the gradient reaching c_{t-1} on exit (same element, same thread).
// `dz` receives the pre-activation gradients in GATE_ORDER.
template <typename T, bool HasCellGrad>
XLSTM_FN void xlstm_backward_element(
    long long idx, int units,
    const T* __restrict__ dh_external, const T* __restrict__ dh_recurrent,
    const T* __restrict__ dc_external, T* __restrict__ dc,
    const T* __restrict__ gates, const T* __restrict__ c_prev,
    const T* __restrict__ tanh_c, T* __restrict__ dz)
{
    const long long row = idx / units;
    const int unit = (int)(idx - row * units);
    const long long gate = row * 4 * units + unit;
    const T in_gate = gates[gate];
    const T forget_gate = gates[gate + units];
    const T out_gate = gates[gate + 2 * units];
    const T candidate = gates[gate + 3 * units];
    const T tanh_cell = tanh_c[idx];
    const T dh = dh_external[idx] + dh_recurrent[idx];
    T dcell = dc[idx];
    if (HasCellGrad) {
        dcell += dc_external[idx];
    }
    dcell += dh * out_gate * (T(1) - tanh_cell * tanh_cell);
    dz[gate] = dcell * candidate * in_gate * (T(1) - in_gate);
    dz[gate + units] = dcell * c_prev[idx] * forget_gate * (T(1) - forget_gate);
    dz[gate + 2 * units] = dh * tanh_cell * out_gate * (T(1) - out_gate);
    dz[gate + 3 * units] = dcell * in_gate * (T(1) - candidate * candidate);
    dc[idx] = dcell * forget_gate;
}

// Gate recomputation (memory-saving mode): like the forward step, but c_t is
// known, so only the gates and tanh(c_t) are written.
template <typename T>
XLSTM_FN void xlstm_gates_element(
    long long idx, int units,
    T* gates, const T* __restrict__ recurrent, const T* __restrict__ bias,
    const T* __restrict__ c, T* __restrict__ tanh_c)
{
    const long long row = idx / units;
    const int unit = (int)(idx - row * units);
    const long long gate = row * 4 * units + unit;
    gates[gate] = xlstm_sigmoid(gates[gate] + recurrent[gate] + bias[unit]);
    gates[gate + units] = xlstm_sigmoid(
        gates[gate + units] + recurrent[gate + units] + bias[unit + units]);
    gates[gate + 2 * units] = xlstm_sigmoid(
        gates[gate + 2 * units] + recurrent[gate + 2 * units] + bias[unit + 2 * units]);
    gates[gate + 3 * units] = xlstm_tanh(
        gates[gate + 3 * units] + recurrent[gate + 3 * units] + bias[unit + 3 * units]);
    tanh_c[idx] = xlstm_tanh(c[idx]);
}
"""

KERNELS = r"""
// ---- xlstm kernels: grid-stride loops over total = rows * units elements ----
#define XLSTM_FOR_EACH_ELEMENT(idx, total)                                       \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;      \
         idx < (total); idx += (long long)blockDim.x * gridDim.x)

template <typename T>
__global__ void xlstm_lstm_forward_step(
    T* gates, const T* __restrict__ recurrent, const T* __restrict__ bias,
    const T* __restrict__ c_prev, T* __restrict__ c_next,
    T* __restrict__ tanh_c, T* __restrict__ h_next,
    long long total, int units)
{
    XLSTM_FOR_EACH_ELEMENT(idx, total) {
        xlstm_forward_element<T>(
            idx, units, gates, recurrent, bias, c_prev, c_next, tanh_c, h_next);
    }
}

template <typename T, bool HasCellGrad>
__global__ void xlstm_lstm_backward_step(
    const T* __restrict__ dh_external, const T* __restrict__ dh_recurrent,
    const T* __restrict__ dc_external, T* __restrict__ dc,
    const T* __restrict__ gates, const T* __restrict__ c_prev,
    const T* __restrict__ tanh_c, T* __restrict__ dz,
    long long total, int units)
{
    XLSTM_FOR_EACH_ELEMENT(idx, total) {
        xlstm_backward_element<T, HasCellGrad>(
            idx, units, dh_external, dh_recurrent, dc_external, dc,
            gates, c_prev, tanh_c, dz);
    }
}

template <typename T>
__global__ void xlstm_lstm_gates(
    T* gates, const T* __restrict__ recurrent, const T* __restrict__ bias,
    const T* __restrict__ c, T* __restrict__ tanh_c,
    long long total, int units)
{
    XLSTM_FOR_EACH_ELEMENT(idx, total) {
        xlstm_gates_element<T>(idx, units, gates, recurrent, bias, c, tanh_c);
    }
}
"""

SOURCE = PREAMBLE + ELEMENTS + KERNELS
"""The whole translation unit handed to NVRTC (through ``cupy.RawModule``)."""


def kernel_names(c_type: str) -> dict[str, str]:
    """Template instantiations (NVRTC name expressions) for one C type."""
    return {
        "forward": f"xlstm_lstm_forward_step<{c_type}>",
        "backward": f"xlstm_lstm_backward_step<{c_type}, false>",
        "backward_dc": f"xlstm_lstm_backward_step<{c_type}, true>",
        "gates": f"xlstm_lstm_gates<{c_type}>",
    }


NAME_EXPRESSIONS = tuple(
    name for c_type in C_TYPES.values() for name in kernel_names(c_type).values()
)


def import_cupy() -> Any:
    """``import cupy``, or an ImportError that says what the fast path needs."""
    try:
        import cupy
    except ImportError as error:
        msg = (
            "xlstm's CuPy fast path needs CuPy and a CUDA GPU: install the `cuda13` "
            "or `cuda12` extra (pip install 'xlstm-arrayapi[cuda13]'), or pass "
            "fused=False for the generic path"
        )
        raise ImportError(msg) from error
    return cupy


@functools.cache
def _module() -> Any:
    """The one ``RawModule`` holding every kernel (CuPy compiles it lazily, per device)."""
    cupy = import_cupy()
    return cupy.RawModule(code=SOURCE, name_expressions=NAME_EXPRESSIONS)


def _blocks(total: int) -> int:
    return max(1, -(-total // THREADS_PER_BLOCK))


class StepKernels:
    """The fused kernels for one dtype on one device, with array-level launchers.

    Shapes: ``gates``, ``recurrent``, ``dz`` are ``(rows, 4 units)``; ``bias``
    is ``(4 units,)``; every other array is ``(rows, units)``.  All must be
    C-contiguous: the kernels take raw pointers.  The engine guarantees it by
    construction (every array is a leading-axis slice of a contiguous buffer;
    the CPU tests assert it), so launches skip a per-array check, which would
    cost as much host time as the launch itself.  Launches go to CuPy's
    current stream.
    """

    def __init__(self, module: Any, dtype_name: str):
        names = kernel_names(C_TYPES[dtype_name])
        self.dtype_name = dtype_name
        self._functions = {key: module.get_function(name) for key, name in names.items()}

    def _launch(self, key: str, total: int, units: int, arrays: tuple) -> None:
        self._functions[key](
            (_blocks(total),),
            (THREADS_PER_BLOCK,),
            (*arrays, np.int64(total), np.int32(units)),
        )

    def forward_step(self, gates, recurrent, bias, c_prev, c_next, tanh_c, h_next) -> None:
        """Activate ``gates`` in place and write ``c_next``, ``tanh_c``, ``h_next``."""
        arrays = (gates, recurrent, bias, c_prev, c_next, tanh_c, h_next)
        rows, units = c_next.shape
        self._launch("forward", rows * units, units, arrays)

    def backward_step(
        self, dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz
    ) -> None:
        """Write ``dz`` and replace ``dc`` (from step t + 1) by the gradient for c_{t-1}.

        ``dc_external`` may be ``None`` (no gradient reaches c_t from outside).
        """
        key = "backward" if dc_external is None else "backward_dc"
        if dc_external is None:
            dc_external = dc  # never read by the HasCellGrad = false instantiation
        arrays = (dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz)
        rows, units = dc.shape
        self._launch(key, rows * units, units, arrays)

    def gates(self, gates, recurrent, bias, c, tanh_c) -> None:
        """Activate ``gates`` in place (parts summed here); write ``tanh_c = tanh(c)``."""
        arrays = (gates, recurrent, bias, c, tanh_c)
        rows, units = c.shape
        self._launch("gates", rows * units, units, arrays)


@functools.cache
def step_kernels(dtype_name: str, device_id: int) -> StepKernels:
    """The kernels for ``dtype_name`` on device ``device_id``: built once, then memoized.

    Call with that device current.  The first call compiles the module (NVRTC;
    CuPy keeps the binary in its on-disk kernel cache).
    """
    if dtype_name not in C_TYPES:
        msg = f"fused LSTM kernels exist for {sorted(C_TYPES)}, not {dtype_name}"
        raise TypeError(msg)
    return StepKernels(_module(), dtype_name)
