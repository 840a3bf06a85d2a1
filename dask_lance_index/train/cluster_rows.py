"""The training sample of a two-level build, drawn and kept on the workers.

The two-level training task (:class:`dask_lance_index.train.TrainModel` with a
sampler) submits one sampling task per fragment from inside its worker and keeps
the futures: each piece of the sample stays in the memory of the worker that
drew it. :class:`ClusterRows` runs the per-piece work of
:mod:`dask_lance_index.model.sample_rows` there as tasks, so the training task
only ever holds a small random subset of rows and ``(num_partitions, d)`` sums;
each group of partitions trains in a bucket task that holds that bucket's rows
(:data:`BUCKET_BYTES`) and no more. Outside a dask worker, :func:`draw_sample`
draws the pieces in threads and returns :class:`LocalRows`.
"""

from __future__ import annotations

import operator
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from ..model import LocalRows, SampleRows, prepare_vectors
from ..model.sample_rows import (
    combine_refine_partials,
    group_buckets,
    group_counts,
    piece_offsets,
    refine_pieces,
    route_piece,
    split_off,
    split_piece,
    train_bucket,
)
from ..runtime import in_bulk, one_blas_thread

__all__ = ["BUCKET_BYTES", "ClusterRows", "draw_sample", "tree_reduce"]

# Rows one bucket task of second-level groups holds at most (a larger group is a
# bucket of its own): 256 MiB, 65,536 rows at 1024-d.
BUCKET_BYTES = 256 * 2**20


@in_bulk
def _draw(sampler: Callable, spec: tuple, metric: str) -> tuple:
    x, times = sampler(*spec)
    return prepare_vectors(x, metric), times


@in_bulk
@one_blas_thread()
def _bucket_task(fn: Callable, slices: Sequence, items: Sequence) -> list:
    return train_bucket(fn, slices, items)


@in_bulk
def _refine_task(pieces: Sequence, centroids: np.ndarray, index, probes: int, neighbours=None,
                 labels: Sequence | None = None) -> tuple:
    return refine_pieces(pieces, centroids, index, probes, neighbours, labels)


