"""K-means and nearest-centroid assignment in NumPy/SciPy BLAS.

Everything here is pure computation on in-memory float32 arrays: no Dask, no
Lance. The distance work is one GEMM per chunk of rows, with the centroid norms
folded into the product as an extra column, so no ``(n, k, d)`` array is ever
materialised: the distance tables, not the arithmetic, are what costs
(``docs/architecture.md``, "NumPy").
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse

__all__ = [
    "smallest_first",
    "assign",
    "assign_among_neighbours",
    "assign_batched",
    "kmeans",
    "kmeans_batched",
    "normalize_rows",
    "LloydPartial",
    "lloyd_partial",
    "combine_partials",
    "lloyd_update",
]

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


class _Scratch:
    """Buffers reused by every assignment step of one k-means run over chunks of
    at most ``rows`` rows. Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``, which
    pins glibc's mmap threshold: every fresh temporary over 128 KB is then an
    mmap, page faults and a munmap (measured on one 4-sub-space PQ group: 0.51 s
    in a plain process, 0.68 s with that variable set, 0.92 s in a dask worker;
    0.62-0.67 s in a worker with these buffers).
    """

    def __init__(self, rows: int, d: int, k: int, members: int = 1, exact: bool = False):
        # ``exact``: float64 sums (the IVF partials, merged across shards);
        # otherwise float32 sums of the float32 rows (PQ sub-spaces).
        step = min(_BATCH_CHUNK, rows)
        self.lhs = np.ones((step, d + 1), dtype=np.float32)
        self.scores = np.empty((step, k), dtype=np.float32)
        self.best = np.empty(step, dtype=np.intp)
        self.labels = np.empty((members, rows), dtype=np.intp)
        self.dists = np.empty(rows, dtype=np.float32)
        self.x64 = np.empty((rows, d), dtype=np.float64) if exact else None
        # The CSR structure of a membership matrix with one entry per row.
        self.keys = np.empty(members * rows, dtype=np.int32)
        self.ones = np.ones(members * rows, dtype=np.float64 if exact else np.float32)
        self.indptr = np.arange(members * rows + 1, dtype=np.int32)

    def membership(self, keys: np.ndarray, rows: int, cols: int):
        """``(rows, cols)`` CSR matrix with a one at ``(i, keys[i])``, on the buffers."""
        self.keys[:rows] = keys
        return scipy.sparse.csr_matrix((self.ones[:rows], self.keys[:rows], self.indptr[: rows + 1]), shape=(rows, cols))


def smallest_first(values: np.ndarray, top: int, wide: int | None = None, shuffled: bool = False) -> np.ndarray:
    """The columns of each row's ``top`` smallest values, smallest first (ties in column
    order; which of a tie at the ``top``-th value is kept is unspecified): the ``top``
    found (:func:`_smallest_unordered`; rows of at least ``wide`` columns a wanted value
    select through a sampled threshold, from the leading columns where the columns are
    ``shuffled``), then sorted."""
    if top < values.shape[1]:
        part = _smallest_unordered(values, top, wide or _SAMPLED_WIDTH, shuffled)
        part.sort(axis=1)  # column order, which the stable sort below keeps among ties
    else:
        part = np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    return np.take_along_axis(part, np.argsort(np.take_along_axis(values, part, 1), axis=1, kind="stable"), 1)


# Wide rows (at least this many columns a wanted value) take a threshold from a sample of
# their columns before selecting: argpartition of every whole row was 55% of an HNSW graph
# build at 3,900 rows a partition.
_SAMPLED_WIDTH = 32
# Columns a sampled threshold lets through, expected, per value wanted.
_SAMPLED_SPARE = 3
# The threshold's least rank in the sample, and the sample's columns past which its stride
# grows (up to that rank).
_SAMPLED_RANK = 24
_SAMPLED_COLUMNS = 1024


def _smallest_unordered(values: np.ndarray, top: int, wide: int = _SAMPLED_WIDTH, shuffled: bool = False) -> np.ndarray:
    """The columns of each row's ``top`` smallest values, in no order; ``top`` less than
    the number of columns.

    On wide rows, each row's threshold is a small order statistic of a strided sample
    of its columns, chosen to let about ``_SAMPLED_SPARE * top`` values through; a row
    with at least ``top`` values at or under its threshold has its ``top`` smallest
    among them, so only those are selected from. The rest (too few or too many through)
    take ``argpartition`` of the whole row: the result is exact either way. Where the
    columns are ``shuffled`` (in a random order: a sample whatever columns it takes), the
    sample is the leading columns, which are read without striding over the rest.
    """
    rows, cols = values.shape
    if cols < wide * top or rows == 0:
        return np.argpartition(values, top - 1, axis=1)[:, :top]
    # a sample of a quarter of the wanted share of the columns (an eighth by default), or
    # sparser where many values are wanted from long rows: the threshold's rank in the
    # sample stays at least _SAMPLED_RANK (150 of 20,000 columns: stride 18, not 4, and the
    # sample's partition 1.0 ms against 6.6 ms of a selection's 16.6 ms)
    stride = max(1, wide // 4, min(cols // _SAMPLED_COLUMNS, _SAMPLED_SPARE * top // _SAMPLED_RANK))
    sample = values[:, : cols // stride] if shuffled else values[:, ::stride]
    rank = min(sample.shape[1] - 1, -(-_SAMPLED_SPARE * top // stride))
    threshold = np.partition(sample, rank, axis=1)[:, rank]
    through = values <= threshold[:, None]
    most = 4 * _SAMPLED_SPARE * top  # a row past this many through selects from all its columns
    if np.count_nonzero(through) > most * rows:  # ties: rows through whole would be found whole
        through[np.count_nonzero(through, axis=1) > most] = False
    # row-major: each row's columns together (flat, then split: 6x faster than 2-d nonzero)
    flat = np.flatnonzero(through)
    r, c = np.divmod(flat, cols)
    counts = np.bincount(r, minlength=rows)
    ok = (counts >= top) & (counts <= most)
    out = np.empty((rows, top), dtype=np.intp)
    if not ok.all():
        out[~ok] = np.argpartition(values[~ok], top - 1, axis=1)[:, :top]
        mine = ok[r]
        r, c, flat = r[mine], c[mine], flat[mine]
        counts = counts * ok
    if ok.any():
        width = int(counts.max())
        starts = np.cumsum(counts) - counts
        slot = np.arange(len(r)) - starts[r]
        held = np.full((rows, width), np.inf, dtype=values.dtype)
        cols_held = np.zeros((rows, width), dtype=np.intp)
        at = r * width + slot  # flat indices: 2-d ones cost a multiply-add of their own
        held.reshape(-1)[at] = values.reshape(-1)[flat] if values.flags.c_contiguous else values[r, c]
        cols_held.reshape(-1)[at] = c
        okr = np.flatnonzero(ok)
        pick = np.argpartition(held[okr], top - 1, axis=1)[:, :top]
        out[okr] = np.take_along_axis(cols_held[okr], pick, 1)
    return out


def assign(
    x: np.ndarray, centroids: np.ndarray, metric: str = "l2", scratch: _Scratch | None = None
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
    if scratch is None:
        labels = np.empty(n, dtype=np.int32)
        dists = np.empty(n, dtype=np.float32)
    else:  # views of the buffers: valid until the next step
        labels, dists = scratch.labels[0, :n], scratch.dists[:n]
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
    # Buffers reused for every chunk: under dask's MALLOC_TRIM_THRESHOLD_ each
    # fresh large temporary costs an mmap and page faults (see _Scratch).
    d = x.shape[1]
    if scratch is not None:
        lhs, scores, best = scratch.lhs, scratch.scores, scratch.best
        step = len(best)
    else:
        step = min(_chunk_rows(c.shape[0]), max(n, 1))
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


@dataclass(frozen=True)
class LloydPartial:
    """What one Lloyd iteration needs from a shard of rows; partials of shards
    merge with :func:`combine_partials` in any order (a tree on a cluster).

    ``sums`` are float64 so the merge order does not change the centroids
    beyond rounding. ``worst`` holds the shard's rows worst served by their
    centroid, to re-seed empty clusters without another pass over the data.
    """

    sums: np.ndarray  # (k, d) float64
    counts: np.ndarray  # (k,) int64
    inertia: float
    worst: np.ndarray  # (r, d) float32
    worst_dists: np.ndarray  # (r,) float32


_KEEP_WORST = 64


def lloyd_partial(x: np.ndarray, centroids: np.ndarray, keep_worst: int = _KEEP_WORST,
                  scratch: _Scratch | None = None) -> LloydPartial:
    """Assignment step of Lloyd's algorithm on one shard: per-cluster sums, counts, inertia.

    ``scratch``: buffers for rows of this shard's size, reused across steps."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = centroids.shape[0]
    n = x.shape[0]
    labels, dists = assign(x, centroids, "l2", scratch)
    # Per-cluster sums as one sparse-times-dense product: O(n d), no loop.
    if scratch is None:
        member = scipy.sparse.csr_matrix((np.ones(n), labels, np.arange(n + 1)), shape=(n, k))
        x64 = x.astype(np.float64, copy=False)
    else:
        member = scratch.membership(labels, n, k)
        x64 = scratch.x64[:n]
        x64[...] = x
    sums = np.asarray(member.T @ x64)  # (k, d) float64: the merge order changes nothing beyond rounding
    r = min(keep_worst, n)
    worst = np.argpartition(dists, n - r)[n - r :] if r else np.empty(0, np.intp)
    return LloydPartial(
        sums=sums,
        counts=np.bincount(labels, minlength=k).astype(np.int64),
        inertia=float(dists.sum(dtype=np.float64)),
        worst=x[worst],
        worst_dists=dists[worst],
    )


