"""The command-line tools of ``python -m xlstm``, in one place.

* :mod:`.train` -- ``python -m xlstm train`` (on :func:`xlstm.training.fit`);
* :mod:`.bench` -- ``python -m xlstm bench`` (timing in :mod:`xlstm.bench`);
* :mod:`.predict` -- ``python -m xlstm predict`` (Dask batch inference, :mod:`xlstm.dask`);
* :mod:`.export` -- ``python -m xlstm export`` (ONNX, :mod:`xlstm.convert`);
* :mod:`.cluster` -- connecting ``--scheduler`` / ``--workers`` to a Dask cluster;
* :mod:`._common` -- what every command shares: the parser, number parsers, the progress
  line, one-line usage errors and the shared ends (:func:`._common.run_command`).

The runner is :mod:`xlstm.__main__` (one table of commands).  Each command module has a
``main(argv) -> int`` and is imported only when its command runs, so ``import xlstm`` and
``python -m xlstm train`` import neither Dask nor ONNX.
"""
