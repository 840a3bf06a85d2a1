"""The build task: one uncommitted Lance segment from one group of fragments.

:class:`BuildSegment` is the task every engine's segments are built by: it
skips work the journal says is done (a worker that died after the task, a
re-run after a driver crash) when the segment is still on storage, stops if
the build was abandoned, has the engine write the segment, journals it, and
removes it again if the build was abandoned meanwhile. The segment's uuid is
unique to the build and task and the same when the task is retried.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

from ..recovery.journal import (
    MergeAttempt,
    read_segment,
    remove_if_aborted,
    remove_if_over,
    stop_if_aborted,
    write_segment,
)
from ..runtime import in_bulk, one_blas_thread
from ..storage import SegmentResult, segment_exists
from .engines import get_engine

__all__ = ["BuildSegment"]


@dataclass(frozen=True)
class BuildSegment:
    """Build task of one build: called with ``(plan, task, model, upstream=None)``, returns
    the :class:`~dask_lance_index.storage.SegmentResult` of build task ``task``.

    ``engine`` names who assigns and encodes (:mod:`.engines`); ``options`` are the
    engine's (:meth:`.engines.Engine.prepare`); ``journal`` is the build journal's
    location (None: unjournaled, no resume).
    """

    engine: str
    storage_options: dict | None = None
    journal: str | None = None
    options: dict = field(default_factory=dict)

    @in_bulk  # large temporaries from the heap, not one mmap each (runtime.malloc)
    @one_blas_thread()  # tasks run side by side: one BLAS thread each (runtime.blas)
    def __call__(self, plan, task: int, model, upstream=None) -> SegmentResult:
        journal, opts = self.journal, self.storage_options
        engine = get_engine(self.engine)
        uuid = plan.segment_uuid(task)
        if journal is not None:
            stop_if_aborted(journal, plan.build_id, opts)
            done = read_segment(journal, task, opts)
            if (done is not None and (done.uuid == uuid or engine.picks_uuid)
                    and segment_exists(plan.uri, done.uuid, opts)):
                return done
        if engine.picks_uuid:
            # Lance names the segment: journal the attempt (its start and a heartbeat), by
            # which the files of an attempt that dies are found and removed (as a merge's).
            t0 = time.time()
            attempt = MergeAttempt(journal, task, t0, opts) if journal is not None else contextlib.nullcontext()
            with attempt:
                result = replace(engine.build_segment(plan, task, model, opts, self.options, upstream), started=t0)
        else:
            # The engine removes any partial files of an earlier attempt under the same uuid.
            result = engine.build_segment(plan, task, model, opts, self.options, upstream)
        if journal is not None:
            remove_if_over(journal, plan, result.uuid, opts)
            write_segment(journal, result, opts)
            remove_if_aborted(journal, plan, result.uuid, opts)
        return result

    def __repr__(self) -> str:
        return f"BuildSegment({self.engine!r})"
