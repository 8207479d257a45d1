"""``xlstm.jax.lstm`` against independent oracles, float64 (``jax_enable_x64``): ``jax.grad``
of a plain JAX forward written here (a ``lax.scan`` of the LSTM equations, gates computed
from the seed's per-gate weights, not xlstm's stacked ones) to 1e-12, and
:func:`xlstm.layers.multilayer_forward` on NumPy.  Also ``jax.jit``, traced lengths, a loop
that is not unrolled (the same program for T = 10 and T = 1000), errors, and the generic
path's closure case under ``jax.jit``."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)  # as tests/_helpers.py does for the jax backend

import jax.numpy as jnp  # noqa: E402

import xlstm  # noqa: E402
import xlstm.jax as xj  # noqa: E402
from xlstm.layers import multilayer_forward  # noqa: E402

TOL = 1e-12
KEYS = ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo")


def _layers(n_x, n_a, num_layers, directions, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    layers = []
    for index in range(num_layers * directions):
        n_in = n_x if index < directions else directions * n_a
        layers.append(
            {
                key: jnp.asarray(
                    (
                        rng.normal(size=(n_a, n_a + n_in) if key[0] == "W" else (n_a, 1)) * 0.5
                    ).astype(dtype)
                )
                for key in KEYS
            }
        )
    return layers


def _data(n_x, n_a, m, t_x, count, seed=1):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n_x, m, t_x)))
    a0 = jnp.asarray(rng.normal(size=(count, n_a, m)))
    c0 = jnp.asarray(rng.normal(size=(count, n_a, m)))
    return x, a0, c0


def reference_lstm(layers, x, a0, c0, lengths, bidirectional):
    """Plain JAX: per-gate products, a ``lax.scan`` per direction, reversal by a gather."""
    directions = 2 if bidirectional else 1
    t_x, m = x.shape[2], x.shape[1]
    lengths = jnp.full((m,), t_x) if lengths is None else jnp.asarray(lengths)
    steps = jnp.arange(t_x)
    reverse = jnp.where(
        steps[:, None] < lengths[None], lengths[None] - 1 - steps[:, None], steps[:, None]
    )
    inputs = jnp.transpose(x, (2, 1, 0))
    finals_h, finals_c = [], []
    for layer in range(len(layers) // directions):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            p = layers[index]
            seen = jnp.take_along_axis(inputs, reverse[:, :, None], 0) if direction else inputs

            def step(carry, inputs_t, p=p):
                h, c = carry
                x_t, t = inputs_t
                hx = jnp.concatenate([h, x_t], axis=1)
                f = jax.nn.sigmoid(hx @ p["Wf"].T + p["bf"][:, 0])
                i = jax.nn.sigmoid(hx @ p["Wi"].T + p["bi"][:, 0])
                g = jnp.tanh(hx @ p["Wc"].T + p["bc"][:, 0])
                o = jax.nn.sigmoid(hx @ p["Wo"].T + p["bo"][:, 0])
                c_new = f * c + i * g
                h_new = o * jnp.tanh(c_new)
                inside = (t < lengths)[:, None]
                h_new, c_new = jnp.where(inside, h_new, h), jnp.where(inside, c_new, c)
                return (h_new, c_new), jnp.where(inside, h_new, 0.0)

            (h, c), ys = jax.lax.scan(step, (a0[index].T, c0[index].T), (seen, steps))
            outputs.append(jnp.take_along_axis(ys, reverse[:, :, None], 0) if direction else ys)
            finals_h.append(h.T)
            finals_c.append(c.T)
        inputs = jnp.concatenate(outputs, axis=-1)
    return jnp.transpose(inputs, (2, 1, 0)), (jnp.stack(finals_h), jnp.stack(finals_c))


def _loss(run):
    def loss(layers, x, a0, c0):
        outputs, (a_n, c_n) = run(layers, x, a0, c0)
        weights = jnp.linspace(-1.0, 2.0, outputs.size).reshape(outputs.shape)
        return jnp.sum(outputs * weights + outputs**2) + jnp.sum(a_n**3) - jnp.sum(c_n * a_n)

    return loss


def _max_diff(a, b) -> float:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(leaves_a, leaves_b, strict=True))


CASES = [
    # num_layers, bidirectional, lengths
    (1, False, None),
    (1, False, [6, 2, 4, 1, 5]),
    (2, True, None),
    (2, True, [3, 6, 1, 5, 2]),
]


@pytest.mark.parametrize("impl", ["scan", "callback"])
@pytest.mark.parametrize(("num_layers", "bidirectional", "lengths"), CASES)
def test_gradients_equal_jax_grad_of_a_plain_forward(impl, num_layers, bidirectional, lengths):
    directions = 2 if bidirectional else 1
    layers = _layers(3, 4, num_layers, directions)
    x, a0, c0 = _data(3, 4, 5, 6, num_layers * directions)

    def mine(*args):
        return xj.lstm(*args, lengths=lengths, bidirectional=bidirectional, impl=impl)

    def reference(*args):
        return reference_lstm(*args, lengths, bidirectional)

    got_out, expected_out = jax.jit(mine)(layers, x, a0, c0), reference(layers, x, a0, c0)
    assert _max_diff(got_out, expected_out) <= TOL
    got = jax.jit(jax.grad(_loss(mine), argnums=(0, 1, 2, 3)))(layers, x, a0, c0)
    expected = jax.grad(_loss(reference), argnums=(0, 1, 2, 3))(layers, x, a0, c0)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    assert _max_diff(got, expected) <= TOL


@pytest.mark.parametrize("impl", ["scan", "callback"])
def test_outputs_equal_multilayer_forward_on_numpy(impl):
    layers = _layers(3, 4, 2, 2, seed=3)
    x, a0, c0 = _data(3, 4, 5, 7, 4, seed=4)
    lengths = [7, 3, 5, 1, 6]
    got, (a_n, c_n) = xj.lstm(layers, x, a0, c0, lengths=lengths, bidirectional=True, impl=impl)
    host = [{k: np.asarray(v) for k, v in layer.items()} for layer in layers]
    expected, (e_a, e_c), _ = multilayer_forward(
        np.asarray(x),
        host,
        bidirectional=True,
        lengths=lengths,
        a0=np.asarray(a0),
        c0=np.asarray(c0),
    )
    for a, b in ((got, expected), (a_n, e_a), (c_n, e_c)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=TOL)


@pytest.mark.parametrize("impl", ["scan", "callback"])
def test_traced_lengths_under_jit(impl):
    layers = _layers(3, 4, 1, 2)
    x, a0, c0 = _data(3, 4, 5, 6, 2)
    lengths = jnp.asarray([6, 2, 4, 1, 5])

    @jax.jit
    def run(layers, x, lengths):
        return xj.lstm(layers, x, lengths=lengths, bidirectional=True, impl=impl)[0]

    zeros = jnp.zeros_like(a0)
    expected = reference_lstm(layers, x, zeros, zeros, lengths, True)[0]
    assert _max_diff(run(layers, x, lengths), expected) <= TOL


def test_traced_lengths_out_of_range_give_nan_not_a_wrong_answer():
    layers = _layers(3, 4, 1, 1)
    x, _, _ = _data(3, 4, 5, 6, 1)

    @jax.jit
    def run(lengths):
        return xj.lstm(layers, x, lengths=lengths, impl="scan")

    outputs, (a_n, c_n) = run(jnp.asarray([6, 2, 7, 1, 5]))
    assert all(bool(jnp.all(jnp.isnan(v))) for v in (outputs, a_n, c_n))
    assert not bool(jnp.any(jnp.isnan(run(jnp.asarray([6, 2, 6, 1, 5]))[0])))


def test_callback_checks_traced_lengths_on_the_host():
    layers = _layers(3, 4, 1, 1)
    x, _, _ = _data(3, 4, 5, 6, 1)
    run = jax.jit(lambda lengths: xj.lstm(layers, x, lengths=lengths, impl="callback")[0])
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"`lengths\[2\]` = 7"):
        run(jnp.asarray([6, 2, 7, 1, 5])).block_until_ready()


@pytest.mark.parametrize("impl", ["scan", "callback"])
def test_the_loop_is_not_unrolled(impl):
    """Forward and backward are the same program for T = 10 and T = 1000: compile time does
    not grow with T (the measured times are in docs/frameworks.md)."""
    layers = _layers(3, 4, 1, 1)

    def program(t_x):
        x = jnp.zeros((3, 2, t_x))
        loss = _loss(lambda p, x, a0, c0: xj.lstm(p, x, impl=impl))
        jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(layers, x, None, None)
        return len(jaxpr.jaxpr.eqns), str(jaxpr).count("scan") + str(jaxpr).count("callback")

    assert program(10) == program(1000)


def test_float32_and_default_impl():
    layers = _layers(3, 4, 1, 1, dtype=np.float32)
    x = jnp.ones((3, 2, 5), jnp.float32)
    outputs, _ = xj.lstm(layers, x)
    assert outputs.dtype == jnp.float32
    assert xj.default_impl() == xj.AUTO_IMPL[jax.default_backend()]
    scan = xj.lstm(layers, x, impl="scan")[0]
    callback = xj.lstm(layers, x, impl="callback")[0]
    np.testing.assert_allclose(np.asarray(scan), np.asarray(callback), rtol=1e-5, atol=1e-6)


def test_vmap_over_a_leading_axis_with_scan():
    layers = _layers(3, 4, 1, 1)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5, 6)))
    batched = jax.vmap(lambda x: xj.lstm(layers, x, impl="scan")[0])(xs)
    for k in range(2):
        assert _max_diff(batched[k], xj.lstm(layers, xs[k], impl="scan")[0]) <= TOL


def test_errors_before_anything_runs():
    layers = _layers(3, 4, 1, 1)
    x, a0, _ = _data(3, 4, 5, 6, 1)
    with pytest.raises(ValueError, match="`impl` = 'fast'"):
        xj.lstm(layers, x, impl="fast")
    with pytest.raises(ValueError, match=r"`x` must be a 3-D array"):
        xj.lstm(layers, x[0])
    with pytest.raises(ValueError, match=r"`layers\[0\]\['Wf'\]` has shape"):
        xj.lstm(layers, x[:2])
    with pytest.raises(ValueError, match=r"`a0` has shape \(1, 4, 4\)"):
        xj.lstm(layers, x, a0[:, :, :4])
    with pytest.raises(
        TypeError, match=r"`layers\[0\]\['Wf'\]` has dtype float64 but `x` has float32"
    ):
        xj.lstm(layers, x.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"`lengths\[1\]` = 9"):
        xj.lstm(layers, x, lengths=[1, 9, 1, 1, 1])
    with pytest.raises(TypeError, match="`bidirectional` must be a bool"):
        xj.lstm(layers, x, bidirectional=1)
    with pytest.raises(ValueError, match="expected a positive multiple of 2"):
        xj.lstm(layers, x, bidirectional=True)


# --------------------------------------------------------------------------- generic path


def test_generic_path_jits_with_arrays_captured_in_a_closure():
    """Parameters and ``a0`` captured in a closure meet a traced ``x`` inside ``jax.jit``:
    this failed with "`a0` is on device cpu:0 but `x` is on None"."""
    parameters = xlstm.init_parameters(4, 8, 3, seed=0, xp="jax", dtype="float64")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2, 5)))
    a0 = jnp.zeros((8, 2))
    closure = jax.jit(lambda x: xlstm.lstm_forward(x, a0, parameters)[0])
    arguments = jax.jit(lambda x, a0, p: xlstm.lstm_forward(x, a0, p)[0])
    np.testing.assert_array_equal(np.asarray(closure(x)), np.asarray(arguments(x, a0, parameters)))
    eager = xlstm.lstm_forward(x, a0, parameters)[0]
    np.testing.assert_allclose(np.asarray(closure(x)), np.asarray(eager), rtol=0, atol=TOL)


# --------------------------------------------------------------------------- bench


def test_bench_framework_jax_reports_both_impls_and_compile_times(tmp_path):
    import json

    from xlstm.cli import bench as cli

    path = tmp_path / "bench.json"
    argv = ["--backend", "jax", "--framework", "--sizes", "4,6,3,5", "--repeat", "1", "--quiet"]
    assert cli.main([*argv, "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert all(check["ok"] for check in report["checks"])
    names = {row["contestant"] for row in report["results"]}
    assert {"xlstm.jax (scan)", "xlstm.jax (callback)", report["peer"]} <= names
    assert {(row["contestant"], row["T"]) for row in report["compile"]} == {
        (name, t_x) for name in names for t_x in (10, 1000)
    }
