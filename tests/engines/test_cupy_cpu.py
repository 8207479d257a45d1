"""The CuPy fast path, checked on a machine without a GPU.

What runs here, and what it proves:

* the kernel source (:func:`xlstm._engines.cupy._kernels.kernel_source`, exactly as
  NVRTC gets it) compiles with ``nvcc`` for the device -- float/double, float16 and
  the bfloat16 storage the templates also take -- with no spills and no atomic
  instructions (skipped without ``nvcc``);
* the same element functions, compiled by ``nvcc`` for the *host* and called
  through ctypes, compute what the generic engine computes (the kernels'
  arithmetic, checked without a GPU), in float16 within one float16 rounding of
  float64;
* the engine's bookkeeping -- segments, buffers, the order of products and
  kernels, graph capture and replay, copy-in and copy-out, no aliasing between
  calls, no allocation inside a capture, the sorted rows and shrinking batch of
  variable-length calls, final-state gradients, no gates kept when recomputing,
  identical bits run to run and between eager and graph runs -- with the
  engine's own runtime (``_CupyRuntime``) over a NumPy stand-in for CuPy whose
  streams "capture" by recording the operations (with their fixed arrays)
  instead of running them, that records every allocation, and that refuses
  ``cupy.matmul`` and ``setStream`` inside a capture as CuPy 14 does;
* the products (:mod:`xlstm._engines.cupy._blas`): a model of ``cublasGemmEx``
  reads each matrix from raw addresses exactly as cuBLAS would (column-major,
  op, leading dimension; float16 accumulated in float32), so the row-major to
  column-major mapping is checked against NumPy for every operand layout, a
  wrong ``ld`` or op is caught, and the arguments are the ones CuPy's own
  ``cupy.matmul`` passes;
* dispatch (what ``fused="auto"`` picks, the errors for ``fused=True``, the public
  functions and layers through the CuPy engine), the graph-replay switch, and
  that nothing imports CuPy before it is used.

The same checks on a real GPU are in ``tests/engines/test_cupy.py``.

Float16 tolerance against float64 (same float16-representable inputs): the unit
roundoff of float16 is ``u = 2**-11 = 4.9e-4``.  One kernel output is its float32
value rounded once, so it is within ``u |ref|`` plus the float32 arithmetic
before the rounding (``< 1e-5`` at the O(1) magnitudes used) -- the element-math
bound.  Through a whole sequence every stored quantity (gates, states, each
product, accumulated in float32) is rounded once per step and the errors add up
over the few steps of these problems, damped by the forget gates: a few ``u``,
bounded here by ``TOL_FLOAT16 = 8 u = 3.9e-3`` (relative to the largest
magnitude, :func:`_helpers.rel_err`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import SEQ_GRAD_KEYS, random_problem, rel_err

import xlstm
from xlstm._engines import cache as _cache
from xlstm._engines import dispatch
from xlstm._engines import generic as _engine
from xlstm._engines.cupy import _blas, _kernels
from xlstm._engines.cupy import engine as cupy_engine
from xlstm._engines.numpy import engine as numpy_engine
from xlstm._layout import GATE_ORDER, GATE_PARAMETERS
from xlstm.parameters import pack

REPO = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
"""Half the spacing of the numbers near 1: the largest relative error of one rounding."""

TOL_FLOAT16 = 8 * UNIT_ROUNDOFF["float16"]
"""Whole-sequence float16 results against float64 (see the module docstring)."""

TOL = {"float64": 1e-12, "float32": 2e-5, "float16": TOL_FLOAT16}

# dtype name -> (entry-point suffix, storage C type, arithmetic C type): the kernels'
# instantiations plus bfloat16, which the templates take although CuPy has no such dtype.
HOST_TYPES = {
    **{name: (name.replace("float", "f"), *types) for name, types in _kernels.KERNEL_TYPES.items()},
    "bfloat16": ("bf16", "__nv_bfloat16", "float"),
}


# --------------------------------------------------------------------------- nvcc: device code


def _instantiation_unit(storage: str) -> str:
    """The kernel source for ``storage`` plus a host function instantiating every template."""
    source = _kernels.kernel_source(storage)
    pairs = [types[1:] for types in HOST_TYPES.values()]
    names = [
        name
        for pair in pairs
        if _kernels.kernel_source(pair[0]) == source
        for name in _kernels.kernel_names(*pair).values()
    ]
    return source + _instantiate(names)


def _instantiate(names) -> str:
    uses = "\n".join(f"    (void)&{name};" for name in names)
    return f"\nvoid xlstm_instantiate_all()\n{{\n{uses}\n}}\n"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xlstm_cuda")


def _nvcc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NVCC, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


DEVICE_BUILDS = [
    ("sm_90", "float"),
    ("sm_75", "float"),
    ("sm_90", "__half"),
    ("sm_75", "__half"),
    ("sm_90", "__nv_bfloat16"),
]


@needs_nvcc
@pytest.mark.parametrize(("arch", "storage"), DEVICE_BUILDS)
def test_kernel_source_compiles_for_the_device(build_dir, arch, storage):
    name = f"kernels_{arch}_{storage.strip('_')}"
    (build_dir / f"{name}.cu").write_text(_instantiation_unit(storage))
    result = _nvcc(
        f"-arch={arch}", "-Xptxas", "-v", "-c", f"{name}.cu", "-o", f"{name}.o", cwd=build_dir
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    # ptxas reports every kernel: no spills to local memory.
    assert "xlstm_lstm_forward_step" in result.stderr
    for line in result.stderr.splitlines():
        if "spill" in line:
            assert " 0 bytes spill stores, 0 bytes spill loads" in line, line


@needs_nvcc
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_ptx_has_every_instantiation_and_no_atomics(build_dir, dtype):
    """Each module holds what the engine looks up; no kernel reduces with atomics."""
    source, names = _kernels.module_of(dtype)
    (build_dir / f"ptx_{dtype}.cu").write_text(source + _instantiate(names))
    result = _nvcc("-arch=sm_90", "--ptx", f"ptx_{dtype}.cu", "-o", f"{dtype}.ptx", cwd=build_dir)
    assert result.returncode == 0, result.stderr
    ptx = (build_dir / f"{dtype}.ptx").read_text()
    entries = [line for line in ptx.splitlines() if line.startswith(".visible .entry")]
    types = 2 if dtype == "float32" else 1  # float and double share a module
    assert len(entries) == len(names) == 4 * types
    counts = {"forward_step": types, "backward_step": 2 * types, "gates": types}
    for base, count in counts.items():
        assert sum(f"xlstm_lstm_{base}" in line for line in entries) == count, base
    # Deterministic by construction: every element is written by one thread.
    assert not re.findall(r"^\s*(?:@!?%\w+\s+)?(?:atom|red)\.", ptx, flags=re.MULTILINE)


def test_kernel_names_are_namespaced_and_avoid_cupy_reserved_names():
    for dtype in _kernels.KERNEL_TYPES:
        for name in _kernels.module_of(dtype)[1]:
            assert name.startswith("xlstm_")
    # CuPy reserves `i`, `n` and names starting with `_` in kernel parameter lists.
    for signature in re.findall(r"__global__ void \w+\(([^)]*)\)", _kernels.KERNELS):
        for parameter in signature.split(","):
            name = parameter.split()[-1].lstrip("*")
            assert name not in ("i", "n"), name
            assert not name.startswith("_"), name


def _kernel_parameters() -> dict[str, list[tuple[str, str]]]:
    """``__global__`` name -> [(name, kind)], kind "pointer", "long long" or "int"."""
    kernels = {}
    for name, signature in re.findall(r"__global__ void (\w+)\(([^)]*)\)", _kernels.KERNELS):
        parameters = []
        for parameter in signature.split(","):
            words = parameter.replace("*", " * ").split()
            kind = "pointer" if "*" in words else " ".join(words[:-1])
            parameters.append((words[-1], kind))
        kernels[name] = parameters
    return kernels


class _RecordingModule:
    """Stands in for ``cupy.RawModule``: records each launch's arguments."""

    def __init__(self):
        self.launches = []

    def get_function(self, name):
        def launch(grid, block, arguments):
            self.launches.append((name, grid, block, arguments))

        return launch


@pytest.mark.parametrize("dtype", list(_kernels.KERNEL_TYPES))
def test_launchers_pass_the_kernels_arguments_in_order(dtype):
    """StepKernels (the only GPU-side code the fake runtime replaces): arguments, types, grid."""
    module = _RecordingModule()
    kernels = _kernels.StepKernels(module, dtype)
    rows, units = 3, 5
    named = {}

    def array(name, *shape):
        named[name] = np.zeros(shape, dtype)
        return named[name]

    state = ("c_prev", "c_next", "tanh_c", "h_prev", "h_next", "c", "dc", "dc_external")
    for name in (*state, "dh_external", "dh_recurrent"):
        array(name, rows, units)
    for name in ("gates", "recurrent", "dz"):
        array(name, rows, 4 * units)
    array("bias", 4 * units)
    n = named
    kernels.forward_step(
        n["gates"], n["recurrent"], n["bias"], n["c_prev"], n["c_next"], n["tanh_c"],
        n["h_prev"], n["h_next"], 2,
    )  # fmt: skip
    for external in (None, n["dc_external"]):
        kernels.backward_step(
            n["dh_external"], n["dh_recurrent"], external, n["dc"], n["gates"], n["c_prev"],
            n["tanh_c"], n["dz"], 2,
        )  # fmt: skip
    kernels.gates(n["gates"], n["recurrent"], n["bias"], n["c"], n["tanh_c"])
    signatures = _kernel_parameters()
    expected_names = _kernels.kernel_names(*_kernels.KERNEL_TYPES[dtype])
    assert [launch[0] for launch in module.launches] == [
        expected_names[key] for key in ("forward", "backward", "backward_dc", "gates")
    ]
    counts = {"total": rows * units, "active": 2 * units, "units": units}
    for index, (name, grid, block, arguments) in enumerate(module.launches):
        parameters = signatures[name.split("<")[0]]
        assert len(arguments) == len(parameters), name
        for (parameter, kind), argument in zip(parameters, arguments, strict=True):
            if kind == "pointer":
                # Without a cell gradient the launcher passes dc there (never read).
                expected = n["dc"] if index == 1 and parameter == "dc_external" else n[parameter]
                assert argument is expected, (name, parameter)
            else:
                assert argument == counts[parameter], (name, parameter)
                assert argument.dtype == {"long long": np.int64, "int": np.int32}[kind]
        assert block == (_kernels.THREADS_PER_BLOCK,)
        assert grid[0] * block[0] >= rows * units


def test_one_module_per_source_built_once(monkeypatch):
    """float32 and float64 share a RawModule; float16 has its own; each is built once."""
    built = []

    class FakeRawModule:
        def __init__(self, code, name_expressions):
            built.append((code, name_expressions))

        def get_function(self, name):
            return name

    fake_cupy = type(sys)("cupy")
    fake_cupy.RawModule = FakeRawModule
    monkeypatch.setattr(_kernels, "import_cupy", lambda: fake_cupy)
    _kernels._module.cache_clear()
    _kernels.step_kernels.cache_clear()
    try:
        for dtype in (*_kernels.KERNEL_TYPES, "float32"):
            _kernels.step_kernels(dtype, 0)
        assert [names for _, names in built] == [
            _kernels.module_of("float32")[1],
            _kernels.module_of("float16")[1],
        ]
        with pytest.raises(TypeError, match=r"bfloat16 is not supported.*no bfloat16 dtype"):
            _kernels.step_kernels("bfloat16", 0)
    finally:
        _kernels._module.cache_clear()
        _kernels.step_kernels.cache_clear()


