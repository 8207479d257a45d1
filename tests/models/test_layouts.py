"""xlstm.LSTM's layouts: time-major and batch-first are views of the seed's layout, and
agree with torch.nn.LSTM used the same way."""

from __future__ import annotations

import numpy as np
import pytest

import xlstm

LAYOUT_AXES = {"time_major": (2, 1, 0), "batch_first": (1, 2, 0)}  # from (n, m, T)


@pytest.mark.parametrize("layout", ["time_major", "batch_first"])
def test_layouts_equal_the_features_first_model(layout):
    rng = np.random.default_rng(0)
    base = xlstm.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=1)
    other = xlstm.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=1,
                       layout=layout)  # fmt: skip
    x = rng.standard_normal((3, 5, 6))
    a0 = rng.standard_normal((4, 4, 5))
    c0 = rng.standard_normal((4, 4, 5))
    lengths = [6, 2, 5, 1, 3]
    axes = LAYOUT_AXES[layout]
    out, (a_n, c_n), cache = base.forward_train(x, lengths, (a0, c0))
    got, (got_a, got_c), other_cache = other.forward_train(
        np.permute_dims(x, axes), lengths, (a0.transpose(0, 2, 1), c0.transpose(0, 2, 1))
    )
    np.testing.assert_array_equal(got, np.permute_dims(out, axes))
    np.testing.assert_array_equal(got_a, a_n.transpose(0, 2, 1))
    np.testing.assert_array_equal(got_c, c_n.transpose(0, 2, 1))
    d_out = rng.standard_normal(out.shape)
    d_a = rng.standard_normal(a_n.shape)
    grads = base.backward(d_out, cache, d_a)
    other_grads = other.backward(np.permute_dims(d_out, axes), other_cache, d_a.transpose(0, 2, 1))
    np.testing.assert_array_equal(other_grads["dx"], np.permute_dims(grads["dx"], axes))
    np.testing.assert_array_equal(other_grads["da0"], grads["da0"].transpose(0, 2, 1))
    np.testing.assert_array_equal(other_grads["dWf_l1_reverse"], grads["dWf_l1_reverse"])
    inference, _ = other(
        np.permute_dims(x, axes), lengths, (a0.transpose(0, 2, 1), c0.transpose(0, 2, 1))
    )
    np.testing.assert_allclose(inference, got, rtol=1e-13)


def test_batch_first_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    peer = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    model = xlstm.LSTM.from_torch(peer, layout="batch_first")
    x = np.random.default_rng(1).standard_normal((5, 6, 3))
    out, (h_n, c_n) = model(x)
    expected, (th, tc) = peer(torch.from_numpy(x))
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, th.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c_n, tc.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_layout_errors_name_the_layout():
    with pytest.raises(ValueError, match="`layout` = 'nchw'; expected one of"):
        xlstm.LSTM(3, 4, layout="nchw")
    model = xlstm.LSTM(3, 4, layout="batch_first")
    with pytest.raises(ValueError, match=r"`x` has shape \(3, 5, 6\); expected \(m, T, 3\)"):
        model(np.zeros((3, 5, 6), np.float32))
