"""Choosing, inferring and moving between array backends.

Every public function infers its namespace from *all* its array arguments
(``array_api_compat.array_namespace``) and checks that they agree in library,
device and floating dtype before any computation, so that a mix of, say, NumPy
inputs and torch parameters fails with a message naming both instead of deep
inside a matrix product.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

BACKENDS = {
    "numpy": "numpy",
    "cupy": "cupy",
    "torch": "torch",
    "jax": "jax.numpy",
    "array_api_strict": "array_api_strict",
}
"""Backend names accepted wherever ``xp`` is, and the module each imports."""

_INSTALL_HINT = {
    "cupy": "install the `cuda12` or `cuda13` extra (CuPy) and use a machine with a CUDA GPU",
    "torch": "pip install torch",
    "jax": "pip install jax",
    "array_api_strict": "pip install array-api-strict",
}


def get_namespace(backend: str | ModuleType) -> ModuleType:
    """Return the array-API namespace of a backend given by name or module.

    Parameters
    ----------
    backend : str or module
        One of ``"numpy"``, ``"cupy"``, ``"torch"``, ``"jax"``,
        ``"array_api_strict"``, or an array module / namespace (``numpy``,
        ``torch``, ``jax.numpy``, ``cupy``, an ``array_api_compat`` namespace).

    Returns
    -------
    namespace
        What ``array_api_compat.array_namespace`` returns for that library's
        arrays, so that names and namespaces compare equal.
    """
    if backend is None:
        raise TypeError("`xp` is None; expected a backend name or an array namespace")
    if isinstance(backend, str):
        if backend not in BACKENDS:
            msg = f"`xp` = {backend!r} is not a known backend; expected one of {sorted(BACKENDS)}"
            raise TypeError(msg)
        try:
            module = importlib.import_module(BACKENDS[backend])
        except ImportError as error:
            msg = f"backend {backend!r} is not installed ({_INSTALL_HINT[backend]})"
            raise ImportError(msg) from error
    elif isinstance(backend, ModuleType) and hasattr(backend, "asarray"):
        module = backend
    else:
        msg = f"`xp` must be a backend name or an array namespace, got {type(backend).__name__}"
        raise TypeError(msg)
    # A 0-d probe array makes every spelling of a library (the module itself,
    # its compat wrapper, jax vs jax.numpy) map to the one canonical namespace.
    return array_api_compat.array_namespace(module.asarray(0.0))


def library_name(array: Any) -> str:
    """Top-level package of an array's type, for error messages (``'torch'``)."""
    return type(array).__module__.split(".")[0].replace("jaxlib", "jax")


def namespace_of(arrays: Mapping[str, Any], *, xp: Any = None) -> ModuleType:
    """Infer and check the one namespace shared by named array arguments.

    Parameters
    ----------
    arrays : mapping of str to array
        Argument names (as they should appear in messages, e.g.
        ``"parameters['Wf']"``) to the arrays passed.
    xp : str or namespace, optional
        Caller's override.  It must agree with the arrays.

    Raises
    ------
    TypeError
        An argument is ``None`` or not an array; arrays come from different
        libraries or devices; a dtype is not real floating; floating dtypes
        differ; ``xp`` disagrees with the arrays.
    """
    first_name = None
    first = None
    for name, array in arrays.items():
        if array is None:
            raise TypeError(f"`{name}` is None; expected an array")
        if library_name(array) == "dask":
            # array-api-compat accepts dask arrays, but the engines need their data in
            # memory: a lazy array would only fail (or compute silently) deep inside.
            msg = (
                f"`{name}` is a dask array; use xlstm.dask (same function names) to run on "
                "dask arrays chunked along the batch"
            )
            raise TypeError(msg)
        if not array_api_compat.is_array_api_obj(array):
            msg = f"`{name}` must be an array, got {type(array).__name__}"
            raise TypeError(msg)
        if first is None:
            first_name, first = name, array
            continue
        if library_name(array) != library_name(first):
            msg = (
                f"`{name}` is a {library_name(array)} array but `{first_name}` is a "
                f"{library_name(first)} array; all arrays must come from one library "
                "(move parameters with xlstm.to_backend)"
            )
            raise TypeError(msg)
    if first is None:
        raise TypeError("no array arguments were given")
    namespace = array_api_compat.array_namespace(*arrays.values())
    reference_device = array_api_compat.device(first)
    for name, array in arrays.items():
        # Inside jax.jit a tracer meets arrays captured in a closure: JAX places them all.
        placed_by_jax = _placed_by_jax(array) or _placed_by_jax(first)
        if not placed_by_jax and array_api_compat.device(array) != reference_device:
            msg = (
                f"`{name}` is on device {array_api_compat.device(array)} but `{first_name}` "
                f"is on {reference_device}; all arrays must be on one device"
            )
            raise TypeError(msg)
        if not namespace.isdtype(array.dtype, "real floating"):
            msg = (
                f"`{name}` has dtype {array.dtype}; "
                "expected a real floating dtype (float32 or float64)"
            )
            raise TypeError(msg)
        if array.dtype != first.dtype:
            msg = (
                f"`{name}` has dtype {array.dtype} but `{first_name}` has {first.dtype}; "
                "all arrays must share one floating dtype (cast them with astype first)"
            )
            raise TypeError(msg)
    if xp is not None and get_namespace(xp) is not namespace:
        msg = f"`xp` = {xp!r} does not match the arrays, which are {library_name(first)} arrays"
        raise TypeError(msg)
    return namespace


