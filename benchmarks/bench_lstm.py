"""asv benchmarks: the LSTM sequence (forward, forward+backward) and one cell step.

Parametrised by backend and engine (see ``common.ENGINES``), dtype and size
(DeepBench LSTM training shapes, scaled down for the CPU; ``common.SIZES``). Inputs
are built in ``setup`` (once per process) and warmed up there; the ``time_`` methods
only make the call and wait for the device. Every figure is lower-is-better, as
asv assumes when it marks regressions.
"""

from __future__ import annotations

import statistics
import time

from . import common


class Sequence:
    """``lstm_forward`` and ``lstm_backward`` over a whole sequence."""

    params = common.PARAMS
    param_names = common.PARAM_NAMES
    skip_params = common.skipped_params()
    timeout = 300
    rounds = 2
    repeat = (3, 10, 10.0)

    def setup(self, backend, dtype, size):
        self.p = common.inputs(backend, dtype, size)
        if not self.p.warm:
            common.forward_backward(self.p)
            self.p.warm = True

    def time_forward(self, backend, dtype, size):
        common.forward(self.p)

    def time_forward_backward(self, backend, dtype, size):
        common.forward_backward(self.p)

    def peakmem_forward_backward(self, backend, dtype, size):
        common.forward_backward(self.p)

    def track_us_per_sample_step(self, backend, dtype, size):
        """Forward+backward microseconds per sample-step: median of 3 calls / (m * T).

        The time of one sample through one step, comparable across sizes; lower is
        better (its inverse, throughput, would read as a regression when it rose).
        """
        _, _, m, T = self.p.shape
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            common.forward_backward(self.p)
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds) / (m * T) * 1e6

    track_us_per_sample_step.unit = "us/sample-step"


class Cell:
    """``lstm_cell_forward`` and ``lstm_cell_backward``: one time step.

    A step takes microseconds to a millisecond, where scheduling noise is a large
    share: asv times as many calls per sample as fill ``sample_time`` and keeps 10 to 25
    samples in each of ``rounds`` processes started at different times, so that a
    10% change stands out of the spread of the median.
    """

    params = common.PARAMS
    param_names = common.PARAM_NAMES
    skip_params = common.skipped_params(cell=True)
    timeout = 120
    rounds = 4
    repeat = (10, 25, 5.0)
    sample_time = 0.02
    warmup_time = 0.1

    def setup(self, backend, dtype, size):
        p = common.inputs(backend, dtype, size, cell=True)
        self.sync = p.sync
        self.xt = p.x[:, :, 0]
        self.a_prev = p.a0
        self.c_prev = p.dc[:, :, -1]
        self.parameters = p.parameters
        self.da_next = p.da[:, :, 0]
        self.dc_next = p.dc[:, :, -1]
        *_, self.cache = common.xlstm.lstm_cell_forward(
            self.xt, self.a_prev, self.c_prev, self.parameters
        )
        if not p.warm:
            common.xlstm.lstm_cell_backward(self.da_next, self.dc_next, self.cache)
            p.warm = True
        self.sync()

    def time_cell_forward(self, backend, dtype, size):
        common.xlstm.lstm_cell_forward(self.xt, self.a_prev, self.c_prev, self.parameters)
        self.sync()

    def time_cell_backward(self, backend, dtype, size):
        common.xlstm.lstm_cell_backward(self.da_next, self.dc_next, self.cache)
        self.sync()
