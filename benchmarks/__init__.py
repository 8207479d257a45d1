"""asv benchmark suite for xlstm (see asv.conf.json at the repository root)."""
