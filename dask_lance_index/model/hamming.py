"""IVF for binary vectors: k-modes in hamming space, as Lance 14.0.2 trains it.

Lance trains the IVF of a ``fixed_size_list<uint8>`` column under
``metric="hamming"`` with k-modes (its ``KModeAlgo`` in
``lance-index/src/vector/kmeans.rs``, read for this): centroids start as ``k``
distinct random rows; each pass assigns every row to its nearest centroid in
hamming distance (the first one on ties), then sets each bit of a centroid to
the majority of its rows' bits (a tie gives 0; a centroid left without rows
becomes all zeros); it stops when the total distance changes by less than
``tol`` of itself, or after ``max_iters`` passes. This module does the same in
NumPy: the bits unpacked to float32 per chunk of rows, the distances
``|x| + |c| - 2 x.c`` one GEMM per chunk, the bit counts one sparse product.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

__all__ = ["hamming_assign", "train_kmodes"]

# Rows per chunk: the chunk's unpacked bits and its (rows, k) distances stay small.
_CHUNK = 4096


def _bits(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(x, dtype=np.uint8), axis=1).astype(np.float32)


def hamming_assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each bit-packed row ``x`` (uint8 ``(n, d)``) in hamming
    distance, the first on ties: ``(labels int64, distances float32)``."""
    cb = _bits(centroids)
    cn = cb.sum(axis=1)
    labels = np.empty(len(x), dtype=np.int64)
    dists = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), _CHUNK):
        xb = _bits(x[s : s + _CHUNK])
        d = xb.sum(axis=1)[:, None] + cn[None, :] - 2.0 * (xb @ cb.T)
        best = np.argmin(d, axis=1)  # the first minimum, as Lance's argmin
        labels[s : s + len(xb)] = best
        dists[s : s + len(xb)] = d[np.arange(len(xb)), best]
    return labels, dists


def _modes(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-bit majority of each cluster's rows (ties and empty clusters give 0), packed."""
    ones = np.zeros((k, x.shape[1] * 8), dtype=np.float64)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    for s in range(0, len(x), _CHUNK):
        lab = labels[s : s + _CHUNK]
        member = scipy.sparse.csr_matrix(
            (np.ones(len(lab), np.float32), (lab, np.arange(len(lab)))), shape=(k, len(lab))
        )
        ones += member @ _bits(x[s : s + _CHUNK])
    return np.packbits(ones * 2 > counts[:, None], axis=1)


def train_kmodes(x: np.ndarray, k: int, *, max_iters: int, seed, tol: float = 1e-4) -> tuple[np.ndarray, float]:
    """IVF centroids of bit-packed rows ``x`` (uint8 ``(n, d)``) by k-modes, as Lance
    trains them; returns ``(centroids uint8 (k, d), total hamming distance)``."""
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if len(x) < k:
        raise ValueError(f"k-modes needs at least k={k} rows, got {len(x)}")
    rng = np.random.default_rng(seed)
    centroids = x[np.sort(rng.choice(len(x), size=k, replace=False))]
    loss = np.inf
    for _ in range(max(1, int(max_iters))):
        labels, dists = hamming_assign(x, centroids)
        last = float(dists.sum(dtype=np.float64))
        centroids = _modes(x, labels, k)
        # Lance's stopping rule: relative change of the total distance below tol.
        if last == 0 or abs(loss - last) / last < tol:
            loss = last
            break
        loss = last
    return centroids, loss