def test_float_module_needs_no_half_header():
    """A machine whose NVRTC cannot compile cuda_fp16.h still builds float32/float64."""
    assert "#include" not in _kernels.SOURCE
    assert _kernels.module_of("float64") == _kernels.module_of("float32")
    assert "#include <cuda_fp16.h>" in _kernels.module_of("float16")[0]


# --------------------------------------------------------------------------- nvcc: host code

_HOST_SIGNATURES = {
    "forward": (
        "T* gates, const T* recurrent, const T* bias, const T* c_prev, T* c_next, "
        "T* tanh_c, const T* h_prev, T* h_next, long long total, long long active, int units",
        "xlstm_forward_step_element<T, A>(idx, active, units, gates, recurrent, bias, c_prev, "
        "c_next, tanh_c, h_prev, h_next)",
    ),
    "backward": (
        "const T* dh_external, const T* dh_recurrent, const T* dc_external, T* dc, "
        "const T* gates, const T* c_prev, const T* tanh_c, T* dz, long long total, "
        "long long active, int units",
        "xlstm_backward_step_element<T, A, false>(idx, active, units, dh_external, "
        "dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz)",
    ),
    "backward_dc": (
        "const T* dh_external, const T* dh_recurrent, const T* dc_external, T* dc, "
        "const T* gates, const T* c_prev, const T* tanh_c, T* dz, long long total, "
        "long long active, int units",
        "xlstm_backward_step_element<T, A, true>(idx, active, units, dh_external, "
        "dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz)",
    ),
    "gates": (
        "T* gates, const T* recurrent, const T* bias, const T* c, T* tanh_c, "
        "long long total, int units",
        "xlstm_gates_element<T, A>(idx, units, gates, recurrent, bias, c, tanh_c)",
    ),
}


def _host_unit() -> str:
    """The kernels' own strings (preamble, storage, elements), with C entry points on the host."""
    parts = [_kernels.PREAMBLE, *_kernels.STORAGE.values(), _kernels.ELEMENTS]
    for suffix, storage, arithmetic in HOST_TYPES.values():
        for key, (params, call) in _HOST_SIGNATURES.items():
            params_c = params.replace("T*", f"{storage}*")
            call_c = call.replace("<T, A", f"<{storage}, {arithmetic}")
            parts.append(
                f'extern "C" void xlstm_host_{key}_{suffix}({params_c})\n'
                f"{{\n    for (long long idx = 0; idx < total; ++idx) {{ {call_c}; }}\n}}\n"
            )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def host_library(build_dir):
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    source = build_dir / "host_kernels.cu"
    source.write_text(_host_unit())
    result = _nvcc(
        "-shared", "-Xcompiler", "-fPIC", source.name, "-o", "libxlstm_host.so", cwd=build_dir
    )
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(build_dir / "libxlstm_host.so"))


class HostKernels:
    """The kernels' element functions compiled for the CPU, with StepKernels' interface."""

    def __init__(self, library, dtype_name: str):
        suffix = HOST_TYPES[dtype_name][0]
        self._functions = {
            key: getattr(library, f"xlstm_host_{key}_{suffix}") for key in _HOST_SIGNATURES
        }

    def _call(self, key, arrays, total, units, active=None):
        for array in arrays:
            assert array.flags.c_contiguous
        pointers = [ctypes.c_void_p(array.ctypes.data) for array in arrays]
        counts = [ctypes.c_longlong(total)]
        if active is not None:
            counts.append(ctypes.c_longlong(active))
        self._functions[key](*pointers, *counts, ctypes.c_int(units))

    def forward_step(
        self, gates, recurrent, bias, c_prev, c_next, tanh_c, h_prev, h_next, active_rows
    ):
        rows, units = c_next.shape
        arrays = (gates, recurrent, bias, c_prev, c_next, tanh_c, h_prev, h_next)
        self._call("forward", arrays, rows * units, units, active_rows * units)

    def backward_step(
        self, dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz, active_rows
    ):
        rows, units = dc.shape
        key = "backward" if dc_external is None else "backward_dc"
        external = dc if dc_external is None else dc_external
        arrays = (dh_external, dh_recurrent, external, dc, gates, c_prev, tanh_c, dz)
        self._call(key, arrays, rows * units, units, active_rows * units)

    def gates(self, gates, recurrent, bias, c, tanh_c):
        rows, units = c.shape
        self._call("gates", (gates, recurrent, bias, c, tanh_c), rows * units, units)


class NumpyKernels:
    """The same kernels written with NumPy (reference for the host-compiled ones).

    Like the CUDA templates, half-precision storage is computed in float32 and
    rounded once when stored.
    """

    def __getattribute__(self, name):
        method = object.__getattribute__(self, name)
        if name.startswith("_") or not callable(method):
            return method

        def checked(*arrays):
            for array in arrays:  # the CUDA kernels take raw pointers
                assert not isinstance(array, np.ndarray) or array.flags.c_contiguous, name
            return method(*arrays)

        return checked

    @staticmethod
    def _up(array):
        return array.astype(np.float32) if array.dtype.itemsize == 2 else array

    @classmethod
    def _activate(cls, gates, recurrent, bias):
        z = cls._up(gates) + cls._up(recurrent) + cls._up(bias)
        n_a = z.shape[1] // 4
        z[:, : 3 * n_a] = 0.5 * np.tanh(0.5 * z[:, : 3 * n_a]) + 0.5
        z[:, 3 * n_a :] = np.tanh(z[:, 3 * n_a :])
        return z

    def forward_step(
        self, gates, recurrent, bias, c_prev, c_next, tanh_c, h_prev, h_next, active_rows
    ):
        k = active_rows
        z = self._activate(gates[:k], recurrent[:k], bias)
        i, f, o, g = np.split(z, 4, axis=1)
        cell = f * self._up(c_prev[:k]) + i * g
        tanh_cell = np.tanh(cell)
        gates[:k], c_next[:k], tanh_c[:k], h_next[:k] = z, cell, tanh_cell, o * tanh_cell
        gates[k:], tanh_c[k:] = 0, 0  # finished sequences: carried, no gates
        c_next[k:], h_next[k:] = c_prev[k:], h_prev[k:]

    def backward_step(
        self, dh_external, dh_recurrent, dc_external, dc, gates, c_prev, tanh_c, dz, active_rows
    ):
        k = active_rows
        i, f, o, g = np.split(self._up(gates[:k]), 4, axis=1)
        t = self._up(tanh_c[:k])
        dh = self._up(dh_external[:k]) + self._up(dh_recurrent[:k])
        total = self._up(dc[:k])
        if dc_external is not None:
            total = total + self._up(dc_external[:k])
        total = total + dh * o * (1 - t * t)
        dz[:k] = np.concatenate(
            [
                total * g * i * (1 - i),
                total * self._up(c_prev[:k]) * f * (1 - f),
                dh * t * o * (1 - o),
                total * i * (1 - g * g),
            ],
            axis=1,
        )
        dc[:k] = total * f
        dz[k:] = 0  # finished sequences: dc passes through unchanged

    def gates(self, gates, recurrent, bias, c, tanh_c):
        gates[...] = self._activate(gates, recurrent, bias)
        tanh_c[...] = np.tanh(self._up(c))


# --------------------------------------------------------------------------- a NumPy "CuPy"

CUPY_CAPTURE_GUARD = "calling cuBLAS API during stream capture is currently unsupported"
"""What CuPy 14's ``cupy_backends.cuda.libs.cublas.setStream`` raises on a capturing stream."""


def _root(array):
    while array.base is not None:
        array = array.base
    return array


def _product(a, b, out):
    """``np.matmul``; float16 as cuBLAS does it for CuPy: float32 accumulation, one rounding.

    (NumPy's own float16 matmul rounds every partial sum to float16.)
    """
    if out.dtype == np.float16:
        np.copyto(out, np.matmul(a.astype(np.float32), b.astype(np.float32)), casting="same_kind")
    else:
        np.matmul(a, b, out=out)


class CaptureError(AssertionError):
    """Something was done inside a capture that real stream capture would break on."""


class FakeArray(np.ndarray):
    """The stand-in's device arrays: new data buffers made from them are recorded.

    NumPy calls ``__array_finalize__`` for arrays made from one of these, views
    and new buffers alike; a view's root buffer is already known, a new buffer
    (``copy``, ``astype``, an operator's result) is not.  So those allocations,
    which bypass the namespace's functions, are caught too (a copying ``reshape``
    of a non-contiguous view is not seen: NumPy makes that copy without the hook).
    """

    runtime = None  # the FakeRuntime recording allocations (one test at a time)
    __module__ = "numpy"  # to xlstm's public layer these are NumPy arrays, as the inputs are

    def __array_finalize__(self, obj):
        runtime = FakeArray.runtime
        if runtime is not None:
            runtime.register(_root(self), "ndarray method")


class FakeStream:
    """``cupy.cuda.Stream``: current within ``with``; capture records instead of running."""

    def __init__(self, runtime, ptr):
        self._runtime, self.ptr = runtime, ptr

    def record(self):
        return FakeEvent()

    def wait_event(self, event):
        assert isinstance(event, FakeEvent)

    def begin_capture(self):
        self._runtime.begin_capture(self)

    def end_capture(self):
        return self._runtime.end_capture(self)

    def is_capturing(self):
        return self.ptr in self._runtime.capturing_streams

    def __enter__(self):
        self._runtime.stream_stack.append(self)
        return self

    def __exit__(self, *exc):
        assert self._runtime.stream_stack.pop() is self


class FakeCudaError(RuntimeError):
    """``cupy.cuda.runtime.CUDARuntimeError``."""


class FakeCuda:
    """The part of ``cupy.cuda`` the engine's runtime uses."""

    def __init__(self, runtime):
        self._runtime = runtime
        self.runtime = type(sys)("runtime")
        self.runtime.CUDARuntimeError = FakeCudaError

    def Stream(self, non_blocking=False):  # CuPy's name
        assert non_blocking, "capture needs a non-blocking stream"
        self._runtime.streams += 1
        return FakeStream(self._runtime, self._runtime.streams)

    def get_current_stream(self):
        return self._runtime.stream_stack[-1]


class FakeGraph:
    def __init__(self, runtime, tape):
        self._runtime, self.tape = runtime, tape

    def launch(self, stream):
        assert isinstance(stream, FakeStream)
        self._runtime.replays += 1
        for operation in self.tape:
            operation()


