"""Two-level IVF: partitions grouped under coarse centroids, trained and searched through them.

Flat k-means costs ``passes x rows x num_partitions x dim``, and Lance's sample
rule (256 rows per centroid) makes the rows grow with ``num_partitions`` too:
training grows with its square. :func:`train_ivf_hierarchical` trains
``k1 = sqrt(num_partitions)`` coarse centroids on a small sample, routes the
sample to them, gives each coarse group a share of the partitions in proportion
to its rows (balanced partitions), trains each group's partitions on that
group's rows alone (independent: ``map_groups`` may run them side by side), and
then moves all partitions together for a few Lloyd passes: the first assigns
each row among the partitions of its ``probes`` nearest groups, the later ones
among the nearest neighbours of the partition the pass before gave it.

:class:`CoarseIndex` is that grouping; it also makes assignment scale: a row's
partition is searched among the children of its nearest groups
(``k1 + probes x num_partitions / k1`` centroids instead of all), whose
agreement with exact assignment :func:`assignment_agreement` measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .kmeans import assign, kmeans, smallest_first
from .sample_rows import LocalRows, SampleRows

__all__ = [
    "DEFAULT_PROBES",
    "NEIGHBOURS_MIN_RATIO",
    "NEIGHBOUR_PROBES",
    "PROBE_LADDER",
    "REFINE_NEIGHBOURS",
    "REFINE_PASSES",
    "REFINE_PROBES",
    "TARGET_AGREEMENT",
    "CoarseIndex",
    "RestrictedAssigner",
    "allocate_centroids",
    "assignment_agreement",
    "choose_probes",
    "coarse_size",
    "default_refine_neighbours",
    "partition_neighbours",
    "train_ivf_hierarchical",
]

# Coarse groups searched per row while training, and by a CoarseIndex made without a
# choice: agreement with exact assignment at 4,096 partitions (64 groups) 0.989 with
# 4 probes and 0.998 with 8 on the synthetic 1M-row set, 0.986 with 8 on GloVe.
DEFAULT_PROBES = 8
# What a build asks of coarse-to-fine assignment: this share of rows in their exact
# nearest partition, with the fewest probes on the ladder that gets it. Measured on
# GloVe (4,096 partitions, 64 groups): 8 probes 0.986, 12 0.995, 16 0.998; on 128-d
# clustered data 8 probes 0.998, at 16,384 partitions 0.9987 (docs/benchmarks.md).
TARGET_AGREEMENT = 0.995
# Seeding of each group's partitions: rows drawn at random, so partitions follow the
# rows' density. k-means++ spreads them out instead and leaves dense clusters under
# few partitions: at 4,096 partitions on 1M clustered rows the rows a query reads
# per probe (sum of squared partition sizes over the rows) were 460 with k-means++
# seeding, 353 with random seeding, 304 for flat k-means (docs/benchmarks.md).
GROUP_INIT = "random"
PROBE_LADDER = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
# Most refinement passes when none are asked for. Each is a restricted pass over
# every sampled row (most of two-level training's time: 4 passes were 31 of 37 s
# at 4,096 partitions on 1M rows); on GloVe at 4,096 partitions 3 passes gave the
# IVF recall that passes to the tolerance gave (0.707/0.798/0.900 against
# 0.705/0.798/0.897 at nprobes 10/20/50) in 3.3 s against 4.3 s.
REFINE_PASSES = 3
# Groups searched per row by the refinement passes. Training moves centroids by
# sums over many rows, so it tolerates the few rows a narrower search misplaces:
# on GloVe at 4,096 partitions (64 rows per centroid, 3 seeds) 4 probes gave IVF
# recall 0.704/0.794/0.895 at nprobes 10/20/50 against 0.703/0.795/0.897 with 8,
# at half the cost of a pass. Assignment at build time chooses its own probes.
REFINE_PROBES = 4
# Partitions a row may move to in the refinement passes after the first: the nearest
# ones to the partition the previous pass gave it (itself included). The first pass
# searches its probes' groups; after it a row moves, if at all, to a neighbour of its
# partition. Measured at 16,384 partitions on 4M 128-d rows (2-worker LocalCluster,
# interleaved): training 16.8-17.4 s with this against 19.8-19.9 s with every pass
# searching 4 groups; on its 1M-row sample in one process 13.6 s against 15.4 s,
# partition recall equal. At 4,096 partitions it saved no measurable time
# (1M-row builds on the synchronous scheduler 10.5-12.4 s either way) and recall@10 of
# IVF_PQ was 0.003-0.007 lower over 3 seeds, so it is used only where a pass of probes
# searches NEIGHBOURS_MIN_RATIO times as many centroids: from about 12,000 partitions
# on (docs/benchmarks.md).
REFINE_NEIGHBOURS = 32
NEIGHBOURS_MIN_RATIO = 16
# Groups whose partitions are searched for a partition's neighbours. On GloVe at
# 4,096 partitions (64 groups; 3 seeds) IVF recall at nprobes 10/20/50 was
# 0.700/0.791/0.891 with every pass searching its groups, 0.695/0.788/0.890 with
# neighbours found in 4 groups, 0.697/0.790/0.890 in 16. At 16,384 partitions 16
# groups cost 9 GFLOP per pass against 168 for a pass of 4 probes.
NEIGHBOUR_PROBES = 16


def coarse_size(num_partitions: int) -> int:
    """Coarse groups for ``num_partitions`` partitions: about its square root, so both
    levels cost the same per row."""
    return max(1, int(round(np.sqrt(num_partitions))))


def allocate_centroids(counts: Sequence[int], k: int) -> np.ndarray:
    """Partitions per group, in proportion to the group's rows (so partitions come out
    about equally full), at least one per non-empty group and at most its rows,
    summing to ``k``. Pure."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() < k:
        raise ValueError(f"{int(counts.sum())} rows cannot make {k} partitions")
    exact = counts / counts.sum() * k
    out = np.minimum(np.maximum(np.floor(exact).astype(np.int64), (counts > 0).astype(np.int64)), counts)
    short = k - int(out.sum())
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    while short > 0:  # largest remainders first, where rows allow
        for g in order:
            if short == 0:
                break
            if out[g] < counts[g]:
                out[g] += 1
                short -= 1
    while short < 0:  # more groups than partitions would fit: take from the largest shares
        g = int(np.argmax(out - (counts > 0)))
        out[g] -= 1
        short += 1
    return out


