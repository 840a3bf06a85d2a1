"""K-means and nearest-centroid assignment in NumPy/SciPy BLAS.

Everything here is pure computation on in-memory float32 arrays: no Dask, no
Lance. The distance work is one GEMM per chunk of rows, with the centroid norms
folded into the product as an extra column, so no ``(n, k, d)`` array is ever
materialised (see ../shared/LANCE_NOTES.md, "NumPy facts").
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

__all__ = ["assign", "kmeans", "normalize_rows"]

# Rows per chunk are chosen so that the (rows, k) score matrix stays near this
# many float32 elements (about 32 MB): large enough for BLAS to run at full
# speed, small enough to bound memory independently of the number of rows.
_SCORE_ELEMENTS = 8 * 1024 * 1024


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Scale every row to unit L2 norm (rows of zeros stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def _chunk_rows(k: int) -> int:
    return max(1024, _SCORE_ELEMENTS // max(k, 1))


def assign(
    x: np.ndarray, centroids: np.ndarray, metric: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row.

    Parameters
    ----------
    x : ndarray, shape (n, d), float32
    centroids : ndarray, shape (k, d), float32
    metric : {"l2", "dot"}
        ``"l2"`` picks the centroid of least squared distance, ``"dot"`` the one
        of largest inner product. (Cosine callers normalise first and use l2.)

    Returns
    -------
    labels : ndarray, shape (n,), int32
    distances : ndarray, shape (n,), float32
        Squared L2 distance to the chosen centroid for ``"l2"``; the negated
        inner product for ``"dot"`` (smaller is closer in both cases).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int32)
    dists = np.empty(n, dtype=np.float32)
    if metric == "l2":
        # argmin |x - c|^2 = argmax (2 x.c - |c|^2): fold -|c|^2 into the GEMM
        # as an extra column so one BLAS call gives the whole score matrix.
        rhs = np.empty((c.shape[1] + 1, c.shape[0]), dtype=np.float32)
        rhs[:-1] = 2.0 * c.T
        rhs[-1] = -np.einsum("ij,ij->i", c, c)
    elif metric == "dot":
        rhs = np.ascontiguousarray(c.T)
    else:  # pragma: no cover - callers validate metrics
        raise ValueError(f"assign() takes metric 'l2' or 'dot', got {metric!r}")
    step = min(_chunk_rows(c.shape[0]), max(n, 1))
    # Buffers reused for every chunk: under dask's MALLOC_TRIM_THRESHOLD_ each
    # fresh large temporary costs an mmap and page faults (see encode.py).
    d = x.shape[1]
    lhs = np.ones((step, d + 1), dtype=np.float32) if metric == "l2" else None
    scores = np.empty((step, c.shape[0]), dtype=np.float32)
    best = np.empty(step, dtype=np.intp)
    for start in range(0, n, step):
        m = min(step, n - start)
        xs = x[start : start + m]
        if metric == "l2":
            lhs[:m, :d] = xs
            np.matmul(lhs[:m], rhs, out=scores[:m])
        else:
            np.matmul(xs, rhs, out=scores[:m])
        scores[:m].argmax(axis=1, out=best[:m])
        top = np.take_along_axis(scores[:m], best[:m, None], axis=1)[:, 0]
        labels[start : start + m] = best[:m]
        if metric == "l2":
            dists[start : start + m] = np.einsum("ij,ij->i", xs, xs) - top
        else:
            dists[start : start + m] = -top
    if metric == "l2":
        np.maximum(dists, 0.0, out=dists)
    return labels, dists


def _plusplus_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centre drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    centers[0] = x[rng.integers(n)]
    sq = np.einsum("ij,ij->i", x, x)
    closest = sq - 2.0 * (x @ centers[0]) + centers[0] @ centers[0]
    np.maximum(closest, 0.0, out=closest)
    for i in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:  # fewer distinct points than k: fill with random rows
            centers[i:] = x[rng.integers(n, size=k - i)]
            break
        idx = int(np.searchsorted(np.cumsum(closest, dtype=np.float64), rng.random() * total))
        centers[i] = x[min(idx, n - 1)]
        d = sq - 2.0 * (x @ centers[i]) + centers[i] @ centers[i]
        np.minimum(closest, np.maximum(d, 0.0), out=closest)
    return centers


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    max_iters: int = 50,
    tol: float = 1e-4,
    seed: int | None = None,
    spherical: bool = False,
    init: str = "auto",
) -> tuple[np.ndarray, float]:
    """Lloyd's k-means with GEMM distances.

    Parameters
    ----------
    x : ndarray, shape (n, d)
        Training rows, ``n >= k``.
    k : int
        Number of centroids.
    max_iters : int
        Upper bound on Lloyd iterations.
    tol : float
        Stop when the relative change of inertia falls below this.
    seed : int, optional
        Seed of the initialisation; the same seed gives the same centroids.
    spherical : bool
        Keep centroids on the unit sphere, as Lance's k-means does for dot.
    init : {"auto", "k-means++", "random"}
        ``"auto"`` uses k-means++ seeding on a subsample when ``k <= 1024``
        and a random draw of rows otherwise (k-means++ is O(k) passes).

    Returns
    -------
    centroids : ndarray, shape (k, d), float32
    inertia : float
        Sum of squared distances of the rows to their centroid.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least k={k} rows to train on, got {n}")
    rng = np.random.default_rng(seed)
    if init == "auto":
        init = "k-means++" if k <= 1024 else "random"
    if init == "k-means++":
        # k-means++ makes k passes over its rows: seed on 16 rows per centroid
        # (at least 4096), so seeding stays a small part of the cost.
        m = max(16 * k, 4096)
        sub = x if n <= m else x[rng.choice(n, m, replace=False)]
        centroids = _plusplus_init(sub, k, rng)
    else:
        centroids = x[rng.choice(n, k, replace=False)].copy()
    if spherical:
        centroids = normalize_rows(centroids)

    ones = np.ones(n, dtype=np.float32)
    rows = np.arange(n)
    prev = np.inf
    inertia = np.inf
    for _ in range(max_iters):
        labels, dists = assign(x, centroids, "l2")
        inertia = float(dists.sum(dtype=np.float64))
        # Per-cluster sums as one sparse-times-dense product: O(n d), no loop.
        member = scipy.sparse.csr_matrix((ones, (labels, rows)), shape=(k, n))
        sums = np.asarray(member @ x, dtype=np.float32)
        counts = np.bincount(labels, minlength=k).astype(np.float32)
        empty = counts == 0
        counts[empty] = 1.0
        new = sums / counts[:, None]
        if empty.any():
            # Re-seed empty clusters at the rows worst served by their centroid.
            worst = np.argpartition(dists, -int(empty.sum()))[-int(empty.sum()) :]
            new[empty] = x[worst]
        if spherical:
            new = normalize_rows(new)
        centroids = new
        if prev < np.inf and abs(prev - inertia) <= tol * max(prev, 1e-30):
            break
        prev = inertia
    return centroids.astype(np.float32, copy=False), inertia
