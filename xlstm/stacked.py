"""Deprecated: :class:`xlstm.LSTM` is the model (``StackedLSTM`` is its alias for one release)."""

from .model import LSTM, StackedLSTM, parameter_key

__all__ = ["LSTM", "StackedLSTM", "parameter_key"]
