"""The lazy Dask graph of a build, laid out as dask's ``to_parquet`` lays out a write.

::

    dli-plan ──────────────┬──────────────┬──────────────┐
    dli-sample-<frag> ─► dli-model ─► dli-build-<i> ─► dli-merge-<j> ─► dli-commit
                                                                      (barrier)

One task per fragment (sampling; a two-level IVF's training task submits these
itself and keeps their rows where they were drawn), one training task, one task per fragment
group (build), the merges, then one barrier task that commits. The plan and the
model each enter the graph once, as one key that every task depending on them
names; nothing large is embedded per task. Each stage's work is a small
callable object holding its settings (:class:`~dask_lance_index.train.SampleFragment`,
:class:`~dask_lance_index.train.TrainModel`, :class:`~dask_lance_index.build.BuildSegment`,
:class:`~dask_lance_index.merge.MergeSegments`, :class:`~dask_lance_index.commit.CommitIndex`),
so a task's repr names its stage. Keys carry the first 8 characters of the
build id so that two builds never share a key. An engine may add tasks
upstream of the build tasks and one after the commit (the artifact engine's
encode and shuffle, and the removal of its temporary artifact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask
from dask.delayed import delayed

from .build import BuildSegment, GraphsAtMerge, get_engine
from .commit import BuildResult, CommitIndex
from .merge import MergeSegments
from .model import IndexModel
from .plan import IndexPlan
from .recovery import IndexJob
from .storage import hide_secrets
from .train import SampleFragment, TrainModel, kept_samples, two_level_sample

__all__ = ["IndexBuild", "build_graph", "merge_task"]


class IndexBuild(IndexJob):
    """A lazy index build: a dask collection whose result is a :class:`~dask_lance_index.BuildResult`.

    ``build.compute()`` (or ``dask.compute(build)``, or ``client.compute(build)``)
    runs it; :func:`dask_lance_index.run` runs it with retries, a progress bar and
    cleanup on failure. ``build.plan`` is the :class:`IndexPlan` it carries out.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"IndexBuild({self.plan.params.index_type} {self.plan.name!r}, {len(self.dask)} tasks)"


@dataclass(frozen=True)
class AfterCommit:
    """The engine's clean-up once the index is committed; passes the result on."""

    engine: str
    options: dict = field(default_factory=dict)
    storage_options: dict | None = None

    def __call__(self, result: BuildResult) -> BuildResult:
        return get_engine(self.engine).after_commit(result, self.options, self.storage_options)


def merge_task(plan: IndexPlan, storage_options: dict | None, journal: str | None) -> MergeSegments:
    """The merge task of ``plan``'s graph (a build's or an update's): where the plan's tasks
    write an HNSW index's rows only (``plan.graphs_at_merge``), its final merges build the
    graphs (:class:`~dask_lance_index.build.GraphsAtMerge`); the merge stage cannot import the
    build stage, so the graph hands it over."""
    return MergeSegments(storage_options, journal, GraphsAtMerge() if plan.graphs_at_merge else None)


def build_graph(
    plan: IndexPlan,
    given: IndexModel,
    storage_options: dict | None = None,
    plan_seconds: float = 0.0,
    journal: str | None = None,
    retries: int = 2,
    engine_options: dict | None = None,
    model_uri: str | None = None,
) -> IndexBuild:
    """The lazy graph that carries out ``plan``; ``given`` holds the model's parts the user gave.

    With ``journal`` (a location), tasks journal their results there and reuse
    results journaled by an earlier attempt. ``engine_options`` are the engine's
    (:meth:`dask_lance_index.build.Engine.prepare`); ``model_uri`` is where the
    commit saves the model for updates.
    """
    storage_options = hide_secrets(storage_options)  # a worker logs a failing task's arguments
    engine, options = get_engine(plan.engine), dict(engine_options or {})
    tok = plan.build_id[:8]
    plan_key = delayed(plan, name=f"dli-plan-{tok}")

    # Lost or failing sample/train/build/merge tasks are retried (they are idempotent:
    # a retried task replaces its own partial output); the commit task is not.
    with dask.annotate(retries=retries):
        if plan.train:
            sample = SampleFragment(plan.uri, plan.version, plan.column, plan.dimension, plan.seed, plan.build_id,
                                    storage_options, journal, plan.params.metric)
            two_level = two_level_sample(plan)
            # SQ, flat: each sampling task sends on IVF's share of its rows, the bounds of all it drew
            kept = None if two_level else kept_samples(plan)
            specs = [(f.fragment_id, f.num_rows, n, *(() if kept is None else (kept[i],)))
                     for i, (f, n) in enumerate(zip(plan.fragments, plan.samples)) if n > 0]
            if two_level:
                # The model task draws the sample itself, as tasks whose rows stay on
                # the workers that drew them (train.cluster_rows): never gathered.
                train = TrainModel(plan.params, plan.dimension, plan.train, given, plan.seed, plan.build_id,
                                   storage_options, journal, sampler=sample)
                model = delayed(train, pure=True)(specs, dask_key_name=f"dli-model-{tok}")
            else:
                samples = [delayed(sample, pure=True)(*spec, dask_key_name=f"dli-sample-{tok}-{spec[0]}")
                           for spec in specs]
                train = TrainModel(plan.params, plan.dimension, plan.train, given, plan.seed, plan.build_id,
                                   storage_options, journal)
                model = delayed(train, pure=True)(samples, dask_key_name=f"dli-model-{tok}")
        else:
            model = delayed(given, name=f"dli-model-{tok}")

        upstream = engine.upstream(plan, plan_key, model, options, storage_options, tok)
        build = BuildSegment(plan.engine, storage_options, journal, options)
        slots = [
            delayed(build, pure=True)(plan_key, i, model, upstream, dask_key_name=f"dli-build-{tok}-{i}")
            for i in range(plan.num_tasks)
        ]
        built = list(slots)
        merge = merge_task(plan, storage_options, journal)
        merged = []
        for stage in plan.merges.stages:
            for step in stage:
                assert len(slots) == step.output
                m = delayed(merge, pure=True)(plan_key, step.output, [slots[i] for i in step.inputs],
                                              dask_key_name=f"dli-merge-{tok}-{step.output}")
                slots.append(m)
                merged.append(m)
    commit = delayed(CommitIndex(storage_options, plan_seconds, model_uri), pure=True)(
        plan_key, [slots[i] for i in plan.merges.final], built, merged, model, dask_key_name=f"dli-commit-{tok}"
    )
    if engine.has_after_commit(options):
        commit = delayed(AfterCommit(plan.engine, options, storage_options), pure=True)(
            commit, dask_key_name=f"dli-after-commit-{tok}"
        )
    return IndexBuild(commit.key, commit.dask, plan, storage_options, journal)
