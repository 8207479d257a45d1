"""``xlstm.torch.LSTM`` against ``torch.nn.LSTM`` (the oracle): parameters, state dicts,
outputs and every gradient in float64 to 1e-12, ``PackedSequence``, ``lengths=``,
``gradcheck``, dropout reproducibility, errors, and the CUDA bridge's plumbing with a
NumPy stand-in for CuPy (the real CUDA path is unverified without a GPU)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import xlstm.torch as xt  # noqa: E402

F64 = torch.float64
TOL = 1e-12


def _pair(seed=0, **kwargs):
    """A torch.nn.LSTM and an xlstm.torch.LSTM with the same (torch-initialised) weights."""
    torch.manual_seed(seed)
    reference = torch.nn.LSTM(dtype=F64, **kwargs)
    mine = xt.LSTM(dtype=F64, **kwargs)
    mine.load_state_dict(reference.state_dict())
    return reference, mine


def _inputs(m, t_x, n_x, count, hidden, batch_first=False, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = (m, t_x, n_x) if batch_first else (t_x, m, n_x)
    x = torch.randn(shape, generator=gen, dtype=F64, requires_grad=True)
    h0 = torch.randn((count, m, hidden), generator=gen, dtype=F64, requires_grad=True)
    c0 = torch.randn((count, m, hidden), generator=gen, dtype=F64, requires_grad=True)
    return x, h0, c0


def _loss(output, h_n, c_n):
    """Every output and both final states reach the loss, with unequal weights."""
    data = output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output
    weights = torch.linspace(-1.0, 2.0, data.numel(), dtype=data.dtype, device=data.device)
    weights = weights.reshape(data.shape)
    return (data * weights).sum() + (data**2).sum() + (h_n**3).sum() - (c_n * h_n).sum()


def _run(module, args, kwargs=None, wrt=()):
    output, (h_n, c_n) = module(*args, **(kwargs or {}))
    grads = torch.autograd.grad(_loss(output, h_n, c_n), [*wrt, *module.parameters()])
    return output, h_n, c_n, grads


def _assert_close(got, expected, tol=TOL):
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        if isinstance(a, torch.nn.utils.rnn.PackedSequence):
            assert torch.equal(a.batch_sizes, b.batch_sizes)
            a, b = a.data, b.data
        if isinstance(a, (tuple, list)):
            _assert_close(a, b, tol)
            continue
        assert a.shape == b.shape, index
        err = (a - b).abs().max().item()
        scale = max(1.0, b.abs().max().item())
        assert err <= tol * scale, f"item {index}: {err:.3e}"


# --------------------------------------------------------------------------- imports


def test_import_xlstm_imports_neither_torch_nor_jax():
    code = (
        "import sys, xlstm, xlstm.layers, xlstm.convert; "
        "bad = [m for m in ('torch', 'jax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_module_imports_the_real_torch():
    assert xt.torch is sys.modules["torch"]
    assert xt.torch.nn.Module is torch.nn.Module


# --------------------------------------------------------------------------- parameters


CONFIGS = [
    {"input_size": 3, "hidden_size": 4},
    {"input_size": 3, "hidden_size": 4, "num_layers": 2, "bidirectional": True},
    {"input_size": 2, "hidden_size": 5, "num_layers": 3, "bias": False},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_parameters_are_torch_s_names_shapes_and_initialisation(config):
    torch.manual_seed(7)
    reference = torch.nn.LSTM(**config)
    torch.manual_seed(7)
    mine = xt.LSTM(**config)
    expected = dict(reference.named_parameters())
    got = dict(mine.named_parameters())
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert isinstance(got[name], torch.nn.Parameter)
        assert got[name].shape == value.shape, name
        # Same draws in the same order from the same seed: the same initial values.
        assert torch.equal(got[name], value), name
    assert [[p.shape for p in row] for row in mine.all_weights] == [
        [p.shape for p in row] for row in reference.all_weights
    ]


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_loads_both_ways(config):
    reference, mine = _pair(**config)
    fresh_reference = torch.nn.LSTM(dtype=F64, **config)
    fresh_reference.load_state_dict(mine.state_dict())  # strict: same keys both ways
    for name, value in reference.state_dict().items():
        assert torch.equal(fresh_reference.state_dict()[name], value)
        assert torch.equal(mine.state_dict()[name], value)


# --------------------------------------------------------------------------- against torch


@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "batch_first", "bias", "states"),
    [
        (1, False, False, True, True),
        (1, False, True, True, False),
        (2, True, False, True, True),
        (2, True, True, False, True),
        (3, False, False, True, False),
    ],
)
def test_outputs_and_gradients_equal_torch(num_layers, bidirectional, batch_first, bias, states):
    config = {
        "input_size": 3,
        "hidden_size": 4,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "batch_first": batch_first,
        "bias": bias,
    }
    reference, mine = _pair(**config)
    count = num_layers * (2 if bidirectional else 1)
    x, h0, c0 = _inputs(5, 6, 3, count, 4, batch_first)
    args, wrt = ((x, (h0, c0)), (x, h0, c0)) if states else ((x,), (x,))
    _assert_close(_run(mine, args, wrt=wrt), _run(reference, args, wrt=wrt))


@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_in_and_out_equals_torch(enforce_sorted, batch_first):
    config = {"input_size": 3, "hidden_size": 4, "num_layers": 2, "bidirectional": True}
    reference, mine = _pair(batch_first=batch_first, **config)
    lengths = torch.tensor([6, 5, 5, 2, 1] if enforce_sorted else [3, 6, 1, 5, 2])
    x, h0, c0 = _inputs(5, 6, 3, 4, 4, batch_first)
    results = []
    for module in (mine, reference):
        packed = pack_padded_sequence(
            x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted
        )
        results.append(_run(module, (packed, (h0, c0)), wrt=(x, h0, c0)))
    got, expected = results
    assert type(got[0]) is type(expected[0])
    for field in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(got[0], field), getattr(expected[0], field)
        assert (a is None and b is None) or torch.equal(a, b)
    _assert_close(got, expected)


@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_keyword_equals_torch_on_packed_input(batch_first):
    config = {"input_size": 3, "hidden_size": 4, "num_layers": 2, "bidirectional": True}
    reference, mine = _pair(batch_first=batch_first, **config)
    lengths = torch.tensor([3, 6, 1, 5, 2])
    x, h0, c0 = _inputs(5, 6, 3, 4, 4, batch_first)
    got = _run(mine, (x, (h0, c0)), {"lengths": lengths}, wrt=(x, h0, c0))

    def padded_reference(x, h0, c0):
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        output, (h_n, c_n) = reference(packed, (h0, c0))
        output, _ = pad_packed_sequence(output, batch_first=batch_first, total_length=6)
        return output, (h_n, c_n)

    output, (h_n, c_n) = padded_reference(x, h0, c0)
    loss = _loss(output, h_n, c_n)
    grads = torch.autograd.grad(loss, [x, h0, c0, *reference.parameters()])
    _assert_close(got, (output, h_n, c_n, grads))


def test_unbatched_input_equals_torch():
    reference, mine = _pair(input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, 4, dtype=F64, requires_grad=True)
    wrt = (x, h0, c0)
    _assert_close(_run(mine, (x, (h0, c0)), wrt=wrt), _run(reference, (x, (h0, c0)), wrt=wrt))


def test_float32_matches_torch():
    torch.manual_seed(3)
    reference = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True)
    mine = xt.LSTM(8, 16, num_layers=2, bidirectional=True)
    mine.load_state_dict(reference.state_dict())
    x = torch.randn(12, 4, 8, requires_grad=True)
    got, expected = _run(mine, (x,), wrt=(x,)), _run(reference, (x,), wrt=(x,))
    _assert_close(got, expected, tol=1e-4)


def test_no_grad_inference_keeps_nothing_and_equals_torch():
    reference, mine = _pair(input_size=3, hidden_size=4, bidirectional=True)
    x, _, _ = _inputs(5, 6, 3, 2, 4)
    with torch.no_grad():
        got, expected = mine(x), reference(x)
    assert not got[0].requires_grad
    _assert_close([got[0], *got[1]], [expected[0], *expected[1]])


def test_sum_of_output_backward_stride_zero_gradient():
    reference, mine = _pair(input_size=3, hidden_size=4)
    x, _, _ = _inputs(5, 6, 3, 1, 4)
    grads = []
    for module in (mine, reference):
        module.zero_grad()
        module(x)[0].sum().backward()  # d_output is an expanded (stride 0) tensor
        grads.append([p.grad.clone() for p in module.parameters()])
    _assert_close(grads[0], grads[1])


def test_bias_gradients_are_separate_tensors():
    _, mine = _pair(input_size=3, hidden_size=4)
    x, _, _ = _inputs(5, 6, 3, 1, 4)
    mine(x)[0].sum().backward()
    assert torch.equal(mine.bias_ih_l0.grad, mine.bias_hh_l0.grad)
    assert mine.bias_ih_l0.grad.data_ptr() != mine.bias_hh_l0.grad.data_ptr()


# --------------------------------------------------------------------------- gradcheck


def test_gradcheck_float64_lengths_bidirectional_two_layers_states():
    torch.manual_seed(0)
    mine = xt.LSTM(2, 3, num_layers=2, bidirectional=True, dtype=F64)
    names = [name for name, _ in mine.named_parameters()]
    x, h0, c0 = _inputs(3, 4, 2, 4, 3)
    lengths = torch.tensor([4, 2, 3])

    def call(x, h0, c0, *weights):
        output, (h_n, c_n) = torch.func.functional_call(
            mine, dict(zip(names, weights, strict=True)), (x, (h0, c0)), {"lengths": lengths}
        )
        return output, h_n, c_n

    assert torch.autograd.gradcheck(call, (x, h0, c0, *mine.parameters()))


def test_gradcheck_with_dropout_under_a_fixed_torch_seed():
    torch.manual_seed(0)
    mine = xt.LSTM(2, 3, num_layers=2, dropout=0.4, dtype=F64)
    names = [name for name, _ in mine.named_parameters()]
    x, _, _ = _inputs(3, 4, 2, 2, 3)

    def call(x, *weights):
        torch.manual_seed(5)  # the same masks at every evaluation
        output, _ = torch.func.functional_call(mine, dict(zip(names, weights, strict=True)), (x,))
        return output

    assert torch.autograd.gradcheck(call, (x, *mine.parameters()))


# --------------------------------------------------------------------------- dropout


def test_dropout_reproducible_with_torch_manual_seed_and_off_in_eval():
    reference, mine = _pair(input_size=3, hidden_size=6, num_layers=3, dropout=0.5)
    x, _, _ = _inputs(4, 5, 3, 3, 6)
    torch.manual_seed(11)
    first = mine(x)[0]
    torch.manual_seed(11)
    again = mine(x)[0]
    other = mine(x)[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    mine.eval()
    reference.eval()
    _assert_close([mine(x)[0]], [reference(x)[0]])
    assert not torch.equal(first, mine(x)[0])


# --------------------------------------------------------------------------- safety and errors


def test_in_place_change_of_output_makes_backward_raise():
    _, mine = _pair(input_size=3, hidden_size=4)
    x, _, _ = _inputs(5, 6, 3, 1, 4)
    output, _ = mine(x)
    output.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()


def test_inputs_are_not_modified():
    _, mine = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, h0, c0 = _inputs(5, 6, 3, 4, 4)
    before = [t.detach().clone() for t in (x, h0, c0, *mine.parameters())]
    mine(x, (h0, c0), lengths=[6, 2, 3, 4, 5])[0].sum().backward()
    for a, b in zip((x, h0, c0, *mine.parameters()), before, strict=True):
        assert torch.equal(a.detach(), b)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"proj_size": 2}, ValueError, "`proj_size` = 2"),
        ({"engine": "fast"}, ValueError, "`engine` = 'fast'"),
        ({"dtype": torch.float16}, TypeError, "`dtype`"),
        ({"num_layers": 0}, ValueError, "`num_layers` = 0"),
        ({"dropout": 1.5}, ValueError, "dropout"),
        ({"bidirectional": 1}, TypeError, "`bidirectional` must be a bool"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        xt.LSTM(3, 4, **kwargs)


def test_call_errors():
    _, mine = _pair(input_size=3, hidden_size=4, num_layers=2)
    x, h0, c0 = _inputs(5, 6, 3, 2, 4)
    with pytest.raises(ValueError, match=r"`h0` has shape \(1, 5, 4\)"):
        mine(x, (h0[:1], c0))
    with pytest.raises(ValueError, match="`input` has 2 features; expected input_size = 3"):
        mine(x[..., :2])
    with pytest.raises(TypeError, match=r"`input` is torch\.float32"):
        mine(x.float())
    with pytest.raises(ValueError, match=r"`lengths\[1\]` = 7"):
        mine(x, lengths=[1, 7, 1, 1, 1])
    with pytest.raises(TypeError, match="`lengths` with a PackedSequence"):
        mine(pack_padded_sequence(x, [6, 5, 4, 3, 2]), lengths=[6, 5, 4, 3, 2])
    with pytest.raises(TypeError, match="`hx` must be a tuple"):
        mine(x, h0)
    with pytest.raises(ValueError, match="CPU and CUDA tensors; these are on 'meta'"):
        xt.bridge_for(torch.device("meta"))


# --------------------------------------------------------------------------- CUDA plumbing


def _fake_cupy(entered):
    """A NumPy stand-in with the parts of CuPy the bridge uses, recording stream entries."""

    @contextlib.contextmanager
    def external_stream(pointer):
        entered.append(("stream", pointer))
        yield

    @contextlib.contextmanager
    def device(index):
        entered.append(("device", index))
        yield

    fake = types.ModuleType("cupy")
    fake.asarray = np.asarray
    fake.from_dlpack = np.from_dlpack
    fake.cuda = types.SimpleNamespace(ExternalStream=external_stream, Device=device)
    return fake


def test_cuda_bridge_plumbing_with_a_numpy_stand_in(monkeypatch):
    entered = []
    monkeypatch.setattr(xt, "_import_cupy", lambda: _fake_cupy(entered))
    stream = types.SimpleNamespace(cuda_stream=1234)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    bridge = xt.cuda_bridge(torch.device("cuda", 1))
    reference, mine = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, h0, c0 = _inputs(5, 6, 3, 4, 4)
    weights = list(mine.parameters())
    setup = xt.Setup(bridge, 2, True, True, False, None, 0.0, None, True, "auto", True)
    output, h_n, c_n = xt.LSTMFunction.apply(setup, x, h0, c0, *weights)
    assert entered == [("device", 1), ("stream", 1234)]
    grads = torch.autograd.grad(_loss(output, h_n, c_n), [x, h0, c0, *weights])
    assert entered[2:] == [("device", 1), ("stream", 1234)]  # backward on the same stream
    expected = _run(reference, (x, (h0, c0)), wrt=(x, h0, c0))
    _assert_close((output, h_n, c_n, grads), expected)


def test_cuda_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(ImportError, match="install the `cuda12` or `cuda13` extra"):
        xt.cuda_bridge(torch.device("cuda", 0))


@pytest.mark.gpu
def test_cuda_equals_torch_on_cuda():
    """The real CUDA path (CuPy engine on torch's memory and stream): only with a GPU."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    pytest.importorskip("cupy")
    reference, mine = _pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    reference, mine = reference.cuda(), mine.cuda()
    x, h0, c0 = (t.detach().cuda().requires_grad_() for t in _inputs(5, 6, 3, 4, 4))
    lengths = torch.tensor([6, 2, 4, 1, 5])
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # not the default stream: the kernels must follow it
        got = _run(mine, (x, (h0, c0)), {"lengths": lengths}, wrt=(x, h0, c0))
    torch.cuda.synchronize()
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    output, (h_n, c_n) = reference(packed, (h0, c0))
    output, _ = pad_packed_sequence(output, total_length=6)
    grads = torch.autograd.grad(_loss(output, h_n, c_n), [x, h0, c0, *reference.parameters()])
    _assert_close(got, (output, h_n, c_n, grads))


# --------------------------------------------------------------------------- bench


def test_bench_framework_torch_compares_with_torch_nn_lstm(tmp_path, capsys):
    import json

    from xlstm.cli import bench as cli

    path = tmp_path / "bench.json"
    argv = ["--backend", "torch", "--framework", "--sizes", "4,6,3,5", "--repeat", "1"]
    assert cli.main([*argv, "--quiet", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["peer"] == "torch.nn.LSTM"
    assert all(check["ok"] for check in report["checks"])
    pairs = {(row["contestant"], row["mode"]) for row in report["results"]}
    for mode in ("inference", "forward", "forward_backward"):
        assert {("xlstm.torch.LSTM", mode), ("torch.nn.LSTM", mode)} <= pairs
    assert "xlstm.torch.LSTM" in capsys.readouterr().out


def test_bench_framework_needs_torch_or_jax(capsys):
    from xlstm.cli import bench as cli

    assert cli.main(["--framework", "--sizes", "4,6,3,5"]) == 2
    assert "add --backend torch|jax" in capsys.readouterr().err
