"""Converters refuse by name what they would otherwise import wrongly or with a foreign error.

torch: GRU / RNN modules and state dicts, meta tensors, bfloat16, mixed dtypes.  Keras (3,
JAX backend): every LSTM setting that changes what the layer computes, GRU / SimpleRNN
layers and weights, ``Bidirectional`` merge modes; and what is accepted (``Bidirectional``
with ``merge_mode="concat"``, ``Sequential`` stacks, the documented ``from_keras(layer)``)
equals Keras's own forward.  ``engine=`` / ``fused=`` are the constructor's on every importer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import xlstm
from xlstm import convert

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported

# Keras's own variables warn under NumPy 2 when read (KerasVariable.__array__ has no `copy`).
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def rel_err(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


# --------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize(("kind", "what"), [("GRU", "a GRU"), ("RNN", "a plain RNN")])
def test_torch_gru_and_rnn_modules_are_named(torch, kind, what):
    module = getattr(torch.nn, kind)(3, 4)
    with pytest.raises(TypeError, match=rf"torch\.nn\.{kind}: {what}, not an LSTM"):
        xlstm.LSTM.from_torch(module)


@pytest.mark.parametrize(("kind", "blocks"), [("GRU", "a GRU's"), ("RNN", "a plain RNN's")])
def test_torch_gru_and_rnn_state_dicts_are_named(torch, kind, blocks):
    state = getattr(torch.nn, kind)(3, 4, num_layers=2).state_dict()
    with pytest.raises(ValueError, match=rf"these are {blocks} .* weights, not an LSTM's"):
        convert.from_torch(state)


def test_torch_meta_device_is_named(torch):
    with torch.device("meta"):
        module = torch.nn.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"\['\w+_l0'\]` is on the meta device"):
        xlstm.LSTM.from_torch(module)


def test_torch_bfloat16_is_named(torch):
    module = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    with pytest.raises(TypeError, match=r"dtype torch\.bfloat16.*module\.float\(\)"):
        xlstm.LSTM.from_torch(module)


def test_torch_mixed_dtypes_are_refused(torch):
    state = dict(torch.nn.LSTM(3, 4).state_dict())
    state["weight_hh_l0"] = state["weight_hh_l0"].double()
    with pytest.raises(
        TypeError, match=r"mixes dtypes \('bias_hh_l0' is float32, 'weight_hh_l0' is float64\)"
    ):
        convert.from_torch(state)
    with pytest.raises(TypeError, match="mixes dtypes"):
        xlstm.LSTM.from_torch(state)


def test_torch_engine_and_fused_as_the_constructor(torch):
    module = torch.nn.LSTM(3, 4)
    for options in ({"fused": False}, {"fused": "auto"}, {"fused": True}):
        with pytest.warns(DeprecationWarning, match="from_torch"):
            imported = xlstm.LSTM.from_torch(module, **options)
        with pytest.warns(DeprecationWarning, match="xlstm.LSTM"):
            assert imported.engine == xlstm.LSTM(3, 4, **options).engine
    for options in ({"engine": "generic"}, {}):
        assert xlstm.LSTM.from_torch(module, **options).engine == xlstm.LSTM(3, 4, **options).engine
    for options in ({"fused": 0}, {"engine": "numpy", "fused": True}):
        with pytest.raises(TypeError, match="fused"):
            xlstm.LSTM(3, 4, **options)
        with pytest.raises(TypeError, match="fused"):
            xlstm.LSTM.from_torch(module, **options)


# --------------------------------------------------------------------------- Keras


@pytest.fixture(scope="module")
def keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"these tests run Keras on JAX; this process uses {keras.backend.backend()}")
    return keras


def built(layer, n_x=2, seed=0, batch=None):
    """``layer`` built on ``(batch, None, n_x)`` with random weights in Keras's shapes."""
    layer.build((batch, None, n_x))
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [0.5 * rng.standard_normal(w.shape).astype(w.dtype) for w in layer.get_weights()]
    )
    return layer


