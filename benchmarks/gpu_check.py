"""The stages of xlstm's device check (run by ``benchmarks/gpu_check.sh``).

Each stage is a subcommand that writes its results under ``--out`` as it goes
and never deletes a file there, so a stage cut off by its time limit keeps what
it finished::

    python3 benchmarks/gpu_check.py versions --out DIR   # versions.json
    python3 benchmarks/gpu_check.py smoke --out DIR      # smoke.json (~15 s)
    python3 benchmarks/gpu_check.py bench --out DIR      # rows.jsonl, one line per row
    python3 benchmarks/gpu_check.py report --out DIR     # report.md; short table last

``--dry-run`` runs the same code on the CPU (NumPy arrays, torch on the CPU,
tiny shapes, no CuPy) so that a broken stage shows up before device time is spent;
``tests/engines/test_cupy_cpu.py`` runs it, and runs :func:`smoke` through the
CuPy engine's code on its NumPy stand-in.

The benchmark (``bench``): three worker processes, each under its own limit,
each against ``torch.nn.LSTM`` (cuDNN):

``float32``, TF32 off, then ``float32-tf32``, TF32 on
    Padded batches at DeepBench's LSTM training shapes (hidden = inputs, batch,
    steps: h512 b16 T25, h1024 b128 T25, h256 b16 T150, h256 b64 T150) and one
    small-batch inference shape (forward only): xlstm fused (``fused=True``),
    fused with CUDA-graph replay, xlstm's generic array-API path on CuPy
    (``fused=False``, TF32 off only), and cuDNN.  CuPy reads ``CUPY_TF32`` once,
    so each setting is a process of its own; torch's is set through its current
    API (``torch.backends.{cuda.matmul,cudnn.rnn,cudnn.conv}.fp32_precision``,
    PyTorch >= 2.9), ``allow_tf32`` only where that API is missing; the row
    records which was used and the values read back.
``lengths`` and ``float16``
    Variable lengths, uniform in ``[T/4, T]`` (seeded; one sequence of ``T``),
    fused and generic against torch on packed sequences
    (``pack_padded_sequence(..., enforce_sorted=False)``, packing timed); float16
    storage: fused, fused + graph, cuDNN in float16.

Times are medians of synchronised calls (wall clock: what a training loop sees,
launch overhead included).  Errors are ``||out - ref|| / ||ref||`` against
xlstm's NumPy path in float64 on the same (rounded) inputs, forward (``a``,
final ``c``) and every gradient.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# name: (hidden = inputs, batch, steps, kind)
SHAPES = {
    "h512-b16-T25": (512, 16, 25, "train"),
    "h1024-b128-T25": (1024, 128, 25, "train"),
    "h256-b16-T150": (256, 16, 150, "train"),
    "h256-b64-T150": (256, 64, 150, "train"),
    "h512-b4-T50-infer": (512, 4, 50, "infer"),
}
DRY_SHAPES = {"h8-b3-T4": (8, 3, 4, "train"), "h8-b2-T3-infer": (8, 2, 3, "infer")}

# run: (dtype, tf32, variants, shapes)
_TWO = ("h256-b64-T150", "h1024-b128-T25")
RUNS = {
    "float32": ("float32", False, ("fused", "fused+graph", "generic", "cuDNN"), tuple(SHAPES)),
    "float32-tf32": ("float32", True, ("fused", "fused+graph", "cuDNN"), tuple(SHAPES)),
    "lengths": ("float32", False, ("fused", "generic", "cuDNN"), _TWO),
    "float16": ("float16", False, ("fused", "fused+graph", "cuDNN"), _TWO),
}
# worker: (runs, seconds); the sum stays inside gpu_check.sh's limit for the bench stage
WORKERS = ((("float32",), 38.0), (("float32-tf32",), 26.0), (("lengths", "float16"), 30.0))
N_Y = 2
FLOAT16_TOL = 8 * 2.0**-11
"""Fused float16 against float64 at the test shapes (tests/engines/test_cupy_cpu.py derives it)."""
GRAD_KEYS = ("dx", "da0", "dc0", "dWf", "dWi", "dWc", "dWo", "dbf", "dbi", "dbc", "dbo")


def _emit(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk (a later timeout keeps it)."""
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- inputs, reference


