"""The merge task: segments merged into one new segment by Lance, journaled.

Lance's ``merge_existing_index_segments`` writes a new segment (a uuid Lance
picks) and leaves its inputs on storage; the commit deletes the inputs once
the merged segment is committed. Which index types Lance merges correctly, and
how deep, is the plan's business (:mod:`dask_lance_index.plan.merges`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..recovery.journal import (
    MergeAttempt,
    read_merge,
    remove_if_aborted,
    stop_if_aborted,
    write_merge,
)
from ..runtime import in_bulk
from ..storage import SegmentResult, open_dataset, remove_index_dir, segment_exists

__all__ = ["MergeSegments", "merge_segments"]


def merge_segments(uri: str, version: int, segments: list, storage_options: dict | None = None):
    """Merge ``segments`` (``lance.dataset.Index`` objects) into one new segment; its Index.

    The dataset is opened inside the task at the pinned version: a handle shared
    across threads fails in Lance.
    """
    ds = open_dataset(uri, version, storage_options)
    return ds.merge_existing_index_segments(list(segments))


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
                merged = merge_segments(plan.uri, plan.version, [s.index for s in inputs], opts)
        else:
            merged = merge_segments(plan.uri, plan.version, [s.index for s in inputs], opts)
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