def tree_reduce(client, futures: list, combine: Callable):
    """Combine ``futures`` pairwise on the cluster, as a tree; the future of the whole."""
    level = list(futures)
    while len(level) > 1:
        level = [client.submit(combine, *level[i : i + 2], pure=False) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


class ClusterRows(SampleRows):
    """The sample's pieces as futures, each on the worker that drew it.

    Parameters
    ----------
    client
        A client of the cluster (inside a task: the ``worker_client``).
    pieces : list of Future
        Each a ``(rows, d)`` float32 array.
    lengths : sequence of int
        Rows per piece.
    dimension : int
    num_workers : int
        Buckets of groups are at least this many, so every worker trains.
    bucket_bytes : int
        See :data:`BUCKET_BYTES`.
    """

    def __init__(self, client, pieces: list, lengths: Sequence[int], dimension: int, num_workers: int = 1,
                 bucket_bytes: int = BUCKET_BYTES):
        self.client = client
        self.pieces = list(pieces)
        self.lengths = tuple(int(n) for n in lengths)
        self.dimension = int(dimension)
        self.num_workers = max(1, int(num_workers))
        self.bucket_bytes = int(bucket_bytes)
        self._labels: list | None = None
        self._counts: np.ndarray | None = None
        # per worker task of the last refinement pass: (worker, its pieces, future of their rows' partitions)
        self._refined: list | None = None

    def map_offsets(self, fn: Callable, offsets: np.ndarray) -> list:
        c = self.client
        return c.gather([c.submit(fn, self.pieces[i], o, pure=False)
                         for i, o in piece_offsets(self.lengths, np.asarray(offsets))])

    def split_off(self, offsets: np.ndarray) -> np.ndarray:
        """Each piece with rows to give splits on its worker; only the rows taken travel."""
        c = self.client
        lengths = list(self.lengths)
        taken = []
        for i, o in piece_offsets(self.lengths, offsets):
            both = c.submit(split_off, self.pieces[i], o, pure=False)
            self.pieces[i] = c.submit(operator.getitem, both, 0, pure=False)
            taken.append(c.submit(operator.getitem, both, 1, pure=False))
            lengths[i] -= len(o)
        self.lengths = tuple(lengths)
        parts = c.gather(taken)
        return np.concatenate(parts) if parts else np.empty((0, self.dimension), np.float32)

    def route(self, coarse: np.ndarray) -> np.ndarray:
        c = self.client
        coarse_f = c.scatter(coarse, broadcast=True, hash=False)
        self._labels = [c.submit(route_piece, p, coarse_f, pure=False) for p in self.pieces]
        counts = c.gather([c.submit(group_counts, lab, len(coarse), pure=False) for lab in self._labels])
        self._counts = np.sum(counts, axis=0)
        return self._counts

    def train_groups(self, fn: Callable, items: Sequence[tuple[int, int, object]]) -> list:
        c = self.client
        by_group = {g: (k, seed) for g, k, seed in items}
        max_rows = max(1, self.bucket_bytes // (4 * self.dimension))
        buckets = group_buckets(self._counts, list(by_group), max_rows, min_buckets=self.num_workers)
        bucket_of_group = np.full(len(self._counts), -1, dtype=np.int64)
        for b, groups in enumerate(buckets):
            bucket_of_group[groups] = b
        bog = c.scatter(bucket_of_group, broadcast=True, hash=False)
        splits = [c.submit(split_piece, p, lab, bog, len(buckets), pure=False)
                  for p, lab in zip(self.pieces, self._labels)]
        futures = []
        for b, groups in enumerate(buckets):
            slices = [c.submit(operator.getitem, s, b, pure=False) for s in splits]
            futures.append(c.submit(_bucket_task, fn, slices, [(g, *by_group[g]) for g in groups], pure=False))
        del splits
        trained = {}
        for groups, parts in zip(buckets, c.gather(futures)):
            trained.update(zip(groups, parts))
        return [trained[g] for g, _, _ in items]

    def refine_partials(self, centroids: np.ndarray, index, probes: int, neighbours: np.ndarray | None = None,
                        ) -> tuple:
        """One task per worker over the pieces it holds, so that one ``(k, d)`` partial
        per worker travels, not one per piece, then a tree of sums. Each task's rows'
        partitions stay on its worker for the next pass."""
        c = self.client
        cf = c.scatter(centroids, broadcast=True, hash=False)
        xf = c.scatter(index, broadcast=True, hash=False)
        if neighbours is None or self._refined is None:
            where: dict[str, list] = {}
            for piece, holders in zip(self.pieces, self._holders()):
                where.setdefault(holders[0] if holders else "", []).append(piece)
            jobs = [(addr, pieces, None) for addr, pieces in where.items()]
            nf = None
        else:
            jobs = self._refined
            nf = c.scatter(neighbours, broadcast=True, hash=False)
        done = [(addr, pieces, c.submit(_refine_task, pieces, cf, xf, probes, nf, labels,
                                        workers=[addr] if addr else None, allow_other_workers=True, pure=False))
                for addr, pieces, labels in jobs]
        self._refined = [(addr, pieces, c.submit(operator.getitem, f, 1, pure=False)) for addr, pieces, f in done]
        parts = [c.submit(operator.getitem, f, 0, pure=False) for _, _, f in done]
        return tree_reduce(c, parts, combine_refine_partials).result()

    def _holders(self) -> list:
        who = self.client.who_has(self.pieces)
        return [list(who.get(p.key, ())) for p in self.pieces]

    def release(self) -> None:
        self._labels = None
        self._refined = None


def draw_sample(sampler: Callable, specs: Sequence[tuple], metric: str, dimension: int, client=None,
                num_workers: int = 1, map_groups: Callable | None = None) -> tuple[SampleRows, list]:
    """Draw the sample, one piece per ``sampler(*spec)``, prepared for ``metric``.

    With ``client`` (a worker's client), the pieces are tasks whose rows stay where
    they were drawn (:class:`ClusterRows`); without, threads in this process
    (:class:`LocalRows`, whose groups train by ``map_groups``). Returns the rows and each piece's ``(started, finished)``.
    """
    if client is not None:
        drawn = [client.submit(_draw, sampler, spec, metric, pure=False) for spec in specs]
        pieces = [client.submit(operator.getitem, d, 0, pure=False) for d in drawn]
        times = client.gather([client.submit(operator.getitem, d, 1, pure=False) for d in drawn])
        lengths = client.gather([client.submit(len, p, pure=False) for p in pieces])
        del drawn
        return ClusterRows(client, pieces, lengths, dimension, num_workers), times
    threads = max(1, min(len(specs), os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        drawn = list(pool.map(lambda spec: _draw(sampler, spec, metric), specs))
    return LocalRows([d[0] for d in drawn], dimension, map_groups), [d[1] for d in drawn]
