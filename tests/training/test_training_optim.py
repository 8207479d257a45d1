"""Optimisers and clipping, checked step by step against torch.optim / torch.nn.utils."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _helpers import asxp, record_worst, rel_err, to_numpy

from xlstm.training import (
    SGD,
    Adam,
    AdamW,
    clip_by_global_norm,
    clip_by_value,
    global_norm,
)
from xlstm.training.optim import optimizer_from_config

torch = pytest.importorskip("torch")

SHAPES = {"W": (4, 3), "b": (4, 1)}
STEPS = 5


def random_dicts(seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{f"d{k}": rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(STEPS)]
    return params, grads


CASES = [
    (SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (SGD(lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (
        SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    ),
    (Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (
        Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    ),
    (AdamW(lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    (
        AdamW(lr=0.01, weight_decay=0.5),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5),
    ),
]
IDS = ["sgd", "sgd-momentum", "sgd-nesterov-wd", "adam", "adam-options-wd", "adamw", "adamw-0.5"]


@pytest.mark.parametrize(("optimizer", "make_torch"), CASES, ids=IDS)
def test_steps_match_torch_optim(xp, optimizer, make_torch):
    params, grads = random_dicts()
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = make_torch(list(theirs.values()))
    ours = {k: asxp(xp, v) for k, v in params.items()}
    state = optimizer.init(ours)
    for step_grads in grads:
        for key, tensor in theirs.items():
            tensor.grad = torch.tensor(step_grads[f"d{key}"])
        opt.step()
        ours, state = optimizer.update(ours, {k: asxp(xp, v) for k, v in step_grads.items()}, state)
    assert state["step"] == STEPS
    worst = max(rel_err(ours[k], theirs[k].detach().numpy()) for k in params)
    record_worst("optimiser steps vs torch.optim", worst, repr(optimizer))
    assert worst < 1e-13


def test_update_does_not_modify_inputs(xp):
    params, grads = random_dicts(1)
    ours = {k: asxp(xp, v) for k, v in params.items()}
    g = {k: asxp(xp, v) for k, v in grads[0].items()}
    for optimizer in (SGD(momentum=0.5), Adam(), AdamW()):
        state = optimizer.init(ours)
        state_before = {
            s: {k: to_numpy(v) for k, v in b.items()} for s, b in state.items() if s != "step"
        }
        new, new_state = optimizer.update(ours, g, state)
        for key, value in ours.items():
            assert np.array_equal(to_numpy(value), params[key])
            assert not np.array_equal(to_numpy(new[key]), params[key])
        for key, value in g.items():
            assert np.array_equal(to_numpy(value), grads[0][key])
        assert state["step"] == 0
        assert new_state["step"] == 1
        for slot, buffers in state_before.items():
            for key, value in buffers.items():
                assert np.array_equal(to_numpy(state[slot][key]), value)


def leaves(grads):
    """Torch leaf tensors whose .grad holds ``grads`` (for torch's clipping functions)."""
    tensors = []
    for value in grads.values():
        tensor = torch.zeros(value.shape, dtype=torch.float64, requires_grad=True)
        tensor.grad = torch.tensor(value)
        tensors.append(tensor)
    return tensors


def test_clip_by_global_norm_matches_torch(xp):
    _, grads = random_dicts(2)
    g = grads[0]
    total = np.sqrt(sum((v * v).sum() for v in g.values()))
    for max_norm in (0.5 * total, 2.0 * total):
        tensors = leaves(g)
        torch_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
        clipped, norm = clip_by_global_norm({k: asxp(xp, v) for k, v in g.items()}, max_norm)
        assert float(norm) == pytest.approx(float(torch_norm), rel=1e-14)
        for tensor, key in zip(tensors, g, strict=True):
            assert rel_err(clipped[key], tensor.grad.numpy()) < 1e-14
    clipped, _ = clip_by_global_norm({k: asxp(xp, v) for k, v in g.items()}, 0.5 * total)
    assert float(global_norm(clipped)) == pytest.approx(0.5 * total, rel=1e-5)


def test_clip_by_value_matches_torch(xp):
    _, grads = random_dicts(3)
    g = grads[0]
    tensors = leaves(g)
    torch.nn.utils.clip_grad_value_(tensors, 0.3)
    clipped = clip_by_value({k: asxp(xp, v) for k, v in g.items()}, 0.3)
    for tensor, key in zip(tensors, g, strict=True):
        assert rel_err(clipped[key], tensor.grad.numpy()) == 0.0
    assert max(float(np.abs(to_numpy(v)).max()) for v in clipped.values()) <= 0.3


def test_config_round_trip():
    for optimizer in (SGD(lr=0.5, momentum=0.1), Adam(betas=(0.5, 0.6)), AdamW(weight_decay=0.2)):
        assert optimizer_from_config(optimizer.config()) == optimizer
    assert dataclasses.replace(Adam(), lr=0.1).lr == 0.1


def test_errors_name_the_argument():
    params, grads = random_dicts(4)
    adam = Adam()
    state = adam.init(params)
    with pytest.raises(ValueError, match="`grads` is missing 'dW'"):
        adam.update(params, {"db": grads[0]["db"]}, state)
    with pytest.raises(ValueError, match=r"`grads\['dW'\]` has shape \(3, 4\)"):
        adam.update(params, {**grads[0], "dW": grads[0]["dW"].T}, state)
    with pytest.raises(TypeError, match="`state` must be the dict"):
        adam.update(params, grads[0], None)
    with pytest.raises(ValueError, match=r"`state\['m'\]` does not hold"):
        adam.update(params, grads[0], SGD(momentum=0.5).init({"W": params["W"]}) | {"m": {}})
    with pytest.raises(TypeError, match="dtype"):
        adam.update(params, {k: v.astype(np.float32) for k, v in grads[0].items()}, state)
    with pytest.raises(ValueError, match="`lr` = -1"):
        Adam(lr=-1)
    with pytest.raises(ValueError, match=r"`betas\[0\]` = 1.5"):
        Adam(betas=(1.5, 0.9))
    with pytest.raises(ValueError, match=r"`momentum` = 1\.5"):
        SGD(momentum=1.5)
    with pytest.raises(ValueError, match="`nesterov` = True needs"):
        SGD(nesterov=True)
    with pytest.raises(ValueError, match="`max_norm` = 0"):
        clip_by_global_norm(grads[0], 0)
    with pytest.raises(ValueError, match="`clip_value` = -1"):
        clip_by_value(grads[0], -1)
    with pytest.raises(TypeError, match="`grads` must be a non-empty dict"):
        global_norm({})