class FakeNamespace:
    """The array functions the engine calls, on NumPy, with stream-capture rules.

    Operations issued to a capturing stream are recorded (with the very arrays
    they were given, as a graph records addresses) instead of run; every
    allocation is recorded; an operation inside a capture may only touch arrays
    allocated before it.  ``matmul`` is CuPy's guard: refused inside a capture.
    """

    def __init__(self, runtime):
        self._runtime = runtime
        self.cuda = FakeCuda(runtime)

    def _run(self, operation, *arrays):
        if not self._runtime.capturing:
            operation()
            return
        for array in arrays:
            if isinstance(array, np.ndarray) and id(_root(array)) not in self._runtime.buffers:
                # A graph records the address: a temporary's memory is reused
                # by later allocations, which a replay would then overwrite.
                raise CaptureError(
                    "a captured operation uses an array the engine did not preallocate"
                )
        self._runtime.tape.append(operation)

    def _new(self, array, what):
        """Register a fresh buffer (poisoned: unwritten output shows) as a device array."""
        self._runtime.register(array, what)
        return array.view(FakeArray)

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        poison = np.nan if dtype.kind == "f" else 0xAB
        return self._new(np.full(shape, poison, dtype=dtype), "empty")

    def ascontiguousarray(self, array):
        if array.flags.c_contiguous:
            root = _root(array)  # the caller's device array, used as it is
            self._runtime.external.setdefault(id(root), root)
            return array
        return self._new(np.ascontiguousarray(array), "ascontiguousarray")

    def asarray(self, array):
        return self._new(np.array(array, copy=True), "asarray")

    def take(self, array, indices, axis):
        assert isinstance(indices, np.ndarray)
        assert indices.dtype.kind == "i"
        return self._new(np.take(array, indices, axis=axis), "take")

    def copyto(self, dst, src):
        self._run(lambda: np.copyto(dst, src), dst, src)

    def add(self, a, b, out):
        self._run(lambda: np.add(a, b, out=out), a, b, out)

    def matmul(self, a, b, out):
        if self._runtime.capturing:
            # cupy.matmul -> tensordot_core -> cublas.gemmEx -> _setStream ->
            # setStream, which refuses a capturing stream (CuPy 14.2).
            raise NotImplementedError(CUPY_CAPTURE_GUARD)
        _product(a, b, out)


class FakeCublasError(RuntimeError):
    """``cupy_backends.cuda.libs.cublas.CUBLASError``."""


class NumpyCublas:
    """cuBLAS as the engine calls it, computed with NumPy from raw addresses.

    Each matrix is read from memory exactly as cuBLAS would read it: column-major,
    ``rows x cols`` from the pointer with leading dimension ``ld``, after its
    ``op`` -- so a wrong pointer, ``ld``, op or data type gives a wrong product,
    and reading past the allocation that holds the pointer is an error (as is an
    argument cuBLAS itself rejects).  The handle's state is modelled too: its
    stream (``set_stream`` is CuPy's, which refuses a capturing stream and, as
    ``cublasSetStream`` does, resets the workspace), its workspace and its pointer
    mode; a product on a capturing stream is recorded, not run, and reads its
    operands' memory when replayed.
    """

    def __init__(self, runtime):
        self._runtime = runtime
        self.handles: dict[int, dict] = {}
        self.calls: list[tuple] = []  # every gemm_ex call's arguments

    def create(self):
        handle = 1000 + len(self.handles)
        self.handles[handle] = {"stream": 0, "workspace": None, "pointer_mode": 0}
        return handle

    def destroy(self, handle):
        self.handles.pop(handle)

    def set_stream(self, handle, stream):
        if stream in self._runtime.capturing_streams:
            raise NotImplementedError(CUPY_CAPTURE_GUARD)
        self.handles[handle].update(stream=stream, workspace=None)

    def set_pointer_mode(self, handle, mode):
        self.handles[handle]["pointer_mode"] = mode

    def set_workspace(self, handle, pointer, size):
        if self._runtime.capturing_streams:
            raise CaptureError("cuBLAS workspace changed during a capture")
        self._runtime.buffer_at(pointer, size, np.uint8)
        self.handles[handle]["workspace"] = (pointer, size)

    def _matrix(self, pointer, data_type, rows, cols, ld):
        """The column-major ``rows x cols`` matrix cuBLAS reads at ``pointer``."""
        dtype = {_blas.CUDA_R_16F: np.float16, _blas.CUDA_R_32F: np.float32}.get(
            data_type, np.float64
        )
        itemsize = np.dtype(dtype).itemsize
        flat, start = self._runtime.buffer_at(pointer, ((cols - 1) * ld + rows) * itemsize, dtype)
        return np.lib.stride_tricks.as_strided(
            flat[start:], shape=(rows, cols), strides=(itemsize, ld * itemsize)
        )

    def gemm_ex(self, handle, transa, transb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb,
                beta, C, c_type, ldc, compute, algo):  # fmt: skip
        self.calls.append((transa, transb, m, n, k, lda, ldb, ldc, compute, algo))
        state = self.handles[handle]
        if min(m, n, k) < 0 or transa not in (0, 1) or transb not in (0, 1):
            raise FakeCublasError("CUBLAS_STATUS_INVALID_VALUE")
        if lda < max(1, m if transa == _blas.OP_N else k):
            raise FakeCublasError("CUBLAS_STATUS_INVALID_VALUE (lda)")
        if ldb < max(1, k if transb == _blas.OP_N else n) or ldc < max(1, m):
            raise FakeCublasError("CUBLAS_STATUS_INVALID_VALUE (ldb, ldc)")
        supported = {
            _blas.CUDA_R_16F: {_blas.COMPUTE_32F, _blas.COMPUTE_32F_PEDANTIC},
            _blas.CUDA_R_32F: {
                _blas.COMPUTE_32F,
                _blas.COMPUTE_32F_PEDANTIC,
                _blas.COMPUTE_32F_FAST_TF32,
            },
            _blas.CUDA_R_64F: {_blas.COMPUTE_64F, _blas.COMPUTE_64F_PEDANTIC},
        }
        if not (a_type == b_type == c_type) or compute not in supported.get(c_type, ()):
            raise FakeCublasError("CUBLAS_STATUS_NOT_SUPPORTED")
        assert state["pointer_mode"] == _blas.POINTER_MODE_HOST
        scalar = (
            ctypes.c_double
            if compute in (_blas.COMPUTE_64F, _blas.COMPUTE_64F_PEDANTIC)
            else ctypes.c_float
        )
        alpha, beta = scalar.from_address(alpha).value, scalar.from_address(beta).value
        a_rows, a_cols = (m, k) if transa == _blas.OP_N else (k, m)
        b_rows, b_cols = (k, n) if transb == _blas.OP_N else (n, k)
        a = self._matrix(A, a_type, a_rows, a_cols, lda)
        b = self._matrix(B, b_type, b_rows, b_cols, ldb)
        c = self._matrix(C, c_type, m, n, ldc)
        if np.shares_memory(c, a) or np.shares_memory(c, b):
            raise CaptureError("cuBLAS output overlaps an input (undefined)")
        self._runtime.products.append(((n, k), (k, m)))  # row-major: out (n, m) = a @ b

        def run():
            op_a = a if transa == _blas.OP_N else a.T
            op_b = b if transb == _blas.OP_N else b.T
            wide = np.float64 if c.dtype == np.float64 else np.float32
            product = alpha * np.matmul(op_a.astype(wide), op_b.astype(wide))
            if beta != 0:  # beta = 0: C is not read (it may hold NaN)
                product = product + beta * c
            c[...] = product  # one rounding to the storage type

        stream = state["stream"]
        if stream in self._runtime.capturing_streams:
            if state["workspace"] is None:
                raise CaptureError("cuBLAS without a user workspace allocates inside the capture")
            self._runtime.tape.append(run)
        elif stream != self._runtime.xp.cuda.get_current_stream().ptr:
            raise CaptureError(f"product issued on stream {stream}, not the current stream")
        else:
            run()


class TapeKernels:
    """Kernels that are recorded, not run, during a capture."""

    def __init__(self, base, runtime):
        self._base, self._runtime = base, runtime

    def __getattr__(self, name):
        method = getattr(self._base, name)

        def launch(*arrays):
            self._runtime.launches.append(name)
            self._runtime.fake._run(lambda: method(*arrays), *arrays)

        return launch


class FakeEvent:
    def synchronize(self):
        return None


class FakeRuntime(cupy_engine._CupyRuntime):
    """The engine's own CuPy runtime on NumPy: ``xp`` and cuBLAS are the stand-ins above.

    Everything else -- capture and replay, binding cuBLAS to a stream and a
    workspace, one handle per thread -- is the engine's code as it runs on a GPU.
    """

    def __init__(self, kernel_factory):
        self.kernel_factory = kernel_factory
        self.capturing_streams: set[int] = set()
        self.stream_stack = [None]
        self.streams = 0  # ptr 0: the legacy default stream
        self.tape: list = []
        self.captures = 0
        self.replays = 0
        self.buffers: dict = {}  # id -> every allocation (a graph may only touch these)
        self.external: dict = {}  # id -> the caller's arrays an eager product may read
        self.allocations: list[tuple[str, int, bool]] = []  # (what, bytes, inside a capture)
        self.launches: list[str] = []
        self.products: list[tuple] = []  # (shape of a, shape of b) of every product
        self.fail_capture = False
        self.cublas = NumpyCublas(self)
        super().__init__(xp=FakeNamespace(self), library=lambda: self.cublas)
        self.fake = self.xp
        self.stream_stack = [FakeStream(self, 0)]

    @property
    def capturing(self):
        return self.stream_stack[-1].ptr in self.capturing_streams

    def register(self, root, what):
        if id(root) in self.buffers:
            return
        self.buffers[id(root)] = root
        self.allocations.append((what, root.nbytes, bool(self.capturing_streams)))

    def buffer_at(self, pointer, nbytes, dtype):
        """``(flat view, element offset)`` of the allocation holding ``pointer + [0, nbytes)``."""
        known = [*self.buffers.values()]
        if not self.capturing_streams:
            known += self.external.values()
        for root in known:
            start = root.ctypes.data
            if start <= pointer and pointer + nbytes <= start + root.nbytes:
                if root.dtype != dtype:
                    raise CaptureError(f"reads {np.dtype(dtype)} from a {root.dtype} buffer")
                offset = pointer - start
                assert offset % root.itemsize == 0
                return root.reshape(-1), offset // root.itemsize
        raise CaptureError(f"reads {nbytes} bytes at {pointer:#x}: outside every allocation")

    def begin_capture(self, stream):
        if stream.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if self.fail_capture:
            raise FakeCudaError("operation not permitted when stream is capturing")
        assert not self.capturing_streams
        self.capturing_streams.add(stream.ptr)
        self.tape = []
        self.capture_start = len(self.allocations)

    def end_capture(self, stream):
        self.capturing_streams.discard(stream.ptr)
        inside = self.allocations[self.capture_start :]
        if inside:
            raise CaptureError(f"allocated during a capture: {inside}")
        self.captures += 1
        return FakeGraph(self, tuple(self.tape))

    # Device services the stand-in answers itself.
    def kernels(self, dtype, device_id):
        return TapeKernels(self.kernel_factory(np.dtype(dtype).name), self)

    def device(self, array):
        return contextlib.nullcontext()

    def device_id(self, array):
        return 0

    def compute_capability(self, device_id):
        return 90

    def compute_types(self):
        return {name: _blas.compute_type(name, 1) for name in _blas.DATA_TYPES}

    @staticmethod
    def address(array):
        return array.ctypes.data


