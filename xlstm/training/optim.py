r"""Optimisers and gradient clipping as pure functions of explicit state.

An optimiser is a frozen configuration object with two methods and no hidden state::

    opt = Adam(lr=2e-3)
    state = opt.init(parameters)                       # a plain dict of arrays and a step count
    parameters, state = opt.update(parameters, grads, state)

``update`` returns a *new* parameter dict and a *new* state; neither input is modified, so
the same code runs on immutable arrays (JAX).  ``grads`` uses the seed's names: the gradient
of ``parameters["Wf"]`` is ``grads["dWf"]`` (other keys, e.g. ``dx``, are ignored).

The updates follow ``torch.optim`` exactly (same bias correction and order of operations),
with ``g`` the gradient, ``t`` the step count after increment and ``lr`` the learning rate:

* :class:`SGD`: ``g += wd p``; ``v = mu v + g``; ``p -= lr (g + mu v if nesterov else v)``.
* :class:`Adam`: ``g += wd p``; ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
  ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
* :class:`AdamW`: as Adam without the ``g += wd p``, and ``p *= 1 - lr wd`` first
  (decoupled weight decay, Loshchilov & Hutter 2019).

Clipping: :func:`clip_by_global_norm` scales all gradients by ``min(1, max_norm / (norm +
1e-6))`` with ``norm`` the 2-norm of all of them together (``torch.nn.utils.clip_grad_norm_``);
:func:`clip_by_value` clips each entry to ``[-clip_value, clip_value]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .._backend import namespace_of
from .._errstate import ieee_arithmetic
from .._validation import shape_of


def _check_real(
    name: str, value: Any, low: float, high: float = math.inf, *, open_low=False, open_high=False
):
    """A finite real number (Python or NumPy) in the interval, else a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above or not math.isfinite(value):
        closed_high = not open_high and math.isfinite(high)
        bounds = ("(" if open_low else "[") + f"{low}, {high}" + ("]" if closed_high else ")")
        raise ValueError(f"`{name}` = {value}; expected a finite value in {bounds}")


def _as_floats(config: Any, *names: str) -> None:
    # Python floats: a NumPy scalar times another library's array is not that library's array.
    for name in names:
        object.__setattr__(config, name, float(getattr(config, name)))


def _namespace(parameters: Any, grads: Any) -> Any:
    """Check the two dicts match key for key and shape for shape; return their namespace."""
    if not isinstance(parameters, Mapping):
        raise TypeError(f"`parameters` must be a dict of arrays, got {type(parameters).__name__}")
    if not isinstance(grads, Mapping):
        raise TypeError(f"`grads` must be a dict of arrays, got {type(grads).__name__}")
    missing = [f"d{key}" for key in parameters if f"d{key}" not in grads]
    if missing:
        msg = (
            f"`grads` is missing {', '.join(repr(k) for k in missing)}; the gradient of "
            "parameters['W'] must be grads['dW']"
        )
        raise ValueError(msg)
    arrays = {}
    for key, value in parameters.items():
        arrays[f"parameters[{key!r}]"] = value
        arrays[f"grads['d{key}']"] = grads[f"d{key}"]
    xp = namespace_of(arrays)
    for key, value in parameters.items():
        gradient = grads[f"d{key}"]
        if shape_of(gradient) != shape_of(value):
            msg = (
                f"`grads['d{key}']` has shape {shape_of(gradient)}; expected the shape of "
                f"parameters[{key!r}], {shape_of(value)}"
            )
            raise ValueError(msg)
    return xp


def _check_state(state: Any, parameters: Mapping[str, Any], slots: tuple[str, ...]) -> None:
    if not isinstance(state, Mapping) or "step" not in state:
        msg = "`state` must be the dict returned by the optimiser's init() or update()"
        raise TypeError(msg)
    for slot in slots:
        buffers = state.get(slot)
        if not isinstance(buffers, Mapping) or set(buffers) != set(parameters):
            msg = (
                f"`state[{slot!r}]` does not hold one buffer per parameter; "
                "was the state made for another parameter dict?"
            )
            raise ValueError(msg)
        for key, value in parameters.items():
            if shape_of(buffers[key]) != shape_of(value):
                found, expected = shape_of(buffers[key]), shape_of(value)
                msg = f"`state[{slot!r}][{key!r}]` has shape {found}; expected {expected}"
                raise ValueError(msg)


