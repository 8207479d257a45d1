"""``python -m xlstm bench``: time xlstm against torch.nn.LSTM, ONNX Runtime, a naive loop and
the products alone.

Shape legend: (n_x, n_a, m, T) = (input size, hidden size, batch, time steps).

For every shape each contestant makes one untimed call per pass (its first
forward+backward, one-off costs included, is reported apart), the outputs and
gradients are checked against each other (xlstm and the naive loop must give
torch's), then every contestant is timed ``--repeat`` times per pass, interleaved
round-robin in one process, each timed call right after an untimed warm one (which
follows the pause between two libraries). Passes: inference (xlstm ``cache=False``,
torch under ``no_grad``, ONNX Runtime), forward keeping what backward needs,
forward+backward. The table reports the engine xlstm ran
(:func:`xlstm.resolve_engine`), the median and the range, throughput in sample-steps
per second (m * T / time), GFLOP/s of the matrix products, and speed-ups of xlstm
over torch.nn.LSTM, ONNX Runtime and the naive loop. ``--profile`` splits xlstm's
time into products, kernels and the rest (:mod:`._profile`); ``--inference-first``
times inference in a fresh process whose first xlstm call is inference.

Arguments are checked before anything runs: a bad one exits 2 with one line on
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

from .. import resolve_engine
from ..bench import _harness as H
from ..bench import _profile
from ._common import Parser, Progress, UsageError, non_negative_float, positive_int

DEFAULT_SIZES = ",".join(H.SHAPES)
ENGINES = ("auto", "generic", "numpy", "numba", "cupy")  # all names, registered or not yet
MAX_DIMENSION = 2**20
"""Largest n_x, n_a, m or T ``--sizes`` takes (memory is checked apart)."""

EPILOG = f"""\
named sizes (n_x, n_a, m, T): {", ".join(f"{k}={v}" for k, v in H.SHAPES.items())}
--sizes takes names ("S1,S3") or explicit shapes ("8,32,16,100;64,128,32,100"), or both.

FLOPs count the LSTM's matrix products: forward 2*T*m*4n_a*(n_x+n_a), backward
twice that. The output layer softmax(Wy a + by) that xlstm and the naive loop also
compute (n_y = --n-y) is not counted; torch.nn.LSTM has none. "products only" is the
same FLOPs done as one (forward) or three (forward+backward) large products on the
same BLAS: what the products cost at the rate of large products, a reference and not a
bound (small per-step products can run faster, as at S1); "/prod" is time / its time.

passes: "infer" = lstm_forward(..., cache=False) vs torch under no_grad; "fwd" =
forward keeping what backward needs (xlstm's default, torch with autograd on);
"fwd+bwd" = forward then backward. The naive loop has no inference pass; ONNX
Runtime (float32, when onnxruntime is installed) has only that one.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m xlstm bench",
        description="Time xlstm inference, forward and forward+backward against "
        "torch.nn.LSTM, ONNX Runtime, a seed-style naive loop and the products alone.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--backend",
        choices=("numpy", "cupy", "torch", "jax"),
        default="numpy",
        help="array library xlstm runs on (default: numpy)",
    )
    add("--device", default=None, help="torch device for --backend torch, e.g. cuda (default: cpu)")
    add(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="floating dtype (default: float32)",
    )
    add(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="xlstm engine (engine= of lstm_forward; default: auto, the backend's fastest)",
    )
    add("--sizes", default=DEFAULT_SIZES, help=f"shapes to run (default: {DEFAULT_SIZES})")
    add(
        "--repeat",
        type=positive_int,
        default=5,
        help="timed calls per contestant and pass; reports the median (default: 5)",
    )
    add(
        "--threads",
        type=positive_int,
        default=2,
        help="CPU threads for every contestant: NumPy's BLAS and torch (default: 2)",
    )
    add(
        "--n-y",
        type=positive_int,
        default=2,
        dest="n_y",
        help="output-layer size for xlstm and the naive loop (default: 2)",
    )
    add(
        "--generic",
        action="store_true",
        help="also time xlstm's generic array-API engine (engine='generic')",
    )
    add(
        "--recompute",
        action="store_true",
        help="also time xlstm's memory-saving mode (recompute=True)",
    )
    add("--no-torch", action="store_true", help="leave torch.nn.LSTM out")
    add("--no-onnx", action="store_true", help="leave ONNX Runtime out")
    add(
        "--profile",
        action="store_true",
        help="split xlstm's time per pass into products, kernels and the rest, beside "
        "the products-only time (numba engine)",
    )
    add(
        "--inference-first",
        action="store_true",
        help="also time inference in a fresh process whose first xlstm call is inference",
    )
    add("--no-naive", action="store_true", help="leave the naive loop out")
    add(
        "--no-check",
        action="store_true",
        help="skip the cross-check of outputs and gradients before timing",
    )
    add(
        "--memory",
        action="store_true",
        help="also measure the memory of forward and forward+backward "
        "(NumPy via tracemalloc; torch CUDA via its allocator)",
    )
    add(
        "--pause",
        type=non_negative_float,
        default=0.2,
        help="seconds to sleep when switching between CPU libraries (default: 0.2)",
    )
    add(
        "--framework",
        action="store_true",
        help="with --backend torch|jax: time xlstm.torch.LSTM / xlstm.jax.lstm against "
        "torch.nn.LSTM / a jitted JAX LSTM (see docs/frameworks.md)",
    )
    add("--json", metavar="FILE", default=None, help="also write all results to FILE")
    add("--quiet", action="store_true", help="no progress display on stderr")
    return parser


