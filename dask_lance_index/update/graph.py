"""The lazy Dask graph of an update, laid out as a build's, and run by the same runner.

::

    dli-build-<i> (new fragments only) ──► dli-merge-<j> (optional) ──► dli-update-commit
    dli-drift-sample-<frag> ──► dli-drift ──────────────────────────────────┘

The build and merge tasks are the build's own (:class:`~dask_lance_index.build.BuildSegment`,
:class:`~dask_lance_index.merge.MergeSegments`), journaled, with the saved model
as the one model key; committed segments that a merge takes enter the graph as
literal segments. A rebuild is a whole build (:func:`dask_lance_index.graph.build_graph`)
whose result becomes the update's.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import replace

import dask
from dask.delayed import delayed

from ..build import BuildSegment
from ..commit import SavedModel
from ..graph import build_graph, merge_task
from ..plan import SCALAR_STAGED, FragmentInfo, IndexPlan, MergePlan, allocate_samples, finalize_staged, plan_merges
from ..recovery import IndexJob
from ..storage import SegmentResult
from ..train import SampleFragment
from .commit import CommitUpdate, RebuildResult, UpdateResult
from .drift import measure_drift
from .plan import SegmentState, UpdateDecision

__all__ = ["IndexUpdate", "delta_graph", "delta_plan", "noop_graph", "rebuild_graph"]


class IndexUpdate(IndexJob):
    """A lazy update: a dask collection whose result is an :class:`UpdateResult`.

    ``update.decision`` says what it will do, before anything runs; ``update.plan``
    is the plan of what it builds (None when there is nothing to build).
    """

    __slots__ = ("decision",)

    def __init__(self, key, dsk, decision: UpdateDecision, plan: IndexPlan | None = None,
                 storage_options: dict | None = None, journal: str | None = None):
        super().__init__(key, dsk, plan, storage_options, journal)
        self.decision = decision

    def __repr__(self) -> str:
        return f"IndexUpdate({self.decision.action}, {len(self.dask)} tasks)"


def delta_plan(saved: SavedModel, ds, decision: UpdateDecision, live: dict, committed: list[SegmentResult],
               engine: str, merge_fan_in: int = 16) -> IndexPlan:
    """The IndexPlan of a delta: the saved parameters, only the new fragments, nothing to
    train, built by ``engine``; for a merge, the new segments and the committed ones
    merged into one."""
    frags = tuple(FragmentInfo(f, live[f]) for f in decision.new_fragments)
    plan = replace(
        saved.plan,
        uri=ds.uri,
        version=ds.version,
        fragments=frags,
        groups=decision.groups,
        samples=tuple(0 for _ in frags),
        build_id=str(uuidlib.uuid4()),
        # The index name exists: create_index_uncommitted refuses it without replace;
        # the commit adds the segments beside the old ones.
        replace=True,
        train=(),
        notes=("delta: " + decision.action,),
        engine=engine,
    )
    n = len(decision.groups)
    if decision.action != "merge":
        merges = MergePlan(n, (), tuple(range(n)))
        if plan.params.index_type in SCALAR_STAGED:  # a part Lance leaves unfinished: a merge finalizes it
            merges = finalize_staged(merges)
        return replace(plan, merges=merges)
    rows = list(plan.group_rows()) + [s.num_rows for s in committed]
    return replace(plan, merges=plan_merges(plan.params.index_type, rows, num_segments=1, fan_in=merge_fan_in, engine=plan.engine))


def _drift(plan: IndexPlan, decision: UpdateDecision, segments: list[SegmentState], live: dict, model,
           threshold: float, sample_rows: int, seed, storage_options):
    """Drift tasks: a sample of the new rows against a sample of the rows already indexed
    (None for a scalar index: no vectors, no centroids)."""
    if plan.params.is_scalar:
        return None
    tok = plan.build_id[:8]
    sample = SampleFragment(plan.uri, plan.version, plan.column, plan.dimension, seed, plan.build_id, storage_options)
    old_ids = sorted({f for s in segments if s.uuid not in decision.dropped_segments for f in s.fragment_ids} & set(live))

    def samples(ids, kind):
        frags = [FragmentInfo(f, live[f]) for f in ids]
        if not frags:
            return []
        return [
            delayed(sample, pure=True)(f.fragment_id, f.num_rows, n,
                                       dask_key_name=f"dli-drift-sample-{tok}-{kind}-{f.fragment_id}")
            for f, n in zip(frags, allocate_samples(frags, sample_rows))
            if n > 0
        ]

    return delayed(measure_drift, pure=True)(
        samples(decision.new_fragments, "new"), samples(old_ids, "old"), model, plan.params.metric, threshold,
        dask_key_name=f"dli-drift-{tok}",
    )


def noop_graph(result: UpdateResult, decision: UpdateDecision) -> IndexUpdate:
    out = delayed(result, name=f"dli-update-noop-{uuidlib.uuid4().hex[:8]}")
    return IndexUpdate(out.key, out.dask, decision)


def delta_graph(plan: IndexPlan, saved: SavedModel, decision: UpdateDecision, committed: list[SegmentResult],
                segments: list[SegmentState], live: dict, storage_options, *, journal: str | None, retries: int,
                drift_threshold: float, drift_sample_rows: int, seed, plan_seconds: float) -> IndexUpdate:
    """New segments for the new fragments (merged with ``committed`` for a merge), then
    the checked delta commit."""
    tok = plan.build_id[:8]
    plan_key = delayed(plan, name=f"dli-plan-{tok}")
    model = delayed(saved.model, name=f"dli-model-{tok}")
    with dask.annotate(retries=retries):
        build = BuildSegment(plan.engine, storage_options, journal)
        built = [delayed(build, pure=True)(plan_key, i, model, dask_key_name=f"dli-build-{tok}-{i}")
                 for i in range(plan.num_tasks)]
        slots = built + [delayed(s, name=f"dli-segment-{tok}-{s.uuid[:8]}") for s in committed]
        # new HNSW segments merged among themselves only: their graphs are built by the merge
        merge = merge_task(plan, storage_options, journal)
        merged = []
        for stage in plan.merges.stages:
            for step in stage:
                m = delayed(merge, pure=True)(plan_key, step.output, [slots[i] for i in step.inputs],
                                              dask_key_name=f"dli-merge-{tok}-{step.output}")
                slots.append(m)
                merged.append(m)
        drift = _drift(plan, decision, segments, live, model, drift_threshold, drift_sample_rows, seed,
                       storage_options)
    commit = delayed(CommitUpdate(decision, len(segments), storage_options, plan_seconds), pure=True)(
        plan_key, [slots[i] for i in plan.merges.final], built, merged, drift,
        dask_key_name=f"dli-update-commit-{tok}",
    )
    return IndexUpdate(commit.key, commit.dask, decision, plan, storage_options, journal)


def rebuild_graph(plan: IndexPlan, model, decision: UpdateDecision, segments: list[SegmentState], live: dict,
                  storage_options, *, journal: str | None, retries: int, model_uri: str | None,
                  drift_threshold: float, drift_sample_rows: int, seed, plan_seconds: float) -> IndexUpdate:
    """A full build over every live fragment with the saved model (no training),
    replacing the index in one commit; the build saves the model again."""
    build = build_graph(plan, model, storage_options, plan_seconds=plan_seconds, journal=journal, retries=retries,
                        model_uri=model_uri)
    model_key = delayed(model, name=f"dli-model-{plan.build_id[:8]}")  # the key the build uses
    drift = _drift(plan, decision, segments, live, model_key, drift_threshold, drift_sample_rows, seed,
                   storage_options)
    out = delayed(RebuildResult(decision, tuple(s.uuid for s in segments)), pure=True)(
        build, drift, dask_key_name=f"dli-update-rebuild-{plan.build_id[:8]}"
    )
    return IndexUpdate(out.key, out.dask, decision, plan, storage_options, journal)
