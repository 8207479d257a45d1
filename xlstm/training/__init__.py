"""Training: loss and gradients of every parameter, optimisers, a model object and a CLI.

Layers, from the bottom up:

* :mod:`~xlstm.training.loss` -- softmax cross-entropy over the per-step outputs (integer
  targets ``(m, T)``, optional mask), the output layer's backward, and
  :func:`loss_and_gradients`, which returns the loss, the gradient of every parameter
  (``dWf ... dWy, dby``) and the final state for truncated BPTT;
* :mod:`~xlstm.training.optim` -- :class:`SGD`, :class:`Adam`, :class:`AdamW` as pure
  updates of the parameter dict with explicit state; clipping by global norm and by value;
* :mod:`~xlstm.training.model` -- :class:`LSTMModel` / :class:`CharLSTM`: parameters,
  backend, dtype, optimiser state, ``train_step``, ``to``, ``save``/``load`` (``.npz``);
* :mod:`~xlstm.training.heads` -- what the model predicts: per step, or per sequence from
  its final states or its mean output;
* :mod:`~xlstm.training.fit` -- :func:`fit`, the training loop (epochs, validation,
  early stopping, checkpoints, progress);
* :mod:`~xlstm.training.data` -- the bundled corpus, train/validation split, TBPTT batches,
  a generated sequence-classification task;
* ``python -m xlstm train`` lives in :mod:`xlstm.cli.train`.

Everything is written against the array API standard and runs on every backend.
"""

from .data import (
    default_corpus,
    majority_symbol_task,
    split_text,
    tbptt_batches,
    unigram_entropy,
)
from .fit import (
    Batch,
    Callback,
    EarlyStopping,
    History,
    ModelCheckpoint,
    ProgressBar,
    evaluate,
    fit,
)
from .loss import (
    log_softmax,
    loss_and_gradients,
    one_hot,
    output_backward,
    output_forward,
    sequence_loss,
    softmax_cross_entropy,
)
from .model import CharLSTM, CheckpointError, LSTMModel, load_model
from .optim import (
    SGD,
    Adam,
    AdamW,
    Optimizer,
    apply_gradients,
    clip_by_global_norm,
    clip_by_value,
    global_norm,
)

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Batch",
    "Callback",
    "CharLSTM",
    "CheckpointError",
    "EarlyStopping",
    "History",
    "LSTMModel",
    "ModelCheckpoint",
    "Optimizer",
    "ProgressBar",
    "apply_gradients",
    "clip_by_global_norm",
    "clip_by_value",
    "default_corpus",
    "evaluate",
    "fit",
    "global_norm",
    "load_model",
    "log_softmax",
    "loss_and_gradients",
    "majority_symbol_task",
    "one_hot",
    "output_backward",
    "output_forward",
    "sequence_loss",
    "softmax_cross_entropy",
    "split_text",
    "tbptt_batches",
    "unigram_entropy",
]
