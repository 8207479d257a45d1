"""LSTMModel / CharLSTM: steps, moving between backends, checkpoints, TBPTT batches, corpus."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _helpers import PARAM_KEYS, backend_name, rel_err, to_numpy

from xlstm._layout import GATE_KEYS, layer_key
from xlstm.training import (
    SGD,
    Adam,
    CharLSTM,
    CheckpointError,
    LSTMModel,
    default_corpus,
    load_model,
    split_text,
    tbptt_batches,
    unigram_entropy,
)

TEXT = "the cat sat on the mat. the dog sat on the log. " * 8
VOCAB = "".join(sorted(set(TEXT)))

MODEL_KEYS = tuple(layer_key(k, 0) if k in GATE_KEYS else k for k in PARAM_KEYS)
"""A one-layer model's keys: the seed's gate keys of layer 0, then Wy, by."""


def char_model(backend="numpy", **options):
    options.setdefault("dtype", "float64")
    return CharLSTM(VOCAB, 16, backend=backend, seed=3, **options)


def batches(model, m=2, t=8):
    return list(tbptt_batches(model.encode(TEXT), m, t))


def test_train_step_lowers_the_loss_on_every_backend(xp):
    model = char_model(xp, optimizer=Adam(lr=0.02))
    chunks = batches(model)
    first = None
    for _ in range(4):
        state = None
        for inputs, targets in chunks:
            loss, state = model.train_step(inputs, targets, state=state)
            first = float(loss) if first is None else first
    final, _ = model.loss(*chunks[0])
    assert float(final) < 0.8 * first
    assert model.step == 4 * len(chunks)
    assert backend_name(model.xp) == model.backend


def test_train_step_equals_loss_and_gradients_plus_update():
    model = char_model(optimizer=SGD(lr=0.5), clip_norm=None)
    inputs, targets = batches(model)[0]
    before = model.parameters
    _, grads, _ = model.loss_and_gradients(inputs, targets)
    model.train_step(inputs, targets)
    for key in MODEL_KEYS:
        assert rel_err(model.parameters[key], before[key] - 0.5 * grads["d" + key]) < 1e-14
        assert model.parameters[key] is not before[key]


def test_state_is_carried_between_chunks():
    model = char_model()
    (x0, y0), (x1, y1) = batches(model)[:2]
    _, state = model.loss(x0, y0)
    carried, _ = model.loss(x1, y1, state=state)
    fresh, _ = model.loss(x1, y1)
    joined = np.concatenate([x0, x1], axis=1), np.concatenate([y0, y1], axis=1)
    whole, _ = model.loss(*joined)
    assert float(carried) != pytest.approx(float(fresh))
    first, _ = model.loss(x0, y0)
    assert (float(first) + float(carried)) / 2 == pytest.approx(float(whole), rel=1e-12)


def test_to_moves_parameters_and_optimizer_state():
    torch = pytest.importorskip("torch")
    model = char_model()
    inputs, targets = batches(model)[0]
    model.train_step(inputs, targets)
    moved = model.to("torch")
    assert moved.backend == "torch"
    assert model.backend == "numpy"
    assert isinstance(moved.parameters["Wf_l0"], torch.Tensor)
    assert isinstance(moved.opt_state["m"]["Wf_l0"], torch.Tensor)
    assert moved.step == model.step == 1
    a, _ = model.loss(inputs, targets)
    b, _ = moved.loss(inputs, targets)
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    model.train_step(inputs, targets)
    moved.train_step(inputs, targets)
    for key in MODEL_KEYS:
        assert rel_err(moved.parameters[key], model.parameters[key]) < 1e-12


ROUTES = [("numpy", "numpy"), ("numpy", "torch"), ("torch", "numpy"), ("torch", "torch")]


@pytest.mark.parametrize(("save_on", "load_on"), ROUTES)
def test_save_load_round_trip_resumes_exactly(tmp_path, save_on, load_on):
    pytest.importorskip("torch")
    chunks = batches(char_model())
    reference = char_model(save_on)
    for inputs, targets in chunks[:3]:
        reference.train_step(inputs, targets)
    reference.extra["note"] = {"epoch": 2}
    path = reference.save(tmp_path / "model")
    assert path.suffix == ".npz"

    loaded = CharLSTM.load(path, backend=load_on)
    assert loaded.backend == load_on
    assert (loaded.vocab, loaded.n_a, loaded.dtype, loaded.step) == (VOCAB, 16, "float64", 3)
    assert loaded.optimizer == reference.optimizer
    assert loaded.clip_norm == reference.clip_norm
    assert loaded.extra == {"note": {"epoch": 2}}
    for key in MODEL_KEYS:
        assert np.array_equal(to_numpy(loaded.parameters[key]), to_numpy(reference.parameters[key]))
    for inputs, targets in chunks[3:5]:
        reference.train_step(inputs, targets)
        loaded.train_step(inputs, targets)
    for key in MODEL_KEYS:
        assert rel_err(loaded.parameters[key], reference.parameters[key]) < 1e-12


def test_plain_model_round_trip_and_class_check(tmp_path):
    model = LSTMModel(3, 4, 2, seed=0, optimizer=SGD(lr=0.1))
    path = model.save(tmp_path / "plain.npz")
    loaded = load_model(path)
    assert type(loaded) is LSTMModel
    assert loaded.opt_state is None
    assert loaded.config() == model.config()
    assert loaded.config()["gate_order"] == ["i", "f", "o", "g"]
    with pytest.raises(ValueError, match="holds a LSTMModel, not a CharLSTM"):
        CharLSTM.load(path)


def _rewrite(path, target, change):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    np.savez(target, **arrays)
    return target


def _edit_meta(**updates):
    def change(arrays):
        meta = json.loads(str(arrays["meta"]))
        meta.update(updates)
        arrays["meta"] = np.asarray(json.dumps(meta))

    return change


def test_corrupt_or_mismatched_checkpoints_give_a_clear_error(tmp_path):
    model = char_model()
    model.train_step(*batches(model)[0])
    good = model.save(tmp_path / "good.npz")
    raw = good.read_bytes()
    bad = tmp_path / "bad.npz"

    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable xlstm checkpoint"):
        load_model(bad)
    bad.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable xlstm checkpoint"):
        load_model(bad)
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="not a readable xlstm checkpoint"):
        load_model(bad)

    cases = {
        "gate order": _edit_meta(gate_order=["i", "f", "g", "o"]),
        "format version 99": _edit_meta(version=99),
        "dtype 'float16'": _edit_meta(dtype="float16"),
        "vocabulary does not match": _edit_meta(vocab=VOCAB[:-1]),
        r"`param/Wf_l0` has shape \(16, 30\); the config says": _edit_meta(n_x=13, n_y=13,
                                                                        vocab=VOCAB[:13]),
        "`param/Wy` is missing": lambda a: a.pop("param/Wy"),
        "has dtype float32": lambda a: a.update({"param/by": a["param/by"].astype(np.float32)}),
        "no `meta` record": lambda a: a.pop("meta"),
        "optimiser slot 'v' lacks buffers for \\['Wf_l0'\\]": lambda a: a.pop("opt/v/Wf_l0"),
        "optimiser state has slots": lambda a: [a.pop(f"opt/v/{k}") for k in MODEL_KEYS],
    }  # fmt: skip
    for message, change in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_model(_rewrite(good, bad, change))
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.npz")
    # The good file is untouched by all of this and still loads.
    assert load_model(good).step == 1


def test_save_is_atomic(tmp_path, monkeypatch):
    model = char_model()
    path = model.save(tmp_path / "ckpt.npz")
    before = path.read_bytes()
    model.train_step(*batches(model)[0])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_sample_is_reproducible_and_backend_independent():
    torch = pytest.importorskip("torch")
    del torch
    model = char_model()
    text = model.sample(50, prime="the ", seed=7, temperature=0.8)
    assert text.startswith("the ")
    assert len(text) == 54
    assert set(text) <= set(VOCAB)
    assert model.sample(50, prime="the ", seed=7, temperature=0.8) == text
    assert model.to("torch").sample(50, prime="the ", seed=7, temperature=0.8) == text


def test_model_errors():
    with pytest.raises(ValueError, match="`vocab` must be a non-empty string of distinct"):
        CharLSTM("aa")
    with pytest.raises(TypeError, match="`vocab` must be a str"):
        CharLSTM(["a", "b"])
    with pytest.raises(ValueError, match="`clip_norm` = 0"):
        char_model(clip_norm=0)
    with pytest.raises(TypeError, match="`optimizer` must be"):
        char_model(optimizer="adam")
    model = char_model()
    with pytest.raises(ValueError, match="'Z', which is not in the vocabulary"):
        model.encode("Zebra")
    with pytest.raises(TypeError, match="`state` must be None or the"):
        model.loss(*batches(model)[0], state=[1, 2])
    params = LSTMModel(3, 4, 2, seed=0).parameters
    with pytest.raises(
        ValueError, match=r"expected \(5, 8\) for sizes \(n_x, n_a, n_y\) = \(3, 5, 2\)"
    ):
        LSTMModel(3, 5, 2, parameters=params)


def test_tbptt_batches_continue_each_stream():
    ids = np.arange(1000)
    chunks = list(tbptt_batches(ids, 4, 10, offset=3))
    assert len(chunks) == (1000 - 3 - 1) // 4 // 10
    for k, (inputs, targets) in enumerate(chunks):
        assert inputs.shape == targets.shape == (4, 10)
        assert np.array_equal(targets, inputs + 1)
        if k:
            assert np.array_equal(inputs[:, 0], chunks[k - 1][0][:, -1] + 1)
    with pytest.raises(ValueError, match="needed for one chunk per stream"):
        next(tbptt_batches(ids[:20], 4, 10))


def test_default_corpus_is_reproducible_and_learnable_size():
    text = default_corpus()
    assert 20_000 < len(text.encode()) < 100_000
    assert 2.5 < unigram_entropy(text) < 3.5
    train, val = split_text(text, 0.1)
    assert train + val == text
    assert abs(len(val) - len(text) / 10) < 1
    result = subprocess.run(
        [sys.executable, "-m", "xlstm.data.make_corpus", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_model_from_existing_parameters_takes_their_backend_and_dtype():
    torch = pytest.importorskip("torch")
    import xlstm

    params = xlstm.init_parameters(3, 4, 2, xp="torch", dtype="float64", seed=1)
    model = LSTMModel(3, 4, 2, parameters=params)
    assert model.backend == "torch"
    assert model.dtype == "float64"
    assert isinstance(model.parameters["Wy"], torch.Tensor)
    with pytest.raises(TypeError, match="`parameters` are torch arrays but `backend` = 'numpy'"):
        LSTMModel(3, 4, 2, parameters=params, backend="numpy")
    with pytest.raises(TypeError, match=r"have dtype torch\.float64 but `dtype` = 'float32'"):
        LSTMModel(3, 4, 2, parameters=params, dtype="float32")
