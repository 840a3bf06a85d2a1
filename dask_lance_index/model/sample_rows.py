"""A training sample held in pieces: what two-level training asks of it, and the pieces' work.

Two-level IVF training (:func:`dask_lance_index.model.coarse.train_ivf_hierarchical`)
never needs the whole sample in one place. It needs a small random subset (the
coarse level; the probes check; PQ's rows), each row's coarse group, each group's
rows (one group at a time), and per-partition sums over all rows (the refinement
passes). :class:`SampleRows` is that interface; :class:`LocalRows` holds the
pieces in this process, and :class:`dask_lance_index.train.ClusterRows` leaves
each piece on the worker that drew it and runs the functions below there.

The functions here are the per-piece work, pure and picklable: a piece is a
``(rows, d)`` float32 array, its labels the coarse group of each of its rows.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse

from .kmeans import assign, assign_among_neighbours
from .sq_bounds import combine_sq_bounds, train_sq_bounds

__all__ = [
    "GroupMembers",
    "LocalRows",
    "SampleRows",
    "combine_refine_partials",
    "group_buckets",
    "piece_offsets",
    "refine_partial",
    "refine_pieces",
    "route_piece",
    "rows_bounds",
    "split_off",
    "split_piece",
    "take_rows",
    "train_bucket",
]

_SUM_ROWS = 65536


def member_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-partition float64 sums of rows ``x``, a block of rows at a time (no
    float64 copy of all of ``x``)."""
    sums = np.zeros((k, x.shape[1]), np.float64)
    for s in range(0, len(x), _SUM_ROWS):
        lab = labels[s : s + _SUM_ROWS]
        n = len(lab)
        member = scipy.sparse.csr_matrix((np.ones(n), lab, np.arange(n + 1)), shape=(n, k))
        sums += member.T @ x[s : s + _SUM_ROWS].astype(np.float64)
    return sums


