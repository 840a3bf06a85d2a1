"""Scratch Lance datasets on a worker's disk: how precomputed partitions and codes reach Lance.

Lance's ``create_index_uncommitted`` reads precomputed work only as a Lance
dataset: a row id -> partition map (``precomputed_partition_dataset``) or
"shuffle buffers" of row id, partition and PQ code
(``precomputed_shuffle_buffers``). It reads such a dataset whole, ignoring
``fragment_ids``, and drops rows missing from a map silently
(``docs/lance.md``), so a task's scratch dataset holds exactly the rows its
segment indexes. The dataset lives in a temporary directory on the worker's
local disk and is removed when the segment is built.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterable, Iterator

import lance
import numpy as np
import pyarrow as pa

from .segment_files import PQ_CODE_COLUMN

__all__ = [
    "partition_map_batch",
    "partition_map_schema",
    "scratch_dataset",
    "shuffle_buffer_batch",
    "shuffle_buffer_inputs",
    "shuffle_buffer_schema",
]


def shuffle_buffer_schema(num_sub_vectors: int) -> pa.Schema:
    """Lance's precomputed shuffle buffer: ``row_id``, ``__ivf_part_id``, ``__pq_code``."""
    return pa.schema(
        [("row_id", pa.uint64()), ("__ivf_part_id", pa.uint32()), (PQ_CODE_COLUMN, pa.list_(pa.uint8(), num_sub_vectors))]
    )


def shuffle_buffer_batch(row_ids: np.ndarray, part_ids: np.ndarray, codes: np.ndarray) -> pa.RecordBatch:
    m = codes.shape[1]
    return pa.record_batch(
        [pa.array(row_ids, pa.uint64()), pa.array(part_ids, pa.uint32()),
         pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), m)],
        schema=shuffle_buffer_schema(m),
    )


def partition_map_schema() -> pa.Schema:
    """Lance's precomputed partition map: ``row_id`` -> ``partition``."""
    return pa.schema([("row_id", pa.uint64()), ("partition", pa.uint32())])


def partition_map_batch(row_ids: np.ndarray, part_ids: np.ndarray) -> pa.RecordBatch:
    return pa.record_batch([pa.array(row_ids, pa.uint64()), pa.array(part_ids, pa.uint32())],
                           schema=partition_map_schema())


@contextlib.contextmanager
def scratch_dataset(name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                    **write_kwargs) -> Iterator[tuple[str, lance.LanceDataset]]:
    """Stream ``batches`` into a Lance dataset on this machine's disk (the writer pulls
    one batch at a time: bounded memory); yields ``(path, dataset)`` and removes it after."""
    scratch = tempfile.mkdtemp(prefix=f"dli-{name}-")
    try:
        path = os.path.join(scratch, f"{name}.lance")
        written = lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches), path, **write_kwargs)
        yield path, written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shuffle_buffer_inputs(path: str, written: lance.LanceDataset) -> dict:
    """``create_index_uncommitted`` keyword arguments that hand it a shuffle buffer dataset."""
    return {
        "precomputed_shuffle_buffers": [f.path for frag in written.get_fragments() for f in frag.data_files()],
        "precomputed_shuffle_buffers_path": os.path.join(path, "data"),
    }
