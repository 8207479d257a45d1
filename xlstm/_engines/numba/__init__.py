"""The numba engine (:mod:`.engine`): fused compiled step kernels (:mod:`.kernels`) between
products on NumPy's BLAS, with a vectorisable ``tanh`` (:mod:`.scalar`).

Importing this package imports nothing optional; :mod:`.kernels` and :mod:`.scalar` import
numba, and :mod:`.engine` imports them only when it first runs.
"""
