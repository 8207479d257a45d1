"""Weight import/export: ``torch.nn.LSTM`` state dicts and Keras 3 ``LSTM`` weights.

Gate orders are checked with hand-built weights whose gate blocks are constants (so a block
that lands in the wrong gate is seen directly), then end to end: torch modules against
:mod:`xlstm.layers` (the full oracle with gradients is in ``test_layers.py``), Keras against
a NumPy transcription of Keras's documented LSTM cell (``z = x @ kernel + h @ recurrent_kernel
+ bias``, blocks i, f, c, o), and, when the ``keras`` package is importable, against Keras
itself (its NumPy backend, inference only).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from _helpers import asxp, rel_err, to_numpy

import xlstm
from xlstm.convert import (
    KERAS_GATE_ORDER,
    TORCH_GATE_ORDER,
    LSTMWeights,
    from_keras,
    from_torch,
    to_keras,
    to_torch,
)
from xlstm.layers import multilayer_forward

torch = pytest.importorskip("torch")

SEED_KEY_OF_GATE = {"i": "Wi", "f": "Wf", "o": "Wo", "g": "Wc"}


def _blocks(n_a: int, width: int, order) -> np.ndarray:
    """Row-stacked weights whose gate block k (in ``order``) is the constant 10 + index in
    xlstm's GATE_ORDER, so each seed key must come out as one known constant."""
    rows = [np.full((n_a, width), 10.0 + xlstm.GATE_ORDER.index(gate)) for gate in order]
    return np.concatenate(rows, axis=0)


# --------------------------------------------------------------------------- PyTorch


def test_torch_gate_order_by_hand():
    n_a, n_x = 2, 3
    state = {
        "weight_ih_l0": _blocks(n_a, n_x, TORCH_GATE_ORDER),
        "weight_hh_l0": -_blocks(n_a, n_a, TORCH_GATE_ORDER),
        "bias_ih_l0": _blocks(n_a, 1, TORCH_GATE_ORDER)[:, 0],
        "bias_hh_l0": np.arange(4 * n_a, dtype=np.float64),
    }
    weights = from_torch(state)
    assert isinstance(weights, LSTMWeights)
    assert (weights.num_layers, weights.bidirectional, weights.n_x, weights.n_a) == (1, False, 3, 2)
    layer = weights.layers[0]
    for index, gate in enumerate(xlstm.GATE_ORDER):
        W = layer[SEED_KEY_OF_GATE[gate]]
        assert W.shape == (n_a, n_a + n_x)
        np.testing.assert_array_equal(W[:, :n_a], -(10.0 + index))  # recurrent columns first
        np.testing.assert_array_equal(W[:, n_a:], 10.0 + index)
        block = TORCH_GATE_ORDER.index(gate)
        expected_bias = 10.0 + index + np.arange(block * n_a, (block + 1) * n_a)
        np.testing.assert_array_equal(layer["b" + SEED_KEY_OF_GATE[gate][1]][:, 0], expected_bias)
    # Export: the folded bias goes into bias_ih, zeros into bias_hh; weights come back.
    back = to_torch(weights)
    np.testing.assert_array_equal(back["weight_ih_l0"], state["weight_ih_l0"])
    np.testing.assert_array_equal(back["weight_hh_l0"], state["weight_hh_l0"])
    np.testing.assert_array_equal(back["bias_ih_l0"], state["bias_ih_l0"] + state["bias_hh_l0"])
    np.testing.assert_array_equal(back["bias_hh_l0"], 0.0)


@pytest.mark.parametrize(("num_layers", "bidirectional"), [(1, False), (2, True), (3, False)])
def test_torch_round_trip_and_outputs(xp, num_layers, bidirectional):
    torch.manual_seed(0)
    module = torch.nn.LSTM(5, 4, num_layers=num_layers, bidirectional=bidirectional).double()
    weights = from_torch(module.state_dict(), xp=xp)
    x = np.random.default_rng(0).standard_normal((5, 3, 7))
    out, (h_n, c_n), _ = multilayer_forward(
        asxp(xp, x), weights.layers, bidirectional=bidirectional
    )
    with torch.no_grad():
        ref, (ref_h, ref_c) = module(torch.from_numpy(x.transpose(2, 1, 0).copy()))
    assert rel_err(out, ref.numpy().transpose(2, 1, 0)) < 1e-12
    assert rel_err(h_n, ref_h.numpy().transpose(0, 2, 1)) < 1e-12
    assert rel_err(c_n, ref_c.numpy().transpose(0, 2, 1)) < 1e-12
    twin = torch.nn.LSTM(5, 4, num_layers=num_layers, bidirectional=bidirectional).double()
    twin.load_state_dict(to_torch(weights, as_tensors=True))
    with torch.no_grad():
        np.testing.assert_allclose(
            twin(torch.from_numpy(x.transpose(2, 1, 0).copy()))[0].numpy(), ref.numpy(), rtol=1e-12
        )