def make_inputs(hidden: int, batch: int, steps: int, dtype: str = "float32") -> dict:
    """Seeded inputs representable in ``dtype`` (float64 arrays holding ``dtype`` values)."""
    rng = np.random.default_rng(hidden * 100_003 + batch * 101 + steps)
    n_x = n_a = hidden
    scale = 1.0 / np.sqrt(n_a + n_x)
    params = {}
    for gate in "fico":
        params[f"W{gate}"] = rng.standard_normal((n_a, n_a + n_x)) * scale
        params[f"b{gate}"] = np.full((n_a, 1), 1.0 if gate == "f" else 0.0)
    params["Wy"] = rng.standard_normal((N_Y, n_a)) / np.sqrt(n_a)
    params["by"] = np.zeros((N_Y, 1))
    arrays = {
        "x": rng.standard_normal((n_x, batch, steps)),
        "a0": np.tanh(rng.standard_normal((n_a, batch))),
        "c0": 0.5 * rng.standard_normal((n_a, batch)),
        "da": rng.standard_normal((n_a, batch, steps)),
    }

    def rounded(a):
        return a.astype(dtype).astype(np.float64)

    return {
        **{k: rounded(v) for k, v in arrays.items()},
        "params": {k: rounded(v) for k, v in params.items()},
    }


