"""Shape legend, gate order and parameter layout: stated once, used everywhere.

Shape legend (the notebook's names)::

    n_x  input features          x       (n_x, m, T_x)
    n_a  hidden units            a, c    (n_a, m) per step, (n_a, m, T_x) per sequence
    n_y  output classes          y       (n_y, m, T_x)
    m    batch size              W*      (n_a, n_a + n_x), acting on [a_prev; x_t]
    T_x  time steps              b*      (n_a, 1);  Wy (n_y, n_a);  by (n_y, 1)

Gate order.  The engine stacks the four gate weights once into one matrix
``W = concat([Wi, Wf, Wo, Wc])`` of shape ``(4 n_a, n_a + n_x)`` and one bias
``b`` of shape ``(4 n_a,)``, in the order of :data:`GATE_ORDER` = (i, f, o, g).
The three sigmoid gates (input, forget, output) come first so that one call
activates all three; the candidate ``g`` (the notebook's ``cct``, weight ``Wc``)
comes last and goes through ``tanh``.  PyTorch, cuDNN and Keras use i, f, g, o:
converters reorder explicitly.  The columns of ``W`` are ``[recurrent | input]``,
the notebook's ``[a_prev; x_t]``.

Engine layout.  Inside the sequence engine arrays are time-major with the batch
in rows (what row-major BLAS likes): ``h`` and ``c`` are ``(T_x + 1, m, n_a)``
with the initial state at index 0, gates are ``(T_x, m, 4 n_a)``.
"""

GATE_ORDER = ("i", "f", "o", "g")
"""Order of the gate blocks in the stacked weights: input, forget, output, candidate."""

GATE_PARAMETERS = {"i": ("Wi", "bi"), "f": ("Wf", "bf"), "o": ("Wo", "bo"), "g": ("Wc", "bc")}
"""Seed parameter keys (weight, bias) of each gate."""

N_SIGMOID_GATES = 3
"""The first three gate blocks (i, f, o) are sigmoids, the last (g) is tanh."""

GATE_KEYS = ("Wf", "bf", "Wi", "bi", "Wc", "bc", "Wo", "bo")
"""Keys of one LSTM layer's (one direction's) gate parameters, the notebook's names."""

OUTPUT_KEYS = ("Wy", "by")
"""Keys of the output layer's parameters."""

PARAMETER_KEYS = (*GATE_KEYS, *OUTPUT_KEYS)
"""Keys of the notebook's parameter dict."""

GATE_GRADIENT_KEYS = tuple("d" + key for key in GATE_KEYS)
"""Gradient keys of :data:`GATE_KEYS` (``dWf, dbf, ...``)."""

GRADIENT_KEYS = tuple("d" + key for key in PARAMETER_KEYS)
"""Gradient keys of :data:`PARAMETER_KEYS` (``dWf, ..., dWy, dby``)."""

CELL_GRADIENT_KEYS = ("dxt", "da_prev", "dc_prev", *GATE_GRADIENT_KEYS)
"""Keys of :func:`lstm_cell_backward`'s result (the notebook's)."""

SEQUENCE_GRADIENT_KEYS = ("dx", "da0", "dc0", *GATE_GRADIENT_KEYS)
"""Keys of :func:`lstm_backward`'s result."""


HEADS = ("per_step", "last", "mean")
"""Output heads of the training models (:mod:`xlstm.training.heads`); checkpoints written
before 0.2 have none, which reads as ``"per_step"``."""


def layer_key(key: str, layer: int, reverse: bool = False) -> str:
    """Flat model key of one gate parameter, named as ``torch.nn.LSTM`` names its own.

    ``layer_key("Wf", 1, True) == "Wf_l1_reverse"``; the output layer keeps ``Wy``, ``by``.
    """
    return f"{key}_l{layer}" + ("_reverse" if reverse else "")
