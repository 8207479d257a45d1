"""Sequence forward and backpropagation through time (the notebook's API)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from array_api_compat import device as _device

from . import _direction, _validation
from ._backend import namespace_of
from ._engines.cache import SequenceCache, final_state, step_masks, time_major
from ._engines.dispatch import engine_option
from ._engines.lengths import check_lengths
from ._errstate import ieee_arithmetic
from ._layout import SEQUENCE_GRADIENT_KEYS
from .activations import _softmax


@ieee_arithmetic
def lstm_forward(
    x: Any,
    a0: Any,
    parameters: Mapping[str, Any],
    c0: Any = None,
    *,
    xp: Any = None,
    engine: str = "auto",
    fused: Any = None,
    recompute: bool = False,
    lengths: Any = None,
    cache: bool = True,
) -> tuple[Any, Any, Any, tuple[SequenceCache, Any] | None]:
    r"""Run an LSTM over a batch of sequences.

    For ``t = 1..T_x``, with ``[a_{t-1}; x_t]`` the stacked previous hidden
    state and input:

    .. math::

        f_t &= \sigma(W_f [a_{t-1}; x_t] + b_f), \quad
        i_t = \sigma(W_i [a_{t-1}; x_t] + b_i), \quad
        o_t = \sigma(W_o [a_{t-1}; x_t] + b_o), \\
        \tilde c_t &= \tanh(W_c [a_{t-1}; x_t] + b_c), \quad
        c_t = f_t \odot c_{t-1} + i_t \odot \tilde c_t, \quad
        a_t = o_t \odot \tanh(c_t), \\
        y_t &= \operatorname{softmax}(W_y a_t + b_y).

    Parameters
    ----------
    x : array, shape (n_x, m, T_x)
        Inputs; ``m >= 1``, ``T_x >= 1``.
    a0 : array, shape (n_a, m)
        Initial hidden state.
    parameters : dict
        ``Wf, Wi, Wc, Wo`` ``(n_a, n_a + n_x)``, ``bf, bi, bc, bo`` ``(n_a, 1)``,
        ``Wy (n_y, n_a)``, ``by (n_y, 1)``.
    c0 : array, shape (n_a, m), optional
        Initial cell state.  Default: zeros.
    xp : str or namespace, optional
        Array namespace.  Default: inferred from all array arguments, which
        must share one library, device and floating dtype.
    engine : {"auto", "generic", "numpy", "numba", "cupy"}, default "auto"
        The engine that runs the recurrence (see :mod:`xlstm.engines`):
        ``"auto"`` picks the backend's fastest engine that can run the call,
        ``"generic"`` is the array-API reference; a named engine that cannot
        run the call is a ``ValueError`` saying why.  All give the same numbers
        (to rounding).
    fused : {"auto", True, False}, optional
        Alias of ``engine``: ``False`` is ``"generic"``, ``True`` requires the
        backend's fast path, ``"auto"`` is ``"auto"``.
    recompute : bool, default False
        Memory-saving mode: keep only the states in the cache and recompute
        the gates in :func:`lstm_backward` (about 3.5x smaller cache, one more
        large matrix product in backward).
    cache : bool, default True
        ``False``: inference mode.  Nothing is kept for backward (no gates, no
        reference to ``x``) and ``caches`` is ``None``.
    lengths : sequence of int or integer array, shape (m,), optional
        Variable-length batch, padded on the right: sequence ``j`` has
        ``lengths[j]`` real steps, ``1 <= lengths[j] <= T_x``.  Past its end the
        state stops changing (``a_t = a_{t-1}``, ``c_t = c_{t-1}``), the returned
        ``a``, ``y`` and ``c`` are zero, and :func:`lstm_backward` ignores
        gradients there (and returns ``dx = 0`` there).  The state at each
        sequence's own last step is :func:`final_states` ``(caches)``.
        Default: every sequence has ``T_x`` steps.

    Returns
    -------
    a : array, shape (n_a, m, T_x)
        Hidden states ``a_1..a_T``.
    y : array, shape (n_y, m, T_x)
        Softmax outputs at every step.
    c : array, shape (n_a, m, T_x)
        Cell states ``c_1..c_T``.
    caches : tuple or None
        ``(SequenceCache, x)`` for :func:`lstm_backward` (``None`` when
        ``cache=False``).  ``a`` and ``c`` may share memory with the cache: do
        not modify them in place before calling backward.  :func:`final_states`
        reads the final states from it.

    Raises
    ------
    TypeError
        ``None`` or non-array arguments, mixed libraries/devices/dtypes,
        non-floating dtypes; ``lengths`` not integers.
    ValueError
        Wrong shapes, ``m = 0`` or ``T_x = 0``; a length outside ``[1, T_x]``.
    KeyError
        A parameter is missing (the error is also a ``ValueError``).
    """
    _validation.check_parameter_dict(parameters)
    arrays = {"x": x, "a0": a0, **_validation.named_parameters(parameters)}
    if c0 is not None:
        arrays["c0"] = c0
    xp = namespace_of(arrays, xp=xp)
    sizes = _validation.parameter_sizes(parameters)
    m, t_x = _validation.sequence_sizes(x, sizes)
    _validation.check_shape("a0", a0, (sizes.n_a, m), "(n_a, m)")
    if c0 is not None:
        _validation.check_shape("c0", c0, (sizes.n_a, m), "(n_a, m)")
    recompute = _validation.check_flag("recompute", recompute)
    cache = _validation.check_flag("cache", cache)
    lengths = check_lengths(lengths, m, t_x)
    choice = engine_option(engine, fused)
    h0 = a0.T
    c0_rows = xp.zeros_like(h0) if c0 is None else c0.T
    # Inference keeps only the states (the outputs): the memory-saving mode's forward.
    run = _direction.forward(
        time_major(x, xp), h0, c0_rows, parameters, xp=xp, choice=choice,
        recompute=recompute or not cache, lengths=lengths,
    )  # fmt: skip

    states, cells = _direction.states(run, xp)
    hidden_rows = xp.reshape(states, (t_x * m, sizes.n_a))
    logits = hidden_rows @ parameters["Wy"].T + parameters["by"].T
    probabilities = xp.reshape(_softmax(logits, 1, xp), (t_x, m, sizes.n_y))
    if lengths is not None:
        inside = step_masks(lengths, t_x, xp, _device(x))
        probabilities = xp.where(inside, probabilities, xp.zeros_like(probabilities))
    a = time_major(states, xp)
    y = time_major(probabilities, xp)
    c = time_major(cells, xp)
    return a, y, c, ((run.cache, x) if cache else None)


def final_states(caches: Any, *, xp: Any = None) -> tuple[Any, Any]:
    """The state at each sequence's own last step: ``(a_n, c_n)``, each ``(n_a, m)``.

    Without ``lengths`` these are ``a[..., -1]`` and ``c[..., -1]``; with
    ``lengths`` sequence ``j``'s are ``a[:, j, lengths[j] - 1]`` and
    ``c[:, j, lengths[j] - 1]``.  Their gradients go into :func:`lstm_backward`
    as ``da_n`` and ``dc_n``.

    Parameters
    ----------
    caches : tuple
        The ``caches`` returned by :func:`lstm_forward`.
    """
    cache, _ = _check_caches(caches)
    xp = namespace_of({"cache.h": cache.h}, xp=xp)
    h_n, c_n = final_state(cache, xp)
    return h_n.T, c_n.T


def _check_caches(caches: Any) -> tuple[SequenceCache, Any]:
    if caches is None:
        msg = (
            "`caches` is None: lstm_forward(..., cache=False) keeps nothing for backward; "
            "run it with cache=True (the default)"
        )
        raise TypeError(msg)
    if not (
        isinstance(caches, tuple) and len(caches) == 2 and isinstance(caches[0], SequenceCache)
    ):
        msg = "`caches` must be the (SequenceCache, x) tuple returned by lstm_forward"
        raise TypeError(msg)
    return caches


@ieee_arithmetic
def lstm_backward(
    da: Any,
    caches: Any,
    dc: Any = None,
    *,
    xp: Any = None,
    engine: str = "auto",
    fused: Any = None,
    da_n: Any = None,
    dc_n: Any = None,
) -> dict[str, Any]:
    r"""Backpropagation through time for :func:`lstm_forward`.

    Gradients flow back through both recurrences: the total gradient reaching
    ``a_t`` is ``da[..., t]`` plus what step ``t + 1`` sends back through
    ``a_t``; likewise for ``c_t``.  Weight and bias gradients are summed over
    all steps.  Per step, with ``\delta a`` and ``\delta c`` those totals:

    .. math::

        \delta c &\mathrel{+}= \delta a \odot o_t \odot (1 - \tanh^2 c_t), \quad
        \delta o = \delta a \odot \tanh c_t, \quad
        \delta i = \delta c \odot \tilde c_t, \quad
        \delta \tilde c = \delta c \odot i_t, \quad
        \delta f = \delta c \odot c_{t-1}, \\
        \delta c_{t-1} &= \delta c \odot f_t,

    then through the gate nonlinearities to the pre-activations ``dz`` and
    ``dW_* += dz_* [a_{t-1}; x_t]^T``, ``[\delta a_{t-1}; dx_t] = \sum W_*^T dz_*``.

    Parameters
    ----------
    da : array, shape (n_a, m, T_x)
        Gradient of the loss with respect to each hidden state ``a_t`` from
        outside the recurrence (for example through ``y``).
    caches : tuple
        The ``caches`` returned by :func:`lstm_forward`.
    dc : array, shape (n_a, m, T_x), optional
        The same for the cell states.  Default: none (zeros).
    xp, engine, fused
        As in :func:`lstm_forward`.  ``"auto"`` picks an engine that can read
        ``caches`` (any engine's cache is readable by the generic engine).
    da_n, dc_n : array, shape (n_a, m), optional
        Gradients reaching the final states (:func:`final_states`), like
        ``torch.nn.LSTM``'s ``h_n``, ``c_n``.  Without ``lengths`` this is the
        same as adding them to ``da[..., -1]``, ``dc[..., -1]``.

    With ``lengths`` (see :func:`lstm_forward`) the entries of ``da`` and
    ``dc`` past each sequence's end are ignored and ``dx`` is zero there.

    Returns
    -------
    dict
        ``dx (n_x, m, T_x)``, ``da0 (n_a, m)``, ``dc0 (n_a, m)``,
        ``dWf, dWi, dWc, dWo (n_a, n_a + n_x)``, ``dbf, dbi, dbc, dbo (n_a, 1)``.
        The output layer (``Wy``, ``by``) is not part of the recurrence: its
        gradient is the caller's (see ``xlstm.training``).
    """
    cache, x = _check_caches(caches)
    arrays = {"da": da, "caches[1] (x)": x, "cache.h": cache.h, "cache.W": cache.W}
    for name, value in (("dc", dc), ("da_n", da_n), ("dc_n", dc_n)):
        if value is not None:
            arrays[name] = value
    xp = namespace_of(arrays, xp=xp)
    t_plus_one, m, n_a = (int(s) for s in cache.h.shape)
    t_x, n_x = t_plus_one - 1, int(cache.W.shape[1]) - n_a
    if tuple(int(s) for s in x.shape) != (n_x, m, t_x):
        msg = (
            f"`caches[1]` (x) has shape {tuple(int(s) for s in x.shape)}; the cache was made "
            f"from x of shape (n_x, m, T_x) = {(n_x, m, t_x)}: pass the caches lstm_forward "
            "returned, unchanged"
        )
        raise ValueError(msg)
    _validation.check_shape("da", da, (n_a, m, t_x), "(n_a, m, T_x)")
    if dc is not None:
        _validation.check_shape("dc", dc, (n_a, m, t_x), "(n_a, m, T_x)")
    for name, value in (("da_n", da_n), ("dc_n", dc_n)):
        if value is not None:
            _validation.check_shape(name, value, (n_a, m), "(n_a, m)")
    run = _direction.from_cache(cache, time_major(x, xp), engine_option(engine, fused))
    dx_tm, dh0, dc0, gate_grads = _direction.backward(
        run,
        time_major(da, xp),
        None if dc is None else time_major(dc, xp),
        xp=xp,
        dh_n=None if da_n is None else da_n.T,
        dc_n=None if dc_n is None else dc_n.T,
    )
    gradients = {"dx": time_major(dx_tm, xp), "da0": dh0.T, "dc0": dc0.T, **gate_grads}
    return {key: gradients[key] for key in SEQUENCE_GRADIENT_KEYS}


__all__ = ["SequenceCache", "final_states", "lstm_backward", "lstm_forward"]
