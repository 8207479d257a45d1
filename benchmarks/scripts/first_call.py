"""Time one pass as a user first calls it: a fresh process whose first xlstm call is that pass.

    python benchmarks/scripts/first_call.py S2|S3 infer|fwd|fwdbwd

Prints the first call (it includes loading or compiling the engine), the second, and the median
of calls 3-6, in ms.  Run an older checkout through PYTHONPATH, alternating with the new one.
"""

import sys
import time

import numpy as np

import xlstm

size, kind = sys.argv[1], sys.argv[2]
n_x, n_a, m, t_x = {"S2": (64, 128, 32, 100), "S3": (256, 256, 64, 100)}[size]
p = xlstm.init_parameters(n_x, n_a, 2, dtype="float32", seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((n_x, m, t_x)).astype(np.float32)
a0 = np.zeros((n_a, m), np.float32)
da = rng.standard_normal((n_a, m, t_x)).astype(np.float32)
times = []
for _ in range(6):
    t = time.perf_counter()
    if kind == "infer":
        xlstm.lstm_forward(x, a0, p, cache=False)
    elif kind == "fwd":
        xlstm.lstm_forward(x, a0, p)
    else:
        _, _, _, c = xlstm.lstm_forward(x, a0, p)
        xlstm.lstm_backward(da, c)
    times.append((time.perf_counter() - t) * 1e3)
later = float(np.median(times[2:]))
head = f"{size} {kind}: first {times[0]:.1f} ms (incl. JIT), 2nd {times[1]:.1f}"
print(f"{head}, median of 3rd-6th {later:.1f}")
