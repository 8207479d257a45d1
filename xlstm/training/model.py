"""Model objects for people who prefer them: :class:`LSTMModel` and :class:`CharLSTM`.

A model holds the seed's parameter dict, its backend, device and dtype, an optimiser and the
optimiser's state.  Every method is a thin layer over the functions of
:mod:`xlstm.training.loss` and :mod:`xlstm.training.optim`: the arrays themselves are never
modified in place; a training step replaces the model's dict with new arrays.

Shape legend: ``x (n_x, m, T)``, integer ``ids`` and ``targets (m, T)``, states ``a, c
(n_a, m)``, ``y (n_y, m, T)``.  Gate order :data:`xlstm.GATE_ORDER` = (i, f, o, g).

Truncated backpropagation through time: :meth:`LSTMModel.train_step` takes and returns the
state ``(a, c)``; pass each chunk's final state to the next chunk of the same streams (see
:func:`xlstm.training.data.tbptt_batches`).  Gradients stop at the chunk boundary.

Checkpoints (:meth:`LSTMModel.save`, :func:`load_model`) are ``.npz`` files holding the
parameters (``param/Wf`` ...), the optimiser state (``opt/m/Wf`` ...) and one JSON string
``meta`` with the format name and version, the class, sizes, dtype, gate order, the
vocabulary of a :class:`CharLSTM`, the optimiser's configuration and user ``extra`` data.
They are written to a temporary file that replaces the old one only when complete, so an
interrupted save never leaves a broken checkpoint.  Loading checks everything before it
builds anything, and loads onto any backend.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from .. import _validation
from .._backend import backend_name, get_namespace, namespace_of, to_backend, to_host
from .._layout import GATE_ORDER, PARAMETER_KEYS
from ..parameters import init_parameters
from ..sequence import lstm_forward
from .loss import _one_hot, loss_and_gradients, sequence_loss
from .optim import Adam, Optimizer, clip_by_global_norm, optimizer_from_config

FORMAT = "xlstm-checkpoint"
FORMAT_VERSION = 1
DTYPES = ("float32", "float64")


def _dtype_name(dtype: Any) -> str:
    for name in DTYPES:
        if str(dtype).endswith(name):
            return name
    raise TypeError(f"`dtype` = {dtype!r}; expected 'float32' or 'float64'")


class LSTMModel:
    """An LSTM with a softmax output layer, its optimiser and the optimiser's state.

    Parameters
    ----------
    n_x, n_a, n_y : int
        Inputs, hidden units, output classes.
    backend : str or namespace, optional
        ``"numpy"`` (default), ``"cupy"``, ``"torch"``, ``"jax"``, ``"array_api_strict"``;
        with ``parameters``, theirs.
    device : optional
        In the backend's terms (``"cuda:0"`` for torch).  Default: the backend's default.
    dtype : {"float32", "float64"}, optional
        Default ``"float32"``; with ``parameters``, theirs.
    seed : int, optional
        Seed of the initialisation (:func:`xlstm.init_parameters`): same numbers on
        every backend.
    optimizer : Optimizer, optional
        Default ``Adam(lr=2e-3)``.
    clip_norm : float or None, default 5.0
        Clip gradients by global norm before each update (``None``: no clipping).
    fused : {"auto", True, False}, default "auto"
        Fast path of the recurrence, as in :func:`xlstm.lstm_forward`.
    parameters : dict, optional
        Start from these arrays instead of a fresh initialisation (they fix backend,
        device, dtype and sizes, which must then agree).

    Attributes
    ----------
    parameters : dict
        The seed's parameter dict (a new dict after every step; arrays never change).
    optimizer, opt_state
        The optimiser and its explicit state (``None`` until the first step).
    extra : dict
        JSON-serialisable data saved with the model (e.g. training progress).
    """

    kind = "LSTMModel"

    def __init__(
        self,
        n_x: int,
        n_a: int,
        n_y: int,
        *,
        backend: Any = None,
        device: Any = None,
        dtype: Any = None,
        seed: Any = None,
        optimizer: Optimizer | None = None,
        clip_norm: float | None = 5.0,
        fused: Any = "auto",
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        if parameters is None:
            parameters = init_parameters(
                n_x,
                n_a,
                n_y,
                xp="numpy" if backend is None else backend,
                dtype="float32" if dtype is None else dtype,
                seed=seed,
                device=device,
            )
        else:
            self._check_given_parameters(parameters, n_x, n_a, n_y, backend, dtype)
        self._parameters = dict(parameters)
        self.xp = namespace_of(_validation.named_parameters(self._parameters))
        self.n_x, self.n_a, self.n_y = n_x, n_a, n_y
        if optimizer is None:
            optimizer = Adam(lr=2e-3)
        if not isinstance(optimizer, Optimizer):
            msg = f"`optimizer` must be an xlstm.training Optimizer, got {type(optimizer).__name__}"
            raise TypeError(msg)
        if clip_norm is not None and not (
            isinstance(clip_norm, (int, float))
            and not isinstance(clip_norm, bool)
            and clip_norm > 0
        ):
            raise ValueError(f"`clip_norm` = {clip_norm!r}; expected a positive number or None")
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.fused = fused
        self.opt_state: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}

    @staticmethod
    def _check_given_parameters(parameters, n_x, n_a, n_y, backend, dtype) -> None:
        _validation.check_parameter_dict(parameters)
        xp = namespace_of(_validation.named_parameters(parameters))
        sizes = _validation.parameter_sizes(parameters)
        if tuple(sizes) != (n_x, n_a, n_y):
            msg = (
                f"`parameters` have sizes (n_x, n_a, n_y) = {tuple(sizes)}; "
                f"expected {(n_x, n_a, n_y)}"
            )
            raise ValueError(msg)
        if backend is not None and get_namespace(backend) is not xp:
            msg = f"`parameters` are {backend_name(xp)} arrays but `backend` = {backend!r}"
            raise TypeError(msg)
        if dtype is not None and _dtype_name(parameters["Wf"].dtype) != _dtype_name(dtype):
            msg = f"`parameters` have dtype {parameters['Wf'].dtype} but `dtype` = {dtype!r}"
            raise TypeError(msg)

    # ------------------------------------------------------------------ properties

    @property
    def parameters(self) -> dict[str, Any]:
        """A new dict of the current parameter arrays (do not modify the arrays in place)."""
        return dict(self._parameters)

    @property
    def backend(self) -> str:
        """Backend name: ``"numpy"``, ``"torch"``, ..."""
        return backend_name(self.xp)

    @property
    def device(self) -> Any:
        return array_api_compat.device(self._parameters["Wf"])

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float64"``."""
        return _dtype_name(self._parameters["Wf"].dtype)

    @property
    def step(self) -> int:
        """Optimiser steps taken so far."""
        return 0 if self.opt_state is None else int(self.opt_state["step"])

    def config(self) -> dict[str, Any]:
        """Sizes, dtype and gate order (what a checkpoint's ``meta`` records)."""
        return {
            "n_x": self.n_x,
            "n_a": self.n_a,
            "n_y": self.n_y,
            "dtype": self.dtype,
            "gate_order": list(GATE_ORDER),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_x={self.n_x}, n_a={self.n_a}, n_y={self.n_y}, "
            f"backend={self.backend!r}, dtype={self.dtype!r}, step={self.step})"
        )

    # ------------------------------------------------------------------ computing

    def inputs(self, x: Any) -> Any:
        """``x`` as the model's ``(n_x, m, T)`` input array.

        Integer ``(m, T)`` ids (a NumPy array or one of the model's backend) become one-hot
        columns; a floating ``(n_x, m, T)`` array of the model's backend passes through.
        """
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer):
            x = self.xp.asarray(x, device=self.device)
        if array_api_compat.is_array_api_obj(x) and self.xp.isdtype(x.dtype, "integral"):
            if x.ndim != 2:
                raise ValueError(
                    f"integer `x` must be ids of shape (m, T), got shape {tuple(x.shape)}"
                )
            # One-hot built time-major (T, m, n_x) and viewed as (n_x, m, T): the engine's
            # time-major reads are then contiguous.
            hot = _one_hot(
                self.xp.permute_dims(x, (1, 0)), self.n_x, -1, self._parameters["Wf"].dtype, self.xp
            )
            return self.xp.permute_dims(hot, (2, 1, 0))
        return x

    def _targets(self, targets: Any) -> Any:
        if isinstance(targets, np.ndarray):
            return self.xp.asarray(targets, device=self.device)
        return targets

    def _state(self, state: Any) -> tuple[Any, Any]:
        if state is None:
            return None, None
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("`state` must be None or the (a, c) tuple a previous call returned")
        return state

    def forward(self, x: Any, state: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """Softmax outputs ``y (n_y, m, T)`` and the final state ``(a_T, c_T)``."""
        x = self.inputs(x)
        a0, c0 = self._state(state)
        if a0 is None:
            a0 = self.xp.zeros((self.n_a, int(x.shape[1])), dtype=x.dtype, device=self.device)
        a, y, c, _ = lstm_forward(x, a0, self._parameters, c0, fused=self.fused)
        final = (self.xp.asarray(a[:, :, -1], copy=True), self.xp.asarray(c[:, :, -1], copy=True))
        return y, final

    def loss(self, x: Any, targets: Any, *, mask: Any = None, state: Any = None):
        """Mean cross-entropy (no gradients): returns ``(loss, state)``."""
        a0, c0 = self._state(state)
        return sequence_loss(
            self.inputs(x), self._targets(targets), self._parameters, a0, c0,
            self._targets(mask), fused=self.fused,
        )  # fmt: skip

    def loss_and_gradients(self, x: Any, targets: Any, *, mask: Any = None, state: Any = None):
        """``(loss, grads, state)`` of :func:`xlstm.training.loss_and_gradients`."""
        a0, c0 = self._state(state)
        return loss_and_gradients(
            self.inputs(x), self._targets(targets), self._parameters, a0, c0,
            self._targets(mask), fused=self.fused,
        )  # fmt: skip

    def apply_gradients(self, grads: Mapping[str, Any]) -> Any:
        """Clip (if ``clip_norm``) and take one optimiser step.  Returns the gradient norm
        before clipping (a 0-d array), or ``None`` without clipping."""
        norm = None
        if self.clip_norm is not None:
            grads, norm = clip_by_global_norm(grads, self.clip_norm)
        if self.opt_state is None:
            self.opt_state = self.optimizer.init(self._parameters)
        self._parameters, self.opt_state = self.optimizer.update(
            self._parameters, grads, self.opt_state
        )
        return norm

    def train_step(
        self, x: Any, targets: Any, *, mask: Any = None, state: Any = None
    ) -> tuple[Any, tuple[Any, Any]]:
        """One update on a batch.  Returns ``(loss, state)``: the loss before the update
        (0-d array) and the final ``(a, c)`` to carry into the next chunk."""
        loss, grads, final = self.loss_and_gradients(x, targets, mask=mask, state=state)
        self.apply_gradients(grads)
        return loss, final

    # ------------------------------------------------------------------ moving, saving

    def _copy_to(self, backend: Any, device: Any) -> LSTMModel:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._parameters = to_backend(self._parameters, backend, device=device)
        clone.xp = get_namespace(backend)
        clone.extra = json.loads(json.dumps(self.extra))
        if self.opt_state is not None:
            clone.opt_state = {
                key: (
                    to_backend(value, backend, device=device)
                    if isinstance(value, Mapping)
                    else value
                )
                for key, value in self.opt_state.items()
            }
        return clone

    def to(self, backend: Any, *, device: Any = None) -> LSTMModel:
        """A copy of the model (parameters and optimiser state) on another backend/device.

        The model itself is left as it is.
        """
        return self._copy_to(backend, device)

    def _meta(self) -> dict[str, Any]:
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "class": self.kind,
            **self.config(),
            "clip_norm": self.clip_norm,
            "optimizer": self.optimizer.config(),
            "opt_step": None if self.opt_state is None else int(self.opt_state["step"]),
            "extra": self.extra,
        }
        return meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.npz`` checkpoint atomically; returns the path written.

        ``".npz"`` is appended when ``path`` has no suffix.
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".npz")
        meta = self._meta()
        try:
            meta_text = json.dumps(meta)
        except TypeError as error:
            raise TypeError(f"`extra` must be JSON-serialisable: {error}") from None
        arrays = {f"param/{k}": to_host(v) for k, v in self._parameters.items()}
        if self.opt_state is not None:
            for slot, buffers in self.opt_state.items():
                if isinstance(buffers, Mapping):
                    arrays.update({f"opt/{slot}/{k}": to_host(v) for k, v in buffers.items()})
        arrays["meta"] = np.asarray(meta_text)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: Any = None, device: Any = None) -> LSTMModel:
        """Load a checkpoint onto ``backend`` (default: NumPy) and ``device``.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            The file is not a readable xlstm checkpoint, or its contents disagree with each
            other (sizes, dtype, gate order, class); nothing is loaded.
        """
        model = load_model(path, backend=backend, device=device)
        if not isinstance(model, cls):
            msg = f"`path` {str(path)!r} holds a {type(model).__name__}, not a {cls.__name__}"
            raise ValueError(msg)
        return model


