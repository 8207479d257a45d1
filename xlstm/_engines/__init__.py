"""The sequence engines: one contract (:mod:`.contract`), one selection (:mod:`.dispatch`).

* :mod:`.cache` — :class:`~.cache.SequenceCache`, what every engine produces, and its readers;
* :mod:`.generic` — the array-API reference engine (every backend);
* :mod:`.numpy` — in-place NumPy loops (padded and variable-length);
* :mod:`.numba` — compiled fused step kernels (the `cpu` extra);
* :mod:`.cupy` — fused CUDA kernels and CUDA-graph replay;
* :mod:`.lengths` — checking ``lengths`` and reversing sequences within their lengths.

Nothing here imports CuPy or numba until an engine that needs them is selected.
"""