@pytest.fixture(params=["numpy-kernels", "host-compiled-kernels"])
def kernel_factory(request):
    if request.param == "numpy-kernels":
        return lambda dtype_name: NumpyKernels()
    library = request.getfixturevalue("host_library")
    return lambda dtype_name: HostKernels(library, dtype_name)


def _install(monkeypatch, fake):
    monkeypatch.setattr(cupy_engine, "_runtime", lambda: fake)
    monkeypatch.setattr(FakeArray, "runtime", fake)
    cupy_engine.clear_graph_cache()


@pytest.fixture
def runtime(monkeypatch, kernel_factory):
    fake = FakeRuntime(kernel_factory)
    _install(monkeypatch, fake)
    yield fake
    cupy_engine.clear_graph_cache()
    cupy_engine.set_graph_replay(None)


@pytest.fixture
def host_runtime(monkeypatch, host_library):
    """The fake runtime with the host-compiled kernels only (the device arithmetic)."""
    fake = FakeRuntime(lambda dtype_name: HostKernels(host_library, dtype_name))
    _install(monkeypatch, fake)
    yield fake
    cupy_engine.clear_graph_cache()
    cupy_engine.set_graph_replay(None)


# --------------------------------------------------------------------------- engine vs generic


def _engine_inputs(prob, dtype):
    """Engine-boundary arrays in ``dtype``; with ``float64`` reference copies (``ref``)."""
    params = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in prob.params.items()}
    W, b = pack(params, np)
    rng = np.random.default_rng(prob.T * 7919 + prob.m)
    inputs = {
        "x": _cache.time_major(prob.x.astype(dtype), np),
        "h0": prob.a0.T.astype(dtype),
        "c0": prob.c0.T.astype(dtype),
        "W": W,
        "b": b,
        "da_tm": _cache.time_major(prob.Ga.astype(dtype), np),
        "dc_tm": _cache.time_major(prob.Gc.astype(dtype), np),
        "dh_n": rng.standard_normal((prob.m, prob.n_a)).astype(dtype),
        "dc_n": rng.standard_normal((prob.m, prob.n_a)).astype(dtype),
    }
    return inputs


def _as_float64(inputs):
    """The same (rounded) values in float64: the reference for reduced precisions."""
    return {k: v.astype(np.float64) for k, v in inputs.items()}


def _run(module, inputs, *, recompute, with_dc, lengths=None, final=()):
    cache = module.forward(
        inputs["x"], inputs["h0"], inputs["c0"], inputs["W"], inputs["b"],
        xp=np, recompute=recompute, lengths=lengths,
    )  # fmt: skip
    dc_tm = inputs["dc_tm"] if with_dc else None
    extra = {name: inputs[name] for name in final}
    grads = module.backward(cache, inputs["x"], inputs["da_tm"], dc_tm, xp=np, **extra)
    return cache, grads


GRAD_NAMES = ("dx", "dh0", "dc0", "dW", "db")
CPU_SHAPES = {  # (n_x, m, T, n_a)
    "generic": (3, 4, 7, 5),
    "ones": (1, 1, 1, 1),
    "T1": (2, 3, 1, 4),
    "m1": (4, 1, 5, 3),
}


def _batch_order(cache):
    """The cache's arrays in batch order; gates and tanh(c) only inside each sequence."""
    h, c = cache.h, cache.c
    gates, tanh_c = cache.gates, cache.tanh_c
    if cache.order is not None:
        inverse = _cache.inverse_order(cache.order)
        h, c = h[:, inverse], c[:, inverse]
        if gates is not None:
            gates, tanh_c = gates[:, inverse], tanh_c[:, inverse]
    arrays = {"h": h, "c": c, "gates": gates, "tanh_c": tanh_c}
    if cache.lengths is not None and gates is not None:
        lengths = cache.lengths if cache.order is None else cache.lengths[inverse]
        inside = np.arange(h.shape[0] - 1)[:, None, None] < lengths[None, :, None]
        arrays["gates"], arrays["tanh_c"] = gates * inside, tanh_c * inside
    return arrays


def _compare(cache, grads, ref_cache, ref_grads, tol, label):
    actual, expected = _batch_order(cache), _batch_order(ref_cache)
    for name in ("h", "c", "gates", "tanh_c"):
        if expected[name] is None:
            assert actual[name] is None, name
            continue
        assert not np.isnan(actual[name]).any(), f"{label}: {name} has unwritten elements"
        err = rel_err(actual[name], expected[name])
        assert err <= tol, (label, name, err)
    for name, got, want in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        assert got.shape == want.shape, (label, name)
        assert not np.isnan(got).any(), f"{label}: {name} has unwritten elements"
        assert rel_err(got, want) <= tol, (label, name, rel_err(got, want))