class Optimizer:
    """Base of the optimisers: configuration only; the state is the caller's."""

    slots: ClassVar[tuple[str, ...]] = ()

    def init(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """Fresh state for ``parameters``: ``{"step": 0, slot: {key: zeros}, ...}``."""
        if not isinstance(parameters, Mapping):
            msg = f"`parameters` must be a dict of arrays, got {type(parameters).__name__}"
            raise TypeError(msg)
        xp = namespace_of({f"parameters[{k!r}]": v for k, v in parameters.items()})
        state: dict[str, Any] = {"step": 0}
        for slot in self.slots:
            state[slot] = {key: xp.zeros_like(value) for key, value in parameters.items()}
        return state

    @ieee_arithmetic
    def update(
        self, parameters: Mapping[str, Any], grads: Mapping[str, Any], state: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One step.  Returns ``(new_parameters, new_state)``; the inputs are unchanged."""
        xp = _namespace(parameters, grads)
        _check_state(state, parameters, self.slots)
        step = int(state["step"]) + 1
        new_parameters: dict[str, Any] = {}
        new_state: dict[str, Any] = {"step": step, **{slot: {} for slot in self.slots}}
        for key, value in parameters.items():
            buffers = {slot: state[slot][key] for slot in self.slots}
            new_value, new_buffers = self._step(value, grads[f"d{key}"], buffers, step, xp)
            new_parameters[key] = new_value
            for slot in self.slots:
                new_state[slot][key] = new_buffers[slot]
        return new_parameters, new_state

    def config(self) -> dict[str, Any]:
        """JSON-serialisable ``{"name": ..., **fields}`` (see :func:`optimizer_from_config`)."""
        fields = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {"name": type(self).__name__, **{k: _plain(v) for k, v in fields.items()}}

    def _step(self, p, g, buffers, step, xp):  # pragma: no cover - abstract
        raise NotImplementedError


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    Parameters
    ----------
    lr : float, default 0.01
    momentum : float in [0, 1), default 0
    nesterov : bool, default False
    weight_decay : float >= 0, default 0
        Added to the gradient as ``wd * p`` (L2 regularisation).
    """

    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_real("lr", self.lr, 0.0)
        _check_real("momentum", self.momentum, 0.0, 1.0, open_high=True)
        _check_real("weight_decay", self.weight_decay, 0.0)
        _as_floats(self, "lr", "momentum", "weight_decay")
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"`nesterov` must be a bool, got {type(self.nesterov).__name__}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("`nesterov` = True needs `momentum` > 0")

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("momentum",) if self.momentum else ()

    def _step(self, p, g, buffers, step, xp):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if not self.momentum:
            return p - self.lr * g, {}
        velocity = self.momentum * buffers["momentum"] + g
        direction = g + self.momentum * velocity if self.nesterov else velocity
        return p - self.lr * direction, {"momentum": velocity}


@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction, as ``torch.optim.Adam``.

    Parameters
    ----------
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float > 0, default 1e-8
    weight_decay : float >= 0, default 0
        L2 penalty added to the gradient (for decoupled decay use :class:`AdamW`).
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    slots: ClassVar[tuple[str, ...]] = ("m", "v")
    decoupled: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_real("lr", self.lr, 0.0)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise TypeError(f"`betas` must be a pair of floats, got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))
        _check_real("betas[0]", self.betas[0], 0.0, 1.0)
        _check_real("betas[1]", self.betas[1], 0.0, 1.0)
        if self.betas[0] == 1.0 or self.betas[1] == 1.0:
            raise ValueError(f"`betas` = {self.betas}; each must be below 1")
        _check_real("eps", self.eps, 0.0, open_low=True)
        _check_real("weight_decay", self.weight_decay, 0.0)
        _as_floats(self, "lr", "eps", "weight_decay")
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))

    def _step(self, p, g, buffers, step, xp):
        beta1, beta2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p = p * (1.0 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
        m = beta1 * buffers["m"] + (1.0 - beta1) * g
        v = beta2 * buffers["v"] + (1.0 - beta2) * (g * g)
        # Bias corrections are host floats: no device round trip per step.
        step_size = self.lr / (1.0 - beta1**step)
        root_correction = math.sqrt(1.0 - beta2**step)
        return p - step_size * (m / (xp.sqrt(v) / root_correction + self.eps)), {"m": m, "v": v}


@dataclasses.dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW`` (``weight_decay=0.01``)."""

    weight_decay: float = 0.01
    decoupled: ClassVar[bool] = True


OPTIMIZERS = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}


def optimizer_from_config(config: Mapping[str, Any]) -> Optimizer:
    """Rebuild an optimiser from :meth:`Optimizer.config`'s dict."""
    if not isinstance(config, Mapping) or config.get("name") not in OPTIMIZERS:
        raise ValueError(f"`config` = {config!r} does not describe one of {sorted(OPTIMIZERS)}")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k != "name"}
    try:
        return OPTIMIZERS[config["name"]](**fields)
    except TypeError as error:
        raise ValueError(
            f"`config` = {config!r} is not a valid optimiser configuration: {error}"
        ) from None


# --------------------------------------------------------------------------- clipping


def _gradient_namespace(grads: Any, xp: Any) -> Any:
    if not isinstance(grads, Mapping) or not grads:
        raise TypeError("`grads` must be a non-empty dict of arrays")
    return namespace_of({f"grads[{k!r}]": v for k, v in grads.items()}, xp=xp)


@ieee_arithmetic
def global_norm(grads: Mapping[str, Any], /, *, xp: Any = None) -> Any:
    """The 2-norm of all arrays in ``grads`` taken together (a 0-d array)."""
    xp = _gradient_namespace(grads, xp)
    return xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))


