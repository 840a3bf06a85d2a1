"""The engine interface: who assigns and encodes the rows of one build task's segment.

Every engine builds one uncommitted Lance segment per fragment group
(:meth:`Engine.build_segment`); they differ in how much of the work they take
from Lance. An engine may add tasks upstream of the build tasks (the artifact
engine's encode and shuffle), prepare before any task runs, and clean up after
the commit. :mod:`.registry` holds one instance of each, by name.

:class:`SegmentTask` is what every engine's ``build_segment`` starts from: the
task's dataset handle at the pinned version, its fragments and segment uuid,
Lance's ``create_index_uncommitted`` with the shared model, and the hand-off of
precomputed work through a scratch dataset.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Iterable

import pyarrow.compute as pc

from ...errors import InvalidInputError
from ...model import IndexModel
from ...storage import (
    RowCounts,
    SegmentResult,
    field_of,
    iter_vectors,
    open_dataset,
    remove_index_dir,
    scratch_dataset,
    valid_rows,
)

__all__ = ["Engine", "SegmentTask", "lance_mis_encodes_partial_dot_pq"]


def lance_mis_encodes_partial_dot_pq(params) -> str | None:
    """pylance 14.0.2 encodes the PQ codes of a segment that covers part of the
    dataset by largest inner product instead of nearest code word under the dot
    metric: recall 0.06 instead of 0.25, without an error (``docs/lance.md``). A
    segment over every fragment is encoded correctly."""
    if params.metric == "dot" and params.quantizer == "PQ":
        return ("Lance mis-encodes PQ segments that cover part of the dataset under the dot metric "
                "(silently low recall)")
    return None


class SegmentTask:
    """One build task's segment in the making.

    Opens the dataset at the plan's pinned version (a fresh handle: one shared
    across threads fails in Lance) and removes whatever an earlier attempt of
    this task wrote under its uuid, so no partial files survive and no other
    task's files are touched.
    """

    def __init__(self, plan, task: int, model: IndexModel, storage_options: dict | None = None):
        self.started = time.time()
        self.plan = plan
        self.task = task
        self.model = model
        self.storage_options = storage_options
        self.fragment_ids = list(plan.groups[task])
        self.uuid = plan.segment_uuid(task)
        self.ds = open_dataset(plan.uri, plan.version, storage_options)
        remove_index_dir(plan.uri, self.uuid, storage_options)
        self.counts = RowCounts()

    def create(self, model: IndexModel | None = None, **inputs):
        """Lance's ``create_index_uncommitted`` for this segment, with the shared model
        (or ``model``) and any precomputed ``inputs``."""
        plan = self.plan
        return self.ds.create_index_uncommitted(
            plan.column,
            plan.params.index_type,
            name=plan.name,
            replace=plan.replace,
            fragment_ids=self.fragment_ids,
            index_uuid=self.uuid,
            **plan.params.lance_kwargs(),
            **(model or self.model).lance_kwargs(),
            **inputs,
        )

    @property
    def num_rows(self) -> int:
        """Rows of this task's fragments (valid or not: an upper bound of those indexed)."""
        return self.plan.group_rows()[self.task]

    def valid_rows(self) -> Iterable:
        """``(vectors, row ids)`` of the rows Lance would index, streamed; counted in ``counts``."""
        return valid_rows(self.ds, self.plan.column, self.plan.dimension, self.fragment_ids, self.counts)

    def count_unindexable(self) -> None:
        """Count the rows Lance will leave out (for an engine that reads no rows itself)."""
        if getattr(self.plan, "column_kind", "vector") == "multivector":
            # A row is a bag of vectors: one with none (null or empty) can never be found.
            for f in self.fragment_ids:
                scanner = self.ds.scanner(columns=[self.plan.column], fragments=[self.ds.get_fragment(f)],
                                          batch_size=16384, batch_readahead=2)
                for batch in scanner.to_batches():
                    col = field_of(batch, self.plan.column)
                    empty = pc.fill_null(pc.equal(pc.list_value_length(col), 0), True)
                    none = int(pc.sum(empty).as_py() or 0)  # counted as null vectors
                    self.counts.nulls += none
                    self.counts.unindexable += none
            return
        for b in iter_vectors(self.ds, self.plan.column, self.plan.dimension, self.fragment_ids):
            self.counts.unindexable += int((~b.valid).sum())
            self.counts.nulls += b.nulls

    def hand_off(self, name: str, schema, batches: Iterable, inputs: Callable, **write_kwargs):
        """Stream ``batches`` into a scratch dataset on this worker's disk, then let Lance
        build the segment from it: ``create(**inputs(path, written dataset))``."""
        with scratch_dataset(name, schema, batches, **write_kwargs) as (path, written):
            # Nothing indexable here: let Lance build its (empty) segment itself.
            return self.create(**inputs(path, written)) if self.counts.rows else self.create()

    def result(self, index, *, null_rows: int | None = None, nan_rows: int | None = None,
               started: float | None = None, assigner=None) -> SegmentResult:
        """The task's :class:`SegmentResult`; with ``assigner`` (the task's
        :class:`~dask_lance_index.model.PartitionAssigner`), its audit's counts."""
        return SegmentResult(
            slot=self.task,
            index=index,
            fragment_ids=tuple(self.fragment_ids),
            num_rows=self.num_rows,
            null_rows=int(self.counts.nulls if null_rows is None else null_rows),
            nan_rows=int(self.counts.nan_rows if nan_rows is None else nan_rows),
            started=self.started if started is None else started,
            finished=time.time(),
            checked_rows=getattr(assigner, "checked", 0),
            agreeing_rows=getattr(assigner, "agreed", 0),
        )


class Engine(ABC):
    """Who assigns and encodes the rows of each build task's segment.

    Subclasses set :attr:`name` and implement :meth:`build_segment`; the other
    hooks have defaults for an engine that needs nothing more.
    """

    name: ClassVar[str]
    # Lance picks the segment's uuid (not the plan): the build task journals each attempt
    # (start and heartbeat), by which cleanup finds the files of an attempt that died.
    picks_uuid: ClassVar[bool] = False

    def refuses(self, params) -> str | None:
        """Why this engine cannot build an index of ``params`` (None: it can)."""
        return None

    def one_segment_reason(self, params) -> str | None:
        """Why this engine builds ``params`` correctly only as one segment over every
        fragment (None: it builds any part of the dataset correctly)."""
        return None

    def for_updates(self) -> str:
        """The engine that builds the deltas and rebuilds of an index this engine built."""
        return self.name

    def prepare(self, plan, storage_options: dict | None = None, artifact_uri: str | None = None,
                ) -> tuple[object, dict]:
        """Checks and settings before any task runs: ``(plan, options)``; ``options``
        reach every hook below."""
        if artifact_uri is not None:
            raise InvalidInputError(f"artifact_uri applies to engine='artifact' only, not {self.name!r}")
        return plan, {}

    def upstream(self, plan, plan_key, model_key, options: dict, storage_options: dict | None, tok: str):
        """A dask object every build task takes as its ``upstream`` argument (None: none)."""
        return None

    @abstractmethod
    def build_segment(self, plan, task: int, model: IndexModel, storage_options: dict | None = None,
                      options: dict | None = None, upstream=None) -> SegmentResult:
        """Write build task ``task``'s uncommitted segment."""

    def after_commit(self, result, options: dict, storage_options: dict | None = None):
        """Clean up once the index is committed; returns ``result``."""
        return result

    def has_after_commit(self, options: dict) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<{self.name} engine>"
