"""Text data for character models: the default corpus, splits and truncated-BPTT batches.

Truncated backpropagation through time (TBPTT) over a long text: the ids are cut into ``m``
contiguous streams, one per batch row, and each stream is read in consecutive chunks of
``T`` steps.  Chunk ``k + 1`` of a row continues exactly where chunk ``k`` stopped, so the
final state ``(a, c)`` of one chunk is the right initial state of the next; gradients stop at
the chunk boundary::

    streams:  row 0: |chunk 0|chunk 1|chunk 2| ...      (text[0 : L])
              row 1: |chunk 0|chunk 1|chunk 2| ...      (text[L : 2L])
              ...

Shape legend: ``inputs`` and ``targets`` are ``(m, T)`` integer ids, ``targets`` the next
character of each input.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from importlib import resources

import numpy as np

DEFAULT_CORPUS = "corpus.txt"


def default_corpus() -> str:
    """The text shipped in ``xlstm/data/corpus.txt`` (about 48 KB of original prose, generated
    from a small hand-written grammar by ``xlstm/data/make_corpus.py``)."""
    return resources.files("xlstm").joinpath("data", DEFAULT_CORPUS).read_text(encoding="utf-8")


def unigram_entropy(text: str) -> float:
    """Entropy of the character frequencies of ``text``, in nats per character.

    The cross-entropy of the best model that ignores context: a language model has learned
    something only when its loss is below this.
    """
    if not text:
        raise ValueError("`text` is empty")
    counts = np.asarray(list(Counter(text).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def split_text(text: str, validation_fraction: float = 0.1) -> tuple[str, str]:
    """``(train, validation)``: the last ``validation_fraction`` of the text is held out."""
    if isinstance(validation_fraction, bool) or not isinstance(
        validation_fraction, (int, float, np.integer, np.floating)
    ):
        kind = type(validation_fraction).__name__
        raise TypeError(f"`validation_fraction` must be a number in [0, 1), got {kind}")
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str, got {type(text).__name__}")
    if not 0.0 <= validation_fraction < 1.0:
        msg = f"`validation_fraction` = {validation_fraction}; expected a value in [0, 1)"
        raise ValueError(msg)
    cut = len(text) - round(len(text) * validation_fraction)
    return text[:cut], text[cut:]


def tbptt_batches(
    ids: np.ndarray, batch_size: int, seq_len: int, *, offset: int = 0, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass over ``ids`` as ``(inputs, targets)`` chunks of shape ``(batch_size, seq_len)``.

    Parameters
    ----------
    ids : 1-D integer array
    batch_size : int
        Number of streams ``m`` (a Python or NumPy integer, as are the sizes below).
    seq_len : int
        Chunk length ``T`` (the truncation length).
    offset : int, default 0
        Characters skipped at the start, ``>= 0`` (vary it between epochs so that chunk
        boundaries move).
    start : int, default 0
        Index of the first chunk yielded, in ``[0, n_chunks]``: the rest of a pass that
        stopped after ``start`` chunks (to resume a run exactly where it stopped; see
        :func:`n_tbptt_chunks`).

    Yields
    ------
    inputs, targets : int64 arrays (batch_size, seq_len)
        Consecutive chunks of the same streams: carry the state from one to the next.
        A final partial chunk is dropped.

    Raises
    ------
    TypeError, ValueError
        At the call, before anything is yielded: ``ids`` not a 1-D integer array, a size
        that is not a positive integer, a negative ``offset``, a ``start`` outside
        ``[0, n_chunks]``, or a text too short for one chunk per stream.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`ids` must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
    batch_size = _integer("batch_size", batch_size, 1)
    seq_len = _integer("seq_len", seq_len, 1)
    offset = _integer("offset", offset, 0)
    n_chunks = n_tbptt_chunks(len(ids) - offset, batch_size, seq_len)
    if n_chunks < 1:
        msg = (
            f"`ids` has {len(ids)} ids; offset + batch_size * seq_len + 1 = "
            f"{offset + batch_size * seq_len + 1} are needed for one chunk per stream"
        )
        raise ValueError(msg)
    start = _integer("start", start, 0)
    if start > n_chunks:
        raise ValueError(f"`start` = {start}; this pass has only {n_chunks} chunks")
    return _chunks(ids, batch_size, seq_len, offset, start, n_chunks)


def _integer(name: str, value: object, low: int) -> int:
    """A Python or NumPy integer ``>= low`` as a Python int (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < low:
        expected = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"`{name}` = {value!r}; expected {expected}")
    return int(value)


def _chunks(
    ids: np.ndarray, batch_size: int, seq_len: int, offset: int, start: int, n_chunks: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    length = n_chunks * seq_len
    inputs = ids[offset : offset + batch_size * length].reshape(batch_size, length)
    targets = ids[offset + 1 : offset + 1 + batch_size * length].reshape(batch_size, length)
    for k in range(start, n_chunks):
        window = slice(k * seq_len, (k + 1) * seq_len)
        yield (
            np.ascontiguousarray(inputs[:, window], dtype=np.int64),
            np.ascontiguousarray(targets[:, window], dtype=np.int64),
        )


def n_tbptt_chunks(n_ids: int, batch_size: int, seq_len: int) -> int:
    """How many chunks :func:`tbptt_batches` yields for ``n_ids`` ids."""
    return max(0, (n_ids - 1) // batch_size // seq_len)


def perplexity(loss_nats: float) -> float:
    """``exp(loss)``: the effective number of equally likely next characters."""
    return math.exp(loss_nats)


__all__ = [
    "default_corpus",
    "n_tbptt_chunks",
    "perplexity",
    "split_text",
    "tbptt_batches",
    "unigram_entropy",
]


def majority_symbol_task(
    m: int, *, n_classes: int = 3, min_length: int = 4, max_length: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A generated sequence-classification data set: which symbol occurs most often?

    Each sequence has a length drawn uniformly from ``[min_length, max_length]`` and
    symbols from ``n_classes``; its label is the symbol it holds most often (sequences with
    a tie are drawn again).  The answer depends on every step, and the sequences have
    different lengths: the task of a variable-length sequence classifier.

    Returns
    -------
    ids : int64 array, shape (m, max_length)
        Symbols, right-padded with 0 past each sequence's end.
    lengths : int64 array, shape (m,)
    labels : int64 array, shape (m,)
    """
    for name, value in (("m", m), ("n_classes", n_classes), ("min_length", min_length)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` = {value!r}; expected a positive int")
    if n_classes < 2 or max_length < min_length:
        raise ValueError("expected n_classes >= 2 and max_length >= min_length")
    rng = np.random.default_rng(seed)
    ids = np.zeros((m, max_length), dtype=np.int64)
    lengths = np.empty(m, dtype=np.int64)
    labels = np.empty(m, dtype=np.int64)
    row = 0
    while row < m:
        length = int(rng.integers(min_length, max_length + 1))
        favoured = int(rng.integers(n_classes))
        # One symbol is drawn more often, so that most sequences have a clear answer.
        p = np.full(n_classes, 0.5 / (n_classes - 1))
        p[favoured] = 0.5
        symbols = rng.choice(n_classes, size=length, p=p)
        counts = np.bincount(symbols, minlength=n_classes)
        if (counts == counts.max()).sum() > 1:
            continue
        ids[row, :length], lengths[row], labels[row] = symbols, length, int(counts.argmax())
        row += 1
    return ids, lengths, labels