def _augmented(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float32)
    rhs = np.empty((c.shape[1] + 1, c.shape[0]), dtype=np.float32)
    rhs[:-1] = c.T
    rhs[-1] = -0.5 * np.einsum("ij,ij->i", c, c)
    return rhs


@dataclass(frozen=True, eq=False)
class CoarseIndex:
    """The partitions grouped under coarse centroids.

    Attributes
    ----------
    coarse : ndarray, shape (k1, d), float32
        Where each group lies: rows are routed to their nearest groups by these.
    groups : ndarray, shape (num_partitions,), int32
        The group of each partition.
    probes : int
        Groups a row's partition is searched in (:func:`choose_probes` picks it).
    """

    coarse: np.ndarray
    groups: np.ndarray
    probes: int = DEFAULT_PROBES

    @property
    def num_groups(self) -> int:
        return len(self.coarse)

    def assigner(self, centroids: np.ndarray, probes: int | None = None) -> RestrictedAssigner:
        """Assignment among the partitions of each row's ``probes`` (default: this
        index's) nearest groups."""
        return RestrictedAssigner(self, centroids, self.probes if probes is None else probes)

    def with_probes(self, probes: int) -> CoarseIndex:
        return CoarseIndex(self.coarse, self.groups, int(probes))

    def members(self) -> list[np.ndarray]:
        """The partition ids of each group, ascending."""
        order = np.argsort(self.groups, kind="stable")
        bounds = np.searchsorted(self.groups[order], np.arange(self.num_groups + 1))
        return [order[bounds[g] : bounds[g + 1]] for g in range(self.num_groups)]

    def with_coarse_from(self, centroids: np.ndarray) -> CoarseIndex:
        """The same grouping, each group's coarse centroid the mean of its partitions'."""
        k1 = self.num_groups
        counts = np.bincount(self.groups, minlength=k1).astype(np.float64)
        sums = np.zeros((k1, centroids.shape[1]), np.float64)
        np.add.at(sums, self.groups, centroids)
        coarse = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], self.coarse)
        return CoarseIndex(coarse.astype(np.float32), self.groups, self.probes)


