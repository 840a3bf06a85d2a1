"""A task's rows spilled to its machine's disk in runs sorted by partition, read back grouped
by partition.

An HNSW segment is written by one task, every row grouped by partition
(:mod:`.hnsw_segment`). Rather than hold all its rows until then, the task sorts each chunk
of rows it encodes by partition (stable) and writes it to a temporary directory as a run;
the segment's file is then written from the runs a few whole partitions at a time, each
partition's rows taken run after run: the order the task read them in, so the same file as
from rows held whole. The task holds one chunk while it reads, and one batch of partitions
while it writes: each run's slice of the batch read from its file (raw rows, not memory-mapped:
mapped pages would count against the worker's memory until the last batch).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator

import numpy as np

__all__ = ["PartitionRuns"]


class PartitionRuns:
    """Runs of rows (named columns, the same in every run) sorted by partition, in a
    temporary directory on this machine's disk; :meth:`close` removes it."""

    def __init__(self, num_partitions: int):
        self.num_partitions = num_partitions
        self.dir = tempfile.mkdtemp(prefix="dli-runs-")
        self._runs: list[tuple[np.ndarray, dict]] = []  # (partition offsets, column -> raw file path)
        self._columns: dict = {}  # column -> (dtype, shape of a row)

    def add(self, part_ids: np.ndarray, columns: dict) -> None:
        """Spill one chunk: ``columns`` (row-aligned arrays) sorted by ``part_ids``, stable."""
        order = np.argsort(part_ids, kind="stable")
        counts = np.bincount(part_ids, minlength=self.num_partitions)
        paths = {}
        for name, values in columns.items():
            values = np.asarray(values)
            self._columns[name] = (values.dtype, values.shape[1:])
            paths[name] = os.path.join(self.dir, f"{len(self._runs)}-{name}")
            values[order].tofile(paths[name])
        self._runs.append((np.concatenate([[0], np.cumsum(counts)]), paths))

    @property
    def row_bytes(self) -> int:
        """Bytes of one row, all columns."""
        return sum(dtype.itemsize * int(np.prod(shape, dtype=np.int64)) for dtype, shape in self._columns.values())

    @property
    def lengths(self) -> np.ndarray:
        """Rows per partition, all runs."""
        total = np.zeros(self.num_partitions, np.int64)
        for offsets, _ in self._runs:
            total += np.diff(offsets)
        return total

    def batches(self, max_rows: int) -> Iterator[dict]:
        """The columns grouped by partition (each partition's rows run after run), in
        batches of whole partitions of at most ``max_rows`` rows (or one partition)."""
        lengths = self.lengths
        p0 = 0
        while p0 < self.num_partitions:
            p1, rows = p0 + 1, int(lengths[p0])
            while p1 < self.num_partitions and rows + lengths[p1] <= max_rows:
                rows += int(lengths[p1])
                p1 += 1
            if rows:
                yield self._gather(p0, p1)
            p0 = p1

    def _gather(self, p0: int, p1: int) -> dict:
        """Partitions ``[p0, p1)`` of every run, grouped by partition, run order kept."""
        pieces, parts = {}, []
        for offsets, paths in self._runs:
            lo, hi = int(offsets[p0]), int(offsets[p1])
            for name, path in paths.items():
                dtype, shape = self._columns[name]
                width = int(np.prod(shape, dtype=np.int64))
                piece = np.fromfile(path, dtype=dtype, count=(hi - lo) * width, offset=lo * width * dtype.itemsize)
                pieces.setdefault(name, []).append(piece.reshape((hi - lo,) + shape))
            parts.append(np.repeat(np.arange(p0, p1), np.diff(offsets[p0 : p1 + 1])))
        order = np.argsort(np.concatenate(parts), kind="stable")
        return {name: np.concatenate(chunks)[order] for name, chunks in pieces.items()}

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PartitionRuns":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
