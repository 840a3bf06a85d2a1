"""The IVF model: centroids trained as Lance trains them, and rows assigned to them.

Training (:func:`train_ivf`) runs k-means (:mod:`.kmeans`) on the prepared
sample: raw vectors for l2, unit vectors for cosine (centroids left
unnormalised, as Lance), spherical k-means for dot. Assignment
(:class:`PartitionAssigner`) is the hot path of every build: each row's
nearest centroid by one GEMM per chunk of rows, the centroid norms folded into
the GEMM, in buffers kept across calls; no per-row Python loop.
"""

from __future__ import annotations

import copy

import numpy as np

from .coarse import CoarseIndex
from .hamming import train_kmodes
from .kmeans import assign, kmeans, normalize_rows

__all__ = ["AUDIT_STRIDE", "CHUNK", "FlatEncoder", "PartitionAssigner", "augmented", "prepare_vectors", "residuals", "train_ivf"]

# Rows per chunk: the (chunk, 256) score matrix of one PQ sub-space stays in cache.
CHUNK = 2048
# A two-level model's assignment is checked against exact assignment on every
# AUDIT_STRIDE-th row the build assigns (8 of every chunk): the agreement on the
# build's own rows, not only on the sampled rows the probes were chosen on.
# Costs 8 x num_partitions x d per chunk: measured on 262k 128-d rows at 4,096
# partitions, 8 probes, one thread, 0.87-0.93 CPU s with it against 0.85-0.89 s
# without (about 3%, within the runs' spread).
AUDIT_STRIDE = 256


def augmented(c: np.ndarray) -> np.ndarray:
    """``[c^T; -|c|^2 / 2]``: with a ones column on the rows, one GEMM gives
    ``x.c - |c|^2/2``, whose argmax is the nearest centroid in l2."""
    c = np.asarray(c, dtype=np.float32)
    rhs = np.empty((c.shape[1] + 1, c.shape[0]), dtype=np.float32)
    rhs[:-1] = c.T
    rhs[-1] = -0.5 * np.einsum("ij,ij->i", c, c)
    return rhs


