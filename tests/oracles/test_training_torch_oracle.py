"""Independent oracle for training: the same model in PyTorch, trained with torch.optim.

``torch.nn.LSTM`` + ``torch.nn.Linear`` (applied to every step's hidden state) with our weights
copied in, ``CrossEntropyLoss`` over all steps, ``torch.optim.Adam``; ours: ``loss_and_gradients``
+ ``clip_by_global_norm`` + ``Adam``.  N steps on the same batches in float64, carrying the state
between batches (truncated BPTT); afterwards every parameter must agree to ~1e-8 relative.

Gate order: ours stacks (i, f, o, g), torch stacks (i, f, g, o); the seed's ``Wc`` is ``g``.
Torch has two biases per gate (``bias_ih + bias_hh``): ``bias_hh`` is frozen at zero, else Adam
would move the sum twice as far as our single bias.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import asxp, backend_name, record_worst, rel_err

from xlstm.training import Adam, AdamW, clip_by_global_norm, loss_and_gradients, one_hot

torch = pytest.importorskip("torch")

N_X, N_A, N_Y, M, T, STEPS = 5, 6, 5, 3, 7, 6
TORCH_GATES = ("i", "f", "g", "o")
SEED_KEY = {"i": "i", "f": "f", "g": "c", "o": "o"}


def torch_model(params: dict):
    """nn.LSTM + nn.Linear holding the NumPy float64 ``params``."""
    lstm = torch.nn.LSTM(N_X, N_A).double()
    head = torch.nn.Linear(N_A, N_Y).double()
    with torch.no_grad():
        rows = [params["W" + SEED_KEY[g]] for g in TORCH_GATES]
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([w[:, :N_A] for w in rows])))
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([w[:, N_A:] for w in rows])))
        bias = np.concatenate([params["b" + SEED_KEY[g]][:, 0] for g in TORCH_GATES])
        lstm.bias_ih_l0.copy_(torch.from_numpy(bias))
        lstm.bias_hh_l0.zero_()
        head.weight.copy_(torch.from_numpy(params["Wy"]))
        head.bias.copy_(torch.from_numpy(params["by"][:, 0]))
    lstm.bias_hh_l0.requires_grad_(False)
    return lstm, head


def torch_to_seed(lstm, head) -> dict:
    """Torch weights back to the seed's dict (NumPy)."""
    w_hh = lstm.weight_hh_l0.detach().numpy()
    w_ih = lstm.weight_ih_l0.detach().numpy()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()
    out = {}
    for k, gate in enumerate(TORCH_GATES):
        rows = slice(k * N_A, (k + 1) * N_A)
        out["W" + SEED_KEY[gate]] = np.concatenate([w_hh[rows], w_ih[rows]], axis=1)
        out["b" + SEED_KEY[gate]] = bias[rows][:, None]
    out["Wy"] = head.weight.detach().numpy()
    out["by"] = head.bias.detach().numpy()[:, None]
    return out


@pytest.mark.parametrize(
    ("optimizer", "torch_optimizer", "clip"),
    [
        (Adam(lr=0.02), lambda ps: torch.optim.Adam(ps, lr=0.02), None),
        (Adam(lr=0.02), lambda ps: torch.optim.Adam(ps, lr=0.02), 0.1),
        (
            AdamW(lr=0.02, weight_decay=0.1),
            lambda ps: torch.optim.AdamW(ps, lr=0.02, weight_decay=0.1),
            0.1,
        ),
    ],
    ids=["adam", "adam-clip", "adamw-clip"],
)
def test_training_agrees_with_torch(xp, optimizer, torch_optimizer, clip):
    rng = np.random.default_rng(5)
    init = {}
    for g in "fico":
        init["W" + g] = 0.4 * rng.standard_normal((N_A, N_A + N_X))
        init["b" + g] = 0.2 * rng.standard_normal((N_A, 1))
    init["Wy"] = 0.4 * rng.standard_normal((N_Y, N_A))
    init["by"] = 0.2 * rng.standard_normal((N_Y, 1))
    batches = [(rng.integers(0, N_X, (M, T)), rng.integers(0, N_Y, (M, T))) for _ in range(STEPS)]
    a0 = 0.5 * rng.standard_normal((N_A, M))
    c0 = 0.5 * rng.standard_normal((N_A, M))

    # Theirs.
    lstm, head = torch_model(init)
    trainable = [p for p in [*lstm.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch_optimizer(trainable)
    state = (torch.from_numpy(a0.T.copy())[None], torch.from_numpy(c0.T.copy())[None])
    torch_losses = []
    for ids, targets in batches:
        inputs = torch.nn.functional.one_hot(torch.from_numpy(ids.T.copy()), N_X).double()
        hidden, (h_n, c_n) = lstm(inputs, state)
        logits = head(hidden)  # the Linear acts on each step's h: (T, m, n_y)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(T * M, N_Y), torch.from_numpy(targets.T.copy()).reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        opt.step()
        torch_losses.append(loss.item())
        state = (h_n.detach(), c_n.detach())

    # Ours, on the backend under test.
    params = {k: asxp(xp, v) for k, v in init.items()}
    opt_state = optimizer.init(params)
    a, c = asxp(xp, a0), asxp(xp, c0)
    losses, norms = [], []
    for ids, targets in batches:
        x = one_hot(xp.asarray(ids), N_X, axis=0, dtype=xp.float64)
        loss, grads, (a, c) = loss_and_gradients(x, xp.asarray(targets), params, a, c)
        if clip is not None:
            grads, norm = clip_by_global_norm(grads, clip)
            norms.append(float(norm))
        params, opt_state = optimizer.update(params, grads, opt_state)
        losses.append(float(loss))

    np.testing.assert_allclose(losses, torch_losses, rtol=1e-10)
    if clip is not None:
        assert max(norms) > clip, "clipping never acted: raise the learning rate or lower `clip`"
    expected = torch_to_seed(lstm, head)
    moved = max(rel_err(expected[k], init[k]) for k in init)
    assert moved > 1e-2, "the optimiser barely moved the parameters: the test would prove little"
    worst = max(rel_err(params[k], expected[k]) for k in init)
    record_worst(
        "training vs torch (params after N Adam steps)",
        worst,
        f"{type(optimizer).__name__} clip={clip} on {backend_name(xp)}",
    )
    print(f"parameters after {STEPS} steps: max relative difference from torch {worst:.2e}")
    assert worst < 1e-8