def check_output_file(path: str) -> None:
    """Raise ``ValueError`` unless ``path`` can be written as a file.

    Checked before the run so that minutes of timings are not lost at the end. Nothing
    is created: a failed run leaves no empty file behind.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        problem = "is a directory"
    elif not os.path.isdir(folder):
        problem = f"is in a folder that does not exist ({folder})"
    elif not os.access(path if os.path.exists(path) else folder, os.W_OK):
        problem = "is not writable"
    else:
        return
    raise ValueError(f"`--json` {path!r} {problem}")


def check_memory(sizes, dtype: str, contestants: int, n_y: int) -> None:
    """Raise ``ValueError`` if a shape would need more memory than is available.

    The estimate is :func:`~xlstm.bench._harness.run_bytes` (generous), against
    :func:`~xlstm.bench._harness.available_memory` (the memory available and the process's
    address-space limit, ``RLIMIT_AS``); where neither is known only ``MAX_DIMENSION``
    applies.
    """
    available = H.available_memory()
    if available is None:
        return
    for label, shape in sizes:
        need = H.run_bytes(shape, dtype, contestants, n_y)
        if need > available:
            msg = (
                f"`--sizes` {label}: the run would hold about {need / 2**30:.3g} GiB, more than "
                f"the {available / 2**30:.3g} GiB of memory available to this process (free "
                "memory, within its address-space limit RLIMIT_AS); choose smaller sizes"
            )
            raise ValueError(msg)


def parse_sizes(text: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``"S1,S3"``, ``"8,32,16,100;64,128,32,100"`` or a mix -> [(label, shape)]."""
    sizes = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        tokens = [t.strip() for t in part.split(",")]
        if all(t.upper() in H.SHAPES for t in tokens):
            sizes += [(t.upper(), H.SHAPES[t.upper()]) for t in tokens]
            continue
        try:
            shape = tuple(int(t) for t in tokens)
        except ValueError:
            shape = ()
        if len(shape) != 4 or min(shape) < 1:
            msg = (
                f"`--sizes` part {part!r} is neither names from {sorted(H.SHAPES)} "
                "nor four positive integers n_x,n_a,m,T"
            )
            raise ValueError(msg)
        if max(shape) > MAX_DIMENSION:
            msg = f"`--sizes` part {part!r} has a size above {MAX_DIMENSION} (2**20)"
            raise ValueError(msg)
        sizes.append(("x".join(map(str, shape)), shape))
    if not sizes:
        msg = "`--sizes` is empty"
        raise ValueError(msg)
    return sizes


# --------------------------------------------------------------------------- threads


@contextlib.contextmanager
def thread_limits(threads: int, use_torch: bool):
    """Limit NumPy's BLAS (threadpoolctl) and torch (set_num_threads) to ``threads``.

    Yields a description of what was limited, for the report.
    """
    notes: dict[str, Any] = {"threads": threads, "libraries": []}
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_info, threadpool_limits
        except ImportError:
            notes["libraries"].append("NumPy BLAS: NOT limited (install threadpoolctl)")
        else:
            stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
            for lib in threadpool_info():
                if lib.get("user_api") == "blas":
                    notes["libraries"].append(
                        f"{lib['internal_api']} {lib.get('version')}: {lib['num_threads']}"
                    )
        if use_torch:
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, previous)
            notes["libraries"].append(
                f"torch {torch.__version__} intra-op: {torch.get_num_threads()}"
            )
        yield notes