@pytest.mark.parametrize("shape", list(CPU_SHAPES), ids=list(CPU_SHAPES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("with_dc", [False, True], ids=["no-dc", "dc"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_engine_matches_generic(runtime, shape, dtype, recompute, with_dc, graph):
    n_x, m, T, n_a = CPU_SHAPES[shape]
    prob = random_problem(7, n_x, m, T, n_a, 2)
    inputs = _engine_inputs(prob, dtype)
    ref_cache, ref_grads = _run(_engine, inputs, recompute=recompute, with_dc=with_dc)
    cupy_engine.set_graph_replay(graph)
    for call in range(3):  # eager/capture on the first call, replays after
        cache, grads = _run(cupy_engine, inputs, recompute=recompute, with_dc=with_dc)
        _compare(cache, grads, ref_cache, ref_grads, TOL[dtype], f"call {call}")
    if graph:
        assert runtime.captures == 2  # forward once, backward once
        assert runtime.replays == 4


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("lengths", [None, [7, 2, 5]], ids=["padded", "lengths"])
def test_several_segments(runtime, monkeypatch, graph, recompute, lengths):
    """Segments of 2 steps (T = 7): weight gradients summed over segments."""
    n_x, m, T, n_a = 3, 3, 7, 4
    monkeypatch.setattr(_cache, "SEGMENT_ELEMENTS", 2 * m * 4 * n_a)
    assert _cache.segment_length(T, m, n_a) == 2
    prob = random_problem(3, n_x, m, T, n_a, 2)
    inputs = _engine_inputs(prob, "float64")
    lengths = None if lengths is None else np.array(lengths)
    ref = _run(_engine, inputs, recompute=recompute, with_dc=True, lengths=lengths)
    cupy_engine.set_graph_replay(graph)
    for _ in range(2):
        cache, grads = _run(cupy_engine, inputs, recompute=recompute, with_dc=True, lengths=lengths)
        _compare(cache, grads, *ref, 1e-12, "segments")


def test_graph_results_are_never_overwritten(runtime):
    """Results of one call survive later replays; a stale cache is copied back in."""
    n_x, m, T, n_a = 3, 4, 6, 5
    problems = [random_problem(seed, n_x, m, T, n_a, 2) for seed in (1, 2, 3)]
    inputs = [_engine_inputs(p, "float64") for p in problems]
    refs = [_run(_engine, i, recompute=False, with_dc=True) for i in inputs]
    cupy_engine.set_graph_replay(True)
    caches = [
        cupy_engine.forward(i["x"], i["h0"], i["c0"], i["W"], i["b"], recompute=False)
        for i in inputs
    ]
    (plan,) = cupy_engine._PLANS._plans.values()
    assert plan.holds(caches[2])
    assert not plan.holds(caches[0])
    for cache, ref in zip(caches, refs, strict=True):  # all three still intact
        assert rel_err(cache.h, ref[0].h) < 1e-12
        assert not np.shares_memory(cache.h, plan.states["h"])
    assert not np.shares_memory(caches[0].h, caches[1].h)
    # Backward on the oldest cache: its states are copied in; then on the newest.
    grads = []
    for index in (0, 2, 0):
        i = inputs[index]
        grads.append(cupy_engine.backward(caches[index], i["x"], i["da_tm"], i["dc_tm"]))
        _compare(caches[index], grads[-1], *refs[index], 1e-12, f"backward {index}")
        assert plan.holds(caches[index])
    # Earlier gradients are untouched by later replays.
    for index, result in zip((0, 2, 0), grads, strict=True):
        for name, actual, expected in zip(GRAD_NAMES, result, refs[index][1], strict=True):
            assert rel_err(actual, expected) < 1e-12, (index, name)
    assert not np.shares_memory(grads[0][3], grads[2][3])


def test_graph_backward_of_a_generic_cache(runtime):
    """Caches are interchangeable: a generic-engine cache through the graph backward."""
    prob = random_problem(5, 2, 3, 4, 3, 2)
    inputs = _engine_inputs(prob, "float64")
    cache, ref_grads = _run(_engine, inputs, recompute=False, with_dc=False)
    cupy_engine.set_graph_replay(True)
    for _ in range(2):
        grads = cupy_engine.backward(cache, inputs["x"], inputs["da_tm"], None)
        for name, actual, expected in zip(GRAD_NAMES, grads, ref_grads, strict=True):
            assert rel_err(actual, expected) < 1e-12, name


def test_eager_cache_goes_to_generic_backward(runtime):
    prob = random_problem(6, 3, 2, 5, 4, 2)
    inputs = _engine_inputs(prob, "float64")
    ref_cache, ref_grads = _run(_engine, inputs, recompute=True, with_dc=True)
    cache = cupy_engine.forward(
        inputs["x"], inputs["h0"], inputs["c0"], inputs["W"], inputs["b"], recompute=True
    )
    grads = _engine.backward(cache, inputs["x"], inputs["da_tm"], inputs["dc_tm"], xp=np)
    _compare(cache, grads, ref_cache, ref_grads, 1e-12, "fused forward, generic backward")


def test_plan_cache_is_bounded(runtime):
    cupy_engine.set_graph_replay(True)
    for T in range(1, cupy_engine.MAX_GRAPH_PLANS + 3):
        inputs = _engine_inputs(random_problem(T, 2, 2, T, 3, 2), "float64")
        _run(cupy_engine, inputs, recompute=False, with_dc=False)
    assert len(cupy_engine._PLANS) == cupy_engine.MAX_GRAPH_PLANS
    cupy_engine.clear_graph_cache()
    assert len(cupy_engine._PLANS) == 0


def test_capture_failure_is_a_clear_error(runtime):
    runtime.fail_capture = True
    cupy_engine.set_graph_replay(True)
    inputs = _engine_inputs(random_problem(1, 2, 2, 3, 3, 2), "float64")
    with pytest.raises(RuntimeError, match=r"XLSTM_CUPY_GRAPHS=0"):
        _run(cupy_engine, inputs, recompute=False, with_dc=False)


def test_two_operations_per_step(runtime):
    """One product and one fused kernel per step, each way, plus a few per segment."""
    T = 6
    inputs = _engine_inputs(random_problem(2, 3, 2, T, 4, 2), "float32")
    cupy_engine.set_graph_replay(False)
    _run(cupy_engine, inputs, recompute=False, with_dc=True)
    assert len(runtime.launches) == 2 * T  # T forward kernels, T backward kernels
    # forward: input projection + T recurrent; backward: T recurrent + dW_h, dW_x, db, dx
    assert len(runtime.products) == (1 + T) + (T + 4)


# --------------------------------------------------------------------------- cuBLAS, capture


def _gemm(runtime):
    """The engine's cuBLAS handle on the stand-in, bound to the current stream."""
    gemm = runtime.blas(0)
    gemm.bind_eager(runtime.stream_ptr())
    return gemm


def _device(runtime, array):
    """``array`` copied into a registered stand-in buffer (what cuBLAS may read)."""
    out = runtime.xp.empty(array.shape, array.dtype)
    np.copyto(out, array)
    return out


def _layouts(rng, rows, cols, dtype):
    """Row-major ``(rows, cols)`` matrices of the same values, stored every way cuBLAS reads."""
    values = rng.standard_normal((rows, cols)).astype(dtype)
    padded = np.full((rows, cols + 3), np.nan, dtype)  # ld > cols: a slice of wider rows
    padded[:, :cols] = values
    tall = np.full((cols, rows + 2), np.nan, dtype)  # column-major with ld > rows
    tall[:, :rows] = values.T
    return values, {
        "C": np.ascontiguousarray(values),
        "F": np.asfortranarray(values),
        "C-slice": padded[:, :cols],
        "F-slice": tall[:, :rows].T,
    }


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize(("n", "k", "m"), [(3, 4, 5), (1, 4, 5), (3, 1, 5), (3, 4, 1), (1, 1, 1)])
def test_gemm_matches_numpy_for_every_layout(runtime, dtype, n, k, m):
    """``Gemm.matmul`` through the cuBLAS model equals NumPy for each operand layout.

    Reference: float64 NumPy on the same values; float16 within one rounding of
    its float32-accumulated product (cuBLAS's compute type for float16).
    """
    rng = np.random.default_rng(n * 100 + k * 10 + m)
    gemm = _gemm(runtime)
    a_values, a_layouts = _layouts(rng, n, k, dtype)
    b_values, b_layouts = _layouts(rng, k, m, dtype)
    expected = a_values.astype(np.float64) @ b_values.astype(np.float64)
    tol = {"float64": 1e-14, "float32": 1e-6, "float16": 2.0**-11}[dtype]
    a_vectors = {"vector": a_values[0].copy()} if n == 1 else {}
    for a_name, a in {**a_layouts, **a_vectors}.items():
        for b_name, b in b_layouts.items():
            out_shape = (m,) if a.ndim == 1 else (n, m)
            out = runtime.xp.empty(out_shape, dtype)
            gemm.matmul(_device_view(runtime, a), _device_view(runtime, b), out)
            got = out.reshape(n, m).astype(np.float64)
            np.testing.assert_allclose(got, expected, rtol=tol, atol=tol, err_msg=(a_name, b_name))


def _device_view(runtime, array):
    """The same layout (strides, ld) as ``array``, inside a registered buffer."""
    root = _root(array)  # C- or F-contiguous: its memory in order is ravel(order="K")
    flat = _device(runtime, root.ravel(order="K"))
    offset = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    start = offset // array.itemsize
    return np.lib.stride_tricks.as_strided(flat[start:], array.shape, array.strides)


# (a, b) of the engine's products -> the arguments CuPy 14.2's tensordot_core_v11 would pass
# (read off cupy/_core/_routines_linalg.pyx: dot + _mat_to_cublas_contiguous): a C-contiguous
# (n, k) is cuBLAS's B with op N, ld k; b = w.T (F-contiguous) is cuBLAS's A with op T, ld k;
# a C-contiguous b (k, m) has op N, ld m; dz_rows.T (F) as a has op T, ld n.
CUPY_ARGUMENTS = {
    # name: (a shape, a layout, b shape, b layout) -> (transa, transb, m, n, k, lda, ldb, ldc)
    "h W_h^T": (((4, 6), "C"), ((6, 24), "F"), (1, 0, 24, 4, 6, 6, 6, 24)),
    "dz W_h": (((4, 24), "C"), ((24, 6), "C"), (0, 0, 6, 4, 24, 6, 24, 6)),
    "dz^T h": (((24, 8), "F"), ((8, 6), "C"), (0, 1, 6, 24, 8, 6, 24, 6)),
    "1^T dz": (((8,), "C"), ((8, 24), "C"), (0, 0, 24, 1, 8, 24, 8, 24)),
    "one row": (((1, 6), "C"), ((6, 24), "F"), (1, 0, 24, 1, 6, 6, 6, 24)),
    "n_x = 1": (((4, 24), "C"), ((24, 1), "C"), (1, 0, 1, 4, 24, 24, 24, 1)),
}


@pytest.mark.parametrize("name", list(CUPY_ARGUMENTS))
def test_gemm_arguments_are_cupys(name):
    """Same transposes and leading dimensions as cupy.matmul: the same cuBLAS call, same bits."""
    (a_shape, a_order), (b_shape, b_order), expected = CUPY_ARGUMENTS[name]

    def array(shape, order):
        if order == "F":
            return np.zeros(shape[::-1], np.float32).T
        return np.zeros(shape, np.float32)

    a, b = array(a_shape, a_order), array(b_shape, b_order)
    out = np.zeros((*a.shape[:-1], b.shape[1]), np.float32)
    shape = _blas.gemm_shape(a, b, out)
    assert dataclasses.astuple(shape) == expected


@pytest.mark.parametrize(
    ("field", "change"),
    [("lda", 1), ("ldb", 1), ("ldc", 1), ("transa", None), ("transb", None), ("k", -1)],
)
def test_a_wrong_cublas_argument_is_caught(runtime, monkeypatch, field, change):
    """The cuBLAS model reads what the arguments say: a wrong one errs or gives another answer."""
    rng = np.random.default_rng(3)
    gemm = _gemm(runtime)
    a = _device(runtime, rng.standard_normal((4, 5)))
    b = _device(runtime, rng.standard_normal((6, 5))).T  # column-major, as w.T is
    right = runtime.xp.empty((4, 6), np.float64)
    gemm.matmul(a, b, right)
    np.testing.assert_allclose(right, np.asarray(a) @ np.asarray(b), rtol=1e-14)
    honest = _blas.gemm_shape

    def wrong(*args):
        shape = honest(*args)
        value = getattr(shape, field)
        value = 1 - value if change is None else value + change
        return dataclasses.replace(shape, **{field: value})

    monkeypatch.setattr(_blas, "gemm_shape", wrong)
    out = runtime.xp.empty((4, 6), np.float64)
    try:
        gemm.matmul(a, b, out)
    except (FakeCublasError, CaptureError):
        return  # refused, as cuBLAS (or reading past the allocation) would
    assert np.isnan(out).any() or not np.allclose(out, right), field


def test_gemm_refuses_what_cublas_cannot_read(runtime):
    gemm = runtime.blas(0)
    a = runtime.xp.empty((4, 5), np.float32)
    out = runtime.xp.empty((4, 6), np.float32)
    with pytest.raises(RuntimeError, match=r"before Gemm\.bind"):
        gemm.matmul(a, runtime.xp.empty((5, 6), np.float32), out)
    gemm.bind_eager(runtime.stream_ptr())
    with pytest.raises(ValueError, match="no unit stride"):
        gemm.matmul(a, runtime.xp.empty((10, 12), np.float32)[::2, ::2], out)
    with pytest.raises(TypeError, match="float32 @ float64"):
        gemm.matmul(a, runtime.xp.empty((5, 6), np.float64), out)
    with pytest.raises(ValueError, match="do not match"):
        gemm.matmul(a, runtime.xp.empty((4, 6), np.float32), out)
    square = runtime.xp.empty((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        gemm.matmul(square, runtime.xp.empty((4, 4), np.float32), square)
    with pytest.raises(ValueError, match="unit stride along rows"):
        gemm.matmul(a, runtime.xp.empty((5, 6), np.float32), runtime.xp.empty((6, 4), np.float32).T)


def test_compute_types_and_algorithms_are_cupys():
    """CuPy 14.2's tensordot_core_v11: float16 accumulates in float32; TF32 only for float32."""
    default, pedantic, tf32 = 1, _blas.CUPY_COMPUTE_TYPE_PEDANTIC, _blas.CUPY_COMPUTE_TYPE_TF32
    assert _blas.compute_type("float16", default) == _blas.COMPUTE_32F
    assert _blas.compute_type("float16", tf32) == _blas.COMPUTE_32F
    assert _blas.compute_type("float32", default) == _blas.COMPUTE_32F
    assert _blas.compute_type("float32", tf32) == _blas.COMPUTE_32F_FAST_TF32
    assert _blas.compute_type("float32", pedantic) == _blas.COMPUTE_32F_PEDANTIC
    assert _blas.compute_type("float64", tf32) == _blas.COMPUTE_64F
    assert _blas.compute_type("float64", pedantic) == _blas.COMPUTE_64F_PEDANTIC
    assert _blas.algorithm("float32", 90) == _blas.GEMM_DEFAULT_TENSOR_OP
    assert _blas.algorithm("float32", 75) == _blas.GEMM_DEFAULT
    assert _blas.algorithm("float16", 70) == _blas.GEMM_DEFAULT_TENSOR_OP
    assert _blas.workspace_bytes(90) == 32 * 2**20
    assert _blas.workspace_bytes(80) == 4 * 2**20


def test_libcublas_is_found_in_the_process_maps():
    pattern = _blas._LIBCUBLAS
    assert pattern.search("/opt/venv/nvidia/cu13/lib/libcublas.so.13")
    assert pattern.search("/usr/lib/libcublas.so")
    assert not pattern.search("/opt/venv/nvidia/cu13/lib/libcublasLt.so.13")
    assert not pattern.search("/usr/lib/libcublas.so.13.bak")


def test_binding_happens_outside_captures(runtime):
    """The stream first (it resets the workspace), then the workspace; once per change."""
    gemm = runtime.blas(0)
    assert runtime.blas(0) is gemm  # one handle per thread and device
    state = runtime.cublas.handles[gemm.handle]
    assert state["pointer_mode"] == _blas.POINTER_MODE_HOST
    gemm.bind_eager(runtime.stream_ptr())
    first = state["workspace"]
    assert first is not None
    assert first[1] == gemm.workspace_bytes
    gemm.bind_eager(runtime.stream_ptr())
    assert state["workspace"] == first
    side = runtime.xp.cuda.Stream(non_blocking=True)
    with side:
        gemm.bind_eager(runtime.stream_ptr())
        assert state["stream"] == side.ptr
        assert state["workspace"][0] != first[0]  # one workspace per stream
        other = runtime.xp.cuda.Stream(non_blocking=True)
        spare = runtime.xp.empty(16, np.uint8)
        side.begin_capture()
        try:
            gemm.bind_eager(runtime.stream_ptr())  # already bound: nothing to do
            with pytest.raises(CaptureError, match="workspace changed during a capture"):
                gemm.bind(other.ptr, spare)
            with pytest.raises(NotImplementedError, match="during stream capture"):
                runtime.cublas.set_stream(gemm.handle, side.ptr)  # CuPy's guard
        finally:
            side.end_capture()


def _capture_problem(runtime, dtype="float32"):
    inputs = _engine_inputs(random_problem(4, 3, 2, 5, 4, 2), dtype)
    x = inputs["x"].transpose(2, 1, 0)
    d = cupy_engine._Dims.of(x, 4, False)
    plan = cupy_engine._Plan(runtime.xp, d, x.dtype, False)
    cupy_engine._fill_inputs(runtime.xp, plan.inputs, x, inputs["W"], inputs["b"], d.n_a)
    kernels = runtime.kernels(x.dtype, 0)
    return d, plan, kernels


def test_cupy_matmul_inside_a_capture_is_refused(runtime):
    """What the engine did before (cupy.matmul in the captured loop) fails under CuPy 14."""
    d, plan, kernels = _capture_problem(runtime)

    class CupyMatmul:  # the products as cupy.matmul issued them
        def matmul(self, a, b, out):
            runtime.xp.matmul(a, b, out)

    def program(gemm):
        cupy_engine._forward_program(
            runtime.xp, kernels, CupyMatmul(), d, plan.inputs, plan.states, plan.forward_work
        )

    workspace = runtime.blas(0).new_workspace()
    with pytest.raises(NotImplementedError, match="during stream capture is currently"):
        runtime.capture(program, 0, workspace)


def test_an_allocation_inside_a_capture_is_caught(runtime):
    """The recorder sees allocations through the namespace and through ndarray methods."""
    d, plan, kernels = _capture_problem(runtime)
    workspace = runtime.blas(0).new_workspace()

    def program(gemm):
        cupy_engine._forward_program(
            runtime.xp, kernels, gemm, d, plan.inputs, plan.states, plan.forward_work
        )

    runtime.capture(program, 0, workspace)  # the engine's program: fine
    for allocate in (
        lambda: runtime.xp.empty((3,), np.float32),
        lambda: plan.states["h"].copy(),
        lambda: plan.states["h"].astype(np.float64),
        lambda: plan.states["c"] + 1,
    ):

        def allocating(gemm, allocate=allocate):
            program(gemm)
            allocate()

        with pytest.raises(CaptureError, match="allocated during a capture"):
            runtime.capture(allocating, 0, workspace)


@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("several", [False, True], ids=["one-segment", "segments"])
def test_nothing_is_allocated_during_capture(runtime, monkeypatch, recompute, several):
    """Every buffer a graph touches exists before begin_capture; none is made until its end."""
    n_x, m, T, n_a = 3, 3, 7, 4
    if several:
        monkeypatch.setattr(_cache, "SEGMENT_ELEMENTS", 2 * m * 4 * n_a)
    inputs = _engine_inputs(random_problem(5, n_x, m, T, n_a, 2), "float32")
    cupy_engine.set_graph_replay(True)
    for final in ((), ("dh_n", "dc_n")):
        _run(cupy_engine, inputs, recompute=recompute, with_dc=True, final=final)
    assert runtime.captures == 3  # forward, two backward graphs
    assert [a for a in runtime.allocations if a[2]] == []
    assert len([a for a in runtime.allocations if not a[2]]) > 5  # the recorder records


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
def test_graph_and_eager_give_the_same_bits(runtime, dtype, recompute):
    """The same cuBLAS calls eagerly and in the graph: identical bits, both near float64."""
    inputs = _engine_inputs(random_problem(6, 3, 4, 6, 5, 2), dtype)
    options = {"recompute": recompute, "with_dc": True, "final": ("dh_n",)}
    reference = _run(_engine, _as_float64(inputs), **options)
    runs = {}
    for graph in (False, True, True):  # eager; capture; replay
        cupy_engine.set_graph_replay(graph)
        cache, grads = _run(cupy_engine, inputs, **options)
        _compare(cache, grads, *reference, TOL[dtype], f"{dtype} graph={graph}")
        runs.setdefault(graph, []).append(_bits(cache, grads))
    assert runtime.captures == 2
    assert runtime.replays == 2
    for bits in (runs[True][0], runs[True][1]):
        for eager, graph in zip(runs[False][0], bits, strict=True):
            np.testing.assert_array_equal(graph, eager)
    calls = runtime.cublas.calls
    assert {call[-2] for call in calls} == {_blas.compute_type(dtype, 1)}  # float16: 32F


def test_eager_products_run_on_the_current_stream(runtime):
    """A side stream gets the products too (bound to it, with a workspace of its own)."""
    inputs = _engine_inputs(random_problem(7, 3, 2, 4, 3, 2), "float64")
    expected = _run(_engine, inputs, recompute=False, with_dc=True)
    side = runtime.xp.cuda.Stream(non_blocking=True)
    with side:
        got = _run(cupy_engine, inputs, recompute=False, with_dc=True)
    _compare(*got, *expected, 1e-12, "side stream")
    gemm = runtime.blas(0)
    assert gemm.bound[0] == side.ptr
    assert set(gemm._eager_workspaces) == {side.ptr}


# --------------------------------------------------------------------------- variable lengths

# (T, lengths): each sequence has 1..T steps; includes 1 and T, ties, a single row, every
# length below T (steps past the longest are not run), lengths already sorted (no order).
LENGTHS = {
    "mixed": (7, [3, 7, 1, 5]),
    "ties": (6, [4, 2, 4, 2, 6]),
    "sorted": (5, [5, 4, 2, 1]),
    "all-one": (4, [1, 1, 1]),
    "short": (6, [2, 4, 3]),
    "m1": (5, [3]),
}


def _lengths_problem(name, dtype="float64", seed=11):
    T, lengths = LENGTHS[name]
    prob = random_problem(seed, 3, len(lengths), T, 4, 2)
    return _engine_inputs(prob, dtype), np.array(lengths, dtype=np.int64)


@pytest.mark.parametrize("name", list(LENGTHS))
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("with_dc", [False, True], ids=["no-dc", "dc"])
@pytest.mark.parametrize("final", [(), ("dh_n", "dc_n")], ids=["no-final", "final"])
def test_lengths_match_generic(runtime, name, recompute, with_dc, final):
    inputs, lengths = _lengths_problem(name)
    options = {"recompute": recompute, "with_dc": with_dc, "lengths": lengths, "final": final}
    ref_cache, ref_grads = _run(_engine, inputs, **options)
    cache, grads = _run(cupy_engine, inputs, **options)
    _compare(cache, grads, ref_cache, ref_grads, 1e-12, name)
    # dx is zero at padded steps: external gradients there are ignored.
    padded = np.arange(inputs["x"].shape[0])[:, None] >= lengths[None, :]
    assert not grads[0][padded].any()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
def test_lengths_in_reduced_precision(runtime, dtype, recompute):
    inputs, lengths = _lengths_problem("mixed", dtype)
    options = {"recompute": recompute, "with_dc": True, "lengths": lengths, "final": ("dh_n",)}
    reference = _run(_engine, _as_float64(inputs), **options)
    _compare(*_run(cupy_engine, inputs, **options), *reference, TOL[dtype], dtype)


def test_lengths_cache_layout(runtime):
    """Rows sorted by decreasing length (stable); zeros as gates past each sequence's end."""
    inputs, lengths = _lengths_problem("ties")
    cache, _ = _run(cupy_engine, inputs, recompute=False, with_dc=False, lengths=lengths)
    np.testing.assert_array_equal(cache.order, [4, 0, 2, 1, 3])
    np.testing.assert_array_equal(cache.lengths, lengths[cache.order])
    assert cache.lengths.dtype == np.int64
    for row, length in enumerate(cache.lengths):
        assert not cache.gates[length:, row].any()
        assert not cache.tanh_c[length:, row].any()
        assert (cache.h[length:, row] == cache.h[length, row]).all()  # carried bit for bit
        assert (cache.c[length:, row] == cache.c[length, row]).all()
    ref_cache, _ = _run(_engine, inputs, recompute=False, with_dc=False, lengths=lengths)
    for got, want in zip(
        _cache.final_state(cache, np), _cache.final_state(ref_cache, np), strict=True
    ):
        assert rel_err(got, want) <= 1e-12
    # Already sorted: no order (the batch order is the storage order).
    sorted_inputs, sorted_lengths = _lengths_problem("sorted")
    cache, _ = _run(
        cupy_engine, sorted_inputs, recompute=True, with_dc=False, lengths=sorted_lengths
    )
    assert cache.order is None
    assert cache.gates is None


def test_shrinking_batch(runtime):
    """Each step's recurrent product takes only the running rows; no step past the longest."""
    inputs, lengths = _lengths_problem("short")  # T = 6, lengths 2, 4, 3: 4 steps run
    n_a = inputs["h0"].shape[1]
    _run(cupy_engine, inputs, recompute=False, with_dc=False, lengths=lengths)
    recurrent = [a[0] for a, b in runtime.products if b == (n_a, 4 * n_a)]  # h W_h^T
    backward = [a[0] for a, b in runtime.products if b == (4 * n_a, n_a) and a[1] == 4 * n_a]
    assert recurrent == [3, 3, 2, 1]
    assert backward == [1, 2, 3, 3]  # dz W_h, last step first (dW_h^T products excluded)
    assert runtime.launches == ["forward_step"] * 4 + ["backward_step"] * 4


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_lengths_run_eagerly_with_graph_replay_on(runtime, graph):
    inputs, lengths = _lengths_problem("mixed")
    cupy_engine.set_graph_replay(graph)
    ref = _run(_engine, inputs, recompute=False, with_dc=True, lengths=lengths)
    for _ in range(2):
        got = _run(cupy_engine, inputs, recompute=False, with_dc=True, lengths=lengths)
        _compare(*got, *ref, 1e-12, "graph switch")
    assert runtime.captures == 0
    assert len(cupy_engine._PLANS) == 0


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("final", [("dh_n",), ("dc_n",), ("dh_n", "dc_n")])
def test_final_state_gradients(runtime, graph, recompute, final):
    """Gradients of h_T, c_T start the recursion; one backward graph per set of gradients."""
    inputs = _engine_inputs(random_problem(8, 3, 4, 5, 4, 2), "float64")
    options = {"recompute": recompute, "with_dc": False}
    ref = _run(_engine, inputs, **options, final=final)
    cupy_engine.set_graph_replay(graph)
    for _ in range(2):
        _compare(*_run(cupy_engine, inputs, **options, final=final), *ref, 1e-12, "final")
        _compare(
            *_run(cupy_engine, inputs, **options), *_run(_engine, inputs, **options), 1e-12, "none"
        )
    if graph:
        (plan,) = cupy_engine._PLANS._plans.values()
        assert set(plan.backward_graphs) == {("da", *final), ("da",)}
        assert runtime.captures == 3
        assert runtime.replays == 5


def test_other_engines_read_a_cupy_lengths_cache(runtime):
    """The generic and the NumPy engine read the CuPy engine's sorted variable-length cache."""
    inputs, lengths = _lengths_problem("mixed")
    options = {"recompute": False, "with_dc": True, "lengths": lengths}
    ref_cache, ref_grads = _run(_engine, inputs, **options)
    cache, _ = _run(cupy_engine, inputs, **options)
    assert numpy_engine.unsupported_reason(np, np.float64, cache=cache) is None
    for module in (_engine, numpy_engine):
        grads = module.backward(cache, inputs["x"], inputs["da_tm"], inputs["dc_tm"], xp=np)
        _compare(cache, grads, ref_cache, ref_grads, 1e-12, module.__name__)


def test_cupy_refuses_a_cache_in_batch_order(runtime):
    """A generic-engine lengths cache is not sorted: "auto" reads it generically, "cupy" refuses."""
    inputs, lengths = _lengths_problem("mixed")
    cache, _ = _run(_engine, inputs, recompute=False, with_dc=False, lengths=lengths)
    reason = cupy_engine.unsupported_reason(None, np.float64, cache=cache)
    assert "not sorted by decreasing length" in reason
    with pytest.raises(ValueError, match=r"cannot read this cache.*not sorted"):
        cupy_engine.backward(cache, inputs["x"], inputs["da_tm"], None)
    fake_cupy = type(sys)("cupy")
    assert dispatch.select_engine(fake_cupy, np.float64, "auto", cache=cache).name == "generic"
    with pytest.raises(ValueError, match=r"`engine='cupy'` cannot run.*not sorted"):
        dispatch.select_engine(fake_cupy, np.float64, "cupy", cache=cache)
    # A batch whose lengths happen to be sorted is read as it is.
    sorted_inputs, sorted_lengths = _lengths_problem("sorted")
    options = {"recompute": False, "with_dc": False, "lengths": sorted_lengths}
    ref_cache, ref_grads = _run(_engine, sorted_inputs, **options)
    assert cupy_engine.unsupported_reason(None, np.float64, cache=ref_cache) is None
    grads = cupy_engine.backward(ref_cache, sorted_inputs["x"], sorted_inputs["da_tm"], None)
    _compare(ref_cache, grads, ref_cache, ref_grads, 1e-12, "sorted generic cache")


# --------------------------------------------------------------------------- inference, determinism


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["padded", "lengths"])
def test_recompute_keeps_no_gates(runtime, graph, lengths):
    """The memory-saving (inference) forward returns h and c only, in a buffer of that size."""
    n_x, m, T, n_a = 3, 3, 5, 4
    inputs = _engine_inputs(random_problem(9, n_x, m, T, n_a, 2), "float64")
    lengths = None if lengths is None else np.array(lengths)
    cupy_engine.set_graph_replay(graph)
    cache = cupy_engine.forward(
        inputs["x"], inputs["h0"], inputs["c0"], inputs["W"], inputs["b"],
        recompute=True, lengths=lengths,
    )  # fmt: skip
    assert cache.gates is None
    assert cache.tanh_c is None
    assert _root(cache.h) is _root(cache.c)
    align = cupy_engine._ALIGN_BYTES // 8
    state = -(-(T + 1) * m * n_a // align) * align
    assert _root(cache.h).size == 2 * state
    ref = _engine.forward(
        inputs["x"], inputs["h0"], inputs["c0"], inputs["W"], inputs["b"],
        xp=np, recompute=True, lengths=lengths,
    )  # fmt: skip
    for got, want in zip(
        _cache.sequence_states(cache, np), _cache.sequence_states(ref, np), strict=True
    ):
        assert rel_err(got, want) <= 1e-12


def _bits(cache, grads):
    arrays = [cache.h, cache.c, *(a for a in (cache.gates, cache.tanh_c) if a is not None)]
    return [np.array(a, copy=True) for a in (*arrays, *grads)]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 4, 1]], ids=["padded", "lengths"])
def test_runs_are_bitwise_identical(host_runtime, graph, lengths):
    """Same call, same bits, whatever ran in between (no state leaks between calls)."""
    lengths = None if lengths is None else np.array(lengths)
    first = _engine_inputs(random_problem(12, 3, 4, 6, 5, 2), "float32")
    other = _engine_inputs(random_problem(13, 3, 4, 6, 5, 2), "float32")
    options = {"recompute": False, "with_dc": True, "lengths": lengths, "final": ("dh_n",)}
    cupy_engine.set_graph_replay(graph)
    runs = []
    for inputs in (first, other, first, first):
        runs.append(_bits(*_run(cupy_engine, inputs, **options)))
    for again in (runs[2], runs[3]):
        for a, b in zip(runs[0], again, strict=True):
            np.testing.assert_array_equal(a, b)
    # Graph replay issues the very operations of the eager run (the same cublasGemmEx
    # arguments and workspace size): bitwise equal, here and on a GPU (test_cupy.py).
    cupy_engine.set_graph_replay(not graph)
    for a, b in zip(runs[0], _bits(*_run(cupy_engine, first, **options)), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- float16


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("recompute", [False, True], ids=["cached", "recompute"])
@pytest.mark.parametrize("shape", ["generic", "medium"])
def test_float16_against_float64(runtime, graph, recompute, shape):
    """float16 storage, float32 math and accumulation: within TOL_FLOAT16 of float64."""
    sizes = {"generic": (3, 4, 7, 5), "medium": (16, 8, 12, 32)}[shape]  # medium: test_cupy's
    inputs = _engine_inputs(random_problem(14, *sizes, 2), "float16")
    options = {"recompute": recompute, "with_dc": True, "final": ("dh_n", "dc_n")}
    reference = _run(_engine, _as_float64(inputs), **options)
    cupy_engine.set_graph_replay(graph)
    for call in range(2):
        cache, grads = _run(cupy_engine, inputs, **options)
        assert cache.h.dtype == np.float16
        assert grads[3].dtype == np.float16
        _compare(cache, grads, *reference, TOL_FLOAT16, f"float16 call {call}")


# --------------------------------------------------------------------------- kernels directly


def _kernel_cases(kernels, dtype, rows, units, active, seed=0, work=None):
    """Run every kernel once on fixed random inputs; return the outputs by name.

    Inputs are values of ``dtype`` handed over in ``work`` (default: ``dtype``):
    ``work=float64`` gives the exact results on the very same values.
    """
    rng = np.random.default_rng(seed)
    stored, work = np.dtype(dtype), np.dtype(work or dtype)

    def value(array):  # a value of the storage type, in the work type
        return np.ascontiguousarray(np.asarray(array).astype(stored).astype(work))

    def draw(*shape, scale=1.0):
        return value(scale * rng.standard_normal(shape))

    def empty(*shape):
        return np.full(shape, np.nan, work)

    gates_in = draw(rows, 4 * units, scale=3.0)
    gates_in[0, :] = 1e4  # huge pre-activations: the sigmoid saturates (1e4 is a float16)
    gates_in[1, :] = -1e4
    recurrent, bias = draw(rows, 4 * units), draw(4 * units)
    c_prev, h_prev = draw(rows, units), draw(rows, units)
    gates, c_next, tanh_c, h_next = gates_in.copy(), *(empty(rows, units) for _ in range(3))
    kernels.forward_step(gates, recurrent, bias, c_prev, c_next, tanh_c, h_prev, h_next, active)
    out = {"gates": gates, "c_next": c_next, "tanh_c": tanh_c, "h_next": h_next}
    activated = value(np.clip(0.5 * rng.standard_normal((rows, 4 * units)) + 0.5, 0, 1))
    tanh_prev = value(np.tanh(c_prev.astype(np.float64)))
    for label, dc_external in (("", None), ("_dc", draw(rows, units))):
        dc, dz = draw(rows, units), empty(rows, 4 * units)
        dh_external, dh_recurrent = draw(rows, units), draw(rows, units)
        kernels.backward_step(
            dh_external, dh_recurrent, dc_external, dc, activated, c_prev, tanh_prev, dz, active
        )
        out.update({f"dz{label}": dz, f"dc{label}": dc})
    gates, tanh_c = gates_in.copy(), empty(rows, units)
    kernels.gates(gates, recurrent, bias, c_prev, tanh_c)
    out.update(recomputed=gates, recomputed_tanh=tanh_c)
    for name, array in out.items():
        assert array.dtype == work, name
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("active", [5, 3, 0], ids=["all-rows", "some-rows", "no-rows"])
def test_host_compiled_kernels_match_numpy(host_library, dtype, active):
    rows, units = 5, 7
    host = _kernel_cases(HostKernels(host_library, dtype), dtype, rows, units, active)
    reference = _kernel_cases(NumpyKernels(), dtype, rows, units, active)
    # Same arithmetic type: only libm's last bits differ (float16: a tie may round
    # the other way, one float16 ulp).
    tol = {"float64": 1e-14, "float32": 1e-6, "float16": 2 * UNIT_ROUNDOFF["float16"]}[dtype]
    for name, expected in reference.items():
        actual = host[name]
        assert np.isfinite(actual).all(), name
        np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=name)
    gates = host["gates"]
    if active >= 2:  # the tanh-form sigmoid saturates exactly, no inf/nan
        assert (gates[0, : 3 * units] == 1).all()
        assert (gates[1, : 3 * units] == 0).all()
    assert not gates[active:].any()
    assert not host["tanh_c"][active:].any()
    assert not host["dz"][active:].any()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_element_math_within_one_rounding(host_library, dtype):
    """Half-precision storage, float32 math: each output within one rounding of float64.

    Bound: ``|out - ref| <= u |ref| + 1e-5`` -- the float32 value rounded once to
    the storage type, plus float32 arithmetic before it (a handful of operations
    on O(1) values, each within 2**-24 relative).
    """
    storage = pytest.importorskip("ml_dtypes").bfloat16 if dtype == "bfloat16" else np.float16
    rows, units = 6, 9
    u = UNIT_ROUNDOFF[dtype]
    host = _kernel_cases(HostKernels(host_library, dtype), storage, rows, units, 4, seed=3)
    exact = _kernel_cases(NumpyKernels(), storage, rows, units, 4, seed=3, work=np.float64)
    worst = 0.0
    for name, expected in exact.items():
        actual = host[name].astype(np.float64)
        np.testing.assert_allclose(actual, expected, rtol=u, atol=1e-5, err_msg=name)
        worst = max(worst, float(np.max(np.abs(actual - expected) / (np.abs(expected) + 1e-5))))
    assert worst > u / 8  # the outputs really are rounded to the storage type


def test_unsupported_reason():
    for dtype in (np.float16, np.float32, np.dtype("float64")):
        assert cupy_engine.unsupported_reason(None, dtype) is None
    assert "int32 is not supported" in cupy_engine.unsupported_reason(None, np.int32)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    reason = cupy_engine.unsupported_reason(None, ml_dtypes.bfloat16)
    assert "bfloat16" in reason
    assert "CuPy has no bfloat16 dtype" in reason


# --------------------------------------------------------------------------- the public API


@pytest.fixture
def cupy_on_numpy(monkeypatch, runtime):
    """The CuPy engine's spec, as declared, but for NumPy arrays (the fake runtime runs it)."""
    spec = dataclasses.replace(dispatch.ENGINES["cupy"], backends=("numpy",), requires=None)
    monkeypatch.setitem(dispatch.ENGINES, "cupy", spec)
    dispatch._engine.cache_clear()
    yield runtime
    dispatch._engine.cache_clear()


def _public(prob, engine, **options):
    lengths = options.pop("lengths", None)
    a, y, c, caches = xlstm.lstm_forward(
        prob.x, prob.a0, prob.params, prob.c0, engine=engine, lengths=lengths
    )
    rng = np.random.default_rng(0)
    da_n, dc_n = (rng.standard_normal(prob.a0.shape) for _ in range(2))
    grads = xlstm.lstm_backward(prob.Ga, caches, prob.Gc, da_n=da_n, dc_n=dc_n, engine=engine)
    inference = xlstm.lstm_forward(
        prob.x, prob.a0, prob.params, prob.c0, engine=engine, lengths=lengths, cache=False
    )
    return {"a": a, "y": y, "c": c, **grads, "inference_a": inference[0]}


@pytest.mark.parametrize("lengths", [None, [5, 1, 3, 5]], ids=["padded", "lengths"])
def test_public_functions_through_the_cupy_engine(cupy_on_numpy, lengths):
    """lstm_forward/backward with lengths, final-state gradients and cache=False."""
    prob = random_problem(16, 3, 4, 5, 4, 2)
    got = _public(prob, "cupy", lengths=lengths)
    want = _public(prob, "generic", lengths=lengths)
    for key, value in want.items():
        assert rel_err(got[key], value) <= 1e-12, key
    assert cupy_on_numpy.launches  # the CuPy engine ran
    chosen = xlstm.resolve_engine("numpy", "float64", "cupy", lengths=True, final_state_grads=True)
    assert chosen == "cupy"


def test_bidirectional_layers_through_the_cupy_engine(cupy_on_numpy):
    """The reverse direction (inputs reversed within lengths by the layers) on the CuPy engine."""
    rng = np.random.default_rng(17)
    n_x, n_a, m, T = 3, 4, 5, 6
    layers = []
    for layer in range(2):
        n_in = n_x if layer == 0 else 2 * n_a
        for _ in range(2):
            layers.append(
                {
                    **{f"W{g}": 0.5 * rng.standard_normal((n_a, n_a + n_in)) for g in "fico"},
                    **{f"b{g}": 0.5 * rng.standard_normal((n_a, 1)) for g in "fico"},
                }
            )
    x = rng.standard_normal((n_x, m, T))
    lengths = [6, 2, 1, 4, 6]
    d_out = rng.standard_normal((2 * n_a, m, T))
    d_a_n, d_c_n = (rng.standard_normal((4, n_a, m)) for _ in range(2))
    results = {}
    for engine in ("cupy", "generic"):
        out, (a_n, c_n), cache = xlstm.layers.multilayer_forward(
            x, layers, bidirectional=True, lengths=lengths, engine=engine
        )
        grads = xlstm.layers.multilayer_backward(d_out, cache, d_a_n=d_a_n, d_c_n=d_c_n)
        flat = {"out": out, "a_n": a_n, "c_n": c_n, "dx": grads["dx"]}
        flat.update(
            {f"l{k}{name}": v for k, g in enumerate(grads["layers"]) for name, v in g.items()}
        )
        results[engine] = flat
    for key, value in results["generic"].items():
        assert rel_err(results["cupy"][key], value) <= 1e-12, key


# --------------------------------------------------------------------------- switches, imports


def test_graph_switch(monkeypatch):
    monkeypatch.delenv(cupy_engine.GRAPH_ENV, raising=False)
    cupy_engine.set_graph_replay(None)
    assert cupy_engine.graph_replay_enabled() is cupy_engine.GRAPH_DEFAULT
    monkeypatch.setenv(cupy_engine.GRAPH_ENV, "1")
    assert cupy_engine.graph_replay_enabled() is True
    monkeypatch.setenv(cupy_engine.GRAPH_ENV, "0")
    assert cupy_engine.graph_replay_enabled() is False
    with cupy_engine.graph_replay(True):
        assert cupy_engine.graph_replay_enabled() is True
    assert cupy_engine.graph_replay_enabled() is False
    monkeypatch.setenv(cupy_engine.GRAPH_ENV, "yes")
    with pytest.raises(ValueError, match=cupy_engine.GRAPH_ENV):
        cupy_engine.graph_replay_enabled()
    with pytest.raises(TypeError, match="`enabled`"):
        cupy_engine.set_graph_replay("on")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_importing_the_cupy_package_does_not_import_cupy():
    result = _python(
        "import sys\n"
        "import xlstm, xlstm._engines.cupy.engine, xlstm._engines.cupy._kernels\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    assert result.returncode == 0, result.stderr


def test_using_the_engine_without_cupy_is_a_clear_import_error():
    result = _python(
        "import sys\n"
        "sys.modules['cupy'] = None  # as if CuPy were not installed\n"
        "import numpy as np\n"
        "from xlstm._engines.cupy import engine\n"
        "x = np.ones((2, 1, 3))\n"
        "try:\n"
        "    engine.forward(x, np.zeros((1, 4)), np.zeros((1, 4)), np.ones((16, 6)),\n"
        "                   np.zeros(16), recompute=False)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    assert result.returncode == 0, result.stderr
    assert "cuda13" in result.stdout
    assert "fused=False" in result.stdout


def test_gate_order_matches_the_kernels():
    """The kernels hard-code i, f, o (sigmoid) then g (tanh): GATE_ORDER must agree."""
    assert GATE_ORDER == ("i", "f", "o", "g")
    assert GATE_PARAMETERS["g"] == ("Wc", "bc")
    assert SEQ_GRAD_KEYS[0] == "dx"


# --------------------------------------------------------------------------- the device check

GPU_CHECK_SH = REPO / "benchmarks" / "gpu_check.sh"


def _gpu_check():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return gpu_check


def _shell_limits() -> dict[str, int]:
    """The device (not dry-run) limits assigned at the top of gpu_check.sh."""
    text = GPU_CHECK_SH.read_text()
    before_dry = text.split('if [ "$DRY" = 1 ]; then  # no device')[0]
    return {k: int(v) for k, v in re.findall(r"^(LIMIT_\w+|KILL_AFTER)=(\d+)$", before_dry, re.M)}


def test_gpu_check_limits_nest():
    """Outer limits strictly cover inner ones; the whole check fits 5.5 minutes.

    ``run`` timeout_s (345) > the command's ``timeout -k 5 330`` > every stage's
    limit plus its kill grace plus ~10 s of setup; the bench stage covers its
    workers' limits plus the driver's start.
    """
    limits = _shell_limits()
    stages = ["VERSIONS", "SMOKE", "GPU_TESTS", "CORE_TESTS", "BENCH", "REPORT"]
    assert set(limits) == {f"LIMIT_{s}" for s in stages} | {"KILL_AFTER"}
    header = GPU_CHECK_SH.read_text()
    outer = re.search(r"command:\s+timeout -k (\d+) (\d+) bash benchmarks/gpu_check.sh", header)
    timeout_s = int(re.search(r"timeout_s: (\d+)", header).group(1))
    kill, outer_limit = int(outer.group(1)), int(outer.group(2))
    worst = sum(limits[f"LIMIT_{s}"] + limits["KILL_AFTER"] for s in stages) + 10
    assert worst < outer_limit <= 330  # 5.5 minutes on the device
    assert outer_limit + kill < timeout_s <= 600
    workers = sum(seconds for _, seconds in _gpu_check().WORKERS)
    assert workers + 5 <= limits["LIMIT_BENCH"]


def test_gpu_check_smoke_on_the_stand_in(cupy_on_numpy):
    """The smoke stage's checks, through the CuPy engine's code (capture included) on NumPy."""
    results = _gpu_check().smoke(np, engine="cupy")
    assert results["float32_rel_err"] <= 1e-5
    assert results["float16_rel_err"] <= TOL_FLOAT16
    assert results["float32_graph_bits_equal"]
    assert results["float16_graph_bits_equal"]
    assert cupy_on_numpy.captures == 4  # forward and backward, float32 and float16
    assert cupy_on_numpy.replays == 4


def test_gpu_check_smoke_fails_loudly(cupy_on_numpy, monkeypatch):
    """A wrong engine result stops the smoke stage (and so the check) with the reason."""
    gpu_check = _gpu_check()
    real = gpu_check.reference

    def off(inputs, lengths, cache_path=None):
        ref = real(inputs, lengths, cache_path)
        return {**ref, "dx": ref["dx"] * 1.01}

    monkeypatch.setattr(gpu_check, "reference", off)
    with pytest.raises(AssertionError, match="smoke float32: relative error"):
        gpu_check.smoke(np, engine="cupy")


def test_torch_tf32_through_the_current_api():
    torch = pytest.importorskip("torch")
    gpu_check = _gpu_check()
    try:
        for enabled, value in ((True, "tf32"), (False, "ieee")):
            setting = gpu_check.set_torch_tf32(torch, enabled)
            assert setting["api"] == "fp32_precision"  # torch >= 2.9
            assert setting["cudnn.rnn"] == setting["cuda.matmul"] == value
            assert torch.backends.cudnn.rnn.fp32_precision == value
    finally:
        gpu_check.set_torch_tf32(torch, False)


def test_gpu_check_report_reads_what_a_timeout_left(tmp_path):
    """Rows are appended one line each; a line cut off by a kill is skipped, the rest reported."""
    gpu_check = _gpu_check()
    base = {"dtype": "float32", "tf32": False, "shape": "h8", "kind": "train", "batch": 4,
            "steps": 5, "hidden": 8, "err_fwd": 1e-7, "err_bwd": 2e-7}  # fmt: skip
    for variant, ms in (("fused", 2.0), ("fused+graph", 1.0), ("cuDNN", 1.5)):
        row = {
            **base,
            "run": "float32",
            "variant": variant,
            "fwd_s": ms / 2e3,
            "fwdbwd_s": ms / 1e3,
        }
        gpu_check._emit(tmp_path / "rows.jsonl", row)
    with (tmp_path / "rows.jsonl").open("a") as rows:
        rows.write('{"run": "float32", "variant": "gen')  # killed mid-write
    assert gpu_check.report(tmp_path) == 0
    text = (tmp_path / "report.md").read_text()
    assert "fused+graph     1.000     1.500     1.50x" in text
    assert "PASS float32 h8: graph/cuDNN f+b throughput 1.50 (need >= 1.0)" in text


def test_gpu_check_script_is_clean_shell():
    assert subprocess.run(["bash", "-n", str(GPU_CHECK_SH)], check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(
        ["shellcheck", str(GPU_CHECK_SH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """Every stage of the device check, on the CPU: paths, flags, files, the table last."""
    pytest.importorskip("torch")
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        ["bash", str(GPU_CHECK_SH), "--dry-run"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stages = (tmp_path / "stages.txt").read_text()
    for stage in ("versions", "smoke", "gpu-tests", "core-tests", "bench", "report"):
        assert f"{stage} status=0" in stages, stages
    assert json.loads((tmp_path / "smoke.json").read_text())["ok"]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert {row["run"] for row in rows} == set(_gpu_check().RUNS)
    assert not [row for row in rows if "error" in row]
    assert {row["torch_tf32"]["api"] for row in rows} == {"fp32_precision"}
    tail = result.stdout.rstrip().splitlines()[-12:]
    assert any(line.startswith("run           shape              xlstm") for line in tail)
    assert len(list(tmp_path.iterdir())) <= 8  # what the device tool brings back
