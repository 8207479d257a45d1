"""Benchmark tooling behind ``python -m xlstm bench``.

``cli`` parses the command line and prints the table; ``_harness`` builds the
contestants (xlstm, ``torch.nn.LSTM`` in ``_torch_peer``, the seed-style loop in
``_naive``, and a pure-GEMM floor), times them interleaved and cross-checks them.
"""