def test_torch_dtype_device_and_sources():
    torch.manual_seed(1)
    module = torch.nn.LSTM(3, 2)  # float32, parameters require grad
    weights = from_torch(module)
    assert weights.layers[0]["Wf"].dtype == np.float32
    as64 = from_torch(module, dtype="float64")
    assert as64.layers[0]["Wf"].dtype == np.float64
    numpy_state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    for key, value in from_torch(numpy_state).layers[0].items():
        np.testing.assert_array_equal(value, weights.layers[0][key])
    on_torch = from_torch(module, xp="torch")
    assert isinstance(on_torch.layers[0]["Wf"], torch.Tensor)
    prefixed = {"encoder.lstm." + k: v for k, v in module.state_dict().items()}
    prefixed["encoder.embedding.weight"] = torch.zeros(5, 3)
    np.testing.assert_array_equal(
        from_torch(prefixed, prefix="encoder.lstm.").layers[0]["Wi"], weights.layers[0]["Wi"]
    )


def test_torch_without_bias():
    torch.manual_seed(2)
    module = torch.nn.LSTM(3, 2, bias=False).double()
    weights = from_torch(module)
    for key in ("bf", "bi", "bc", "bo"):
        np.testing.assert_array_equal(weights.layers[0][key], 0.0)
    x = np.random.default_rng(0).standard_normal((3, 2, 4))
    out, _, _ = multilayer_forward(x, weights.layers)
    with torch.no_grad():
        ref = module(torch.from_numpy(x.transpose(2, 1, 0).copy()))[0].numpy()
    assert rel_err(out, ref.transpose(2, 1, 0)) < 1e-12


def test_torch_errors():
    module = torch.nn.LSTM(3, 2, num_layers=2, bidirectional=True)
    state = dict(module.state_dict())
    with pytest.raises(ValueError, match=r"proj_size > 0 .* not supported"):
        from_torch(torch.nn.LSTM(3, 4, proj_size=2))
    missing = dict(state)
    del missing["weight_hh_l1_reverse"]
    with pytest.raises(ValueError, match=r"`state_dict` is missing 'weight_hh_l1_reverse'"):
        from_torch(missing)
    no_hh_bias = dict(state)
    del no_hh_bias["bias_hh_l0"]
    with pytest.raises(ValueError, match=r"`state_dict` is missing 'bias_hh_l0'"):
        from_torch(no_hh_bias)
    wrong = dict(state)
    wrong["weight_ih_l1"] = torch.zeros(8, 2)
    with pytest.raises(
        ValueError,
        match=r"`state_dict\['weight_ih_l1'\]` has shape \(8, 2\); expected \(4 n_a, D n_a\)",
    ):
        from_torch(wrong)
    wrong = dict(state)
    wrong["bias_ih_l0_reverse"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"`state_dict\['bias_ih_l0_reverse'\]` has shape \(7,\)"):
        from_torch(wrong)
    with pytest.raises(ValueError, match=r"unexpected key 'weight_xx_l0'"):
        from_torch({**state, "weight_xx_l0": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"no key 'rnn.weight_ih_l0'"):
        from_torch(state, prefix="rnn.")
    with pytest.raises(TypeError, match=r"`state_dict` must be a mapping or a torch.nn.LSTM"):
        from_torch([1, 2])
    with pytest.raises(TypeError, match=r"dtype int64; expected a floating dtype"):
        from_torch({**state, "weight_ih_l0": torch.zeros(8, 3, dtype=torch.int64)})
    with pytest.raises(TypeError, match=r"`bidirectional` must be a bool"):
        to_torch(from_torch(state).layers)
    layers = from_torch(state).layers
    broken = [dict(layer) for layer in layers]
    del broken[1]["Wo"]
    with pytest.raises(ValueError, match=r"`layers\[1\]` is missing 'Wo'"):
        to_torch(broken, bidirectional=True)


# --------------------------------------------------------------------------- Keras 3


def keras_documented_lstm(x_bt, kernel, recurrent_kernel, bias):
    """Keras 3's LSTM cell as documented (activation tanh, recurrent_activation sigmoid),
    batch-major ``x (m, T, n_x)``; returns the hidden sequence (m, T, n_a) and the last c."""
    m, T, _ = x_bt.shape
    n_a = recurrent_kernel.shape[0]
    h, c = np.zeros((m, n_a)), np.zeros((m, n_a))
    outputs = []
    for t in range(T):
        z = x_bt[:, t] @ kernel + h @ recurrent_kernel + bias
        z_i, z_f, z_c, z_o = np.split(z, 4, axis=-1)  # Keras's order: i, f, c, o
        i, f, o = (1 / (1 + np.exp(-v)) for v in (z_i, z_f, z_o))
        c = f * c + i * np.tanh(z_c)
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1), c


