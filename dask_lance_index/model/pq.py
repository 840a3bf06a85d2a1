"""The PQ model: a codebook per sub-space of the residuals, and rows encoded with it.

Training (:func:`train_pq`) runs k-means per sub-space, :data:`PQ_GROUP`
sub-spaces at a time (:func:`.kmeans.kmeans_batched`: one sparse product for
the centroid updates of a whole group); the groups are independent, so whoever
calls may run them side by side (``map_groups``). Encoding (:class:`PQEncoder`)
is the hot path of a PQ build: every row assigned to its IVF partition and
encoded to ``num_sub_vectors`` code bytes with one small GEMM per sub-space and
chunk of rows; no per-row Python loop.

Encoding follows Lance's semantics per metric (pylance 14.0.2, ``docs/lance.md``):
cosine rows are normalised first; l2 and cosine encode the residual against the
partition centroid; dot encodes the raw vector. Codes are always the nearest
code word in l2 (Lance's full build does the same; its partial dot-metric
segments do not).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np

from .coarse import CoarseIndex
from .ivf import CHUNK, PartitionAssigner, augmented
from .kmeans import kmeans_batched

__all__ = ["PQ_GROUP", "PQEncoder", "pq_groups", "stack_subspaces", "train_pq", "train_pq_group"]

# Sub-spaces per PQ training group. Codebooks of different sub-spaces are
# independent: on a cluster the groups train in parallel tasks (the other
# workers idle during training otherwise), and each group draws from its own
# seed, so the codebook does not depend on how many workers there are.
PQ_GROUP = 4


def pq_groups(num_sub_vectors: int) -> list[slice]:
    """The sub-spaces that train together, :data:`PQ_GROUP` at a time."""
    return [slice(a, min(a + PQ_GROUP, num_sub_vectors)) for a in range(0, num_sub_vectors, PQ_GROUP)]


def stack_subspaces(r: np.ndarray, num_sub_vectors: int) -> np.ndarray:
    """``(n, d)`` rows as ``(num_sub_vectors, n, d // num_sub_vectors)``: sub-space j's columns as member j."""
    n, d = r.shape
    sub = d // num_sub_vectors
    return np.ascontiguousarray(np.asarray(r, dtype=np.float32).reshape(n, num_sub_vectors, sub).transpose(1, 0, 2))


def train_pq_group(stacked: np.ndarray, k: int, *, seed, max_iters: int, tol: float) -> np.ndarray:
    """The codebooks ``(members, k, sub_dim)`` of one group of stacked sub-spaces."""
    return kmeans_batched(stacked, k, seed=seed, max_iters=max_iters, tol=tol)[0]


def _in_turn(fn: Callable, items: Sequence) -> list:
    return [fn(*item) for item in items]


def train_pq(
    r: np.ndarray,
    num_sub_vectors: int,
    num_bits: int,
    *,
    max_iters: int,
    seed,
    tol: float = 1e-3,
    map_groups: Callable[[Callable, Sequence], list] | None = None,
) -> np.ndarray:
    """PQ codebook of shape ``(num_sub_vectors, 2**num_bits, d // num_sub_vectors)`` from residuals ``r``.

    ``map_groups(fn, items)`` returns ``[fn(*item) for item in items]`` however
    it likes (threads, cluster tasks); each item is ``(stacked group, k, seed)``
    and the result does not depend on the order or place they run in.
    """
    stacked = stack_subspaces(r, num_sub_vectors)
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    groups = pq_groups(num_sub_vectors)
    items = [(stacked[g], 2**num_bits, s) for g, s in zip(groups, seq.spawn(len(groups)))]

    def one(group, k, group_seed):
        return train_pq_group(group, k, seed=group_seed, max_iters=max_iters, tol=tol)

    return np.concatenate((map_groups or _in_turn)(one, items))


class PQEncoder:
    """Assign rows to IVF partitions and encode their PQ codes.

    Parameters
    ----------
    centroids : ndarray, shape (num_partitions, d), float32
    codebook : ndarray, shape (num_sub_vectors, 2**num_bits, d // num_sub_vectors), float32
    metric : {"l2", "cosine", "dot"}
    coarse : CoarseIndex, optional
        A two-level model's grouping: partitions searched among the nearest
        groups' only (:class:`.ivf.PartitionAssigner`).
    """

    def __init__(self, centroids: np.ndarray, codebook: np.ndarray, metric: str, coarse: CoarseIndex | None = None):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.codebook = np.ascontiguousarray(codebook, dtype=np.float32)
        self.metric = metric
        self.num_sub_vectors, self.num_codes, self.sub_dim = self.codebook.shape
        self.dimension = self.centroids.shape[1]
        if self.num_sub_vectors * self.sub_dim != self.dimension:
            raise ValueError("codebook does not match the centroids' dimension")
        self.assigner = PartitionAssigner(self.centroids, metric, coarse)
        self._pq_rhs = [augmented(self.codebook[j]) for j in range(self.num_sub_vectors)]
        self._code_dtype = np.uint8 if self.num_codes <= 256 else np.uint16
        self._buffers = None

    def spawn(self) -> PQEncoder:
        """This encoder for another thread: the same model, its own buffers and assigner
        (:meth:`.ivf.PartitionAssigner.spawn`)."""
        other = copy.copy(self)
        other._buffers = None
        other.assigner = self.assigner.spawn()
        return other

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
        d, c = self.dimension, CHUNK
        lhs, norms, ivf_scores, best = self.assigner.buffers(c)  # rows, then a ones column
        if self._buffers is None:
            self._buffers = (np.ones((c, self.sub_dim + 1), dtype=np.float32), np.empty((c, d), dtype=np.float32),
                             np.empty((c, self.num_codes), dtype=np.float32))
        sub_lhs, resid, pq_scores = self._buffers
        s = self.sub_dim
        loss = 0.0
        for start in range(0, n, c):
            m = min(c, n - start)
            lhs[:m, :d] = x[start : start + m]
            rows = self.assigner.assign_chunk(m, lhs, norms, ivf_scores, best)
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
