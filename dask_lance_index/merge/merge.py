"""The merge task: segments merged into one new segment, journaled.

Segments this build wrote itself (the ``precomputed`` engine: IVF_FLAT, IVF_SQ,
IVF_PQ, IVF_RQ, and the HNSW types' rows) are concatenated partition by partition
(:func:`dask_lance_index.storage.concat_segments`): no codes computed again,
and the merged segment searches as fast as one written in one piece, which
Lance's merge output does not. An HNSW index's final merge then builds the graphs,
once (:func:`dask_lance_index.storage.add_hnsw_graphs`). Other segments go through Lance's
``merge_existing_index_segments``, which writes a new segment (a uuid Lance
picks). Either way the inputs stay on storage; the commit deletes them once the
merged segment is committed. Which index types merge, and how deep, is the
plan's business (:mod:`dask_lance_index.plan.merges`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ..recovery.journal import (
    MergeAttempt,
    read_merge,
    remove_if_aborted,
    stop_if_aborted,
    write_merge,
)
from ..runtime import in_bulk
from ..plan import segment_uuid
from ..storage import (
    CONCAT_TYPES,
    STORAGE_TYPES,
    SegmentResult,
    concat_segments,
    open_dataset,
    remove_index_dir,
    segment_exists,
    segment_index,
)

__all__ = ["MergeSegments", "concatenates", "merge_segments"]


def merge_segments(uri: str, version: int, segments: list, storage_options: dict | None = None):
    """Merge ``segments`` (``lance.dataset.Index`` objects) into one new segment; its Index.

    The dataset is opened inside the task at the pinned version: a handle shared
    across threads fails in Lance.
    """
    ds = open_dataset(uri, version, storage_options)
    return ds.merge_existing_index_segments(list(segments))


def concatenates(plan, inputs: list[SegmentResult]) -> bool:
    """Whether a merge of ``inputs`` concatenates them (segments this build's
    ``precomputed`` engine wrote, or an HNSW index's storage-only segments:
    :attr:`~dask_lance_index.plan.IndexPlan.graphs_at_merge`) rather than asking Lance. Pure."""
    return (plan.engine == "precomputed" and (plan.params.index_type in CONCAT_TYPES or plan.graphs_at_merge)
            and all(s.slot >= 0 for s in inputs))


def concat_into(plan, slot: int, inputs: list[SegmentResult], storage_options: dict | None = None,
                graphs: Callable | None = None):
    """Concatenate ``inputs`` into the segment of merge slot ``slot`` (its uuid is the
    build's, as a build task's: a retry writes the same one); its Index. An HNSW index's
    storage-only inputs are concatenated as their storage type's, and a segment to be
    committed then gets its graphs, built here once: ``graphs(plan, slot, uuid,
    storage_options)`` returns the files and HNSW settings
    (:class:`dask_lance_index.build.GraphsAtMerge`)."""
    uuid = segment_uuid(plan.build_id, slot)
    remove_index_dir(plan.uri, uuid, storage_options)  # a dead attempt's partial files
    fragment_ids = sorted(f for s in inputs for f in s.fragment_ids)
    whole = set(fragment_ids) == {f.fragment_id for f in plan.fragments}
    params = plan.params
    files = concat_segments(plan.uri, [s.uuid for s in inputs], uuid,
                            index_type=STORAGE_TYPES.get(params.index_type, params.index_type),
                            whole=whole, storage_options=storage_options)
    hnsw = None
    if plan.builds_graphs(slot):
        if graphs is None:  # committed as the storage type, the index would have no graph
            raise RuntimeError(f"merge slot {slot} of an {params.index_type} index needs its graphs built: "
                               "MergeSegments(graphs=GraphsAtMerge())")
        files, hnsw = graphs(plan, slot, uuid, storage_options)
    return segment_index(open_dataset(plan.uri, plan.version, storage_options), index_uuid=uuid, name=plan.name,
                         column=plan.column, fragment_ids=fragment_ids, quantizer=params.quantizer or "FLAT",
                         metric=params.metric, num_bits=params.num_bits, num_sub_vectors=params.num_sub_vectors,
                         files=files, storage_options=storage_options, hnsw=hnsw)


@dataclass(frozen=True)
class MergeSegments:
    """Merge task of one build: called with ``(plan, slot, inputs)`` (the input segments'
    :class:`~dask_lance_index.storage.SegmentResult`), returns the merged segment's,
    filling ``slot``.

    With a journal it reuses a journaled output of the same inputs. Lance picks the
    merged segment's uuid, so each attempt journals its start time and a heartbeat
    while it merges (cleanup finds the output of an attempt that died mid-merge by
    that time window) and its output when done. A committed segment among the
    inputs (an update merging into the index) takes the ``index_details`` of a new
    one, without which Lance refuses to merge it.
    """

    storage_options: dict | None = None
    journal: str | None = None
    graphs: Callable | None = None  # an HNSW index's graphs, built by the merge (concat_into)

    @in_bulk  # large temporaries from the heap, not one mmap each (runtime.malloc)
    def __call__(self, plan, slot: int, inputs: list[SegmentResult]) -> SegmentResult:
        journal, opts = self.journal, self.storage_options
        details = next((s.index.index_details for s in inputs if s.index.index_details is not None), None)
        inputs = [s.with_details(details) for s in inputs]
        input_uuids = tuple(s.uuid for s in inputs)
        t0 = time.time()
        if journal is not None:
            stop_if_aborted(journal, plan.build_id, opts)
            done = read_merge(journal, slot, opts)
            if done is not None:
                if done.inputs == input_uuids and segment_exists(plan.uri, done.uuid, opts):
                    return done
                remove_index_dir(plan.uri, done.uuid, opts)  # made from other inputs: stale
            with MergeAttempt(journal, slot, t0, opts):
                merged = self._merge(plan, slot, inputs)
        else:
            merged = self._merge(plan, slot, inputs)
        result = SegmentResult(
            slot=slot,
            index=merged,
            fragment_ids=tuple(sorted(f for s in inputs for f in s.fragment_ids)),
            num_rows=sum(s.num_rows for s in inputs),
            null_rows=sum(s.null_rows for s in inputs),
            nan_rows=sum(s.nan_rows for s in inputs),
            started=t0,
            finished=time.time(),
            inputs=input_uuids,
        )
        if journal is not None:
            write_merge(journal, result, opts)
            remove_if_aborted(journal, plan, merged.uuid, opts)
        return result

    def _merge(self, plan, slot: int, inputs: list[SegmentResult]):
        if concatenates(plan, inputs):
            return concat_into(plan, slot, inputs, self.storage_options, self.graphs)
        return merge_segments(plan.uri, plan.version, [s.index for s in inputs], self.storage_options)
