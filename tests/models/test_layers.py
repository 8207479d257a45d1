"""Stacked and bidirectional LSTMs (:mod:`xlstm.layers`, :class:`xlstm.LSTM`).

Oracle: ``torch.nn.LSTM`` in float64 with the same weights (imported with
:func:`xlstm.convert.from_torch`, random ``bias_ih`` *and* ``bias_hh``), run on a packed batch
(``pack_padded_sequence(..., enforce_sorted=False)``) when lengths vary.  Loss
``sum(out * G) + sum(h_n * Gh) + sum(c_n * Gc)``; every gradient torch has is compared:
inputs, ``h0``, ``c0`` and every weight and bias.  Then the generic engine against the NumPy
fast path, central differences with dropout and lengths, dropout semantics, validation and
the model object.
"""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import asxp, backend_name, record_worst, rel_err, to_numpy

from xlstm import LSTM as StackedLSTM
from xlstm.convert import from_torch, to_torch
from xlstm.layers import multilayer_backward, multilayer_forward

torch = pytest.importorskip("torch")

ORACLE_TOL = 1e-10
CONFIGS = [(1, False), (2, False), (1, True), (2, True), (3, True)]
CONFIG_IDS = ["1layer", "2layers", "bi", "2layers-bi", "3layers-bi"]
LENGTHS = {"full": None, "packed": [3, 6, 1, 4, 6]}


def _torch_lstm(n_x, n_a, num_layers, bidirectional, seed=0):
    torch.manual_seed(seed)
    module = torch.nn.LSTM(
        n_x, n_a, num_layers=num_layers, bidirectional=bidirectional, dtype=torch.float64
    )
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.uniform_(-0.6, 0.6)  # bias_ih and bias_hh both non-zero
    return module


def torch_reference(module, x, a0, c0, G, Gh, Gc, lengths):
    """Outputs (D n_a, m, T), h_n, c_n (L D, n_a, m) and gradients, in xlstm layouts."""
    T = x.shape[2]
    xt = torch.tensor(x.transpose(2, 1, 0).copy(), requires_grad=True)
    h0 = torch.tensor(a0.transpose(0, 2, 1).copy(), requires_grad=True)
    c0t = torch.tensor(c0.transpose(0, 2, 1).copy(), requires_grad=True)
    if lengths is None:
        out, (h_n, c_n) = module(xt, (h0, c0t))
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), enforce_sorted=False
        )
        packed_out, (h_n, c_n) = module(packed, (h0, c0t))
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, total_length=T)
    loss = (
        (out * torch.from_numpy(G.transpose(2, 1, 0).copy())).sum()
        + (h_n * torch.from_numpy(Gh.transpose(0, 2, 1).copy())).sum()
        + (c_n * torch.from_numpy(Gc.transpose(0, 2, 1).copy())).sum()
    )
    module.zero_grad()
    loss.backward()
    grads = {
        "dx": xt.grad.numpy().transpose(2, 1, 0),
        "da0": h0.grad.numpy().transpose(0, 2, 1),
        "dc0": c0t.grad.numpy().transpose(0, 2, 1),
    }
    grads.update({name: p.grad.numpy().copy() for name, p in module.named_parameters()})
    values = (
        out.detach().numpy().transpose(2, 1, 0),
        h_n.detach().numpy().transpose(0, 2, 1),
        c_n.detach().numpy().transpose(0, 2, 1),
    )
    return values, grads


def _random_case(n_x, n_a, m, T, num_layers, bidirectional, seed=1):
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n_x, m, T)),
        "a0": rng.standard_normal((num_layers * D, n_a, m)),
        "c0": rng.standard_normal((num_layers * D, n_a, m)),
        "G": rng.standard_normal((D * n_a, m, T)),
        "Gh": rng.standard_normal((num_layers * D, n_a, m)),
        "Gc": rng.standard_normal((num_layers * D, n_a, m)),
    }