class CharLSTM(LSTMModel):
    """A character-level language model: ``n_x = n_y = len(vocab)``, one-hot inputs.

    Parameters
    ----------
    vocab : str
        The distinct characters, in id order (``sorted(set(text))`` is the usual choice).
    n_a : int, default 128
    **options
        As :class:`LSTMModel` (backend, device, dtype, seed, optimizer, clip_norm, ...).
    """

    kind = "CharLSTM"

    def __init__(self, vocab: str, n_a: int = 128, **options: Any) -> None:
        if not isinstance(vocab, str):
            raise TypeError(
                f"`vocab` must be a str of distinct characters, got {type(vocab).__name__}"
            )
        if not vocab or len(set(vocab)) != len(vocab):
            raise ValueError("`vocab` must be a non-empty string of distinct characters")
        super().__init__(len(vocab), n_a, len(vocab), **options)
        self.vocab = vocab
        self._index = {ch: i for i, ch in enumerate(vocab)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "vocab": self.vocab}

    def encode(self, text: str) -> np.ndarray:
        """Character ids of ``text`` (int64 NumPy array); unknown characters are an error."""
        try:
            return np.fromiter((self._index[ch] for ch in text), dtype=np.int64, count=len(text))
        except KeyError as error:
            raise ValueError(
                f"`text` holds {error.args[0]!r}, which is not in the vocabulary"
            ) from None

    def decode(self, ids: Any) -> str:
        """The text of a sequence of ids."""
        host = to_host(ids) if array_api_compat.is_array_api_obj(ids) else np.asarray(ids)
        return "".join(self.vocab[int(i)] for i in host.reshape(-1))

    def sample(
        self, length: int, *, prime: str = "", temperature: float = 1.0, seed: Any = None
    ) -> str:
        """Generate ``length`` characters after ``prime``.

        Runs on a NumPy float64 copy of the parameters (one character at a time is
        latency-bound, and the host draws the random numbers anyway), so the text for a
        given seed is the same on every backend.
        """
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"`length` = {length!r}; expected a non-negative int")
        if not temperature > 0:
            raise ValueError(f"`temperature` = {temperature!r}; expected a positive number")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        p = {k: to_host(v).astype(np.float64) for k, v in self._parameters.items()}
        n_a = self.n_a
        W = np.concatenate([p["Wi"], p["Wf"], p["Wo"], p["Wc"]])
        b = np.concatenate([p["bi"], p["bf"], p["bo"], p["bc"]])[:, 0]
        w_h, w_x = W[:, :n_a], W[:, n_a:]
        h, c = np.zeros(n_a), np.zeros(n_a)

        def step(index: int) -> np.ndarray:
            nonlocal h, c
            z = w_x[:, index] + w_h @ h + b
            i, f, o = (0.5 * np.tanh(0.5 * z[k * n_a : (k + 1) * n_a]) + 0.5 for k in range(3))
            c = f * c + i * np.tanh(z[3 * n_a :])
            h = o * np.tanh(c)
            logits = (p["Wy"] @ h + p["by"][:, 0]) / temperature
            e = np.exp(logits - logits.max())
            return e / e.sum()

        prime_ids = self.encode(prime) if prime else [int(rng.integers(self.n_x))]
        for index in prime_ids[:-1]:
            step(int(index))
        current = int(prime_ids[-1])
        out = []
        for _ in range(length):
            probs = step(current)
            current = int(rng.choice(self.n_y, p=probs))
            out.append(self.vocab[current])
        return (prime if prime else "") + "".join(out)