def _placed_by_jax(array: Any) -> bool:
    """A JAX tracer (an argument inside ``jax.jit``) has no device until JAX places it,
    together with the concrete arrays it meets (closure constants are moved there)."""
    return library_name(array) == "jax" and array_api_compat.device(array) is None


def backend_name(xp: ModuleType) -> str:
    """Canonical backend name of a namespace (``'numpy'``, ``'cupy'``, ...)."""
    checks = (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("jax", array_api_compat.is_jax_namespace),
        ("array_api_strict", array_api_compat.is_array_api_strict_namespace),
    )
    for name, check in checks:
        if check(xp):
            return name
    return getattr(xp, "__name__", repr(xp))


def to_host(array: Any) -> np.ndarray:
    """Copy any supported array into a NumPy array on the host."""
    if array_api_compat.is_numpy_array(array):
        return array
    if array_api_compat.is_cupy_array(array):
        return array.get()
    if array_api_compat.is_torch_array(array):
        return array.detach().cpu().numpy()
    if array_api_compat.is_jax_array(array):
        return np.asarray(array)
    # Any other library on the host (array-api-strict, ...): DLPack, no copy.
    return np.from_dlpack(array)


def to_backend(
    parameters: Mapping[str, Any], xp: str | ModuleType, *, device: Any = None
) -> dict[str, Any]:
    """Return a copy of a parameter dict on another backend and device.

    Parameters
    ----------
    parameters : dict of str to array
        Any dict of arrays (typically from :func:`init_parameters`).
    xp : str or namespace
        Target backend (see :func:`get_namespace`).
    device : optional
        Target device in that library's terms (``"cuda:0"`` for torch, a
        ``cupy.cuda.Device``...).  Default: the library's default device.

    Returns
    -------
    dict
        New arrays with the same keys, values and dtypes; the input is untouched.
        Any memory layout is accepted (views with negative strides are copied first).
    """
    if not isinstance(parameters, Mapping):
        msg = f"`parameters` must be a dict of arrays, got {type(parameters).__name__}"
        raise TypeError(msg)
    target = get_namespace(xp)
    moved = {}
    for key, value in parameters.items():
        if not array_api_compat.is_array_api_obj(value):
            msg = f"`parameters[{key!r}]` must be an array, got {type(value).__name__}"
            raise TypeError(msg)
        host = to_host(value)
        if isinstance(host, np.ndarray) and not host.flags.c_contiguous:
            # Negative strides (x[::-1]) and other views: torch refuses negative strides.
            host = np.asarray(host, order="C")
        # copy=True keeps the result independent of the source even when both
        # live on the host and the library could share the buffer.
        moved[key] = target.asarray(host, device=device, copy=True)
    return moved