@pytest.mark.parametrize("lengths_id", list(LENGTHS))
@pytest.mark.parametrize(("num_layers", "bidirectional"), CONFIGS, ids=CONFIG_IDS)
def test_matches_torch_lstm(xp, num_layers, bidirectional, lengths_id):
    n_x, n_a, m, T = 3, 4, 5, 6
    lengths = LENGTHS[lengths_id]
    module = _torch_lstm(n_x, n_a, num_layers, bidirectional)
    case = _random_case(n_x, n_a, m, T, num_layers, bidirectional)
    (out_ref, h_ref, c_ref), grads_ref = torch_reference(
        module, case["x"], case["a0"], case["c0"], case["G"], case["Gh"], case["Gc"], lengths
    )

    weights = from_torch(module, xp=xp)
    assert (weights.num_layers, weights.bidirectional) == (num_layers, bidirectional)
    on = {k: asxp(xp, v) for k, v in case.items()}
    out, (a_n, c_n), cache = multilayer_forward(
        on["x"], weights.layers, num_layers=num_layers, bidirectional=bidirectional,
        lengths=lengths, a0=on["a0"], c0=on["c0"],
    )  # fmt: skip
    grads = multilayer_backward(on["G"], cache, on["Gh"], on["Gc"])

    errors = {
        "outputs": rel_err(out, out_ref),
        "h_n": rel_err(a_n, h_ref),
        "c_n": rel_err(c_n, c_ref),
        "dx": rel_err(grads["dx"], grads_ref["dx"]),
        "dh0": rel_err(grads["da0"], grads_ref["da0"]),
        "dc0": rel_err(grads["dc0"], grads_ref["dc0"]),
    }
    ours = to_torch(
        [{k[1:]: to_numpy(v) for k, v in g.items()} for g in grads["layers"]],
        bidirectional=bidirectional,
    )
    for name in grads_ref:
        if name.startswith("bias_hh"):
            # One folded bias: its gradient is that of bias_ih and of bias_hh alike.
            errors[name] = rel_err(ours[name.replace("bias_hh", "bias_ih")], grads_ref[name])
        elif name not in ("dx", "da0", "dc0"):
            errors[name] = rel_err(ours[name], grads_ref[name])
    worst_name = max(errors, key=errors.get)
    label = f"{backend_name(xp)} L={num_layers} bi={bidirectional} {lengths_id} {worst_name}"
    record_worst("layers-torch-oracle", errors[worst_name], label)
    assert errors[worst_name] < ORACLE_TOL, errors
    if lengths is not None:
        out_host = to_numpy(out)
        for j, length in enumerate(lengths):
            assert np.all(out_host[:, j, length:] == 0)
            assert np.all(to_numpy(grads["dx"])[:, j, length:] == 0)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("lengths_id", list(LENGTHS))
def test_generic_equals_numpy_fast_path(lengths_id, recompute):
    n_x, n_a, m, T = 3, 4, 5, 6
    lengths = LENGTHS[lengths_id]
    weights = from_torch(_torch_lstm(n_x, n_a, 2, True))
    case = _random_case(n_x, n_a, m, T, 2, True)
    results = {}
    for engine in ("auto", "generic"):
        out, final, cache = multilayer_forward(
            case["x"], weights.layers, bidirectional=True, lengths=lengths,
            a0=case["a0"], c0=case["c0"], engine=engine, recompute=recompute,
        )  # fmt: skip
        results[engine] = (out, *final, multilayer_backward(case["G"], cache, case["Gh"]))
    fast, generic = results["auto"], results["generic"]
    worst = max(rel_err(f, g) for f, g in zip(fast[:3], generic[:3], strict=True))
    for key in ("dx", "da0", "dc0"):
        worst = max(worst, rel_err(fast[3][key], generic[3][key]))
    for f_layer, g_layer in zip(fast[3]["layers"], generic[3]["layers"], strict=True):
        worst = max(worst, max(rel_err(f_layer[k], g_layer[k]) for k in f_layer))
    record_worst("layers-generic-vs-fast", worst, f"{lengths_id} recompute={recompute}")
    assert worst < 1e-12


