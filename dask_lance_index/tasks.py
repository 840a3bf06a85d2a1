"""Journaled tasks: the training, build and merge tasks wrapped with the build journal.

Around each task of :mod:`.graph`:

* before the work: stop if the build was abandoned (the journal's ``aborted``
  marker), and return the journaled result if this task already finished in an
  earlier attempt (a worker that died after the task, a re-run after a driver
  crash) and its segment is still on storage;
* after the work: record the result, then look at the marker again: a task
  that finishes after its build was abandoned removes what it just wrote.

The driver writes the marker *before* it removes the build's segments, so a
segment is either removed by the driver or by the task that wrote it.

With ``journal=None`` the tasks run unjournaled (no resume, no crash cleanup).
"""

from __future__ import annotations

import time

from ._blas import one_blas_thread
from ._malloc import in_bulk
from .build import SegmentResult, build_segment
from .errors import BuildAbortedError
from .merge import merge_segments
from .plan import IndexPlan
from .train import sample_fragment, train_artifacts

__all__ = ["build_task", "index_dir_exists", "index_of", "merge_task", "sample_task", "train_task"]


def index_of(x):
    """The lance Index of a build result or a merge result."""
    if isinstance(x, SegmentResult):
        return x.index
    return x[0]


def index_dir_exists(uri: str, uuid: str, storage_options: dict | None = None) -> bool:
    from .journal import journal_store

    return journal_store(f"{str(uri).rstrip('/')}/_indices", storage_options).exists(uuid)


def _check_abort(journal: str | None, build_id: str, storage_options: dict | None = None) -> None:
    from .journal import is_aborted

    if is_aborted(journal, storage_options):
        raise BuildAbortedError(f"build {build_id} was abandoned; this task stops")


@in_bulk  # large temporaries from the heap, not one mmap each (see _malloc)
def sample_task(uri: str, version: int, column: str, dimension: int, fragment_id: int, fragment_rows: int,
                n: int, seed: int, build_id: str, storage_options: dict | None = None,
                journal: str | None = None):
    """Sample one fragment, unless the journal holds the trained artifacts already
    (a recomputation after a worker died, or a resumed build): then sample nothing."""
    from .journal import ARTIFACTS, journal_store

    if journal is not None and journal_store(journal, storage_options).exists(ARTIFACTS):
        import numpy as np

        now = time.time()
        return np.empty((0, dimension), np.float32), (now, now)
    return sample_fragment(uri, version, column, dimension, fragment_id, fragment_rows, n, seed, build_id,
                           storage_options)


@in_bulk  # large temporaries from the heap, not one mmap each (see _malloc)
def train_task(samples, journal: str | None = None, storage_options: dict | None = None, **kwargs):
    """Train the shared artifacts (or load them from the journal) and journal them."""
    from .artifacts import IndexArtifacts
    from .journal import journal_store

    store = journal_store(journal, storage_options) if journal is not None else None
    if store is not None:
        text = store.read("artifacts.json")
        if text is not None:
            return IndexArtifacts.from_json(text)
    artifacts = train_artifacts(samples, **kwargs)
    if store is not None:
        store.write("artifacts.json", artifacts.to_json())
    return artifacts


@in_bulk  # large temporaries from the heap, not one mmap each (see _malloc)
@one_blas_thread()  # tasks run side by side: one BLAS thread each (see _blas)
def build_task(plan: IndexPlan, task: int, artifacts, storage_options: dict | None = None,
               journal: str | None = None) -> SegmentResult:
    """Build task ``task`` once: reuse a journaled segment, else build and journal it."""
    from ._lance import remove_index_dir
    from .journal import is_aborted, read_segment, write_segment

    uuid = plan.segment_uuid(task)
    if journal is not None:
        _check_abort(journal, plan.build_id, storage_options)
        rec = read_segment(journal, task, storage_options)
        if rec is not None and rec.uuid == uuid and index_dir_exists(plan.uri, uuid, storage_options):
            return rec.result()
    # build_segment removes any partial files of an earlier attempt under the same uuid.
    result = build_segment(plan, task, artifacts, storage_options)
    if journal is not None:
        write_segment(journal, result, storage_options)
        if is_aborted(journal, storage_options):
            remove_index_dir(plan.uri, uuid, storage_options)
            raise BuildAbortedError(f"build {plan.build_id} was abandoned; removed segment {uuid}")
    return result


@in_bulk  # large temporaries from the heap, not one mmap each (see _malloc)
def merge_task(plan: IndexPlan, slot: int, inputs: list, storage_options: dict | None = None,
               journal: str | None = None):
    """Merge step filling ``slot``: reuse a journaled output of the same inputs, else merge.

    Lance picks the merged segment's uuid, so each attempt journals its start
    time and a heartbeat while it merges (cleanup finds the output of an
    attempt that died mid-merge by that time window) and its output when done.
    """
    from ._lance import remove_index_dir
    from .journal import (
        MergeAttempt,
        MergeRecord,
        index_from_dict,
        index_to_dict,
        is_aborted,
        read_merge,
        write_merge,
    )

    segments = [index_of(x) for x in inputs]
    input_uuids = tuple(ix.uuid for ix in segments)
    if journal is not None:
        _check_abort(journal, plan.build_id, storage_options)
        rec = read_merge(journal, slot, storage_options)
        if rec is not None:
            if rec.inputs == input_uuids and index_dir_exists(plan.uri, rec.uuid, storage_options):
                return index_from_dict(rec.index), (rec.started, rec.finished)
            remove_index_dir(plan.uri, rec.uuid, storage_options)  # made from other inputs: stale
        t0 = time.time()
        with MergeAttempt(journal, slot, t0, storage_options):
            merged, (started, finished) = merge_segments(plan.uri, plan.version, segments, storage_options)
    else:
        merged, (started, finished) = merge_segments(plan.uri, plan.version, segments, storage_options)
    if journal is not None:
        write_merge(journal, MergeRecord(slot, merged.uuid, input_uuids, index_to_dict(merged), t0, finished),
                    storage_options)
        if is_aborted(journal, storage_options):
            remove_index_dir(plan.uri, merged.uuid, storage_options)
            raise BuildAbortedError(f"build {plan.build_id} was abandoned; removed segment {merged.uuid}")
    return merged, (started, finished)
