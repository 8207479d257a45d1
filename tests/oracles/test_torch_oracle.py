"""``torch.nn.LSTM`` / ``torch.nn.LSTMCell`` autograd as an independent oracle (float64).

Weight mapping. torch stacks gates in the order i, f, g, o with ``weight_ih`` (4 n_a, n_x),
``weight_hh`` (4 n_a, n_a) and two biases that are added. xlstm's seed dict has Wi, Wf, Wc (= g),
Wo of shape (n_a, n_a + n_x) whose columns are [recurrent | input]. So for gate block k:
``weight_hh[k] = W[:, :n_a]``, ``weight_ih[k] = W[:, n_a:]``, ``bias_ih[k] + bias_hh[k] = b``.
The split of b between the two torch biases is random, to prove only their sum matters.

Loss: L = sum(a * Ga) + sum(c * Gc). With dc=None (Gc = 0) the whole-sequence ``nn.LSTM`` is the
oracle; with dc given, every c_t is needed, so an ``nn.LSTMCell`` loop is the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import (
    SEQ_GRAD_KEYS,
    SHAPE_IDS,
    SHAPES,
    backend_name,
    random_problem,
    record_worst,
    ref_softmax,
    rel_err,
    to_numpy,
)

import xlstm

torch = pytest.importorskip("torch")

TORCH_GATES = ("i", "f", "c", "o")  # torch's i, f, g, o in xlstm's key letters
ORACLE_TOL = 1e-10


def _load_torch_weights(module, params, n_a, rng):
    W = np.concatenate([params[f"W{g}"] for g in TORCH_GATES], axis=0)
    b = np.concatenate([params[f"b{g}"] for g in TORCH_GATES], axis=0)[:, 0]
    split = rng.standard_normal(b.shape)
    suffix = "_l0" if isinstance(module, torch.nn.LSTM) else ""
    with torch.no_grad():
        getattr(module, f"weight_hh{suffix}").copy_(torch.from_numpy(W[:, :n_a]))
        getattr(module, f"weight_ih{suffix}").copy_(torch.from_numpy(W[:, n_a:]))
        getattr(module, f"bias_ih{suffix}").copy_(torch.from_numpy(b - split))
        getattr(module, f"bias_hh{suffix}").copy_(torch.from_numpy(split))
    return suffix


def torch_oracle(prob, with_dc: bool):
    """a, c (n_a, m, T; c only at the last step for nn.LSTM) and xlstm-shaped gradients."""
    n_x, T, n_a = prob.n_x, prob.T, prob.n_a
    rng = np.random.default_rng(0)
    x = torch.tensor(prob.x.transpose(2, 1, 0).copy(), requires_grad=True)  # (T, m, n_x)
    h0 = torch.tensor(prob.a0.T.copy(), requires_grad=True)  # (m, n_a)
    c0 = torch.tensor(prob.c0.T.copy(), requires_grad=True)
    Ga = torch.from_numpy(prob.Ga.transpose(2, 1, 0).copy())
    Gc = torch.from_numpy(prob.Gc.transpose(2, 1, 0).copy())
    if with_dc:
        module = torch.nn.LSTMCell(n_x, n_a, dtype=torch.float64)
        suffix = _load_torch_weights(module, prob.params, n_a, rng)
        h, c, hs, cs = h0, c0, [], []
        for t in range(T):
            h, c = module(x[t], (h, c))
            hs.append(h)
            cs.append(c)
        a_tm, c_tm = torch.stack(hs), torch.stack(cs)
        loss = (a_tm * Ga).sum() + (c_tm * Gc).sum()
    else:
        module = torch.nn.LSTM(n_x, n_a, dtype=torch.float64)
        suffix = _load_torch_weights(module, prob.params, n_a, rng)
        a_tm, (_, c_last) = module(x, (h0[None], c0[None]))
        c_tm = c_last  # (1, m, n_a): the final cell state only
        loss = (a_tm * Ga).sum()
    loss.backward()

    def param_grad(name):
        return getattr(module, f"{name}{suffix}").grad.numpy()

    dW_hh, dW_ih = param_grad("weight_hh"), param_grad("weight_ih")
    db = param_grad("bias_ih")
    np.testing.assert_allclose(param_grad("bias_hh"), db, rtol=1e-12, atol=1e-14)
    grads = {
        "dx": x.grad.numpy().transpose(2, 1, 0),
        "da0": h0.grad.numpy().T,
        "dc0": c0.grad.numpy().T,
    }
    for k, g in enumerate(TORCH_GATES):
        rows = slice(k * n_a, (k + 1) * n_a)
        grads[f"dW{g}"] = np.concatenate([dW_hh[rows], dW_ih[rows]], axis=1)
        grads[f"db{g}"] = db[rows][:, None]
    a = a_tm.detach().numpy().transpose(2, 1, 0)
    c = c_tm.detach().numpy().transpose(2, 1, 0)
    return a, c, grads


@pytest.mark.parametrize("with_dc", [False, True], ids=["dc=None", "dc"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_torch_autograd(xp, shape, with_dc):
    prob = random_problem(900 + SHAPES.index(shape), *shape)
    oracle_a, oracle_c, oracle_grads = torch_oracle(prob, with_dc)

    d = prob.to(xp)
    a, y, c, caches = xlstm.lstm_forward(d["x"], d["a0"], d["params"], d["c0"])
    grads = xlstm.lstm_backward(d["Ga"], caches, dc=d["Gc"] if with_dc else None)

    errors = {"a": rel_err(a, oracle_a)}
    c_np = to_numpy(c)
    errors["c"] = rel_err(c_np if with_dc else c_np[:, :, -1:], oracle_c)
    # y = softmax over rows of Wy a_t + by, built here from torch's hidden states.
    logits = np.einsum("ya,amt->ymt", prob.params["Wy"], oracle_a) + prob.params["by"][:, :, None]
    errors["y"] = rel_err(y, ref_softmax(logits, axis=0))
    assert set(grads) == set(SEQ_GRAD_KEYS)
    for k in SEQ_GRAD_KEYS:
        errors[k] = rel_err(grads[k], oracle_grads[k])
    worst_key = max(errors, key=errors.get)
    record_worst(
        "torch-oracle", errors[worst_key], f"{backend_name(xp)} {shape} dc={with_dc} {worst_key}"
    )
    bad = {k: f"{e:.3e}" for k, e in errors.items() if e > ORACLE_TOL}
    assert not bad, f"disagrees with torch autograd: {bad}"