def test_float32_matches_torch_float32():
    n_x, n_a, m, T = 8, 16, 4, 12
    module = _torch_lstm(n_x, n_a, 2, True).float()
    x = np.random.default_rng(3).standard_normal((n_x, m, T)).astype(np.float32)
    lengths = [12, 5, 9, 1]
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x.transpose(2, 1, 0).copy()), torch.tensor(lengths), enforce_sorted=False
    )
    with torch.no_grad():
        ref, _ = torch.nn.utils.rnn.pad_packed_sequence(module(packed)[0], total_length=T)
    out, _ = StackedLSTM.from_torch(module)(x, lengths=lengths)
    assert out.dtype == np.float32
    assert rel_err(out, ref.numpy().transpose(2, 1, 0)) < 1e-5


# --------------------------------------------------------------------------- dropout


def _dropout_loss_and_grads(case, layers, lengths, seed, rate=0.4):
    out, (a_n, c_n), cache = multilayer_forward(
        case["x"], layers, bidirectional=True, lengths=lengths, dropout=rate, seed=seed,
        a0=case["a0"], c0=case["c0"],
    )  # fmt: skip
    loss = float(np.sum(out * case["G"]) + np.sum(a_n * case["Gh"]) + np.sum(c_n * case["Gc"]))
    return loss, cache


def test_dropout_central_differences():
    """Same seed, same masks: the loss is a fixed function, checked by central differences."""
    n_x, n_a, m, T = 2, 3, 3, 4
    lengths = [4, 2, 3]
    weights = from_torch(_torch_lstm(n_x, n_a, 2, True))
    case = _random_case(n_x, n_a, m, T, 2, True)
    _, cache = _dropout_loss_and_grads(case, weights.layers, lengths, seed=5)
    assert cache.dropout_masks[1] is not None
    grads = multilayer_backward(case["G"], cache, case["Gh"], case["Gc"])
    h = 1e-6
    worst = 0.0
    targets = [("x", None, "dx"), ("a0", None, "da0"), ("c0", None, "dc0")]
    targets += [("layer", (index, key), None) for index in (0, 3) for key in ("Wf", "bc", "Wo")]
    for name, where, grad_key in targets:
        base = case[name] if name != "layer" else weights.layers[where[0]][where[1]]
        numeric = np.empty_like(base)
        for idx in np.ndindex(base.shape):
            values = []
            for step in (h, -h):
                bumped = base.copy()
                bumped[idx] += step
                if name == "layer":
                    layers = [dict(layer) for layer in weights.layers]
                    layers[where[0]][where[1]] = bumped
                    values.append(_dropout_loss_and_grads(case, layers, lengths, seed=5)[0])
                else:
                    values.append(
                        _dropout_loss_and_grads({**case, name: bumped}, weights.layers, lengths, 5)[
                            0
                        ]
                    )
            numeric[idx] = (values[0] - values[1]) / (2 * h)
        got = grads[grad_key] if name != "layer" else grads["layers"][where[0]]["d" + where[1]]
        err = rel_err(got, numeric)
        worst = max(worst, err)
        assert err < 1e-7, (name, where)
    record_worst("layers-dropout-central-differences", worst, "2 layers bi, lengths")


def test_dropout_semantics():
    n_x, n_a, m, T = 3, 4, 5, 6
    weights = from_torch(_torch_lstm(n_x, n_a, 2, True))
    case = _random_case(n_x, n_a, m, T, 2, True)

    def run(**options):
        return multilayer_forward(case["x"], weights.layers, bidirectional=True, **options)

    plain = run()[0]
    np.testing.assert_array_equal(run(dropout=0.5, training=False)[0], plain)
    first = run(dropout=0.5, seed=1)
    np.testing.assert_array_equal(first[0], run(dropout=0.5, seed=1)[0])
    assert not np.array_equal(first[0], run(dropout=0.5, seed=2)[0])
    assert not np.array_equal(first[0], plain)
    mask = first[2].dropout_masks[1]
    assert first[2].dropout_masks[0] is None
    assert set(np.unique(mask)) == {0.0, 2.0}
    # One layer: nothing between layers, dropout changes nothing (as in torch).
    single = from_torch(_torch_lstm(n_x, n_a, 1, False))
    a = multilayer_forward(case["x"], single.layers, dropout=0.5, seed=1)[0]
    np.testing.assert_array_equal(a, multilayer_forward(case["x"], single.layers)[0])


