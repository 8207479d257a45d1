"""NumPy fast path: the generic engine's algorithm with preallocated buffers."""
