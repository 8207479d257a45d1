"""CuPy fast path: fused CUDA kernels for the LSTM step, optional CUDA-graph replay.

Importing this package (or its modules) does not import CuPy: the kernels are
CUDA source strings until the first call on CuPy arrays builds them.  See
:mod:`xlstm._engines.cupy.engine` for the engine and :mod:`xlstm._engines.cupy._kernels` for
the kernels.
"""