def test_inputs_not_mutated():
    weights = from_torch(_torch_lstm(3, 4, 2, True))
    case = _random_case(3, 4, 5, 6, 2, True)
    copies = {k: v.copy() for k, v in case.items()}
    layer_copies = [{k: v.copy() for k, v in layer.items()} for layer in weights.layers]
    lengths = np.array([3, 6, 1, 4, 6])
    _, _, cache = multilayer_forward(
        case["x"], weights.layers, bidirectional=True, lengths=lengths, a0=case["a0"],
        c0=case["c0"], dropout=0.3, seed=0,
    )  # fmt: skip
    multilayer_backward(case["G"], cache, case["Gh"], case["Gc"])
    for key, value in copies.items():
        np.testing.assert_array_equal(case[key], value)
    for layer, saved in zip(weights.layers, layer_copies, strict=True):
        for key in saved:
            np.testing.assert_array_equal(layer[key], saved[key])
    np.testing.assert_array_equal(lengths, [3, 6, 1, 4, 6])


# --------------------------------------------------------------------------- validation


def test_validation_messages():
    weights = from_torch(_torch_lstm(3, 4, 2, True))
    layers = weights.layers
    x = np.zeros((3, 5, 6))
    with pytest.raises(ValueError, match=r"`layers` has 4 entries; expected num_layers"):
        multilayer_forward(x, layers, num_layers=3, bidirectional=True)
    with pytest.raises(
        ValueError, match=r"`layers\[1\]\['Wf'\]` has shape \(4, 7\); expected .* = \(4, 8\)"
    ):
        multilayer_forward(x, layers, bidirectional=False)  # layer 1 must read 4 features
    bad = [dict(layer) for layer in layers]
    del bad[2]["bo"]
    with pytest.raises(ValueError, match=r"`layers\[2\]` is missing 'bo'"):
        multilayer_forward(x, bad, bidirectional=True)
    bad = [dict(layer) for layer in layers]
    bad[3]["Wc"] = np.zeros((4, 9))
    with pytest.raises(ValueError, match=r"`layers\[3\]\['Wc'\]` has shape \(4, 9\); expected"):
        multilayer_forward(x, bad, bidirectional=True)
    with pytest.raises(ValueError, match=r"`a0` has shape \(2, 4, 5\); expected"):
        multilayer_forward(x, layers, bidirectional=True, a0=np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"`dropout` = 1.0; expected a value in \[0, 1\)"):
        multilayer_forward(x, layers, bidirectional=True, dropout=1.0)
    with pytest.raises(TypeError, match=r"`bidirectional` must be a bool"):
        multilayer_forward(x, layers, bidirectional=1)
    with pytest.raises(TypeError, match=r"`layers` must be a list"):
        multilayer_forward(x, layers[0])
    with pytest.raises(TypeError, match=r"`layers\[0\]\['Wf'\]` is a torch array"):
        multilayer_forward(
            x, [{**layers[0], "Wf": torch.zeros(4, 7)}, *layers[1:]], bidirectional=True
        )
    with pytest.raises(ValueError, match=r"`lengths\[0\]` = 7"):
        multilayer_forward(x, layers, bidirectional=True, lengths=[7, 1, 1, 1, 1])
    _, _, cache = multilayer_forward(x, layers, bidirectional=True)
    with pytest.raises(ValueError, match=r"`d_outputs` has shape \(4, 5, 6\); expected"):
        multilayer_backward(np.zeros((4, 5, 6)), cache)
    with pytest.raises(TypeError, match=r"`cache` must be the MultiLayerCache"):
        multilayer_backward(np.zeros((8, 5, 6)), (cache,))


# --------------------------------------------------------------------------- model object


