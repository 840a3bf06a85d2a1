"""Per-row IVF assignment and PQ encoding in NumPy BLAS, as Lance would encode.

This is the hot path of a PQ build: every row is assigned to its IVF partition
and encoded to ``num_sub_vectors`` code bytes here, on the workers; the codes
go into a segment written in Lance's layout (:mod:`.segment_write`) or, for
IVF_HNSW_PQ, to Lance as "precomputed shuffle buffers" (../shared/LANCE_NOTES.md). Rows are processed in chunks, so memory is bounded
by the chunk, not by the number of rows; there is no per-row Python loop.

Encoding follows Lance's semantics per metric (measured, pylance 14.0.2):
cosine rows are normalised first; l2 and cosine encode the residual against
the partition centroid; dot encodes the raw vector. Codes are always the
nearest code word in l2 (Lance's full build does the same; its partial
dot-metric segments do not, which is why the hand-off also fixes dot).
"""

from __future__ import annotations

import numpy as np


__all__ = ["PQEncoder", "PartitionAssigner"]

# Rows per chunk: the (chunk, 256) score matrix of one sub-space stays in cache.
_CHUNK = 2048


def _augmented(c: np.ndarray) -> np.ndarray:
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
    """

    def __init__(self, centroids: np.ndarray, metric: str):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.metric = metric
        # dot: largest inner product; l2 and cosine: nearest, the norms folded into the GEMM.
        self._rhs = np.ascontiguousarray(self.centroids.T) if metric == "dot" else _augmented(self.centroids)
        self._buffers = None

    def buffers(self, chunk: int) -> tuple[np.ndarray, ...]:
        """``(lhs, norms, scores, best)`` for :meth:`assign_chunk`, allocated on first
        use and kept for every later call (see :meth:`PQEncoder.encode` for why)."""
        if self._buffers is None or len(self._buffers[3]) != chunk:
            d, k = self.centroids.shape[1], self.centroids.shape[0]
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
        np.matmul(rows if self.metric == "dot" else lhs[:m], self._rhs, out=scores[:m])
        scores[:m].argmax(axis=1, out=best[:m])
        return rows

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Partition ids (uint32, shape (n,)), chunk by chunk in reused buffers."""
        x = np.asarray(x, dtype=np.float32)
        parts = np.empty(x.shape[0], dtype=np.uint32)
        lhs, norms, scores, best = self.buffers(_CHUNK)
        for start in range(0, x.shape[0], _CHUNK):
            m = min(_CHUNK, x.shape[0] - start)
            lhs[:m, :-1] = x[start : start + m]
            self.assign_chunk(m, lhs, norms, scores, best)
            parts[start : start + m] = best[:m]
        return parts


class PQEncoder:
    """Assign rows to IVF partitions and encode their PQ codes.

    Parameters
    ----------
    centroids : ndarray, shape (num_partitions, d), float32
    codebook : ndarray, shape (num_sub_vectors, 2**num_bits, d // num_sub_vectors), float32
    metric : {"l2", "cosine", "dot"}
    """

    def __init__(self, centroids: np.ndarray, codebook: np.ndarray, metric: str):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.codebook = np.ascontiguousarray(codebook, dtype=np.float32)
        self.metric = metric
        self.num_sub_vectors, self.num_codes, self.sub_dim = self.codebook.shape
        self.dimension = self.centroids.shape[1]
        if self.num_sub_vectors * self.sub_dim != self.dimension:
            raise ValueError("codebook does not match the centroids' dimension")
        self._ivf = PartitionAssigner(self.centroids, metric)
        self._pq_rhs = [_augmented(self.codebook[j]) for j in range(self.num_sub_vectors)]
        self._code_dtype = np.uint8 if self.num_codes <= 256 else np.uint16
        self._buffers = None

    def encode(self, x: np.ndarray, with_loss: bool = False) -> tuple:
        """Partition ids (uint32, shape (n,)) and PQ codes (uint8, shape (n, num_sub_vectors));
        with ``with_loss``, also the rows' summed squared distance to their partition
        centroid (the IVF loss Lance records in a segment).

        Every temporary lives in buffers the encoder allocates once and keeps
        for all its calls: dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``, under
        which each fresh temporary over 128 KB costs an mmap, page faults and a
        munmap (measured: the same encode ran 3.2x slower in a worker until the
        buffers were reused within a call, and 20% slower with that variable set
        until they were kept across calls: 6.0 against 5.0 s per million rows).
        """
        x = np.asarray(x, dtype=np.float32)
        n = x.shape[0]
        parts = np.empty(n, dtype=np.uint32)
        codes = np.empty((n, self.num_sub_vectors), dtype=self._code_dtype)
        d, c = self.dimension, _CHUNK
        lhs, norms, ivf_scores, best = self._ivf.buffers(c)  # rows, then a ones column
        if self._buffers is None:
            self._buffers = (np.ones((c, self.sub_dim + 1), dtype=np.float32), np.empty((c, d), dtype=np.float32),
                             np.empty((c, self.num_codes), dtype=np.float32))
        sub_lhs, resid, pq_scores = self._buffers
        s = self.sub_dim
        loss = 0.0
        for start in range(0, n, c):
            m = min(c, n - start)
            lhs[:m, :d] = x[start : start + m]
            rows = self._ivf.assign_chunk(m, lhs, norms, ivf_scores, best)
            parts[start : start + m] = best[:m]
            r = resid[:m]
            if self.metric == "dot":
                r[...] = rows
            else:
                np.take(self.centroids, best[:m], axis=0, out=r)
                np.subtract(rows, r, out=r)
                if with_loss:
                    loss += float(np.einsum("ij,ij->", r, r))
            for j, rhs in enumerate(self._pq_rhs):
                sub_lhs[:m, :s] = r[:, j * s : (j + 1) * s]
                np.matmul(sub_lhs[:m], rhs, out=pq_scores[:m])
                pq_scores[:m].argmax(axis=1, out=best[:m])
                codes[start : start + m, j] = best[:m]
        return (parts, codes, loss) if with_loss else (parts, codes)