def piece_offsets(lengths: Sequence[int], offsets: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Sorted global row ``offsets`` as ``(piece, offsets within the piece)``, pieces in
    order, only those with a row to give. Pure."""
    bounds = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    where = np.searchsorted(bounds, offsets, side="right") - 1
    out = []
    for i in np.unique(where):
        out.append((int(i), offsets[where == i] - bounds[i]))
    return out


def take_rows(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[offsets])


def rows_bounds(x: np.ndarray, offsets: np.ndarray) -> tuple[float, float]:
    """The SQ bounds of a piece's rows at ``offsets``."""
    return train_sq_bounds(x[offsets])


def split_off(x: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(the piece without the rows at offsets, those rows)``."""
    keep = np.ones(len(x), dtype=bool)
    keep[offsets] = False
    return np.ascontiguousarray(x[keep]), np.ascontiguousarray(x[offsets])


def route_piece(x: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The coarse group of each row of a piece (int32)."""
    return assign(x, coarse, "l2")[0].astype(np.int32)


def group_counts(labels: np.ndarray, num_groups: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_groups)


def group_buckets(counts: Sequence[int], groups: Sequence[int], max_rows: int, min_buckets: int = 1) -> list[list[int]]:
    """``groups`` packed into buckets of about ``max_rows`` rows each (a group larger than
    that alone in its own), at least ``min_buckets`` of them when there are groups
    enough: largest group first into the lightest bucket. Pure."""
    groups = list(groups)
    if not groups:
        return []
    total = int(sum(counts[g] for g in groups))
    n = max(min_buckets, -(-total // max(max_rows, 1)))
    n = min(n, len(groups))
    load = np.zeros(n, dtype=np.int64)
    buckets: list[list[int]] = [[] for _ in range(n)]
    for g in sorted(groups, key=lambda g: -int(counts[g])):
        b = int(np.argmin(load))
        buckets[b].append(g)
        load[b] += int(counts[g])
    return [sorted(b) for b in buckets if b]


def split_piece(x: np.ndarray, labels: np.ndarray, bucket_of_group: np.ndarray, num_buckets: int) -> list:
    """A piece's rows per bucket of groups: ``[(rows, labels), ...]``, rows in the
    piece's order within each bucket."""
    bucket = bucket_of_group[labels]
    out = []
    for b in range(num_buckets):
        keep = bucket == b
        out.append((np.ascontiguousarray(x[keep]), labels[keep]))
    return out


class GroupMembers:
    """The rows of each group of one piece, found by one stable sort of its labels
    rather than one comparison of every label per group (at 128 groups of a
    1M-row sample: 3 s of a 11 s second level)."""

    def __init__(self, labels: np.ndarray | None):
        labels = np.zeros(0, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        self.order = np.argsort(labels, kind="stable")
        top = int(labels.max()) + 1 if len(labels) else 0
        self.bounds = np.searchsorted(labels[self.order], np.arange(top + 1))

    def rows(self, x: np.ndarray, g: int) -> np.ndarray:
        """Group ``g``'s rows of ``x``, in ``x``'s order."""
        if g + 1 >= len(self.bounds):
            return x[:0]
        return x[self.order[self.bounds[g] : self.bounds[g + 1]]]


def train_bucket(fn: Callable, slices: Sequence, items: Sequence) -> list:
    """The groups of one bucket: ``slices`` are every piece's ``(rows, labels)`` of the
    bucket, pieces in order; ``items`` ``(group, k, seed)``. Returns ``fn(group rows, k,
    seed)`` per item, the group's rows in the order of the whole sample."""
    rows = np.concatenate([s[0] for s in slices]) if slices else None
    labels = np.concatenate([s[1] for s in slices]) if slices else None
    members = GroupMembers(labels)
    return [fn(members.rows(rows, g), k, seed) for g, k, seed in items]


def refine_partial(x: np.ndarray, centroids: np.ndarray, index, probes: int, neighbours: np.ndarray | None = None,
                   labels: np.ndarray | None = None) -> tuple[tuple, np.ndarray]:
    """One refinement pass over a piece: ``((per-partition float64 sums, counts,
    inertia), labels)``. Without ``neighbours``, each row is assigned among its
    ``probes`` nearest groups' partitions (``index``: a CoarseIndex); with them,
    among ``neighbours[labels[row]]``, ``labels`` those of the pass before."""
    k = len(centroids)
    if neighbours is None:
        labels, dists = index.assigner(centroids, probes).assign(x)
    else:
        labels, dists = assign_among_neighbours(x, centroids, labels, neighbours)
    partial = (member_sums(x, labels, k), np.bincount(labels, minlength=k), float(dists.sum(dtype=np.float64)))
    return partial, labels.astype(np.int32)


def refine_pieces(pieces: Sequence[np.ndarray], centroids: np.ndarray, index, probes: int,
                  neighbours: np.ndarray | None = None, labels: Sequence[np.ndarray] | None = None) -> tuple:
    """:func:`refine_partial` of several pieces: ``(one combined partial, [labels of
    each piece])``."""
    labels = [None] * len(pieces) if labels is None else labels
    done = [refine_partial(p, centroids, index, probes, neighbours, lab) for p, lab in zip(pieces, labels)]
    return combine_refine_partials(*(d[0] for d in done)), [d[1] for d in done]


def combine_refine_partials(*parts: tuple) -> tuple:
    sums = parts[0][0].copy()
    counts = parts[0][1].copy()
    inertia = parts[0][2]
    for s, c, i in parts[1:]:
        sums += s
        counts += c
        inertia += i
    return sums, counts, inertia


class SampleRows:
    """A training sample in pieces (see the module's docstring). Subclasses hold the
    pieces; every method returns plain arrays of a size bounded by the model, not by
    the sample."""

    lengths: tuple[int, ...]
    dimension: int

    @property
    def num_rows(self) -> int:
        return int(sum(self.lengths))

    def map_offsets(self, fn: Callable, offsets: np.ndarray) -> list:
        """``fn(piece, offsets within it)`` for each piece holding some of the sorted global
        ``offsets``, pieces in order, where the piece is."""
        raise NotImplementedError

    def take(self, offsets: np.ndarray) -> np.ndarray:
        """The rows at sorted global ``offsets``, in that order."""
        parts = self.map_offsets(take_rows, offsets)
        return np.concatenate(parts) if parts else np.empty((0, self.dimension), np.float32)

    def _drawn(self, m: int, rng: np.random.Generator) -> np.ndarray:
        n = self.num_rows
        return np.arange(n) if m >= n else np.sort(rng.choice(n, m, replace=False))

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """``m`` rows drawn at random (all of them when ``m`` is at least the rows), in
        the sample's order."""
        return self.take(self._drawn(m, rng))

    def sq_bounds(self, m: int, rng: np.random.Generator) -> tuple[float, float]:
        """The SQ bounds of the rows :meth:`sample` draws with the same ``rng``, each
        piece taking its own rows' (only two floats a piece travel)."""
        return combine_sq_bounds(self.map_offsets(rows_bounds, self._drawn(m, rng)))

    def hold_out(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """Remove ``m`` rows drawn at random from the sample and return them, in the
        sample's order (before :meth:`route`)."""
        n = self.num_rows
        return self.split_off(np.sort(rng.choice(n, min(m, n), replace=False)))

    def split_off(self, offsets: np.ndarray) -> np.ndarray:
        """Remove the rows at sorted global ``offsets`` from the pieces and return them."""
        raise NotImplementedError

    def route(self, coarse: np.ndarray) -> np.ndarray:
        """Route every row to its nearest coarse centroid; remembers the groups and
        returns the rows per group."""
        raise NotImplementedError

    def train_groups(self, fn: Callable, items: Sequence[tuple[int, int, object]]) -> list:
        """``fn(rows of group g, k, seed)`` for every ``(g, k, seed)`` of ``items`` (after
        :meth:`route`), in that order."""
        raise NotImplementedError

    def refine_partials(self, centroids: np.ndarray, index, probes: int,
                        neighbours: np.ndarray | None = None) -> tuple:
        """One refinement pass (:func:`refine_partial`) over all the rows: the combined
        ``(sums, counts, inertia)``. Remembers each row's partition, which a pass
        with ``neighbours`` starts from."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop what :meth:`route` and :meth:`refine_partials` kept."""


def _in_turn(fn: Callable, items: Sequence) -> list:
    return [fn(*item) for item in items]


class LocalRows(SampleRows):
    """The pieces in this process. ``map_groups(fn, items)`` runs the groups'
    training (default: one after another)."""

    def __init__(self, pieces: Sequence[np.ndarray], dimension: int | None = None,
                 map_groups: Callable[[Callable, Sequence], list] | None = None):
        self.pieces = [np.ascontiguousarray(p, dtype=np.float32) for p in pieces]
        self.dimension = int(dimension if dimension is not None else self.pieces[0].shape[1])
        self.lengths = tuple(len(p) for p in self.pieces)
        self._map_groups = map_groups or _in_turn
        self._labels: list[np.ndarray] | None = None
        self._refined: list[np.ndarray] | None = None  # each row's partition after the last pass

    def map_offsets(self, fn: Callable, offsets: np.ndarray) -> list:
        return [fn(self.pieces[i], o) for i, o in piece_offsets(self.lengths, np.asarray(offsets))]

    def split_off(self, offsets: np.ndarray) -> np.ndarray:
        taken = [np.empty((0, self.dimension), np.float32)]
        for i, o in piece_offsets(self.lengths, offsets):
            self.pieces[i], out = split_off(self.pieces[i], o)
            taken.append(out)
        self.lengths = tuple(len(p) for p in self.pieces)
        return np.concatenate(taken)

    def route(self, coarse: np.ndarray) -> np.ndarray:
        self._labels = [route_piece(p, coarse) for p in self.pieces]
        return sum(group_counts(lab, len(coarse)) for lab in self._labels)

    def train_groups(self, fn: Callable, items: Sequence[tuple[int, int, object]]) -> list:
        members = [GroupMembers(lab) for lab in self._labels]

        def rows(g):
            parts = [m.rows(p, g) for p, m in zip(self.pieces, members)]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        return self._map_groups(fn, [(rows(g), k, seed) for g, k, seed in items])

    def refine_partials(self, centroids: np.ndarray, index, probes: int,
                        neighbours: np.ndarray | None = None) -> tuple:
        partial, self._refined = refine_pieces(self.pieces, centroids, index, probes, neighbours,
                                               None if neighbours is None else self._refined)
        return partial

    def release(self) -> None:
        self._labels = None
        self._refined = None
