"""Reading a vector column: batches of float32 rows with their validity, streamed or sampled.

Lance never indexes a null vector or one holding NaN or infinity, while its
statistics still count them; every reader here returns a validity mask so that
the build can leave those rows out as Lance does and count them
(``BuildResult.num_rows_skipped``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from .datasets import field_of

__all__ = ["RowCounts", "SCAN_BATCH_ROWS", "SCAN_SLICE_ROWS", "VectorBatch", "drawn_vectors", "iter_vectors", "take_vectors", "to_float32_matrix",
           "valid_rows"]


def to_float32_matrix(arr: pa.Array, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of a FixedSizeList chunk as (n, d) float32 plus a validity mask
    (False for null vectors and vectors holding any NaN or infinity).

    A multivector chunk (``list<fixed_size_list>``) gives its inner vectors, one
    row each (null lists none); a uint8 chunk (binary vectors) gives them as uint8,
    valid unless null (hamming compares bits, never floats).
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()  # null lists hold no vectors; honours the offset
    if pa.types.is_fixed_size_list(arr.type) and pa.types.is_uint8(arr.type.value_type):
        return _uint8_matrix(arr, dimension)
    n = len(arr)
    valid = np.ones(n, dtype=bool)
    if arr.null_count:
        valid &= ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    # .flatten() honours the array's offset; null slots hold arbitrary values.
    values = arr.flatten() if not arr.null_count else arr.fill_null(
        pa.scalar([0.0] * dimension, type=arr.type)
    ).flatten()
    x = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, dimension)
    # A row sum is finite only if every value is (inf and NaN propagate): one
    # GEMV screens the batch at a seventh of the cost of isfinite over every
    # value; rows whose float32 sum overflowed are settled by the exact check.
    with np.errstate(over="ignore", invalid="ignore"):
        suspect = ~np.isfinite(x @ np.ones(dimension, dtype=np.float32))
    if suspect.any():
        rows = np.flatnonzero(suspect)
        valid[rows] &= np.isfinite(x[rows]).all(axis=1)
    return x, valid


def _uint8_matrix(arr: pa.Array, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(arr)
    valid = np.ones(n, dtype=bool)
    if arr.null_count:
        valid &= ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
        arr = arr.fill_null(pa.scalar([0] * dimension, type=arr.type))
    x = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.uint8).reshape(n, dimension)
    return x, valid


@dataclass(frozen=True)
class VectorBatch:
    vectors: np.ndarray  # (n, d) float32
    valid: np.ndarray  # (n,) bool: False for null or non-finite vectors
    nulls: int
    row_ids: np.ndarray | None = None  # (n,) uint64, when asked for


# Rows per scan: Lance's scan of one large fragment buffers ahead in proportion to the
# fragment, so each fragment is read in slices of this many rows (measured, two 250k-row
# fragments of 128-d vectors: +316 MB peak read whole, +143 MB in 64k-row slices, no slower;
# a 4M-row build peaked at 629 MB per worker with 500k-row fragments read whole).
SCAN_SLICE_ROWS = 65536
# Rows per batch a scan yields, at most.
SCAN_BATCH_ROWS = 16384


def iter_vectors(
    ds,
    column: str,
    dimension: int,
    fragment_ids: Sequence[int],
    batch_size: int = SCAN_BATCH_ROWS,
    with_row_id: bool = False,
) -> Iterator[VectorBatch]:
    """Stream batches of the given fragments' vectors (bounded memory).

    Lance's default read-ahead (16 batches, 4 fragments, large I/O buffers)
    runs ahead of a consumer that does real work per batch and buffers most of
    a task's vectors: a 1M-row build task peaked at 747 MB with it and 382 MB
    with these settings (125k rows: 343 MB), at the same CPU time. Each
    fragment is scanned in slices of :data:`SCAN_SLICE_ROWS` rows, so the
    peak does not grow with the fragments' size either.
    """
    for fragment_id in fragment_ids:
        frag = ds.get_fragment(fragment_id)
        rows = frag.count_rows()  # live rows: offset and limit count past deleted ones
        for offset in range(0, rows, SCAN_SLICE_ROWS):
            scanner = ds.scanner(
                columns=[column],
                fragments=[frag],
                offset=offset,
                limit=SCAN_SLICE_ROWS,
                batch_size=batch_size,
                with_row_id=with_row_id,
                batch_readahead=2,
                fragment_readahead=1,
                io_buffer_size=32 << 20,
            )
            for batch in scanner.to_batches():
                if batch.num_rows:
                    col = field_of(batch, column)
                    x, valid = to_float32_matrix(col, dimension)
                    rid = None
                    if with_row_id:
                        rid = np.asarray(batch.column("_rowid").to_numpy(), dtype=np.uint64)
                    yield VectorBatch(x, valid, col.null_count, rid)


def take_vectors(
    ds, column: str, dimension: int, fragment_id: int, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows at ``offsets`` of one fragment, as (vectors, validity)."""
    frag = ds.get_fragment(fragment_id)
    table = frag.take(pa.array(np.sort(offsets).astype(np.uint64)), columns=[column])
    return to_float32_matrix(field_of(table, column), dimension)


def drawn_vectors(ds, column: str, count: int, *, dimension: int, seed: int = 0) -> np.ndarray:
    """The usable (non-null, finite) ones of ``count`` rows of the dataset drawn at random
    (by ``seed``), as float32 ``(m, dimension)``, ``m <= count``; none of an empty dataset."""
    total = ds.count_rows()  # the rows take() numbers: deleted ones left out
    if total == 0:
        return np.zeros((0, dimension), np.float32)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(total, count), replace=False))
    x, valid = to_float32_matrix(field_of(ds.take(picks, columns=[column]), column), dimension)
    return x[valid]


@dataclass
class RowCounts:
    """What a scan met: null vectors, all unindexable vectors (null, NaN or infinity)
    and the indexable rows it passed on."""

    nulls: int = 0
    unindexable: int = 0
    rows: int = 0

    @property
    def nan_rows(self) -> int:
        return self.unindexable - self.nulls


def valid_rows(ds, column: str, dimension: int, fragment_ids: Sequence[int], counts: RowCounts,
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ``(vectors, row ids)`` of the rows Lance would index (not null, all
    finite), batch by batch; ``counts`` gathers what was left out and passed on."""
    for b in iter_vectors(ds, column, dimension, fragment_ids, with_row_id=True):
        counts.nulls += b.nulls
        counts.unindexable += int((~b.valid).sum())
        x, rid = (b.vectors, b.row_ids) if b.valid.all() else (b.vectors[b.valid], b.row_ids[b.valid])
        if len(x):
            counts.rows += len(x)
            yield x, rid
