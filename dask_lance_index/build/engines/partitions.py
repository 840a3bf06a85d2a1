"""The ``"partitions"`` engine: we assign IVF partitions with NumPy BLAS, Lance encodes.

Each task streams its rows, assigns each to its nearest centroid
(:class:`dask_lance_index.model.PartitionAssigner`), writes the row id ->
partition map to a scratch dataset on the worker's disk, and Lance reads the
map instead of assigning (``precomputed_partition_dataset``), then encodes.
Lance drops rows missing from the map silently, so the map holds every row it
would index: the valid rows of the task's fragments. Every index type; the
default for those whose codes we do not write (4-bit PQ, the HNSW types but
IVF_HNSW_PQ, dot-metric IVF_RQ).
"""

from __future__ import annotations

from ...model import PartitionAssigner
from ...storage import SegmentResult, partition_map_batch, partition_map_schema
from .base import Engine, SegmentTask, lance_mis_encodes_partial_dot_pq

__all__ = ["PartitionsEngine"]


class PartitionsEngine(Engine):
    name = "partitions"

    def one_segment_reason(self, params) -> str | None:
        return lance_mis_encodes_partial_dot_pq(params)

    def build_segment(self, plan, task, model, storage_options=None, options=None, upstream=None) -> SegmentResult:
        seg = SegmentTask(plan, task, model, storage_options)
        assigner = PartitionAssigner(model.ivf_centroids, plan.params.metric, model.coarse_index)
        batches = (partition_map_batch(rid, assigner.assign(x)) for x, rid in seg.valid_rows())
        # Lance reads the map only as one fragment of one file: never split it
        # (a limit past 2**31 - 1 rows overflows inside Lance: one fragment per batch).
        index = seg.hand_off("partitions", partition_map_schema(), batches,
                             lambda path, written: {"precomputed_partition_dataset": path},
                             max_rows_per_file=2**31 - 1)
        return seg.result(index, assigner=assigner)