def keras_vs_xlstm(layer, model, x_bt):
    """Keras's output sequence and xlstm's on the same batch-first ``x (m, T, n_x)``."""
    ours, _ = model(np.ascontiguousarray(x_bt.transpose(2, 0, 1)))
    return np.asarray(layer(x_bt)), np.asarray(ours).transpose(1, 2, 0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"activation": "relu"}, r"activation='relu' \(xlstm: 'tanh'\)"),
        ({"recurrent_activation": "hard_sigmoid"}, r"recurrent_activation='hard_sigmoid'"),
        ({"go_backwards": True}, r"go_backwards=True \(xlstm: False\)"),
        ({"stateful": True}, r"stateful=True"),
        ({"dtype": "mixed_float16"}, r"computes in float16 with float32 weights"),
    ],
)
def test_keras_settings_that_change_the_computation_are_refused(keras, options, match):
    batch = 2 if options.get("stateful") else None  # Keras needs a fixed batch to keep state
    layer = built(keras.layers.LSTM(3, return_sequences=True, **options), batch=batch)
    if "dtype" not in options and "stateful" not in options:
        # Keras computes something else: importing the weights alone would be silently wrong.
        x = np.random.default_rng(1).standard_normal((2, 5, 2)).astype("float32")
        got, ours = keras_vs_xlstm(layer, xlstm.LSTM.from_keras(layer.get_weights()), x)
        assert rel_err(ours, got) > 1e-2
    with pytest.raises(ValueError, match=match):
        xlstm.LSTM.from_keras(layer)
    with pytest.raises(ValueError, match=match):
        convert.from_keras(layer)


def test_keras_settings_that_do_not_change_inference_are_accepted(keras):
    layer = built(
        keras.layers.LSTM(
            3, return_sequences=True, return_state=True, unit_forget_bias=False, dropout=0.3,
            recurrent_dropout=0.2, unroll=True, kernel_regularizer="l2",
        )
    )  # fmt: skip
    x = np.random.default_rng(2).standard_normal((2, 5, 2)).astype("float32")
    model = xlstm.LSTM.from_keras(layer)
    sequence, h, c = layer(x)
    ours, (a_n, c_n) = model(np.ascontiguousarray(x.transpose(2, 0, 1)))
    assert rel_err(np.asarray(ours).transpose(1, 2, 0), sequence) < 1e-5
    assert rel_err(np.asarray(a_n)[0].T, h) < 1e-5
    assert rel_err(np.asarray(c_n)[0].T, c) < 1e-5


def test_keras_layer_without_bias(keras):
    layer = built(keras.layers.LSTM(3, return_sequences=True, use_bias=False))
    model = xlstm.LSTM.from_keras(layer)
    assert all(not np.any(model.parameters[k]) for k in ("bf_l0", "bi_l0", "bc_l0", "bo_l0"))
    x = np.random.default_rng(3).standard_normal((2, 4, 2)).astype("float32")
    assert rel_err(*keras_vs_xlstm(layer, model, x)[::-1]) < 1e-5


@pytest.mark.parametrize(("kind", "what"), [("GRU", "a GRU"), ("SimpleRNN", "a SimpleRNN")])
def test_keras_gru_and_simple_rnn_are_named(keras, kind, what):
    layer = built(getattr(keras.layers, kind)(3))
    with pytest.raises(TypeError, match=rf"is a Keras {kind}: {what}, not an LSTM"):
        xlstm.LSTM.from_keras(layer)
    blocks = "a GRU's" if kind == "GRU" else "a plain RNN's"
    with pytest.raises(ValueError, match=rf"these are {blocks} .* weights, not an LSTM's"):
        xlstm.LSTM.from_keras(layer.get_weights())


def test_keras_unbuilt_layer(keras):
    with pytest.raises(ValueError, match="has no weights yet"):
        xlstm.LSTM.from_keras(keras.layers.LSTM(3))


