"""The streaming, bounded-memory writer of partition artifacts' bucket files."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import pyarrow as pa
from lance.file import LanceFileWriter

from ..errors import InvalidInputError
from ..storage import is_local, join
from .layout import (
    DEFAULT_BUCKET_BUFFER_ROWS,
    DEFAULT_MAX_BUFFERED_ROWS,
    FILE_VERSION,
    PQ_CODE_COLUMN,
    ROW_ID_COLUMN,
    BucketSummary,
    PartitionEntry,
    PartitionRange,
    bucket_path,
    default_num_buckets,
)

__all__ = ["PartitionArtifactWriter"]


# -- streaming writer ----------------------------------------------------------------------


class PartitionArtifactWriter:
    """Stream encoded rows into bucket files with bounded memory.

    Rows are routed to per-bucket buffers (``bucket = partition % num_buckets``).
    A bucket's buffer is flushed when it holds ``bucket_buffer_rows`` rows, and
    the largest buffers are flushed whenever all buffers together pass
    ``max_buffered_rows``; a flush sorts the buffer by partition, appends it to
    the bucket's file and records each partition's range. Nothing is re-read or
    re-sorted at :meth:`finish`. Buffered bytes are tracked
    (``buffered_bytes``, ``peak_buffered_bytes``): they are bounded by
    ``max_buffered_rows`` rows plus one appended batch, whatever the row count;
    each open Lance file writer caches at most ``file_cache_bytes`` (the same
    budget split over the writer's buckets) before it writes a page.

    Parameters
    ----------
    root : str
        Artifact root (local path or URI).
    num_partitions, num_sub_vectors : int
    num_buckets : int, optional
        Default ``min(num_partitions, 256)``.
    buckets : iterable of int, optional
        The buckets this writer owns (a Dask reduction task writes a subset);
        rows of other buckets are refused. Default: all.
    """

    def __init__(
        self,
        root: str,
        num_partitions: int,
        num_sub_vectors: int,
        *,
        num_buckets: int | None = None,
        buckets: Iterable[int] | None = None,
        bucket_buffer_rows: int = DEFAULT_BUCKET_BUFFER_ROWS,
        max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS,
        storage_options: dict | None = None,
    ):
        if num_partitions < 1 or num_sub_vectors < 1:
            raise InvalidInputError("a partition artifact needs num_partitions and num_sub_vectors >= 1")
        self.root = str(root)
        self.num_partitions = int(num_partitions)
        self.m = int(num_sub_vectors)
        self.num_buckets = int(num_buckets or default_num_buckets(num_partitions))
        self.owned = None if buckets is None else frozenset(int(b) for b in buckets)
        self.bucket_buffer_rows = int(bucket_buffer_rows)
        self.max_buffered_rows = int(max_buffered_rows)
        self.storage_options = storage_options
        self._buf: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._buf_rows = np.zeros(self.num_buckets, dtype=np.int64)
        self._file_rows = np.zeros(self.num_buckets, dtype=np.int64)
        self._writers: dict = {}
        self._ranges: dict[int, list[list[int]]] = {}  # partition -> [[offset, rows], ...]
        self.buffered_bytes = 0
        self.peak_buffered_bytes = 0
        self.flushes = 0
        self._row_bytes = 8 + 4 + self.m
        # Lance's file writer keeps up to 8 MiB per column in memory before it
        # writes a page (a small bucket file: all of it, until close). Split the
        # writer's budget over its buckets instead, so open files add at most
        # about the buffers' own budget, whatever the row count.
        owned = len(self.owned) if self.owned is not None else self.num_buckets
        self.file_cache_bytes = max(64 << 10, self.max_buffered_rows * self._row_bytes // max(owned, 1))
        self._closed = False
        self._schema = pa.schema(
            [pa.field(ROW_ID_COLUMN, pa.uint64(), nullable=False), pa.field(PQ_CODE_COLUMN, pa.list_(pa.uint8(), self.m))]
        )

    def append(self, row_ids: np.ndarray, part_ids: np.ndarray, codes: np.ndarray) -> None:
        """Route one batch of encoded rows into the bucket buffers (no per-row Python loop)."""
        if self._closed:
            raise RuntimeError("the writer is finished")
        rid = np.asarray(row_ids, dtype=np.uint64)
        part = np.asarray(part_ids, dtype=np.uint32)
        codes = np.asarray(codes, dtype=np.uint8)
        n = len(rid)
        if len(part) != n or codes.shape != (n, self.m):
            raise InvalidInputError(
                f"append needs row_ids (n,), part_ids (n,) and codes (n, {self.m}); got "
                f"{rid.shape}, {part.shape}, {codes.shape}"
            )
        if n == 0:
            return
        if int(part.max()) >= self.num_partitions:
            raise InvalidInputError(
                f"partition id {int(part.max())} is outside [0, {self.num_partitions})"
            )
        bucket = part % self.num_buckets
        order = np.argsort(bucket, kind="stable")
        sb = bucket[order]
        cuts = np.flatnonzero(sb[1:] != sb[:-1]) + 1
        starts = np.r_[0, cuts]
        ends = np.r_[cuts, n]
        for s, e in zip(starts.tolist(), ends.tolist()):
            b = int(sb[s])
            if self.owned is not None and b not in self.owned:
                raise InvalidInputError(f"bucket {b} is not one of this writer's buckets")
            idx = order[s:e]
            self._buf.setdefault(b, []).append((rid[idx], part[idx], codes[idx]))
            self._buf_rows[b] += e - s
            self.buffered_bytes += (e - s) * self._row_bytes
        self.peak_buffered_bytes = max(self.peak_buffered_bytes, self.buffered_bytes)
        for b in np.flatnonzero(self._buf_rows >= self.bucket_buffer_rows).tolist():
            self._flush(b)
        if self._buf_rows.sum() > self.max_buffered_rows:
            # Largest first, down to half the budget: few, large flushes.
            for b in np.argsort(-self._buf_rows).tolist():
                if self._buf_rows.sum() <= self.max_buffered_rows // 2 or not self._buf_rows[b]:
                    break
                self._flush(b)

    def _writer(self, b: int):
        w = self._writers.get(b)
        if w is None:
            path = join(self.root, bucket_path(b))
            if is_local(self.root):
                os.makedirs(os.path.dirname(path.removeprefix("file://")), exist_ok=True)
            w = LanceFileWriter(path, self._schema, version=FILE_VERSION, storage_options=self.storage_options,
                                data_cache_bytes=self.file_cache_bytes)
            self._writers[b] = w
        return w

    def _flush(self, b: int) -> None:
        chunks = self._buf.pop(b, None)
        if not chunks:
            return
        rid = np.concatenate([c[0] for c in chunks])
        part = np.concatenate([c[1] for c in chunks])
        codes = np.concatenate([c[2] for c in chunks])
        del chunks
        n = len(rid)
        order = np.argsort(part, kind="stable")
        rid, part, codes = rid[order], part[order], codes[order]
        base = int(self._file_rows[b])
        cuts = np.flatnonzero(part[1:] != part[:-1]) + 1
        starts = np.r_[0, cuts]
        ends = np.r_[cuts, n]
        for s, e in zip(starts.tolist(), ends.tolist()):
            rs = self._ranges.setdefault(int(part[s]), [])
            if rs and rs[-1][0] + rs[-1][1] == base + s:
                rs[-1][1] += e - s  # contiguous with its last range: extend it
            else:
                rs.append([base + s, e - s])
        batch = pa.record_batch(
            [pa.array(rid, pa.uint64()), pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), self.m)],
            schema=self._schema,
        )
        self._writer(b).write_batch(batch)
        self._file_rows[b] += n
        self._buf_rows[b] = 0
        self.buffered_bytes -= n * self._row_bytes
        self.flushes += 1

    def finish(self) -> BucketSummary:
        """Flush every buffer, close the files, and return what was written."""
        for b in sorted(self._buf):
            self._flush(b)
        for w in self._writers.values():
            w.close()
        self._closed = True
        parts = {}
        for p, rs in self._ranges.items():
            ranges = tuple(PartitionRange(int(o), int(k)) for o, k in rs)
            parts[p] = PartitionEntry(bucket_path(p % self.num_buckets), sum(r.num_rows for r in ranges), ranges)
        files = {bucket_path(b): int(self._file_rows[b]) for b in self._writers}
        return BucketSummary(parts, files, self.peak_buffered_bytes, self.flushes)
