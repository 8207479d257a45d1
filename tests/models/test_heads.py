"""Training heads (per-step, last, mean) on stacked, bidirectional, variable-length models.

Oracle: central differences of the model's own loss in float64, on every parameter array.
"""

from __future__ import annotations

import numpy as np
import pytest

from xlstm.training import LSTMModel, load_model

LENGTHS = [4, 2, 3]


def _batch(head, rng, n_x=2, m=3, t_x=4, n_y=3):
    x = rng.standard_normal((n_x, m, t_x))
    targets = rng.integers(0, n_y, (m, t_x) if head == "per_step" else (m,))
    return x, targets


@pytest.mark.parametrize("head", ["per_step", "last", "mean"])
@pytest.mark.parametrize(("num_layers", "bidirectional", "lengths"), [
    (1, False, None), (2, True, None), (2, True, LENGTHS), (1, False, LENGTHS),
])  # fmt: skip
def test_gradients_match_central_differences(head, num_layers, bidirectional, lengths):
    rng = np.random.default_rng(7)
    model = LSTMModel(
        2, 3, 3, num_layers=num_layers, bidirectional=bidirectional, head=head,
        dtype="float64", seed=3,
    )  # fmt: skip
    x, targets = _batch(head, rng)
    loss, grads, _ = model.loss_and_gradients(x, targets, lengths=lengths)
    assert set(grads) == {"d" + key for key in model.parameters}
    params = model.parameters
    for key, value in params.items():
        # Every array, a few entries each (all of them would be slow and add nothing).
        flat_indices = rng.choice(value.size, size=min(4, value.size), replace=False)
        for flat in flat_indices:
            index = np.unravel_index(flat, value.shape)
            numeric = 0.0
            for sign in (1.0, -1.0):
                moved = value.copy()
                moved[index] += sign * 1e-6
                model._replace_parameters({**params, key: moved})
                numeric += sign * float(model.loss(x, targets, lengths=lengths)[0]) / 2e-6
            model._replace_parameters(params)
            analytic = float(grads["d" + key][index])
            assert abs(analytic - numeric) <= 1e-8 + 1e-6 * abs(numeric), (key, index)
    assert float(model.loss(x, targets, lengths=lengths)[0]) == pytest.approx(float(loss))


def test_padding_does_not_change_sequence_heads():
    """What lies past a sequence's end changes neither the loss nor the prediction."""
    rng = np.random.default_rng(0)
    for head in ("last", "mean", "per_step"):
        model = LSTMModel(2, 3, 3, num_layers=2, bidirectional=True, head=head,
                          dtype="float64", seed=1)  # fmt: skip
        x, targets = _batch(head, rng)
        noisy = x.copy()
        for j, length in enumerate(LENGTHS):
            noisy[:, j, length:] = rng.standard_normal(noisy[:, j, length:].shape) * 9
        a = model.loss(x, targets, lengths=LENGTHS)[0]
        b = model.loss(noisy, targets, lengths=LENGTHS)[0]
        assert float(a) == pytest.approx(float(b), rel=1e-12)
        ya, yb = model.forward(x, lengths=LENGTHS)[0], model.forward(noisy, lengths=LENGTHS)[0]
        np.testing.assert_allclose(ya, yb, rtol=1e-12, atol=1e-15)


def test_sequence_head_shapes_and_checkpoint_round_trip(tmp_path):
    model = LSTMModel(2, 3, 4, num_layers=2, bidirectional=True, head="last", seed=0)
    assert model.parameters["Wy"].shape == (4, 6)
    x = np.random.default_rng(0).standard_normal((2, 5, 7)).astype(np.float32)
    y, _ = model.forward(x, lengths=[7, 1, 3, 7, 2])
    assert y.shape == (4, 5)
    np.testing.assert_allclose(y.sum(axis=0), 1.0, rtol=1e-6)
    model.train_step(x, np.array([0, 1, 2, 3, 0]), lengths=[7, 1, 3, 7, 2])
    path = model.save(tmp_path / "clf")
    back = load_model(path)
    assert (back.head, back.bidirectional, back.num_layers) == ("last", True, 2)
    np.testing.assert_array_equal(back.forward(x)[0], model.forward(x)[0])


def test_head_and_targets_are_checked():
    with pytest.raises(ValueError, match="`head` = 'pooled'; expected one of"):
        LSTMModel(2, 3, 4, head="pooled")
    with pytest.raises(TypeError, match="`bidirectional` must be a bool"):
        LSTMModel(2, 3, 4, bidirectional=1)
    model = LSTMModel(2, 3, 4, head="mean")
    x = np.zeros((2, 5, 7), np.float32)
    with pytest.raises(ValueError, match=r"`targets` has shape \(5, 7\); expected \(5,\)"):
        model.loss_and_gradients(x, np.zeros((5, 7), np.int64))
    from xlstm.training import CharLSTM

    with pytest.raises(ValueError, match="`bidirectional` = True: a character model"):
        CharLSTM("abc", 4, bidirectional=True)


def test_onnx_export_refuses_heads_it_cannot_write():
    pytest.importorskip("onnx")
    from xlstm.convert import to_onnx

    for options in ({"head": "last"}, {"head": "mean"}, {"bidirectional": True}):
        model = LSTMModel(2, 3, 4, seed=0, **options)
        with pytest.raises(ValueError, match="to_onnx exports output layers of one direction"):
            to_onnx(model)
    to_onnx(LSTMModel(2, 3, 4, seed=0))  # the per-step head of one direction is exported


def test_carried_state_of_a_one_layer_bidirectional_model_keeps_both_directions():
    model = LSTMModel(2, 3, 3, bidirectional=True, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((2, 4, 5))
    _, (a_n, c_n) = model.forward(x)
    assert a_n.shape == c_n.shape == (2, 3, 4)
    one_way = LSTMModel(2, 3, 3, dtype="float64", seed=0)
    assert one_way.forward(x)[1][0].shape == (3, 4)  # the notebook's (n_a, m)