@pytest.mark.parametrize("merge_mode", ["sum", "mul", "ave", None])
def test_keras_bidirectional_other_merges_are_refused(keras, merge_mode):
    layer = built(keras.layers.Bidirectional(keras.layers.LSTM(3), merge_mode=merge_mode))
    with pytest.raises(ValueError, match=rf"merge_mode={merge_mode!r}; xlstm concatenates"):
        xlstm.LSTM.from_keras(layer)


def test_keras_bidirectional_with_a_relu_half_is_refused(keras):
    layer = keras.layers.Bidirectional(
        keras.layers.LSTM(3, return_sequences=True),
        backward_layer=keras.layers.LSTM(
            3, return_sequences=True, go_backwards=True, activation="relu"
        ),
    )
    built(layer)
    with pytest.raises(ValueError, match=r"backward_layer computes .* activation='relu'"):
        xlstm.LSTM.from_keras(layer)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras_stacks_import_and_agree(keras, bidirectional):
    def lstm():
        one = keras.layers.LSTM(3, return_sequences=True)
        return keras.layers.Bidirectional(one) if bidirectional else one

    stack = keras.Sequential([keras.Input((None, 2)), lstm(), lstm(), lstm()])
    rng = np.random.default_rng(4)
    stack.set_weights(
        [0.5 * rng.standard_normal(w.shape).astype("float32") for w in stack.get_weights()]
    )
    model = xlstm.LSTM.from_keras(stack)
    assert (model.num_layers, model.bidirectional, model.n_x, model.n_a) == (3, bidirectional, 2, 3)
    x = rng.standard_normal((4, 6, 2)).astype("float32")
    got, ours = keras_vs_xlstm(stack, model, x)
    assert rel_err(ours, got) < 1e-5
    # Weights in torch order: layer 0 (forward, reverse), layer 1, ...
    assert len(model.to_keras(as_layer=True).get_weights()) == len(stack.get_weights())
    for ours_w, theirs in zip(
        model.to_keras(as_layer=True).get_weights(), stack.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(ours_w, theirs)


def test_keras_stack_with_other_layers_is_refused(keras):
    stack = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.LSTM(3, return_sequences=True), keras.layers.Dense(2)]
    )
    with pytest.raises(TypeError, match=r"`layer.layers\[1\]` \('dense\w*'\) is a Dense"):
        xlstm.LSTM.from_keras(stack)
    stack = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.LSTM(3, return_sequences=True), keras.layers.GRU(3)]
    )
    with pytest.raises(TypeError, match=r"is a Keras GRU: a GRU, not an LSTM"):
        xlstm.LSTM.from_keras(stack)
    mixed = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.LSTM(3, return_sequences=True),
            keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True)),
        ]
    )
    with pytest.raises(ValueError, match="mixes Bidirectional and one-direction"):
        xlstm.LSTM.from_keras(mixed)


def test_keras_engine_and_fused_as_the_constructor(keras):
    layer = built(keras.layers.LSTM(3))
    with pytest.warns(DeprecationWarning, match="from_keras"):
        imported = xlstm.LSTM.from_keras(layer, fused=False)
    assert imported.engine == xlstm.LSTM(2, 3, engine="generic").engine == "generic"
    with pytest.raises(TypeError, match="not both"):
        xlstm.LSTM.from_keras(layer, engine="numpy", fused=True)


def test_models_md_keras_snippet_runs(keras):
    """docs/models.md: ``xlstm.LSTM.from_keras(layer)`` and ``model.to_keras()`` as written."""
    page = Path(__file__).resolve().parents[2] / "docs" / "models.md"
    if not page.is_file():
        pytest.skip("docs/models.md is not next to the tests (installed package)")
    text = page.read_text(encoding="utf-8")
    section = text[text.index("## Keras 3") :]
    blocks = re.findall(r"```python\n(.+?)\n```", section.split("\n## ")[0], re.DOTALL)
    assert blocks, "docs/models.md's Keras section has no example"
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