# --------------------------------------------------------------------------- progress


class _BenchProgress:
    """The bench's status line: rounds done of all, elapsed seconds, the current step."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.quiet = total, 0, quiet
        self.start = time.perf_counter()
        self.line = Progress(sys.stderr, bar=sys.stderr.isatty())

    def show(self, text: str, *, advance: int = 0) -> None:
        self.done += advance
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            line = f"bench [{self.done}/{self.total}] {elapsed:5.1f}s  {text}"
            self.line.update(self.done / max(1, self.total), line, force=True)

    def close(self) -> None:
        self.line.clear()


# --------------------------------------------------------------------------- running


def torch_peer_device(args, backend: H.Backend) -> str | None:
    """Where torch.nn.LSTM runs: the device xlstm runs on (None: not available)."""
    if args.no_torch or importlib.util.find_spec("torch") is None:
        return None
    if backend.name == "torch":
        return str(backend.device)
    if backend.name == "cupy":
        import torch

        return "cuda" if torch.cuda.is_available() else None
    return "cpu"


def use_onnx(args, backend: H.Backend) -> bool:
    """Whether ONNX Runtime runs (NumPy backend, float32, installed, not --no-onnx)."""
    return backend.name == "numpy" and not args.no_onnx and H.onnx_runtime_available(args.dtype)


def contestant_count(args, peer_device: str | None, onnx: bool = False) -> int:
    """How many contestants :func:`run_shape` builds (each holds its own arrays)."""
    return (
        2 + args.generic + args.recompute + (peer_device is not None) + (not args.no_naive) + onnx
    )


def run_shape(label, shape, args, backend, peer_device, progress, onnx=False) -> dict[str, Any]:
    problem = H.make_problem(label, shape, args.dtype, args.n_y)
    contestants = [H.xlstm_contestant(problem, backend, engine=args.engine)]
    if args.generic and contestants[0].engine != "generic":
        contestants.append(H.xlstm_contestant(problem, backend, engine="generic"))
    if args.recompute:
        contestants.append(H.xlstm_contestant(problem, backend, engine=args.engine, recompute=True))
    if peer_device is not None:
        contestants.append(H.torch_contestant(problem, peer_device))
    if onnx:
        contestants.append(H.onnx_contestant(problem, args.threads))
    if not args.no_naive:
        contestants.append(H.naive_contestant(problem, backend))
    contestants.append(H.floor_contestant(problem, backend))

    # Run the contestants on xlstm's library first and the others (torch) last: the
    # round-robin order reverses every round, so the library switches once a round.
    run_order = [c for c in contestants if c.family == backend.family]
    run_order += [c for c in contestants if c.family != backend.family]

    progress.show(f"{label} {shape}: warm-up")
    outputs = H.warm_up(run_order)
    checks = [] if args.no_check else cross_check(outputs, args.dtype)
    H.run_rounds(
        run_order,
        args.repeat,
        args.pause,
        lambda r: progress.show(f"{label} {shape}: round {r}/{args.repeat}", advance=1),
    )
    progress.show(f"{label} {shape}: done", advance=1)
    memory = []
    if args.memory:
        for contestant in contestants:
            if contestant.memory is not None:
                memory.append(
                    {"shape": label, "contestant": contestant.name, **contestant.memory()}
                )
    profile = []
    if args.profile:
        progress.show(f"{label} {shape}: profile")
        profile = _profile.profile_shape(problem, args.repeat)
    return {
        "problem": problem,
        "contestants": contestants,
        "checks": checks,
        "memory": memory,
        "profile": profile,
    }


def cross_check(outputs, dtype: str) -> list[dict[str, Any]]:
    """Compare each checked contestant with torch.nn.LSTM (else with the naive loop).

    ``outputs``: contestant name -> {"a": output sequence, "dW": ..., ...}.
    """
    reference = "torch.nn.LSTM" if "torch.nn.LSTM" in outputs else "naive (seed-style)"
    if reference not in outputs:
        return []
    checks = []
    for name, result in outputs.items():
        if name == reference:
            continue
        diff = H.relative_difference(result, outputs[reference])
        checks.append(
            {
                "contestant": name,
                "reference": reference,
                "max_relative_difference": diff,
                "ok": diff <= H.CHECK_TOLERANCE[dtype],
            }
        )
    return checks


def result_rows(label: str, shape, contestants: list[H.Contestant]) -> list[dict[str, Any]]:
    """One row per (pass, contestant) with times, throughput and ratios.

    Ratios compare medians of the same pass, timed in the same rounds.
    """
    n_x, n_a, m, T = shape
    rows = []
    for mode in H.MODES:
        timed = [c for c in contestants if mode in c.calls]
        medians = {c.name: H.summary(c.times[mode])["median_s"] for c in timed}
        for contestant in timed:
            stats = H.summary(contestant.times[mode])
            median = stats["median_s"]
            flops = H.pass_flops(shape, mode)
            row = {
                "shape": label,
                "n_x": n_x,
                "n_a": n_a,
                "m": m,
                "T": T,
                "mode": mode,
                "contestant": contestant.name,
                "engine": contestant.engine,
                "first_call_s": contestant.first_call_s,
                "times_s": contestant.times[mode],
                **stats,
                "sample_steps_per_s": m * T / median,
                "flops": flops,
                "gflops_per_s": flops / median / 1e9,
                "speedup_vs_torch": None,
                "speedup_vs_onnx": None,
                "speedup_vs_naive": None,
                "time_over_products_only": None,
            }
            if contestant.name.startswith("xlstm"):
                for key, other in (
                    ("speedup_vs_torch", "torch.nn.LSTM"),
                    ("speedup_vs_onnx", H.ONNX_RUNTIME),
                    ("speedup_vs_naive", "naive (seed-style)"),
                ):
                    if other in medians:
                        row[key] = medians[other] / median
            if contestant.name != H.PRODUCTS_ONLY:
                row["time_over_products_only"] = median / medians[H.PRODUCTS_ONLY]
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


PASS_NAMES = {"inference": "infer", "forward": "fwd", "forward_backward": "fwd+bwd"}
COLUMNS = (
    ("pass", "<", 8),
    ("contestant", "<", 19),
    ("engine", "<", 7),
    ("median ms", ">", 10),
    ("min-max ms", ">", 15),
    ("sample-steps/s", ">", 15),
    ("GFLOP/s", ">", 8),
    ("vs torch", ">", 9),
    ("vs ORT", ">", 7),
    ("vs naive", ">", 9),
    ("/prod", ">", 7),
)


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    def line(cells) -> str:
        return "  ".join(
            f"{cell:{align}{width}}" for cell, (_, align, width) in zip(cells, COLUMNS, strict=True)
        )

    header = line([name for name, _, _ in COLUMNS]).rstrip()
    lines = []
    shape = None
    for row in rows:
        if row["shape"] != shape:
            shape = row["shape"]
            flops = H.forward_flops(row["n_x"], row["n_a"], row["m"], row["T"])
            firsts = {r["contestant"]: r["first_call_s"] for r in rows if r["shape"] == shape}
            lines += [
                "",
                f"{shape}  (n_x, n_a, m, T) = ({row['n_x']}, {row['n_a']}, {row['m']}, {row['T']})"
                f"   forward {flops / 1e9:.3g} GFLOP, forward+backward {3 * flops / 1e9:.3g} GFLOP",
                "first fwd+bwd call, untimed above (one-off costs: allocation, compilation) ms: "
                + ", ".join(f"{name} {_ms(t)}" for name, t in firsts.items() if t is not None),
                header,
            ]
        cells = [
            PASS_NAMES[row["mode"]],
            row["contestant"],
            row["engine"] or "",
            _ms(row["median_s"]),
            f"{_ms(row['min_s'])}-{_ms(row['max_s'])}",
            _si(row["sample_steps_per_s"]),
            f"{row['gflops_per_s']:.1f}",
            _ratio(row["speedup_vs_torch"]),
            _ratio(row["speedup_vs_onnx"]),
            _ratio(row["speedup_vs_naive"]),
            ""
            if row["time_over_products_only"] is None
            else f"{row['time_over_products_only']:.2f}",
        ]
        lines.append(line(cells).rstrip())
    return lines


def format_memory(memory: list[dict[str, Any]], input_bytes: dict[str, int]) -> list[str]:
    if not memory:
        return []
    lines = [
        "",
        "memory (MiB; NumPy buffers seen by tracemalloc, or torch's CUDA allocator): inputs =",
        "x, a0, parameters and upstream gradients; forward keeps = outputs + cache held",
        "after lstm_forward; fwd+bwd peak = the most allocated during forward+backward,",
        "above the inputs",
    ]
    width = max(len("shape"), *(len(entry["shape"]) for entry in memory)) + 2
    heads = f"{'inputs':>9}{'forward keeps':>15}{'fwd+bwd peak':>14}"
    lines.append(f"{'shape':<{width}}{'contestant':<21}{heads}")
    mib = 1 / 2**20
    for entry in memory:
        lines.append(
            f"{entry['shape']:<{width}}{entry['contestant']:<21}"
            f"{input_bytes[entry['shape']] * mib:>9.2f}"
            f"{entry['forward_kept'] * mib:>15.2f}{entry['forward_backward_peak'] * mib:>14.2f}"
        )
    return lines


def format_checks(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    failed = [c for c in checks if not c["ok"]]
    worst = max(checks, key=lambda c: c["max_relative_difference"])
    lines = [
        "",
        f"check: outputs and gradients vs {worst['reference']}, largest max|diff|/max|ref| = "
        f"{worst['max_relative_difference']:.1e} ({worst['contestant']}, {worst['shape']}): "
        f"{'FAILED' if failed else 'ok'}",
    ]
    for c in failed:
        lines.append(
            f"  MISMATCH {c['shape']} {c['contestant']}: "
            f"{c['max_relative_difference']:.2e} > {H.CHECK_TOLERANCE[c['dtype']]:.0e}"
        )
    return lines


def format_inference_first(first: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """The ``--inference-first`` lines: the fresh process's calls beside the bench's own."""
    if not first:
        return []
    lines = [
        "",
        "inference first in a fresh process (its first xlstm call is inference; then the "
        "calls back to back; minor page faults per call):",
    ]
    for entry in first:
        in_bench = [
            r["median_s"]
            for r in rows
            if r["shape"] == entry["shape"]
            and r["mode"] == "inference"
            and r["contestant"] == "xlstm"
        ]
        beside = f", in the bench {_ms(in_bench[0])} ms" if in_bench else ""
        stats = H.summary(entry["times_s"])
        lines.append(
            f"{entry['shape']:<6}first call {_ms(entry['first_s'])} ms, then median "
            f"{_ms(stats['median_s'])} ms ({_ms(stats['min_s'])}-{_ms(stats['max_s'])}){beside}; "
            f"faults {min(entry['faults'])}-{max(entry['faults'])}"
        )
    return lines


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for text in cpuinfo:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions(backend: str, use_torch: bool) -> dict[str, str]:
    import xlstm

    versions = {"xlstm": getattr(xlstm, "__version__", "?"), "numpy": np.__version__}
    for name in {backend, "torch" if use_torch else None} - {None, "numpy"}:
        versions[name] = importlib.import_module(name).__version__
    versions["python"] = platform.python_version()
    return versions


def _fail(message: str) -> int:
    print(f"python -m xlstm bench: error: {message}", file=sys.stderr)
    return 2


def _frameworks(args: argparse.Namespace) -> int:
    """``--framework``: check the arguments, then compare inside torch or JAX."""
    from ..bench._frameworks import main as frameworks_main

    if args.backend not in ("torch", "jax"):
        return _fail("`--framework` compares inside torch or JAX: add --backend torch|jax")
    try:
        sizes = parse_sizes(args.sizes)
        if args.json is not None:
            check_output_file(args.json)
        if args.device not in (None, "cpu"):
            raise ValueError("`--framework` times the CPU only; leave out --device")
        __import__(args.backend)
    except ValueError as error:
        return _fail(str(error))
    except ImportError:
        return _fail(f"`--backend {args.backend}` needs {args.backend} installed")
    return frameworks_main(args, sizes, thread_limits=thread_limits, cpu_model=_cpu_model())


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m xlstm bench``; returns the exit status.

    Every argument is checked before anything is timed: a bad one is exit status 2
    and one line on stderr.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except UsageError as error:
        return _fail(str(error))
    if args.framework:
        return _frameworks(args)
    try:
        sizes = parse_sizes(args.sizes)
        if args.json is not None:
            check_output_file(args.json)
        backend = H.make_backend(args.backend, args.device, args.dtype)
        peer_device = torch_peer_device(args, backend)
        onnx = use_onnx(args, backend)
        check_memory(sizes, args.dtype, contestant_count(args, peer_device, onnx), args.n_y)
    except (ValueError, H.BackendUnavailable) as error:
        return _fail(str(error))
    try:
        engine = resolve_engine(backend.xp, args.dtype, args.engine)
    except ValueError as error:  # not registered (numba before it lands), or cannot run here
        return _fail(f"`--engine {args.engine}` with --backend {args.backend}: {error}")
    if (args.profile or args.inference_first) and (engine != "numba" or backend.name != "numpy"):
        flags = "--profile / --inference-first"
        return _fail(f"{flags} profile the numba engine on NumPy; this run has {engine!r}")
    use_torch = peer_device is not None or backend.name == "torch"
    compile_s = H.jit_compile_seconds(engine, args.dtype)  # before any xlstm call

    progress = _BenchProgress(total=len(sizes) * (args.repeat + 1), quiet=args.quiet)
    rows, checks, memory, input_bytes, profile, first = [], [], [], {}, [], []
    with thread_limits(args.threads, use_torch) as threads:
        for label, shape in sizes:
            outcome = run_shape(label, shape, args, backend, peer_device, progress, onnx)
            rows += result_rows(label, shape, outcome["contestants"])
            profile += outcome["profile"]
            if args.inference_first:
                progress.show(f"{label} {shape}: inference first, fresh process")
                process = _profile.inference_first(
                    shape, args.dtype, args.engine, args.threads, args.repeat
                )
                first.append({"shape": label, **process})
            checks += [{**c, "shape": label, "dtype": args.dtype} for c in outcome["checks"]]
            memory += outcome["memory"]
            input_bytes[label] = outcome["problem"].input_bytes
    progress.close()

    versions = _versions(args.backend, use_torch)
    device = backend.device if backend.device is not None else "default"
    compiled = "" if compile_s is None else f"; JIT compile {compile_s:.3g} s, before the run"
    head = [
        f"xlstm bench: backend={args.backend} (device {device}) dtype={args.dtype} "
        f"repeat={args.repeat} (median of {args.repeat}, contestants interleaved)",
        f"xlstm engine: --engine {args.engine} ran {engine!r}{compiled}",
        f"threads: {args.threads} for every contestant ({'; '.join(threads['libraries'])})",
        f"machine: {_cpu_model()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"torch.nn.LSTM: {peer_device or 'not run'}; output layer n_y={args.n_y} "
        "(xlstm and naive compute it, FLOPs exclude it); vs = their time / xlstm time; "
        "/prod = time / products only",
    ]
    lines = head + format_table(rows) + format_checks(checks) + format_memory(memory, input_bytes)
    lines += _profile.format_profile(profile) + format_inference_first(first, rows)
    if args.memory and not memory:
        lines += ["", f"memory: not measured on {args.backend} ({device}); see --help"]
    print("\n".join(lines))

    if args.json is not None:
        report = {
            "argv": sys.argv[1:] if argv is None else list(argv),
            "backend": args.backend,
            "device": str(device),
            "dtype": args.dtype,
            "engine": {"asked": args.engine, "ran": engine, "jit_compile_s": compile_s},
            "repeat": args.repeat,
            "pause_s": args.pause,
            "n_y": args.n_y,
            "threads": threads,
            "torch_peer_device": peer_device,
            "machine": _cpu_model(),
            "versions": versions,
            "flops": "matrix products only: inference and forward 2*T*m*4n_a*(n_x+n_a), "
            "forward_backward 3x",
            "results": rows,
            "checks": checks,
            "memory": [{**entry, "input_bytes": input_bytes[entry["shape"]]} for entry in memory],
            "profile": profile,
            "inference_first": first,
        }
        try:
            with open(args.json, "w") as file:
                json.dump(report, file, indent=1)
        except OSError as error:  # checked before the run; the disk may still fill up
            return _fail(f"`--json` {args.json!r}: {error.strerror}")
    return 1 if any(not c["ok"] for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