@ieee_arithmetic
def clip_by_global_norm(
    grads: Mapping[str, Any], /, max_norm: float, *, xp: Any = None
) -> tuple[dict[str, Any], Any]:
    """Scale all gradients together so that their global 2-norm is at most ``max_norm``.

    Every array is multiplied by ``min(1, max_norm / (norm + 1e-6))``, as
    ``torch.nn.utils.clip_grad_norm_``; the direction of the whole update is kept.
    Computed on the device without a host round trip.

    Returns
    -------
    clipped : dict
        New arrays, same keys.
    norm : 0-d array
        The global norm *before* clipping (worth logging).
    """
    _check_real("max_norm", max_norm, 0.0, open_low=True)
    max_norm = float(max_norm)  # a NumPy scalar would not mix with other libraries' arrays
    xp = _gradient_namespace(grads, xp)
    norm = global_norm(grads, xp=xp)
    scale = xp.clip(max_norm / (norm + 1e-6), max=1.0)
    return {key: g * scale for key, g in grads.items()}, norm


@ieee_arithmetic
def clip_by_value(
    grads: Mapping[str, Any], /, clip_value: float, *, xp: Any = None
) -> dict[str, Any]:
    """Clip every gradient entry to ``[-clip_value, clip_value]``; returns new arrays."""
    _check_real("clip_value", clip_value, 0.0, open_low=True)
    clip_value = float(clip_value)
    xp = _gradient_namespace(grads, xp)
    return {key: xp.clip(g, -clip_value, clip_value) for key, g in grads.items()}


def apply_gradients(
    parameters: Mapping[str, Any],
    grads: Mapping[str, Any],
    optimizer: Optimizer,
    opt_state: Mapping[str, Any] | None,
    clip_norm: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """One optimiser step: clip by global norm (if ``clip_norm``), then update.

    The one update of every trainer (:meth:`xlstm.training.LSTMModel.apply_gradients`,
    :mod:`xlstm.dask`'s).  ``opt_state=None`` starts a fresh state.

    Returns
    -------
    parameters : dict
        New arrays (the given ones are unchanged).
    opt_state : dict
    norm : 0-d array or None
        The gradients' global norm before clipping (``None`` without clipping).
    """
    norm = None
    if clip_norm is not None:
        grads, norm = clip_by_global_norm(grads, clip_norm)
    if opt_state is None:
        opt_state = optimizer.init(parameters)
    new_parameters, new_state = optimizer.update(parameters, grads, opt_state)
    return new_parameters, new_state, norm


__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Optimizer",
    "apply_gradients",
    "clip_by_global_norm",
    "clip_by_value",
    "global_norm",
    "optimizer_from_config",
]