def combine_partials(*parts: LloydPartial) -> LloydPartial:
    """Merge shard partials (associative, so they can be reduced as a tree)."""
    worst = np.concatenate([p.worst for p in parts])
    wd = np.concatenate([p.worst_dists for p in parts])
    r = min(max(len(p.worst) for p in parts), len(wd))
    keep = np.argpartition(wd, len(wd) - r)[len(wd) - r :] if r else np.empty(0, np.intp)
    return LloydPartial(
        sums=sum(p.sums for p in parts[1:]) + parts[0].sums,
        counts=sum(p.counts for p in parts[1:]) + parts[0].counts,
        inertia=float(sum(p.inertia for p in parts)),
        worst=worst[keep],
        worst_dists=wd[keep],
    )


def lloyd_update(p: LloydPartial, spherical: bool = False) -> np.ndarray:
    """New centroids from merged partials; empty clusters re-seeded at the worst-served rows."""
    counts = p.counts.astype(np.float64)
    empty = counts == 0
    new = (p.sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)
    if empty.any():
        order = np.argsort(-p.worst_dists)
        e = int(empty.sum())
        seeds = p.worst[order[:e]]
        if len(seeds) < e:  # more empty clusters than kept rows: repeat them (rare)
            seeds = np.resize(seeds, (e, new.shape[1])) if len(seeds) else new[~empty][: 1].repeat(e, 0)
        new[empty] = seeds
    return normalize_rows(new) if spherical else new


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    max_iters: int = 50,
    tol: float = 1e-4,
    seed: int | None = None,
    spherical: bool = False,
    init: str = "auto",
    partials=None,
    chunk_rows: int | None = None,
) -> tuple[np.ndarray, float]:
    """Lloyd's k-means with GEMM distances, incremental over chunks of rows.

    Parameters
    ----------
    x : ndarray, shape (n, d)
        Training rows, ``n >= k``; seeding draws from these.
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
    partials : callable, optional
        ``partials(centroids) -> LloydPartial`` over all training rows. By
        default :func:`lloyd_partial` of ``x`` here; a cluster passes one that
        computes shard partials on the workers and merges them as a tree
        (then every iteration is a full Lloyd step over all rows).
    chunk_rows : int, optional
        Rows per chunk of the incremental passes (default
        ``CHUNK_ROWS_PER_CENTROID * k``); at least two chunks' worth of rows
        switch them on (see :func:`_incremental`).

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
    step = max(chunk_rows or CHUNK_ROWS_PER_CENTROID * k, k)  # a chunk holds at least k rows
    if partials is None and n >= 2 * step:
        return _incremental(x, centroids, step, rng, max_iters=max_iters, tol=tol, spherical=spherical)
    if partials is None:
        scratch = _Scratch(n, d, k, exact=True)

        def partials(c):
            return lloyd_partial(x, c, scratch=scratch)
    return _passes([partials], centroids, max_iters=max_iters, tol=tol, spherical=spherical)


def _passes(steps: list, centroids, *, max_iters, tol, spherical):
    """Lloyd passes over the chunks whose assignment steps are ``steps`` (each
    ``c -> LloydPartial``): once every chunk has a partial, the centroids are
    recomputed from all chunks' latest partials after each chunk. One chunk: full
    Lloyd steps. Stops when a pass changes the summed inertia by at most ``tol``
    relative, or after ``max_iters`` passes."""
    held = [None] * len(steps)
    prev = np.inf
    inertia = np.inf
    for _ in range(max_iters):
        for i, step in enumerate(steps):
            held[i] = step(centroids)
            if all(p is not None for p in held):
                centroids = lloyd_update(combine_partials(*held), spherical)
        inertia = sum(p.inertia for p in held)
        if prev < np.inf and abs(prev - inertia) <= tol * max(prev, 1e-30):
            break
        prev = inertia
    return centroids.astype(np.float32, copy=False), inertia


def _shuffled_chunks(n: int, step: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of ``n // step`` chunks of shuffled rows, each sorted (reads in order)."""
    return [np.sort(part) for part in np.array_split(rng.permutation(n), n // step)]


# Incremental k-means: rows per centroid in one chunk. Measured on GloVe's 50-d
# sample (65,536 unit rows, 256 centroids, mean of 4 seeds, one core; IVF recall
# of the true top-10 at nprobes 5/10/20): full Lloyd to tol 5e-3 0.786/0.883/0.951
# in 0.56 s, to tol 1e-3 0.798/0.892/0.953 in 0.99 s; incremental in 8 chunks
# (32 rows per centroid) to tol 5e-3 0.796/0.890/0.952 in 0.30 s, to 2e-3
# 0.801/0.891/0.953 in 0.38 s. Lance (tol 1e-4): 0.802/0.892/0.953.
CHUNK_ROWS_PER_CENTROID = 32


def _incremental(x, centroids, step, rng, *, max_iters, tol, spherical):
    """Incremental ("cyclic") Lloyd: converge on the first chunk of shuffled rows,
    then pass over all chunks, each chunk's partial replacing its previous one and
    the centroids recomputed from all chunks' partials after every chunk.

    One pass costs one full Lloyd step but moves the centroids once per chunk,
    each time with every row's latest assignment, so it reaches the quality of
    full Lloyd to a tight tolerance in a fraction of the steps (figures at
    :data:`CHUNK_ROWS_PER_CENTROID`). Passes stop when the summed inertia of a
    pass changes by at most ``tol`` relative to the pass before, or after
    ``max_iters`` passes.
    """
    chunks = [x[rows] for rows in _shuffled_chunks(x.shape[0], step, rng)]
    scratch = _Scratch(max(len(c) for c in chunks), x.shape[1], centroids.shape[0], exact=True)
    steps = [functools.partial(lloyd_partial, chunk, scratch=scratch) for chunk in chunks]
    centroids, _ = _passes(steps[:1], centroids, max_iters=max_iters, tol=tol, spherical=spherical)
    return _passes(steps, centroids, max_iters=max_iters, tol=tol, spherical=spherical)


# Rows per chunk of the batched assignment: one member's (rows, k) score block
# of 2 MB stays in cache between the GEMM that writes it and the argmax that
# reads it (the K = sub_dim + 1 GEMMs are bound by writing their output).
_BATCH_CHUNK = 2048


def _batched_rhs(c: np.ndarray) -> np.ndarray:
    """``[c^T; -|c|^2 / 2]`` per member, shape (b, s + 1, k): with a ones column on
    the rows, one GEMM gives ``x.c - |c|^2/2``, whose argmax is the nearest in l2."""
    b, k, s = c.shape
    rhs = np.empty((b, s + 1, k), dtype=np.float32)
    rhs[:, :s] = c.transpose(0, 2, 1)
    rhs[:, s] = -0.5 * np.einsum("bks,bks->bk", c, c)
    return rhs


def _assign_members(x: np.ndarray, rhs: np.ndarray, labels: np.ndarray, top: np.ndarray | None = None,
                    scratch: _Scratch | None = None) -> None:
    """Nearest centroid of every row of every member, into ``labels`` (b, n);
    the best scores ``x.c - |c|^2/2`` into ``top`` when given. Member by member
    in cache-sized chunks with reused buffers: measured 2-3x faster than one
    batched matmul over all members (whose (b, rows, k) blocks leave the cache)."""
    b, n, s = x.shape
    k = rhs.shape[2]
    if scratch is None:
        scratch = _Scratch(max(n, 1), s, k, members=0)
    lhs, scores = scratch.lhs, scratch.scores
    step = len(lhs)
    for j in range(b):
        for start in range(0, n, step):
            m = min(step, n - start)
            lhs[:m, :s] = x[j, start : start + m]
            np.matmul(lhs[:m], rhs[j], out=scores[:m])
            best = labels[j, start : start + m]
            scores[:m].argmax(axis=1, out=best)
            if top is not None:
                top[j, start : start + m] = np.take_along_axis(scores[:m], best[:, None], axis=1)[:, 0]


def assign_batched(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid in l2 for every row of every batch member at once.

    Parameters
    ----------
    x : ndarray, shape (b, n, s), float32
    centroids : ndarray, shape (b, k, s), float32

    Returns
    -------
    labels : ndarray, shape (b, n), int32
    distances : ndarray, shape (b, n), float32, squared L2.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    b, n, _ = x.shape
    labels = np.empty((b, n), dtype=np.intp)
    top = np.empty((b, n), dtype=np.float32)
    _assign_members(x, _batched_rhs(c), labels, top)
    dists = np.einsum("bns,bns->bn", x, x) - 2.0 * top
    np.maximum(dists, 0.0, out=dists)
    return labels.astype(np.int32), dists


def _plusplus_init_batched(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding of every batch member at once (k steps, each vectorised over the batch).

    Each step is one batched GEMV for the distances to the new centres, one
    running sum and a binary search per member: about 0.7 ms for 16 members
    of 4,096 rows, where an einsum and a full comparison pass took 3.6 ms.
    """
    b, n, s = x.shape
    centers = np.empty((b, k, s), dtype=np.float32)
    members = np.arange(b)
    centers[:, 0] = x[members, rng.integers(n, size=b)]
    sq = np.einsum("bns,bns->bn", x, x)
    dot = np.empty((b, n, 1), dtype=np.float32)
    fresh = np.empty((b, n), dtype=np.float32)

    def dist_to(c, out):  # (b, s) -> (b, n) squared distances, into ``out``
        np.matmul(x, c[:, :, None], out=dot)
        np.multiply(dot[..., 0], -2.0, out=out)
        out += sq
        out += np.einsum("bs,bs->b", c, c)[:, None]
        return np.maximum(out, 0.0, out=out)

    closest = dist_to(centers[:, 0], np.empty((b, n), dtype=np.float32))
    cum = np.empty((b, n), dtype=np.float64)
    for i in range(1, k):
        np.cumsum(closest, axis=1, dtype=np.float64, out=cum)
        draw = rng.random(b) * cum[:, -1]
        for j in range(b):  # first row whose running sum passes the draw
            idx = int(np.searchsorted(cum[j], draw[j], side="right")) if cum[j, -1] > 0 else int(rng.integers(n))
            centers[j, i] = x[j, min(idx, n - 1)]
        np.minimum(closest, dist_to(centers[:, i], fresh), out=closest)
    return centers


def kmeans_batched(
    x: np.ndarray,
    k: int,
    *,
    max_iters: int = 50,
    tol: float = 1e-4,
    seed: int | np.random.SeedSequence | None = None,
    chunk_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Independent l2 k-means on every batch member at once (PQ codebooks: one per sub-space).

    Each assignment step is one GEMM per member and cache-sized chunk of rows
    (:func:`_assign_members`) and one sparse product for the new centroids of
    all members; the inertia comes from the sums, not from per-row distances.
    With at least two chunks of ``chunk_rows`` rows (default
    ``CHUNK_ROWS_PER_CENTROID * k``) the steps are incremental, as in
    :func:`kmeans`. Steps stop when every member's relative inertia change is
    at most ``tol``.

    Parameters
    ----------
    x : ndarray, shape (b, n, s)
        ``b`` training sets of ``n`` rows, ``n >= k``.
    k : int
        Centroids per member.

    Returns
    -------
    centroids : ndarray, shape (b, k, s), float32
    inertia : ndarray, shape (b,), float64
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    b, n, s = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least k={k} rows to train on, got {n}")
    rng = np.random.default_rng(seed)
    m = max(16 * k, 4096)
    sub = x if n <= m else x[:, rng.choice(n, m, replace=False)]
    centroids = _plusplus_init_batched(sub, k, rng)

    step = max(chunk_rows or CHUNK_ROWS_PER_CENTROID * k, k)  # a chunk holds at least k rows
    if n < 2 * step:
        return _lloyd_batched([x], centroids, max_iters=max_iters, tol=tol)
    # Incremental, as :func:`_incremental`: converge on the first chunk of
    # shuffled rows, then passes over all chunks.
    chunks = [np.ascontiguousarray(x[:, rows]) for rows in _shuffled_chunks(n, step, rng)]
    centroids, _ = _lloyd_batched(chunks[:1], centroids, max_iters=max_iters, tol=tol)
    return _lloyd_batched(chunks, centroids, max_iters=max_iters, tol=tol)


def _batched_stats(x: np.ndarray, centroids: np.ndarray, sq: np.ndarray, scratch: _Scratch):
    """One assignment step of every member over rows ``x`` (b, n, s), whose squared
    norms per member are ``sq`` (b,): per-cluster sums (b, k, s) float64, counts
    (b, k), inertia (b,) and, for members with an empty cluster, the rows worst
    served by their centroid (b, r, s), to re-seed it."""
    b, n, s = x.shape
    k = centroids.shape[1]
    labels = scratch.labels[:b, :n]
    _assign_members(x, _batched_rhs(centroids), labels, scratch=scratch)
    # Member j's rows are rows j*n..j*n+n-1 of the flattened (b*n, s) array and
    # its centroids rows j*k..j*k+k-1 of the (b*k, s) sums: the transpose of the
    # (b*n, b*k) membership matrix times the rows gives every member's sums at once.
    keys = (labels + (np.arange(b, dtype=np.intp) * k)[:, None]).reshape(-1)
    member = scratch.membership(keys, b * n, b * k)
    sums = np.asarray(member.T @ x.reshape(b * n, s), dtype=np.float64).reshape(b, k, s)
    counts = np.bincount(keys, minlength=b * k).astype(np.float64).reshape(b, k)
    # Inertia from the sums: sum |x - c|^2 = sum |x|^2 - 2 c.S_c + n_c |c|^2 over
    # clusters, so no per-row distance is computed.
    c64 = centroids.astype(np.float64)
    inertia = sq - 2.0 * np.einsum("bks,bks->b", c64, sums) + np.einsum("bk,bk->b", counts, np.einsum("bks,bks->bk", c64, c64))
    r = min(_KEEP_WORST, n)
    worst = np.empty((b, r, s), dtype=np.float32)
    for j in range(b):  # (b, n) distances would cost a pass as large as the GEMMs'
        if counts[j].min() == 0:
            diff = x[j] - centroids[j][labels[j]]
            worst[j] = x[j, np.argpartition(np.einsum("ns,ns->n", diff, diff), n - r)[n - r :]]
    return sums, counts, np.maximum(inertia, 0.0), worst


def _lloyd_batched(chunks: list, centroids: np.ndarray, *, max_iters: int, tol: float):
    """Lloyd over the rows in ``chunks`` (each (b, m, s)). One chunk: full Lloyd
    steps. Several: incremental passes, the centroids recomputed from every
    chunk's latest statistics after each chunk. Stops when every member's
    inertia (summed over a pass) changes by at most ``tol`` relative."""
    b, k, s = centroids.shape
    scratch = _Scratch(max(c.shape[1] for c in chunks), s, k, members=b)
    sqs = [np.einsum("bns,bns->b", c, c, dtype=np.float64) for c in chunks]
    held = [None] * len(chunks)
    prev = np.full(b, np.inf)
    inertia = prev
    for _ in range(max_iters):
        for i, chunk in enumerate(chunks):
            held[i] = _batched_stats(chunk, centroids, sqs[i], scratch)
            if all(h is not None for h in held):
                sums = sum(h[0] for h in held)
                counts = sum(h[1] for h in held)
                new = (sums / np.maximum(counts, 1.0)[..., None]).astype(np.float32)
                empty = counts == 0
                for j in np.flatnonzero(empty.any(axis=1)):  # rare: re-seed at the worst-served rows
                    new[j, empty[j]] = np.resize(held[i][3][j], (int(empty[j].sum()), new.shape[2]))
                centroids = new
        inertia = sum(h[2] for h in held)
        done = np.abs(prev - inertia) <= tol * np.maximum(prev, 1e-30)
        if np.all(done & np.isfinite(prev)):
            break
        prev = inertia
    return centroids.astype(np.float32, copy=False), inertia


def assign_among_neighbours(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray,
                            neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, squared distances)`` of rows ``x``, each row's partition the nearest
    of ``neighbours[labels[row]]`` (its current partition's neighbours, itself among
    them): one small GEMM per current partition."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    k = len(centroids)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    new = np.empty(n, dtype=np.intp)
    score = np.empty(n, dtype=np.float32)
    for j in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[j] : bounds[j + 1]]
        cand = neighbours[j]
        s = x[rows] @ centroids[cand].T
        s -= half[cand]
        w = s.argmax(axis=1)
        new[rows] = cand[w]
        score[rows] = s[np.arange(len(rows)), w]
    dists = np.einsum("ij,ij->i", x, x) - 2.0 * score
    return new, np.maximum(dists, 0.0)