def test_stacked_model_round_trip_and_backends(xp):
    module = _torch_lstm(3, 4, 2, True)
    model = StackedLSTM.from_torch(module)
    assert (model.num_layers, model.bidirectional, model.n_x, model.n_a) == (2, True, 3, 4)
    case = _random_case(3, 4, 5, 6, 2, True)
    lengths = [3, 6, 1, 4, 6]
    ref_out, (ref_h, _) = model(case["x"], lengths=lengths, state=(case["a0"], case["c0"]))
    moved = model.to(xp)
    assert moved.backend == backend_name(xp)
    out, (h_n, _) = moved(
        asxp(xp, case["x"]), lengths=lengths, state=(asxp(xp, case["a0"]), asxp(xp, case["c0"]))
    )
    assert rel_err(out, ref_out) < 1e-12
    assert rel_err(h_n, ref_h) < 1e-12
    # Export and load back into torch: same module.
    state = moved.to_torch_state_dict(as_tensors=True)
    twin = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    twin.load_state_dict(state)
    x_t = torch.from_numpy(case["x"].transpose(2, 1, 0).copy())
    with torch.no_grad():
        np.testing.assert_allclose(twin(x_t)[0].numpy(), module(x_t)[0].numpy(), rtol=1e-12)


def test_stacked_model_training_step():
    """Gradients are keyed like the parameters, so xlstm.training's optimisers apply."""
    optim = pytest.importorskip("xlstm.training.optim")
    model = StackedLSTM(
        3, 4, num_layers=2, bidirectional=True, dropout=0.2, seed=0, dtype="float64"
    )
    x = np.random.default_rng(0).standard_normal((3, 5, 6))
    out, _, cache = model.forward_train(x, lengths=[3, 6, 1, 4, 6])
    grads = model.backward(out, cache)  # d(0.5 |out|^2)
    assert set(grads) == {"d" + k for k in model.parameter_keys()} | {"dx", "da0", "dc0"}
    opt = optim.SGD(lr=0.1)
    params, _ = opt.update(model.parameters, grads, opt.init(model.parameters))
    before = float(np.sum(model(x, lengths=[3, 6, 1, 4, 6])[0] ** 2))
    model.load_parameters(params)
    after = float(np.sum(model(x, lengths=[3, 6, 1, 4, 6])[0] ** 2))
    assert after < before


def test_stacked_model_validation():
    with pytest.raises(ValueError, match=r"`num_layers` = 0"):
        StackedLSTM(3, 4, num_layers=0)
    with pytest.raises(ValueError, match=r"`dropout` = 1.5"):
        StackedLSTM(3, 4, dropout=1.5)
    model = StackedLSTM(3, 4, num_layers=2)
    params = model.parameters
    params["Wf_l1"] = np.zeros((4, 5), dtype=np.float32)
    with pytest.raises(
        ValueError, match=r"`parameters\['Wf_l1'\]` has shape \(4, 5\); expected \(4, 8\)"
    ):
        model.load_parameters(params)
    del params["Wf_l1"]
    with pytest.raises(ValueError, match=r"`parameters` is missing 'Wf_l1'"):
        model.load_parameters(params)


def test_directions_side_by_side_equal_one_after_the_other(monkeypatch):
    """NumPy, BLAS at two threads: the directions run in two threads (xlstm._threads)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from xlstm import _threads

    weights = from_torch(_torch_lstm(3, 4, 2, True))
    case = _random_case(3, 4, 5, 6, 2, True)
    lengths = [3, 6, 1, 4, 6]

    def run():
        out, final, cache = multilayer_forward(
            case["x"], weights.layers, bidirectional=True, lengths=lengths,
            a0=case["a0"], c0=case["c0"],
        )  # fmt: skip
        return out, final, multilayer_backward(case["G"], cache, case["Gh"], case["Gc"])

    calls = []
    original = _threads.run_pair

    def counting(first, second, *, work):
        calls.append(_threads.pair_is_parallel(work))
        return original(first, second, work=work)

    monkeypatch.setattr(_threads, "run_pair", counting)
    sequential = run()
    monkeypatch.setattr(_threads, "MIN_WORK", 0)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        threaded = run()
    assert calls[:4] == [False] * 4
    if not any(calls[4:]):
        pytest.skip("this BLAS cannot be limited to two threads")
    np.testing.assert_allclose(threaded[0], sequential[0], rtol=1e-13, atol=1e-15)
    for got, want in zip(threaded[2]["layers"], sequential[2]["layers"], strict=True):
        for key in got:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(threaded[2]["dx"], sequential[2]["dx"], rtol=1e-12, atol=1e-14)
