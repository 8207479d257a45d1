"""xlstm on Dask: batch inference and data-parallel training beyond one machine.

The same function names as the local API, taking dask arrays chunked along the batch
``m``; each chunk is one task that runs xlstm's own engine unchanged.

* :func:`lstm_forward` -- outputs ``(a, y, c)`` and final states as dask arrays;
* :func:`loss_and_gradients` -- the mean loss and every gradient of a batch, summed over
  chunks in a tree; the final states stay on the workers;
* :func:`train_step`, :class:`DataParallelTrainer` -- the optimiser on the client; the
  trainer sends batches in memory straight to a gradient server on each worker (a dask
  actor: no scheduler in the step), and dask-array batches as one graph;
* :func:`compute` -- ``dask.compute`` whose error names the chunk that kept killing workers;
* ``python -m xlstm predict`` (:mod:`xlstm.cli.predict`).

Shape legend: ``x (n_x, m, T)`` or integer ids ``(m, T)``, ``a, c (n_a, m, T)``, ``y (n_y,
m, T)``, states ``(n_a, m)``.  Gate order :data:`xlstm.GATE_ORDER` = (i, f, o, g).
``import xlstm`` never imports this package (nor dask); this package needs the ``dask``
extra.  See ``docs/distributed.md``.
"""

from __future__ import annotations

try:
    import dask.array  # noqa: F401  (the one dependency this package adds)
except ImportError as error:  # pragma: no cover - depends on the environment
    msg = "xlstm.dask needs dask: the `dask` extra (pip install -e '.[dask]' from a clone)"
    raise ImportError(msg) from error

from .inference import compute, lstm_forward
from .training import DataParallelTrainer, loss_and_gradients, train_step

__all__ = ["DataParallelTrainer", "compute", "loss_and_gradients", "lstm_forward", "train_step"]
