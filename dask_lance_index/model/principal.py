"""Leading principal directions of a sample of rows, for graphs built on fewer columns.

A partition's HNSW graph costs in proportion to its rows' dimension, and real embeddings
hold most of their variance in a fraction of their directions. :func:`principal_axes` gives
a sample's directions, leading first, with the share of the variance (or, uncentred, of the
energy: for inner products) the leading ones hold; :func:`fewest` the fewest of them, a
multiple of a step, holding a wanted share. The directions make an orthonormal basis: two
rows' squared distance is the sum of theirs on the leading directions and on the rest.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fewest", "principal_axes"]


def principal_axes(sample: np.ndarray, centre: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """``sample``'s principal directions as the columns of a ``(d, d)`` float32 orthonormal
    basis, leading first, and the share of the variance the leading ``i + 1`` hold
    (cumulative, ending at 1); with ``centre`` false, of the rows' energy (``X^T X`` of the
    rows themselves). ``None`` where the sample holds none (every row the same, or zero)."""
    rows = np.asarray(sample, dtype=np.float64)
    if centre:
        rows = rows - rows.mean(axis=0)
    values, directions = np.linalg.eigh(rows.T @ rows)  # ascending
    values = np.maximum(values[::-1], 0)
    total = values.sum()
    if not total > 0:
        return None
    return np.ascontiguousarray(directions[:, ::-1], dtype=np.float32), np.cumsum(values) / total


def fewest(share: np.ndarray, wanted: float, step: int) -> int:
    """The fewest leading directions, a multiple of ``step``, whose ``share``
    (:func:`principal_axes`) is at least ``wanted``; at most the dimension rounded up."""
    return -(-(int(np.searchsorted(share, wanted)) + 1) // step) * step
