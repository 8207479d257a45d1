"""The NumPy engine (:mod:`.engine`): in-place buffers, padded and variable-length loops."""