class RestrictedAssigner:
    """Nearest partition among the children of a row's ``probes`` nearest groups (l2).

    Per chunk of rows: one GEMM against the coarse centroids, then, group by group,
    one GEMM of the rows that probe that group against its partitions. The
    per-group right-hand sides are built once.
    """

    def __init__(self, index: CoarseIndex, centroids: np.ndarray, probes: int = DEFAULT_PROBES):
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.probes = max(1, min(int(probes), index.num_groups))
        self._coarse_rhs = _augmented(index.coarse)
        self._ids = index.members()
        self._rhs = [_augmented(centroids[ids]) for ids in self._ids]

    def assign_lhs(self, lhs: np.ndarray, best: np.ndarray, score: np.ndarray | None = None) -> None:
        """Partition ids of the rows ``lhs[:, :-1]`` (``lhs``'s last column all ones) into
        ``best``; with ``score``, also their ``x.c - |c|^2/2``."""
        m = lhs.shape[0]
        p = self.probes
        groups = len(self._rhs)
        cs = lhs @ self._coarse_rhs
        top = np.argpartition(-cs, p - 1, axis=1)[:, :p] if p < groups else np.broadcast_to(np.arange(groups), (m, p))
        pair_group = np.ascontiguousarray(top).reshape(-1)
        order = np.argsort(pair_group, kind="stable")
        bounds = np.searchsorted(pair_group[order], np.arange(groups + 1))
        pair_score = np.full(m * p, -np.inf, dtype=np.float32)
        pair_label = np.zeros(m * p, dtype=np.intp)
        for g in range(groups):
            a, b = bounds[g], bounds[g + 1]
            if a == b or not len(self._ids[g]):
                continue
            pairs = order[a:b]
            s = lhs[pairs // p] @ self._rhs[g]
            j = s.argmax(axis=1)
            pair_score[pairs] = s[np.arange(len(pairs)), j]
            pair_label[pairs] = self._ids[g][j]
        pair_score = pair_score.reshape(m, p)
        w = pair_score.argmax(axis=1)
        best[:m] = pair_label.reshape(m, p)[np.arange(m), w]
        if score is not None:
            score[:m] = pair_score[np.arange(m), w]

    def assign(self, x: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, squared distances)`` of rows ``x``, chunk by chunk."""
        x = np.asarray(x, dtype=np.float32)
        n, d = x.shape
        labels = np.empty(n, dtype=np.intp)
        score = np.empty(n, dtype=np.float32)
        lhs = np.ones((min(chunk, max(n, 1)), d + 1), dtype=np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            lhs[:m, :d] = x[s : s + m]
            self.assign_lhs(lhs[:m], labels[s : s + m], score[s : s + m])
        dists = np.einsum("ij,ij->i", x, x) - 2.0 * score
        return labels, np.maximum(dists, 0.0)


def assignment_agreement(x: np.ndarray, centroids: np.ndarray, index: CoarseIndex,
                         probes: int | None = None, exact: np.ndarray | None = None) -> float:
    """The share of rows ``x`` whose restricted assignment (``probes`` groups, default
    the index's) is their exact nearest partition (``exact``: those, if known)."""
    if not len(x):
        return 1.0
    restricted, _ = index.assigner(centroids, probes).assign(x)
    exact = assign(x, centroids, "l2")[0] if exact is None else exact
    return float(np.mean(restricted == exact))


def choose_probes(x: np.ndarray, centroids: np.ndarray, index: CoarseIndex,
                  target: float = TARGET_AGREEMENT, ladder: Sequence[int] = PROBE_LADDER) -> tuple[int | None, float]:
    """The fewest probes on ``ladder`` whose assignment of rows ``x`` agrees with
    exact assignment on at least ``target`` of them: ``(probes, agreement)``, or
    ``(None, agreement at the last rung)`` when none does before a rung would search
    half the groups, where exact assignment costs less (then assign exactly)."""
    exact, _ = assign(x, centroids, "l2")
    agreement = 1.0
    for p in ladder:
        if 2 * p > index.num_groups:
            break
        agreement = assignment_agreement(x, centroids, index, p, exact)
        if agreement >= target:
            return p, agreement
    return None, agreement


def train_ivf_hierarchical(
    x: np.ndarray | SampleRows,
    num_partitions: int,
    *,
    max_iters: int,
    seed,
    tol: float = 1e-3,
    coarse_rows_per_centroid: int = 256,
    refine_passes: int | None = None,
    probes: int = REFINE_PROBES,
    refine_neighbours: int | None = None,
    map_groups: Callable[[Callable, Sequence], list] | None = None,
) -> tuple[np.ndarray, float, CoarseIndex]:
    """IVF centroids of prepared vectors ``x`` (l2; cosine on unit vectors) by two-level
    k-means; returns ``(centroids, inertia, coarse index)``.

    ``x`` is an array or a :class:`~dask_lance_index.model.sample_rows.SampleRows`
    (the sample in pieces, which need never meet: only the coarse level's
    ``coarse_size x coarse_rows_per_centroid`` rows, one bucket of groups' rows at a
    time, and ``(num_partitions, d)`` sums travel).

    The refinement runs ``refine_passes`` restricted Lloyd passes, or (``None``,
    the default) until the inertia improves by less than ``tol`` from one pass
    to the next, at most :data:`REFINE_PASSES`: on clustered data 2 passes left
    the inertia 2-4 % above flat k-means' (``tests/test_coarse.py``). The passes
    after the first search the ``refine_neighbours`` nearest partitions of each
    row's partition (0: its ``probes`` groups, as the first; ``None``, the default:
    :func:`default_refine_neighbours`).

    ``map_groups(fn, items)`` runs an array's second-level groups (``fn(*item)``
    each, independent of each other and of the order) however it likes; by
    default one after another. The partitions come out grouped: group ``g``'s
    are contiguous.
    """
    rows = x if isinstance(x, SampleRows) else LocalRows([x], map_groups=map_groups)
    n = rows.num_rows
    k1 = min(coarse_size(num_partitions), n)
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    s1, s2 = seq.spawn(2)
    sub = rows.sample(k1 * coarse_rows_per_centroid, np.random.default_rng(s1))
    coarse, _ = kmeans(sub, k1, max_iters=max_iters, tol=tol, seed=s1)
    del sub
    counts = rows.route(coarse)
    shares = allocate_centroids(counts, num_partitions)
    live = [g for g in range(k1) if shares[g] > 0]
    group_seeds = s2.spawn(k1)
    parts = rows.train_groups(_GroupKMeans(max_iters, tol, GROUP_INIT), [(g, int(shares[g]), group_seeds[g]) for g in live])
    centroids = np.concatenate(parts).astype(np.float32, copy=False)
    groups = np.repeat(np.arange(k1, dtype=np.int32)[live], shares[live])
    index = CoarseIndex(coarse.astype(np.float32), groups)
    passes = min(max_iters, REFINE_PASSES) if refine_passes is None else refine_passes
    if refine_neighbours is None:
        refine_neighbours = default_refine_neighbours(num_partitions, index.num_groups, probes)
    try:
        return _refine(rows, centroids, index, probes, refine_neighbours, passes=passes,
                       tol=tol if refine_passes is None else 0.0)
    finally:
        rows.release()


@dataclass(frozen=True)
class _GroupKMeans:
    """One group's partitions from its rows (picklable: it may run on another worker)."""

    max_iters: int
    tol: float
    init: str

    def __call__(self, rows: np.ndarray, k: int, seed) -> np.ndarray:
        return kmeans(rows, k, max_iters=self.max_iters, tol=self.tol, seed=seed, init=self.init)[0]


def default_refine_neighbours(num_partitions: int, num_groups: int, probes: int = REFINE_PROBES) -> int:
    """:data:`REFINE_NEIGHBOURS` where a pass searching ``probes`` groups compares a row
    with at least :data:`NEIGHBOURS_MIN_RATIO` times as many centroids, else 0 (every
    pass searches its groups). Pure."""
    searched = num_groups + probes * -(-num_partitions // max(num_groups, 1))
    return REFINE_NEIGHBOURS if searched >= NEIGHBOURS_MIN_RATIO * REFINE_NEIGHBOURS else 0


def _refine(rows: SampleRows, centroids: np.ndarray, index: CoarseIndex, probes: int, neighbours_count: int, *,
            passes: int, tol: float) -> tuple[np.ndarray, float, CoarseIndex]:
    """Lloyd passes over all partitions together; the coarse centroids follow their
    partitions after every pass.

    The first pass assigns each row among its ``probes`` nearest groups'
    partitions; every later one, with ``neighbours_count``, among that many nearest
    partitions of the one the pass before gave it (:func:`partition_neighbours`):
    32 of the 640 centroids a pass of 4 probes searches at 16,384 partitions.
    Full passes, not the chunked passes flat k-means makes: measured at 4,096 partitions, chunking cost
    1.6x the time per pass (an assigner rebuilt per chunk, smaller GEMMs) for the
    same inertia and partition recall. A partition that loses all its rows keeps
    its place (re-seeding it elsewhere would take it out of its group). Stops after
    ``passes`` passes, or when a pass improves the inertia by at most ``tol``
    relative.
    """
    centroids = centroids.copy()
    index = index.with_coarse_from(centroids)
    prev = inertia = float("nan")
    neighbours = None
    for done in range(passes):
        if done and neighbours_count:
            neighbours = partition_neighbours(centroids, index, neighbours_count)
        sums, counts, inertia = rows.refine_partials(centroids, index, probes, neighbours)
        full = counts > 0
        centroids[full] = (sums[full] / counts[full, None]).astype(np.float32)
        index = index.with_coarse_from(centroids)
        if np.isfinite(prev) and prev - inertia <= tol * prev:
            break
        prev = inertia
    return centroids, inertia, index


def partition_neighbours(centroids: np.ndarray, index: CoarseIndex, count: int,
                         probes: int | None = None) -> np.ndarray:
    """The ``count`` nearest partitions of every partition, itself first:
    ``(num_partitions, min(count, num_partitions))`` int32 (fewer candidates than
    that in its groups: the nearest repeated). Searched among the partitions of the ``probes`` groups nearest to
    the partition's own group, one GEMM per group: ``num_partitions x probes x
    num_partitions / k1`` products, not ``num_partitions ** 2``. By default
    :data:`NEIGHBOUR_PROBES` groups, or enough to hold 8 x ``count`` candidates."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    k = len(centroids)
    count = max(1, min(int(count), k))
    k1 = index.num_groups
    if probes is None:
        probes = max(NEIGHBOUR_PROBES, -(-8 * count * k1 // k))
    members = index.members()
    coarse = index.coarse
    near = _best_first(coarse @ coarse.T - 0.5 * np.einsum("ij,ij->i", coarse, coarse), min(max(1, probes), k1))
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty((k, count), np.int32)
    for g, mine in enumerate(members):
        if not len(mine):
            continue
        cand = np.concatenate([members[h] for h in near[g]])
        score = centroids[mine] @ centroids[cand].T - half[cand]
        score[np.arange(len(mine)), _positions(cand, mine)] = np.inf  # itself first, even among equal centroids
        take = min(count, len(cand))
        found = cand[_best_first(score, take)]
        if take < count:
            found = np.concatenate([found, np.repeat(found[:, :1], count - take, axis=1)], axis=1)
        out[mine] = found
    return out


def _positions(cand: np.ndarray, mine: np.ndarray) -> np.ndarray:
    """Where each of ``mine`` sits in ``cand`` (every one of them is there)."""
    where = np.full(int(cand.max()) + 1, -1, np.int64)
    where[cand] = np.arange(len(cand))
    return where[mine]


def _best_first(score: np.ndarray, top: int) -> np.ndarray:
    """The columns of each row's ``top`` largest scores, largest first."""
    return smallest_first(-score, top)