# ---------------------------------------------------------------------- loading

_CLASSES = {"LSTMModel": LSTMModel, "CharLSTM": CharLSTM}


class CheckpointError(ValueError):
    """A file that is not a valid xlstm checkpoint (a ``ValueError``)."""


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file, read and CRC-checked, or :class:`CheckpointError`."""
    with open(path, "rb") as file:  # np.load leaks its own handle when the zip is bad
        try:
            with np.load(file, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
            reason = f"{type(error).__name__}: {error}"
            msg = f"`path` {str(path)!r} is not a readable xlstm checkpoint ({reason})"
            raise CheckpointError(msg) from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a checkpoint: ``(meta, arrays)`` with NumPy arrays.

    Every consistency check of :func:`load_model` happens here, before anything is built.
    """
    path = Path(path)
    arrays = _read_npz(path)

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"`path` {str(path)!r} is not a valid xlstm checkpoint: {reason}")

    if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].ndim != 0:
        raise fail("it has no `meta` record (was it written by LSTMModel.save?)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as error:
        raise fail(f"its `meta` record is not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise fail(f"its format is {found!r}, expected {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise fail(
            f"format version {meta.get('version')!r}; this xlstm reads version {FORMAT_VERSION}"
        )
    if meta.get("class") not in _CLASSES:
        raise fail(f"unknown model class {meta.get('class')!r}")
    if meta.get("gate_order") != list(GATE_ORDER):
        raise fail(f"gate order {meta.get('gate_order')!r}; expected {list(GATE_ORDER)}")
    if meta.get("dtype") not in DTYPES:
        raise fail(f"dtype {meta.get('dtype')!r}; expected one of {DTYPES}")
    sizes = [meta.get(k) for k in ("n_x", "n_a", "n_y")]
    if not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise fail(f"sizes (n_x, n_a, n_y) = {tuple(sizes)} are not positive ints")
    n_x, n_a, n_y = sizes
    if meta["class"] == "CharLSTM":
        vocab = meta.get("vocab")
        if not isinstance(vocab, str) or len(vocab) != n_x or n_x != n_y or len(set(vocab)) != n_x:
            raise fail("its vocabulary does not match n_x = n_y")
    expected = {
        **{f"param/W{g}": (n_a, n_a + n_x) for g in "fico"},
        **{f"param/b{g}": (n_a, 1) for g in "fico"},
        "param/Wy": (n_y, n_a),
        "param/by": (n_y, 1),
    }
    for name, shape in expected.items():
        if name not in arrays:
            raise fail(f"`{name}` is missing")
        if arrays[name].shape != shape:
            raise fail(f"`{name}` has shape {arrays[name].shape}; the config says {shape}")
    for name, value in arrays.items():
        if name.startswith("param/") and name[6:] not in PARAMETER_KEYS:
            raise fail(f"unexpected array `{name}`")
        if value.dtype != np.dtype(meta["dtype"]):
            raise fail(f"`{name}` has dtype {value.dtype}; the config says {meta['dtype']}")
    slots: dict[str, set[str]] = {}
    for name in arrays:
        if name.startswith("opt/"):
            parts = name.split("/")
            if len(parts) != 3 or parts[2] not in PARAMETER_KEYS:
                raise fail(f"unexpected array `{name}`")
            slots.setdefault(parts[1], set()).add(parts[2])
            if arrays[name].shape != expected[f"param/{parts[2]}"]:
                raise fail(f"`{name}` has the wrong shape {arrays[name].shape}")
        elif not name.startswith("param/"):
            raise fail(f"unexpected array `{name}`")
    try:
        optimizer = optimizer_from_config(meta.get("optimizer"))
    except (ValueError, TypeError) as error:
        raise fail(f"bad optimiser record ({error})") from None
    step = meta.get("opt_step")
    if step is not None:
        if not isinstance(step, int) or step < 0:
            raise fail(f"optimiser step {step!r} is not a non-negative int")
        wanted = set(optimizer.slots)
        if set(slots) != wanted:
            name = type(optimizer).__name__
            raise fail(f"optimiser state has slots {sorted(slots)}; {name} needs {sorted(wanted)}")
        for slot, keys in slots.items():
            missing = [k for k in PARAMETER_KEYS if k not in keys]
            if missing:
                raise fail(f"optimiser slot {slot!r} lacks buffers for {missing}")
    elif slots:
        raise fail("optimiser buffers without an optimiser step")
    if not isinstance(meta.get("extra", {}), dict):
        raise fail("`extra` is not a dict")
    return meta, arrays


def load_model(path: str | os.PathLike, *, backend: Any = None, device: Any = None) -> LSTMModel:
    """Load an :class:`LSTMModel` or :class:`CharLSTM` checkpoint onto any backend.

    Parameters
    ----------
    path : str or path
    backend : str or namespace, optional
        Default ``"numpy"``.
    device : optional

    Raises
    ------
    FileNotFoundError
    ValueError (:class:`CheckpointError`)
        Corrupt, truncated or inconsistent file; nothing is loaded.
    """
    meta, arrays = read_checkpoint(path)
    backend = "numpy" if backend is None else backend
    xp = get_namespace(backend)
    parameters = {
        k: xp.asarray(arrays[f"param/{k}"], device=device, copy=True) for k in PARAMETER_KEYS
    }
    options = {
        "parameters": parameters,
        "backend": backend,
        "dtype": meta["dtype"],
        "optimizer": optimizer_from_config(meta["optimizer"]),
        "clip_norm": meta.get("clip_norm"),
    }
    if meta["class"] == "CharLSTM":
        model: LSTMModel = CharLSTM(meta["vocab"], meta["n_a"], **options)
    else:
        model = LSTMModel(meta["n_x"], meta["n_a"], meta["n_y"], **options)
    if meta.get("opt_step") is not None:
        state: dict[str, Any] = {"step": meta["opt_step"]}
        for slot in model.optimizer.slots:
            state[slot] = {
                k: xp.asarray(arrays[f"opt/{slot}/{k}"], device=device, copy=True)
                for k in PARAMETER_KEYS
            }
        model.opt_state = state
    model.extra = dict(meta.get("extra", {}))
    return model


__all__ = ["CharLSTM", "CheckpointError", "LSTMModel", "load_model", "read_checkpoint"]