def _keras_weights(n_x, n_a, seed=0):
    rng = np.random.default_rng(seed)
    return [
        0.5 * rng.standard_normal((n_x, 4 * n_a)),
        0.5 * rng.standard_normal((n_a, 4 * n_a)),
        0.5 * rng.standard_normal(4 * n_a),
    ]


def test_keras_gate_order_by_hand():
    n_x, n_a = 3, 2
    kernel = _blocks(n_a, n_x, KERAS_GATE_ORDER).T  # (n_x, 4 n_a): gate blocks in columns
    recurrent = -_blocks(n_a, n_a, KERAS_GATE_ORDER).T
    bias = _blocks(n_a, 1, KERAS_GATE_ORDER)[:, 0] * 2
    gates = from_keras([kernel, recurrent, bias])
    for index, gate in enumerate(xlstm.GATE_ORDER):
        W = gates[SEED_KEY_OF_GATE[gate]]
        np.testing.assert_array_equal(W[:, :n_a], -(10.0 + index))
        np.testing.assert_array_equal(W[:, n_a:], 10.0 + index)
        np.testing.assert_array_equal(gates["b" + SEED_KEY_OF_GATE[gate][1]], 2 * (10.0 + index))
    for got, want in zip(to_keras(gates), [kernel, recurrent, bias], strict=True):
        np.testing.assert_array_equal(got, want)


def test_keras_documented_layout(xp):
    n_x, n_a, m, T = 3, 4, 2, 5
    weights = _keras_weights(n_x, n_a)
    x_bt = np.random.default_rng(1).standard_normal((m, T, n_x))
    ref_h, ref_c = keras_documented_lstm(x_bt, *weights)
    params = from_keras(
        {"kernel": weights[0], "recurrent_kernel": weights[1], "bias": weights[2]}, xp=xp
    )
    params["Wy"], params["by"] = asxp(xp, np.zeros((1, n_a))), asxp(xp, np.zeros((1, 1)))
    x = asxp(xp, x_bt.transpose(2, 0, 1))
    a, _, c, _ = xlstm.lstm_forward(x, asxp(xp, np.zeros((n_a, m))), params)
    assert rel_err(a, ref_h.transpose(2, 0, 1)) < 1e-12
    assert rel_err(c[:, :, -1], ref_c.T) < 1e-12
    back = to_keras({k: to_numpy(v) for k, v in params.items()})
    for got, want in zip(back, weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_keras_without_bias_and_errors():
    kernel, recurrent, _ = _keras_weights(3, 2)
    gates = from_keras([kernel, recurrent])
    np.testing.assert_array_equal(gates["bi"], 0.0)
    with pytest.raises(
        ValueError,
        match=r"`weights\['recurrent_kernel'\]` has shape \(3, 8\); expected \(n_a, 4 n_a\)",
    ):
        from_keras([kernel, np.zeros((3, 8))])
    with pytest.raises(ValueError, match=r"`weights\['kernel'\]` has shape \(3, 7\)"):
        from_keras([np.zeros((3, 7)), recurrent])
    with pytest.raises(ValueError, match=r"`weights\['bias'\]` has shape \(7,\)"):
        from_keras([kernel, recurrent, np.zeros(7)])
    with pytest.raises(ValueError, match=r"`weights` is missing 'recurrent_kernel'"):
        from_keras({"kernel": kernel})
    with pytest.raises(ValueError, match=r"`weights` has 4 arrays"):
        from_keras([kernel, recurrent, np.zeros(8), np.zeros(8)])
    with pytest.raises(TypeError, match=r"`weights` must be a list or a dict"):
        from_keras(kernel)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras's own, under NumPy 2
def test_real_keras_if_installed():
    """Against Keras itself (NumPy backend).  Skipped where ``keras`` is not installed."""
    os.environ.setdefault("KERAS_BACKEND", "numpy")
    keras = pytest.importorskip("keras")
    n_x, n_a, m, T = 3, 4, 2, 5
    layer = keras.layers.LSTM(n_a, return_sequences=True, return_state=True)
    x_bt = np.random.default_rng(0).standard_normal((m, T, n_x)).astype("float32")
    layer(x_bt)  # builds the weights
    weights = [w.astype("float32") for w in _keras_weights(n_x, n_a, seed=3)]
    layer.set_weights(weights)
    out, _, c_last = layer(x_bt)
    params = from_keras(layer.get_weights())
    params["Wy"], params["by"] = np.zeros((1, n_a), np.float32), np.zeros((1, 1), np.float32)
    a, _, c, _ = xlstm.lstm_forward(x_bt.transpose(2, 0, 1), np.zeros((n_a, m), np.float32), params)
    assert rel_err(a, np.asarray(out).transpose(2, 0, 1)) < 1e-5
    assert rel_err(c[:, :, -1], np.asarray(c_last).T) < 1e-5
