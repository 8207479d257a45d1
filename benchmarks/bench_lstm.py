"""asv benchmarks: forward, backward and forward+backward of the sequence and the layers.

Parametrised by backend and engine (see ``common.ENGINES``; only the backends whose library
is installed here, ``common.BACKENDS``), dtype and size (DeepBench LSTM training shapes,
scaled down for the CPU; ``common.SIZES``). Inputs are built in ``setup`` (untimed, once per
process) and warmed up there, and so is the cache that the ``time_backward`` benchmarks
differentiate; the ``time_`` methods only make the call and wait for the device.

Every figure is lower-is-better, as asv assumes when it marks regressions: times, and the
``track_`` ratios of xlstm's time to a reference timed beside it in the same process
(``VsGemm``: the same FLOPs as large matrix products on the same BLAS; ``VsTorch``, defined
only where torch is installed: ``torch.nn.LSTM``). The ratios stay put when a shared machine
runs slower or faster as a whole, which absolute times do not.

There is no peak-memory benchmark: asv's ``peakmem_`` is the benchmark process's maximum
resident size (interpreter, imported libraries, the allocator's reuse), which moved by 10 to
20% between runs of unchanged code and put false regressions on the report. What the
passes allocate is measured exactly by ``python -m xlstm bench --memory`` (tracemalloc).
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
        self.caches = common.forward(self.p)[3]

    def time_forward(self, backend, dtype, size):
        common.forward(self.p)

    def time_backward(self, backend, dtype, size):
        common.backward(self.p, self.caches)

    def time_forward_backward(self, backend, dtype, size):
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


class Layers:
    """``xlstm.LSTM``: stacked (2 layers), bidirectional, and variable ``lengths`` (float32).

    ``forward`` is the training pass (``forward_train``, keeping what backward needs);
    ``backward`` differentiates every layer and direction from a cache made in ``setup``.
    """

    params = common.LAYER_PARAMS
    param_names = common.LAYER_PARAM_NAMES
    skip_params = common.skipped_params(common.LAYER_PARAMS, reason=common.layer_skip_reason)
    timeout = 300
    rounds = 2
    repeat = (3, 10, 10.0)

    def setup(self, backend, layers, size):
        self.p = common.layer_inputs(backend, layers, size)
        if not self.p.warm:
            common.layer_backward(self.p, common.layer_forward(self.p)[2])
            self.p.warm = True
        self.cache = common.layer_forward(self.p)[2]

    def time_forward(self, backend, layers, size):
        common.layer_forward(self.p)

    def time_backward(self, backend, layers, size):
        common.layer_backward(self.p, self.cache)

    def time_forward_backward(self, backend, layers, size):
        common.layer_backward(self.p, common.layer_forward(self.p)[2])


class _Ratios:
    """xlstm's time over a reference's, each pass, interleaved in one process (float32).

    Each ``track_`` returns the median of ``common.RATIO_ROUNDS`` back-to-back ratios; asv
    runs it in ``rounds`` processes. Lower is better: 2.0 means twice the reference's time.
    """

    params = common.RATIO_PARAMS
    param_names = common.RATIO_PARAM_NAMES
    skip_params = common.skipped_params(common.RATIO_PARAMS)
    timeout = 300
    rounds = 2

    def setup(self, backend, size):
        self.p = common.inputs(backend, "float32", size)
        if not self.p.warm:
            common.forward_backward(self.p)
            self.p.warm = True
        self.caches = common.forward(self.p)[3]

    def subject(self, passes):
        """xlstm's call for ``passes``: forward, backward (from the cache) or both."""
        if passes == "forward":
            return lambda: common.forward(self.p)
        if passes == "backward":
            return lambda: common.backward(self.p, self.caches)
        return lambda: common.forward_backward(self.p)


class VsGemm(_Ratios):
    """xlstm's time over that of its matrix-product FLOPs done as large products (same BLAS).

    The distance from the floor no LSTM on this machine can beat: a regression in the
    element-wise work, the per-step overhead or the product layout raises it; a faster or
    slower machine, or a busier one, moves both sides alike.
    """

    def _ratio(self, passes):
        return common.interleaved_ratio(self.subject(passes), common.gemm_reference(self.p, passes))

    def track_forward(self, backend, size):
        return self._ratio("forward")

    def track_backward(self, backend, size):
        return self._ratio("backward")

    def track_forward_backward(self, backend, size):
        return self._ratio("forward_backward")

    track_forward.unit = track_backward.unit = track_forward_backward.unit = "x GEMM"


if common.HAS_TORCH:

    class VsTorch(_Ratios):
        """xlstm's time over ``torch.nn.LSTM``'s for the same pass and shape (same threads).

        Defined only where torch is installed (asv's built environments leave it out; see
        docs/benchmarks.md), so that no row of this table is ``n/a`` on every machine.
        """

        params = common.TORCH_RATIO_PARAMS
        skip_params = common.skipped_params(common.TORCH_RATIO_PARAMS)

        def setup(self, backend, size):
            super().setup(backend, size)
            device = common.torch_reference_device(backend)
            self.reference = common.TorchReference(self.p, device)

        def _ratio(self, passes):
            return common.interleaved_ratio(self.subject(passes), getattr(self.reference, passes))

        def track_forward(self, backend, size):
            return self._ratio("forward")

        def track_backward(self, backend, size):
            return self._ratio("backward")

        def track_forward_backward(self, backend, size):
            return self._ratio("forward_backward")

        track_forward.unit = track_backward.unit = track_forward_backward.unit = "x torch"


class Cell:
    """``lstm_cell_forward`` and ``lstm_cell_backward``: one time step.

    A step takes microseconds to a millisecond, where scheduling noise is a large
    share: asv times as many calls per sample as fill ``sample_time`` and keeps 10 to 25
    samples in each of ``rounds`` processes started at different times, so that a
    10% change stands out of the spread of the median.
    """

    params = common.CELL_PARAMS
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
