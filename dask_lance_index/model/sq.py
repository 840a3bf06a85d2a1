"""Scalar quantization (IVF_SQ): one pair of bounds for every segment, codes in NumPy.

Lance's IVF_SQ stores each row as one byte per dimension:
``floor((v - start) * 255 / (end - start))`` clipped to 0-255, where
``(start, end)`` are the smallest and largest value over all dimensions of a
training sample (65,536 rows, ``2**num_bits x 256``; a row outside them is
clipped), drawn per segment. Segments with different bounds merge into a
silently wrong index, so here the bounds are trained once, from the build's
sample, and every segment's codes use them (:class:`SQEncoder`); Lance merges
such segments correctly. Rows are the raw vectors (unit vectors for cosine);
no residual to the centroid, as Lance does.
"""

from __future__ import annotations

import copy

import numpy as np

from .coarse import CoarseIndex
from .ivf import FlatEncoder
from .sq_bounds import train_sq_bounds

__all__ = ["SQ_SAMPLE_RATE", "SQEncoder", "sq_codes", "train_sq_bounds"]

# Rows per code value in the sample the bounds come from, as Lance's sq sample_rate.
SQ_SAMPLE_RATE = 256


# Rows coded at once: their float64 working copy (2 MB at 128-d) stays in cache.
_CODE_ROWS = 2048


def sq_codes(rows: np.ndarray, bounds: tuple[float, float], num_bits: int = 8) -> np.ndarray:
    """Lance's SQ codes of prepared ``rows`` (uint8, same shape), computed in float64:
    equal to Lance's on every value measured (``tests/test_segment_write.py``)."""
    start, end = bounds
    top = 2**num_bits - 1
    out = np.empty(rows.shape, dtype=np.uint8)
    if not end > start:  # no range: every code 0
        out[...] = 0
        return out
    # (v - start) * top / range, in that order: multiplying by top / range first moved
    # values at a code's edge (the top code's, in a test) down by one. A slice of rows at a
    # time through one buffer: with the whole batch's float64 temporaries 65,536 x 128 rows
    # took 0.042 s, this way 0.014 s (the same codes).
    buf = np.empty((min(_CODE_ROWS, len(rows)),) + rows.shape[1:], dtype=np.float64)
    for lo in range(0, len(rows), _CODE_ROWS):
        chunk = rows[lo : lo + _CODE_ROWS]
        b = buf[: len(chunk)]
        np.subtract(chunk, start, out=b, dtype=np.float64)
        b *= top
        b /= end - start
        np.floor(b, out=b)
        np.clip(b, 0, top, out=b)
        np.copyto(out[lo : lo + len(chunk)], b, casting="unsafe")
    return out


class SQEncoder:
    """Assign rows to IVF partitions and encode their SQ codes with shared bounds.

    Parameters
    ----------
    centroids : ndarray, shape (num_partitions, d), float32
    bounds : (float, float)
        The model's ``sq_bounds``.
    metric : {"l2", "cosine", "dot"}
    coarse : CoarseIndex, optional
        A two-level model's grouping (:class:`.ivf.PartitionAssigner`).
    """

    def __init__(self, centroids: np.ndarray, bounds: tuple[float, float], metric: str,
                 coarse: CoarseIndex | None = None, num_bits: int = 8):
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.num_bits = num_bits
        self._flat = FlatEncoder(centroids, metric, coarse)  # the rows as Lance stores them, then coded
        self.assigner = self._flat.assigner

    def spawn(self) -> SQEncoder:
        """This encoder for another thread: the same model and bounds, its own
        :class:`.ivf.FlatEncoder` (:meth:`.ivf.FlatEncoder.spawn`)."""
        other = copy.copy(self)
        other._flat = self._flat.spawn()
        other.assigner = other._flat.assigner
        return other

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Partition ids (uint32, (n,)), SQ codes (uint8, (n, d)) and the rows' summed
        squared distance to their partition centroid (the IVF loss)."""
        parts, rows, loss = self._flat.encode(x)
        return parts, sq_codes(rows, self.bounds, self.num_bits), loss