def make_lengths(batch: int, steps: int) -> np.ndarray:
    """Lengths uniform in ``[T/4, T]`` (seeded), at least one sequence of ``T`` steps."""
    rng = np.random.default_rng(batch * 7 + steps)
    lengths = rng.integers(max(1, steps // 4), steps + 1, size=batch)
    lengths[0] = steps
    return lengths.astype(np.int64)


def reference(inputs: dict, lengths, cache_path: Path | None = None) -> dict:
    """xlstm on NumPy in float64 (the generic engine); cached on disk for later workers."""
    import xlstm

    if cache_path is not None and cache_path.exists():
        with np.load(cache_path) as data:
            return dict(data)
    a, _, _, caches = xlstm.lstm_forward(
        inputs["x"], inputs["a0"], inputs["params"], inputs["c0"], lengths=lengths
    )
    grads = xlstm.lstm_backward(inputs["da"], caches)
    _, c_n = xlstm.final_states(caches)
    ref = {"a": a, "c_last": c_n, **{k: grads[k] for k in GRAD_KEYS}}
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_path, **ref)
    return ref


def rel_err(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    norm = np.linalg.norm(expected)
    return float(np.linalg.norm(actual - expected) / norm) if norm else 0.0


# --------------------------------------------------------------------------- devices


class Device:
    """Where the arrays live: CuPy and torch CUDA, or (``dry``) NumPy and torch CPU."""

    def __init__(self, dry: bool):
        self.dry = dry
        if dry:
            self.xp, self.torch_device = np, "cpu"
        else:
            import cupy

            self.xp, self.torch_device = cupy, "cuda"

    def put(self, array, dtype):
        return self.xp.asarray(array, dtype=dtype)

    def get(self, array) -> np.ndarray:
        if self.dry:
            return np.asarray(array, dtype=np.float64)
        return self.xp.asnumpy(array).astype(np.float64)

    def sync(self) -> None:
        if not self.dry:
            self.xp.cuda.Device().synchronize()
            import torch

            torch.cuda.synchronize()


def set_torch_tf32(torch, enabled: bool) -> dict:
    """TF32 in torch's matrix products and cuDNN (RNNs included); returns what was set.

    PyTorch >= 2.9: ``fp32_precision`` ("tf32" or "ieee") on ``torch.backends.cuda.matmul``,
    ``torch.backends.cudnn.rnn`` and ``torch.backends.cudnn.conv`` (the legacy
    ``allow_tf32`` flags are deprecated there and must not be mixed with it).
    Older torch: ``allow_tf32``.  Values are read back after setting.
    """
    precision = "tf32" if enabled else "ieee"
    targets = {
        "cuda.matmul": getattr(torch.backends.cuda, "matmul", None),
        "cudnn.rnn": getattr(torch.backends.cudnn, "rnn", None),
        "cudnn.conv": getattr(torch.backends.cudnn, "conv", None),
    }
    if all(hasattr(target, "fp32_precision") for target in targets.values()):
        for target in targets.values():
            target.fp32_precision = precision
        values = {name: target.fp32_precision for name, target in targets.items()}
        return {"api": "fp32_precision", **values}
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return {
        "api": "allow_tf32",
        "cuda.matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
    }


# --------------------------------------------------------------------------- versions


def versions(out: Path, dry: bool) -> dict:
    """Library, toolkit and driver versions (NVRTC, cuBLAS, driver, CuPy, torch, ...)."""
    import array_api_compat

    import xlstm

    info: dict = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "array_api_compat": array_api_compat.__version__,
        "xlstm": str(Path(xlstm.__file__).parent),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if not dry else None
    except ImportError as error:
        info["torch"] = f"not importable: {error}"
    if not dry:
        import cupy
        from cupy_backends.cuda.libs import cublas

        from xlstm._engines.cupy import engine as cupy_engine

        runtime = cupy.cuda.runtime
        props = runtime.getDeviceProperties(0)
        name = props["name"]
        gemm = cupy_engine._runtime().blas(cupy.cuda.Device().id)
        info.update(
            gpu=name.decode() if isinstance(name, bytes) else name,
            compute_capability=cupy.cuda.Device().compute_capability,
            cupy=cupy.__version__,
            cuda_runtime=runtime.runtimeGetVersion(),
            driver=runtime.driverGetVersion(),
            nvrtc=list(cupy.cuda.nvrtc.getVersion()),
            cublas=cublas.getVersion(gemm.handle),
            libcublas=gemm.library.path,
            cublas_workspace_bytes=gemm.workspace_bytes,
            compute_types=cupy_engine._runtime().compute_types(),
        )
    _write(out / "versions.json", info)
    print("versions:", json.dumps(info))
    return info


# --------------------------------------------------------------------------- smoke


def smoke(xp, *, engine: str = "cupy", build=None, sync=lambda: None) -> dict:
    """Fail fast: both kernel modules build, a tiny float32 and float16 problem match
    NumPy float64 forward and backward, and one graph capture replays the eager bits.

    ``build(dtype_name)``: compiles that dtype's kernel module (None: skipped).
    """
    import xlstm
    from xlstm._engines.cupy import engine as cupy_engine

    results: dict = {}
    if build is not None:
        for dtype in ("float32", "float16"):
            started = time.perf_counter()
            build(dtype)
            results[f"build_{dtype}_s"] = round(time.perf_counter() - started, 3)

    def run(dev: dict, params: dict, graph: bool) -> dict:
        with cupy_engine.graph_replay(graph):
            a, _, _, caches = xlstm.lstm_forward(
                dev["x"], dev["a0"], params, dev["c0"], engine=engine
            )
            grads = xlstm.lstm_backward(dev["da"], caches, engine=engine)
        _, c_n = xlstm.final_states(caches)
        sync()
        out = {"a": a, "c_last": c_n, **{k: grads[k] for k in GRAD_KEYS}}
        return {k: np.asarray(_host(v), dtype=np.float64) for k, v in out.items()}

    limits = {"float32": 1e-5, "float16": FLOAT16_TOL}
    for dtype, tol in limits.items():
        inputs = make_inputs(6, 3, 5, dtype)
        ref = reference(inputs, None)
        dev = {k: xp.asarray(v, dtype=dtype) for k, v in inputs.items() if k != "params"}
        params = {k: xp.asarray(v, dtype=dtype) for k, v in inputs["params"].items()}
        eager = run(dev, params, False)
        errors = {k: rel_err(eager[k], ref[k]) for k in ref}
        worst = max(errors.values())
        results[f"{dtype}_rel_err"] = worst
        if not worst <= tol:
            raise AssertionError(f"smoke {dtype}: relative error {worst:.2e} > {tol:.1e}: {errors}")
        captured, replayed = run(dev, params, True), run(dev, params, True)  # capture, replay
        for label, other in (("capture", captured), ("replay", replayed)):
            for key, value in eager.items():
                if not np.array_equal(other[key], value):
                    raise AssertionError(
                        f"smoke {dtype}: graph {label} differs from eager in {key}"
                    )
        results[f"{dtype}_graph_bits_equal"] = True
    cupy_engine.clear_graph_cache()
    return results


def _host(array):
    get = getattr(array, "get", None)
    return get() if callable(get) and not isinstance(array, np.ndarray) else array


def run_smoke(out: Path, dry: bool) -> int:
    started = time.perf_counter()
    record: dict = {"ok": False}
    try:
        if dry:
            record.update(smoke(np, engine="auto"))
        else:
            import cupy

            from xlstm._engines.cupy import _kernels

            device = cupy.cuda.Device().id

            def build(dtype):
                kernels = _kernels.step_kernels(dtype, device)
                for function in kernels._functions.values():  # load the module now
                    function.attributes  # noqa: B018 -- compiles and loads
                return kernels

            record.update(smoke(cupy, build=build, sync=cupy.cuda.Device().synchronize))
        record["ok"] = True
    except Exception as error:  # recorded, then the stage fails
        record["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    record["seconds"] = round(time.perf_counter() - started, 2)
    _write(out / "smoke.json", record)
    print("smoke:", json.dumps(record))
    return 0 if record["ok"] else 1


# --------------------------------------------------------------------------- timing


def measure(fn, sync, *, budget_s: float, min_reps: int = 3, max_reps: int = 50) -> float:
    """Median wall time (s) of ``fn(); sync()`` after two warm-up calls."""
    for _ in range(2):  # compile, capture, allocate
        fn()
        sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - started < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- the variants


def xlstm_variant(device: Device, inputs: dict, variant: str, dtype: str, lengths=None):
    """(forward, forward+backward, accuracy) callables for one xlstm variant."""
    import xlstm
    from xlstm._engines.cupy import engine as cupy_engine

    fused = "auto" if device.dry else variant != "generic"
    graph = variant == "fused+graph"
    dev = {k: device.put(v, dtype) for k, v in inputs.items() if k != "params"}
    params = {k: device.put(v, dtype) for k, v in inputs["params"].items()}

    def forward():
        cupy_engine.set_graph_replay(graph)
        return xlstm.lstm_forward(
            dev["x"], dev["a0"], params, dev["c0"], fused=fused, lengths=lengths
        )

    def forward_backward():
        a, _, _, caches = forward()
        return a, caches, xlstm.lstm_backward(dev["da"], caches, fused=fused)

    def outputs():
        a, caches, grads = forward_backward()
        _, c_n = xlstm.final_states(caches)
        result = {"a": a, "c_last": c_n, **{k: grads[k] for k in GRAD_KEYS}}
        return {k: device.get(v) for k, v in result.items()}

    return forward, forward_backward, outputs


def torch_variant(torch, device: Device, inputs: dict, kind: str, dtype: str, lengths=None):
    """The same three callables for torch.nn.LSTM (cuDNN on CUDA; packed with lengths)."""
    n_a = inputs["a0"].shape[0]
    n_x, _, steps = inputs["x"].shape
    where = torch.device(device.torch_device)
    torch_dtype = getattr(torch, dtype)
    lstm = torch.nn.LSTM(n_x, n_a, device=where, dtype=torch_dtype)
    order = ("i", "f", "c", "o")  # torch's i, f, g, o
    W = np.concatenate([inputs["params"][f"W{g}"] for g in order], axis=0)
    b = np.concatenate([inputs["params"][f"b{g}"] for g in order], axis=0)[:, 0]
    with torch.no_grad():
        lstm.weight_hh_l0.copy_(torch.from_numpy(W[:, :n_a]))
        lstm.weight_ih_l0.copy_(torch.from_numpy(W[:, n_a:]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b))
        lstm.bias_hh_l0.zero_()

    def tensor(array, grad=True):
        t = torch.tensor(np.ascontiguousarray(array), dtype=torch_dtype, device=where)
        return t.requires_grad_(grad)

    x = tensor(inputs["x"].transpose(2, 1, 0))
    h0, c0 = tensor(inputs["a0"].T[None]), tensor(inputs["c0"].T[None])
    da = tensor(inputs["da"].transpose(2, 1, 0), grad=False)
    weights = [lstm.weight_hh_l0, lstm.weight_ih_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    rnn = torch.nn.utils.rnn
    host_lengths = None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64)

    def run():
        if host_lengths is None:
            out, (_, c_last) = lstm(x, (h0, c0))
            return out, c_last
        packed = rnn.pack_padded_sequence(x, host_lengths, enforce_sorted=False)
        out, (_, c_last) = lstm(packed, (h0, c0))
        return rnn.pad_packed_sequence(out, total_length=steps)[0], c_last

    def forward():
        if kind == "infer":
            with torch.no_grad():
                return run()
        return run()

    def forward_backward():
        out, c_last = run()
        return out, c_last, torch.autograd.grad(out, [x, h0, c0, *weights], da)

    def outputs():
        out, c_last, grads = forward_backward()
        host = [g.detach().cpu().double().numpy() for g in grads]
        d_x, d_h0, d_c0, d_hh, d_ih, d_b, _ = host
        result = {
            "a": out.detach().cpu().double().numpy().transpose(2, 1, 0),
            "c_last": c_last.detach().cpu().double().numpy()[0].T,
            "dx": d_x.transpose(2, 1, 0),
            "da0": d_h0[0].T,
            "dc0": d_c0[0].T,
        }
        for k, gate in enumerate(order):
            rows = slice(k * n_a, (k + 1) * n_a)
            result[f"dW{gate}"] = np.concatenate([d_hh[rows], d_ih[rows]], axis=1)
            result[f"db{gate}"] = d_b[rows, None]
        return result

    return forward, forward_backward, outputs


def accuracy(outputs: dict, ref: dict) -> tuple[float, float]:
    forward = max(rel_err(outputs[k], ref[k]) for k in ("a", "c_last"))
    backward = max(rel_err(outputs[k], ref[k]) for k in GRAD_KEYS)
    return forward, backward


def worker(out: Path, runs: list[str], budget_s: float, dry: bool) -> None:
    """Time every variant of ``runs``; append each row to ``rows.jsonl`` as it is done."""
    import torch

    from xlstm._engines.cupy import engine as cupy_engine

    device = Device(dry)
    rows_path = out / "rows.jsonl"
    ref_dir = Path(os.environ.get("XLSTM_REF_DIR", "/tmp/xlstm_gpu_check_ref"))
    shapes = DRY_SHAPES if dry else SHAPES
    for run in runs:
        dtype, tf32, variants, names = RUNS[run]
        tf32_setting = set_torch_tf32(torch, tf32)
        cupy_tf32 = os.environ.get("CUPY_TF32", "0")
        if not dry and cupy_tf32 != ("1" if tf32 else "0"):
            raise RuntimeError(f"run {run} needs CUPY_TF32={int(tf32)}, got {cupy_tf32!r}")
        compute = {} if dry else cupy_engine._runtime().compute_types()
        for name in names if not dry else shapes:
            hidden, batch, steps, kind = shapes[name]
            inputs = make_inputs(hidden, batch, steps, dtype)
            lengths = make_lengths(batch, steps) if run == "lengths" else None
            started = time.perf_counter()
            cache = None if dry else ref_dir / f"{name}-{dtype}-{run == 'lengths'}.npz"
            ref = reference(inputs, lengths, cache)
            print(f"[{run}] {name}: reference in {time.perf_counter() - started:.1f} s")
            for variant in variants:
                row = {
                    "run": run, "dtype": dtype, "tf32": tf32, "shape": name, "variant": variant,
                    "kind": kind, "batch": batch, "steps": steps, "hidden": hidden,
                    "torch_tf32": tf32_setting, "cupy_tf32": cupy_tf32,
                    "cublas_compute_types": compute,
                }  # fmt: skip
                if lengths is not None:
                    row["mean_length"] = float(np.mean(lengths))
                try:
                    if variant == "cuDNN":
                        fns = torch_variant(torch, device, inputs, kind, dtype, lengths)
                    else:
                        fns = xlstm_variant(device, inputs, variant, dtype, lengths)
                    forward, forward_backward, outputs = fns
                    row["fwd_s"] = measure(forward, device.sync, budget_s=budget_s)
                    if kind == "train":
                        row["fwdbwd_s"] = measure(forward_backward, device.sync, budget_s=budget_s)
                    row["err_fwd"], row["err_bwd"] = accuracy(outputs(), ref)
                except Exception as error:  # a failing variant is a table entry, not the end
                    row["error"] = f"{type(error).__name__}: {error}"
                    traceback.print_exc()
                finally:
                    cupy_engine.set_graph_replay(None)
                _emit(rows_path, row)
                timing = ", ".join(
                    f"{k}={row[k] * 1e3:.3f} ms" for k in ("fwd_s", "fwdbwd_s") if k in row
                )
                print(f"[{run}] {name} {variant}: {timing} {row.get('error', '')}")
            cupy_engine.clear_graph_cache()
            if not dry:
                device.xp.get_default_memory_pool().free_all_blocks()
                torch.cuda.empty_cache()


def bench(out: Path, budget_s: float, dry: bool) -> int:
    """One worker process per TF32 setting (CuPy reads CUPY_TF32 once), each time-limited."""
    for runs, limit in WORKERS:
        tf32 = any(RUNS[run][1] for run in runs)
        env = dict(os.environ, CUPY_TF32="1" if tf32 else "0", PYTHONUNBUFFERED="1")
        command = [
            sys.executable, __file__, "worker", "--out", str(out), "--runs", ",".join(runs),
            "--budget", str(budget_s), *(["--dry-run"] if dry else []),
        ]  # fmt: skip
        limit = 3 * limit if dry else limit  # gpu_check.sh gives a dry run 3 x the time
        started = time.perf_counter()
        try:
            status = subprocess.run(command, env=env, timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
        seconds = round(time.perf_counter() - started, 1)
        print(f"== worker {','.join(runs)}: {status} after {seconds} s (limit {limit:.0f} s)")
    return 0


# --------------------------------------------------------------------------- report


def _rows(out: Path) -> list[dict]:
    path = out / "rows.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut off by a timeout
            rows.append(json.loads(line))
    return rows


def _time_key(row: dict) -> str:
    return "fwdbwd_s" if row["kind"] == "train" else "fwd_s"


def _peers(rows: list[dict]) -> dict:
    return {(r["run"], r["shape"], r["variant"]): r for r in rows}


def _ms(row: dict, key: str) -> str:
    return f"{row[key] * 1e3:8.3f}" if key in row else f"{'-':>8}"


def table(rows: list[dict]) -> list[str]:
    """Every row: times, throughput, ratio to cuDNN, errors."""
    lines = [
        "run           shape              variant       fwd ms  f+b ms  Msteps/s  vs cuDNN"
        "   err fwd   err f+b",
    ]
    by = _peers(rows)
    for r in rows:
        key = _time_key(r)
        ref = by.get((r["run"], r["shape"], "cuDNN"), {})
        ratio = f"{ref[key] / r[key]:8.2f}x" if key in r and key in ref else f"{'-':>9}"
        rate = f"{r['batch'] * r['steps'] / r[key] / 1e6:9.2f}" if key in r else f"{'-':>9}"
        errors = (
            f"{r['err_fwd']:9.2e} {r['err_bwd']:9.2e}" if "err_fwd" in r else f"{'-':>9} {'-':>9}"
        )
        line = (
            f"{r['run']:<13} {r['shape']:<18} {r['variant']:<12}{_ms(r, 'fwd_s')}"
            f"{_ms(r, 'fwdbwd_s')} {rate}  {ratio} {errors}"
        )
        if "error" in r:
            line += f"  ERROR {r['error'][:80]}"
        lines.append(line)
    return lines


def summary(rows: list[dict]) -> list[str]:
    """One line per (run, shape): xlstm's best variant against cuDNN (printed last)."""
    lines = ["run           shape              xlstm        xlstm ms  cuDNN ms  vs cuDNN  max err"]
    by = _peers(rows)
    seen = []
    for r in rows:
        group = (r["run"], r["shape"])
        if group in seen:
            continue
        seen.append(group)
        key = _time_key(r)
        ours = [
            by[(*group, v)]
            for v in ("fused+graph", "fused")
            if (*group, v) in by and key in by[(*group, v)]
        ]
        best = min(ours, key=lambda row: row[key]) if ours else {"variant": "-"}
        cudnn = by.get((*group, "cuDNN"), {})
        mine = f"{best[key] * 1e3:9.3f}" if key in best else f"{'-':>9}"
        theirs = f"{cudnn[key] * 1e3:9.3f}" if key in cudnn else f"{'-':>9}"
        ratio = f"{cudnn[key] / best[key]:8.2f}x" if key in best and key in cudnn else f"{'-':>9}"
        err = f"{max(best['err_fwd'], best['err_bwd']):8.1e}" if "err_fwd" in best else "       -"
        lines.append(
            f"{group[0]:<13} {group[1]:<18} {best['variant']:<12}{mine} {theirs} {ratio} {err}"
        )
    return lines


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each PASS or FAIL (INFO: reported, no target), from the rows."""
    by = _peers(rows)
    out = []
    for (run, shape, variant), r in by.items():
        key = _time_key(r)
        tag = f"{run} {shape}"
        cudnn = by.get((run, shape, "cuDNN"), {})
        generic = by.get((run, shape, "generic"), {})
        fused = by.get((run, shape, "fused"), {})
        if run.startswith("float32") and variant == "fused+graph":
            if key in r and key in cudnn and r["kind"] == "train":
                ratio = cudnn[key] / r[key]
                need = 1.0 if r["batch"] <= 16 else 0.7
                verdict = "PASS" if ratio >= need else "FAIL"
                out.append(
                    f"{verdict} {tag}: graph/cuDNN f+b throughput {ratio:.2f} (need >= {need})"
                )
            if r["batch"] <= 64 and key in fused and key in generic:
                speedup = generic[key] / fused[key]
                verdict = "PASS" if speedup >= 5 else "FAIL"
                out.append(f"{verdict} {tag}: fused vs generic {speedup:.1f}x (need >= 5)")
            if "err_fwd" in r:
                limit = 1e-2 if r["tf32"] else 1e-5
                err = max(r["err_fwd"], r["err_bwd"])
                verdict = "PASS" if err <= limit else "FAIL"
                out.append(f"{verdict} {tag}: rel err {err:.1e} (need <= {limit:g})")
        elif run == "lengths" and variant == "fused":
            if "err_fwd" in r:
                err = max(r["err_fwd"], r["err_bwd"])
                verdict = "PASS" if err <= 1e-5 else "FAIL"
                out.append(f"{verdict} {tag}: rel err {err:.1e} (need <= 1e-05)")
            if key in r and key in cudnn:
                ratio = cudnn[key] / r[key]
                verdict = "PASS" if ratio >= 3 else "FAIL"
                out.append(f"{verdict} {tag}: fused vs torch packed {ratio:.2f}x (need >= 3)")
            if key in r and key in generic:
                out.append(f"INFO {tag}: fused vs generic {generic[key] / r[key]:.1f}x")
        elif run == "float16" and variant in ("fused", "fused+graph") and "err_fwd" in r:
            err = max(r["err_fwd"], r["err_bwd"])
            theirs = max(cudnn["err_fwd"], cudnn["err_bwd"]) if "err_fwd" in cudnn else 0.0
            limit = max(FLOAT16_TOL, 2 * theirs)
            verdict = "PASS" if err <= limit else "FAIL"
            out.append(
                f"{verdict} {tag} {variant}: rel err {err:.1e} (need <= {limit:.1e}: "
                f"max({FLOAT16_TOL:.1e}, 2 x cuDNN's {theirs:.1e}))"
            )
    return out


def report(out: Path) -> int:
    """Everything the earlier stages left under ``out``; the short table printed last."""
    info = {}
    if (out / "versions.json").exists():
        info = json.loads((out / "versions.json").read_text(encoding="utf-8"))
    smoke_record = {}
    if (out / "smoke.json").exists():
        smoke_record = json.loads((out / "smoke.json").read_text(encoding="utf-8"))
    rows = _rows(out)
    stages = (
        (out / "stages.txt").read_text(encoding="utf-8") if (out / "stages.txt").exists() else ""
    )
    header = (
        f"xlstm GPU check: {info.get('gpu', '?')}, CuPy {info.get('cupy', '?')}, "
        f"torch {info.get('torch', '?')} (cuDNN {info.get('cudnn', '?')}), cuBLAS "
        f"{info.get('cublas', '?')}, NVRTC {info.get('nvrtc', '?')}, "
        f"driver {info.get('driver', '?')}; "
        "time = median wall ms of synchronised calls; f+b = forward + backward; "
        "vs cuDNN = cuDNN time / this time (> 1: faster); err = ||out - ref|| / ||ref|| vs "
        "NumPy float64; inference rows: forward only; lengths: uniform in [T/4, T], torch packed"
    )
    lines, verdicts, short = table(rows), targets(rows), summary(rows)
    smoke_line = f"smoke: {json.dumps(smoke_record)}"
    text = "\n".join([header, "", "```", stages.rstrip(), smoke_line, "", *lines, "", *verdicts,
                      "", *short, "```", ""])  # fmt: skip
    (out / "report.md").write_text(text, encoding="utf-8")
    print("\n".join([*lines, "", *verdicts, "", header, stages.rstrip(), smoke_line, "", *short]))
    return 0 if rows else 1


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["versions", "smoke", "bench", "worker", "report"])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/xlstm_gpu_check")
    )
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny shapes")
    parser.add_argument("--budget", type=float, default=0.1, help="seconds timed per measurement")
    parser.add_argument("--runs", type=str, default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "versions":
        versions(args.out, args.dry_run)
        return 0
    if args.stage == "smoke":
        return run_smoke(args.out, args.dry_run)
    if args.stage == "bench":
        return bench(args.out, args.budget, args.dry_run)
    if args.stage == "worker":
        runs = [run for run in args.runs.split(",") if run]
        unknown = [run for run in runs if run not in RUNS]
        if unknown or not runs:
            parser.error(f"unknown runs {unknown}; known: {list(RUNS)}")
        worker(args.out, runs, args.budget, args.dry_run)
        return 0
    return report(args.out)


if __name__ == "__main__":
    sys.exit(main())