class PartitionAssigner:
    """Assign rows to IVF partitions as Lance does: cosine rows are normalised,
    then l2 and cosine take the nearest centroid and dot the largest inner product.

    For the index types Lance takes no precomputed codes for (IVF_FLAT, IVF_SQ,
    IVF_RQ, the HNSW types): Lance then only encodes, reading each row's
    partition from the map these ids make.

    With ``coarse`` (a two-level model, l2 and cosine), each row's partition is
    searched among the partitions of its ``coarse.probes`` nearest coarse groups
    only (:class:`.coarse.RestrictedAssigner`), and every :data:`AUDIT_STRIDE`-th
    row also exactly: ``checked`` rows so far, of which ``agreed`` got their exact
    nearest partition.
    """

    def __init__(self, centroids: np.ndarray, metric: str, coarse: CoarseIndex | None = None):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.metric = metric
        self._restricted = coarse.assigner(self.centroids) if coarse is not None and metric != "dot" else None
        self.checked = self.agreed = 0
        # the audit's exact scores are rows @ centroids.T - |c|^2/2 (no transposed copy of the centroids)
        self._half_norms = (None if self._restricted is None
                            else 0.5 * np.einsum("ij,ij->i", self.centroids, self.centroids))
        # dot: largest inner product; l2 and cosine: nearest, the norms folded into the GEMM.
        if self._restricted is not None:
            self._rhs = None
        elif metric == "dot":
            self._rhs = np.ascontiguousarray(self.centroids.T)
        else:
            self._rhs = augmented(self.centroids)
        self._buffers = None

    def spawn(self) -> PartitionAssigner:
        """This assigner for another thread: the same model, its own buffers and audit
        counts (added back by :meth:`absorb`)."""
        other = copy.copy(self)
        other._buffers = None
        other.checked = other.agreed = 0
        return other

    def absorb(self, other: PartitionAssigner) -> None:
        """Count ``other``'s (a :meth:`spawn`'s) audited rows as this one's."""
        self.checked += other.checked
        self.agreed += other.agreed

    def buffers(self, chunk: int) -> tuple[np.ndarray, ...]:
        """``(lhs, norms, scores, best)`` for :meth:`assign_chunk`, allocated on first
        use and kept for every later call (see :meth:`.pq.PQEncoder.encode` for why)."""
        if self._buffers is None or len(self._buffers[3]) != chunk:
            d, k = self.centroids.shape[1], self.centroids.shape[0]
            k = 1 if self._restricted is not None else k  # the restricted search keeps no full score table
            self._buffers = (np.ones((chunk, d + 1), dtype=np.float32), np.empty((chunk, 1), dtype=np.float32),
                             np.empty((chunk, k), dtype=np.float32), np.empty(chunk, dtype=np.intp))
        return self._buffers

    def assign_chunk(self, m: int, lhs, norms, scores, best) -> np.ndarray:
        """Assign the ``m`` rows in ``lhs[:m, :-1]`` (normalised there first for cosine):
        partition ids into ``best[:m]``. Returns the rows as prepared."""
        rows = lhs[:m, :-1]
        if self.metric == "cosine":
            np.sqrt(np.einsum("ij,ij->i", rows, rows)[:, None], out=norms[:m])
            norms[:m][norms[:m] == 0] = 1.0
            rows /= norms[:m]
        if self._restricted is not None:
            self._restricted.assign_lhs(lhs[:m], best[:m])
            self._audit(rows[::AUDIT_STRIDE], best[:m:AUDIT_STRIDE])
            return rows
        np.matmul(rows if self.metric == "dot" else lhs[:m], self._rhs, out=scores[:m])
        scores[:m].argmax(axis=1, out=best[:m])
        return rows

    def _audit(self, rows: np.ndarray, best: np.ndarray) -> None:
        """Count how many of ``rows`` were given (``best``) their exact nearest partition."""
        exact = (rows @ self.centroids.T - self._half_norms).argmax(axis=1)
        self.checked += len(exact)
        self.agreed += int((exact == best).sum())

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Partition ids (uint32, shape (n,)), chunk by chunk in reused buffers."""
        x = np.asarray(x, dtype=np.float32)
        parts = np.empty(x.shape[0], dtype=np.uint32)
        lhs, norms, scores, best = self.buffers(CHUNK)
        for start in range(0, x.shape[0], CHUNK):
            m = min(CHUNK, x.shape[0] - start)
            lhs[:m, :-1] = x[start : start + m]
            self.assign_chunk(m, lhs, norms, scores, best)
            parts[start : start + m] = best[:m]
        return parts


def prepare_vectors(x: np.ndarray, metric: str) -> np.ndarray:
    """The space Lance's IVF model lives in: unit vectors for cosine, bit-packed
    uint8 rows for hamming, raw otherwise."""
    if metric == "hamming":
        return np.asarray(x).astype(np.uint8)
    return normalize_rows(x) if metric == "cosine" else np.asarray(x, dtype=np.float32)


def residuals(x: np.ndarray, centroids: np.ndarray, metric: str, coarse: CoarseIndex | None = None) -> np.ndarray:
    """What Lance's PQ encodes: ``x - centroid(x)`` for l2 and cosine (on unit
    vectors), the raw vectors for dot (Lance uses no residual for dot).

    With ``coarse`` (a two-level model), each row's partition is the one the
    build will give it, searched among its nearest groups' partitions: the
    codebook learns the residuals it will encode, and the rows are not compared
    with every centroid (65,536 rows against 16,384 centroids took 1.9 s exactly).
    """
    if metric == "dot":
        return np.asarray(x, dtype=np.float32)
    if coarse is not None:
        labels = PartitionAssigner(centroids, "l2", coarse).assign(x)  # x is prepared: l2 for cosine too
    else:
        labels, _ = assign(x, centroids, "l2")
    return x - centroids[labels]


def train_ivf(
    x: np.ndarray,
    num_partitions: int,
    metric: str,
    *,
    max_iters: int,
    seed,
    tol: float = 1e-3,
    partials=None,
) -> tuple[np.ndarray, float]:
    """IVF centroids of prepared vectors ``x`` (:func:`prepare_vectors`), trained as
    Lance trains them; returns ``(centroids, inertia)``.

    l2: k-means. cosine: k-means in l2 on unit vectors, centroids left
    unnormalised. dot: spherical k-means (unit centroids, so the nearest in l2
    is the one of largest inner product, which is how Lance assigns for dot),
    best of 3 restarts: with rows of varied norms it has more poor local optima
    (measured on the test data, IVF recall at nprobes 6 of 16 over 8 seeds:
    0.968-0.997 with one start, 0.981-0.995 with three).

    ``partials``: computes one Lloyd pass's sums elsewhere (the rows spread
    over a cluster, :func:`dask_lance_index.train.train.cluster_partials`);
    None runs the passes here.
    """
    if metric == "hamming":  # k-modes on the bits, as Lance; Lance takes the centroids as floats
        centroids, loss = train_kmodes(x, num_partitions, max_iters=max_iters, seed=seed, tol=tol)
        return centroids.astype(np.float32), loss
    if metric != "dot":
        return kmeans(x, num_partitions, max_iters=max_iters, tol=tol, seed=seed, partials=partials)
    seeds = (seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)).spawn(3)
    runs = [
        kmeans(x, num_partitions, max_iters=max_iters, tol=tol, seed=s, spherical=True, partials=partials)
        for s in seeds
    ]
    return min(runs, key=lambda run: run[1])


class FlatEncoder:
    """Assign rows to IVF partitions; the "codes" of IVF_FLAT are the rows as Lance stores
    them (unit vectors for cosine, raw otherwise)."""

    def __init__(self, centroids: np.ndarray, metric: str, coarse: CoarseIndex | None = None):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.metric = metric
        self.assigner = PartitionAssigner(self.centroids, metric, coarse)

    def spawn(self) -> FlatEncoder:
        """This encoder for another thread: the same model, its own assigner
        (:meth:`PartitionAssigner.spawn`)."""
        other = copy.copy(self)
        other.assigner = self.assigner.spawn()
        return other

    def encode(self, x: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Partition ids (uint32), the stored rows (float32) and the IVF loss.

        ``out``: an ``(n, d)`` float32 array the stored rows are written into (a
        slice of the build task's own array: the rows are not copied twice).
        """
        x = np.asarray(x, dtype=np.float32)
        n, d = x.shape
        parts = np.empty(n, dtype=np.uint32)
        rows = np.empty((n, d), dtype=np.float32) if out is None else out
        lhs, norms, scores, best = self.assigner.buffers(CHUNK)
        # l2 and cosine, exact search: the GEMM's best score is x.c - |c|^2/2, so the
        # squared distance is |x|^2 - 2 * score, with no residual rows made.
        from_scores = self.metric != "dot" and scores.shape[1] == len(self.centroids)
        loss = 0.0
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            lhs[:m, :d] = x[start : start + m]
            prepared = self.assigner.assign_chunk(m, lhs, norms, scores, best)
            parts[start : start + m] = best[:m]
            rows[start : start + m] = prepared
            if from_scores:
                top = np.take_along_axis(scores[:m], best[:m, None], axis=1)
                sq_norms = np.einsum("ij,ij->i", prepared, prepared)
                loss += float(sq_norms.sum(dtype=np.float64)) - 2 * float(top.sum(dtype=np.float64))
            else:
                r = prepared - self.centroids[best[:m]]
                loss += float(np.einsum("ij,ij->", r, r))
        return parts, rows, loss
