"""``torch.nn.LSTM`` on the same problem as xlstm, for ``python -m xlstm bench``.

The peer is ``nn.LSTM(n_x, n_a)`` (one layer, time-major input (T, m, n_x)) whose
weights are the xlstm parameters mapped into torch's gate order ``i, f, g, o``:
``weight_ih = [Wi; Wf; Wc; Wo][:, n_a:]``, ``weight_hh = [...][:, :n_a]``,
``bias_ih = [bi; bf; bc; bo]``, ``bias_hh = 0`` (xlstm's ``Wc`` is gate ``g``).

Inference is the forward under ``torch.no_grad()`` (nothing kept for backward), like
xlstm's ``lstm_forward(..., cache=False)``. Forward is a training-mode forward
(autograd on, inputs and initial state requiring grad), like xlstm's default
forward, which keeps what backward needs. Forward+backward
backpropagates given upstream gradients on the output sequence and on the final
``(h, c)``, and computes every gradient xlstm computes: weights, biases, the input
sequence and the initial state. The same gradients in xlstm's terms are
``da = g_out`` (plus ``g_h`` at the last step) and ``dc`` zero but ``g_c`` at the
last step; :func:`upstream_gradients` builds both from one random draw.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def upstream_gradients(n_a: int, m: int, T: int, dtype: str, rng: np.random.Generator):
    """Random upstream gradients, in xlstm layout: ``(da, dc)`` each (n_a, m, T).

    ``da`` is the gradient on every output a_t (torch: ``g_out`` plus ``g_h`` at the
    last step); ``dc`` is zero except at the last step (torch: ``g_c``).
    """
    da = rng.standard_normal((n_a, m, T)).astype(dtype)
    dc = np.zeros((n_a, m, T), dtype=dtype)
    dc[:, :, -1] = rng.standard_normal((n_a, m)).astype(dtype)
    return da, dc


class TorchLSTMPeer:
    """``torch.nn.LSTM`` set up from NumPy xlstm-layout arrays.

    Parameters
    ----------
    parameters : dict of numpy arrays
        Seed layout (``Wf`` ... ``bo``; ``Wy``/``by`` are ignored: torch has no
        output layer).
    x : numpy array (n_x, m, T)
    a0 : numpy array (n_a, m)
    da, dc : numpy arrays (n_a, m, T)
        Upstream gradients as made by :func:`upstream_gradients`.
    dtype : "float32" or "float64"
    device : torch device string ("cpu", "cuda", ...)
    """

    def __init__(self, parameters, x, a0, da, dc, *, dtype: str, device: str = "cpu"):
        import torch

        self.torch = torch
        n_x, m, _ = x.shape
        n_a = a0.shape[0]
        tdtype = getattr(torch, dtype)

        def tensor(array: np.ndarray, *, grad: bool = False):
            out = torch.tensor(np.ascontiguousarray(array), dtype=tdtype, device=device)
            return out.requires_grad_(grad)

        W = np.concatenate([parameters[k] for k in ("Wi", "Wf", "Wc", "Wo")], axis=0)
        b = np.concatenate([parameters[k] for k in ("bi", "bf", "bc", "bo")], axis=0).reshape(-1)
        self.lstm = torch.nn.LSTM(n_x, n_a).to(device=device, dtype=tdtype)
        with torch.no_grad():
            self.lstm.weight_ih_l0.copy_(tensor(W[:, n_a:]))
            self.lstm.weight_hh_l0.copy_(tensor(W[:, :n_a]))
            self.lstm.bias_ih_l0.copy_(tensor(b))
            self.lstm.bias_hh_l0.zero_()
        self.lstm.train()

        self.x = tensor(x.transpose(2, 1, 0), grad=True)  # (T, m, n_x)
        self.h0 = tensor(a0.T[None], grad=True)  # (1, m, n_a)
        self.c0 = tensor(np.zeros((1, m, n_a)), grad=True)
        g_out = da.transpose(2, 1, 0).copy()  # (T, m, n_a)
        self.g_h = tensor(g_out[-1][None])
        g_out[-1] = 0.0
        self.g_out = tensor(g_out)
        self.g_c = tensor(dc[:, :, -1].T[None])
        self.sync = torch.cuda.synchronize if self.x.is_cuda else _no_sync

    def inference(self):
        """Forward with autograd off (no graph kept). Returns ``(out, (h_n, c_n))``."""
        with self.torch.no_grad():
            return self.lstm(self.x, (self.h0, self.c0))

    def forward(self):
        """Training-mode forward. Returns ``(out, (h_n, c_n))``."""
        return self.lstm(self.x, (self.h0, self.c0))

    def forward_backward(self):
        """Forward, then backward from the upstream gradients. Returns the tensors
        holding the gradients (weights, biases, input, initial state)."""
        self.backward(self.forward())
        return self.gradients_raw()

    def backward(self, result) -> None:
        """Backward of a :meth:`forward` result (gradients replaced, not summed)."""
        for tensor in (self.x, self.h0, self.c0, *self.lstm.parameters()):
            tensor.grad = None
        out, (h_n, c_n) = result
        self.torch.autograd.backward((out, h_n, c_n), (self.g_out, self.g_h, self.g_c))

    def gradients_raw(self):
        lstm = self.lstm
        return (
            lstm.weight_ih_l0.grad,
            lstm.weight_hh_l0.grad,
            lstm.bias_ih_l0.grad,
            self.x.grad,
            self.h0.grad,
            self.c0.grad,
        )

    def gradients_numpy(self) -> dict[str, Any]:
        """The last backward's gradients in xlstm layout, as NumPy arrays.

        Keys: dW (4 n_a, n_a + n_x) stacked in order i, f, g, o with columns
        [recurrent | input]; db (4 n_a,); dx (n_x, m, T); da0, dc0 (n_a, m).
        """
        w_ih, w_hh, b_ih, x, h0, c0 = (_numpy(t) for t in self.gradients_raw())
        return {
            "dW": np.concatenate([w_hh, w_ih], axis=1),
            "db": b_ih,
            "dx": x.transpose(2, 1, 0),
            "da0": h0[0].T,
            "dc0": c0[0].T,
        }


def output_numpy(result) -> np.ndarray:
    """``a`` (n_a, m, T) from the result of :meth:`TorchLSTMPeer.forward`."""
    out, _ = result
    return _numpy(out).transpose(2, 1, 0)


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _no_sync() -> None:
    return None
