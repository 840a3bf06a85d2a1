"""The lazy Dask graph of a build, laid out as dask's ``to_parquet`` lays out a write.

::

    dli-plan ──────────────┬──────────────┬──────────────┐
    dli-sample-<frag> ─► dli-artifacts ─► dli-build-<i> ─► dli-merge-<j> ─► dli-commit
                                                                          (barrier)

The plan and the artifacts each enter the graph once, as one key that every
task depending on them names; nothing large is embedded per task. Keys carry
the first 8 characters of the build id so that two builds never share a key.
"""

from __future__ import annotations

import logging
import warnings

from dask.delayed import Delayed, delayed

from .artifacts import IndexArtifacts
from .build import SegmentResult, build_segment
from .commit import BuildResult, commit_index
from .merge import merge_segments
from .plan import IndexPlan
from .train import sample_fragment, train_artifacts

__all__ = ["IndexBuild", "build_graph", "report"]

log = logging.getLogger("dask_lance_index")


def report(result: BuildResult) -> BuildResult:
    """Warn about rows Lance left out, and log the result, in the calling process."""
    if result.num_rows_skipped:
        warnings.warn(
            f"{result.num_rows_skipped} rows were not indexed: {result.null_rows} null vectors and "
            f"{result.nan_rows} vectors with NaN or infinity. Lance never indexes them; queries "
            "will not find these rows.",
            UserWarning,
            stacklevel=3,
        )
    log.info("%s", result)
    return result


def _finish(results) -> BuildResult:
    return report(results[0])


class IndexBuild(Delayed):
    """A lazy index build: a dask collection whose result is a :class:`BuildResult`.

    ``build.compute()`` (or ``dask.compute(build)``, or ``client.compute(build)``)
    runs it; ``build.plan`` is the :class:`IndexPlan` it carries out. The
    warning about unindexed rows is raised where dask finalises the result: on
    a distributed cluster that is a worker, so use :func:`dask_lance_index.run`
    to have it raised in your process.
    """

    __slots__ = ("plan", "storage_options")

    def __init__(self, key, dsk, plan: IndexPlan, storage_options: dict | None = None):
        super().__init__(key, dsk)
        self.plan = plan
        self.storage_options = storage_options

    def __dask_postcompute__(self):
        return _finish, ()

    def __repr__(self) -> str:
        return f"IndexBuild({self.plan.params.index_type} {self.plan.name!r}, {len(self.dask)} tasks)"


def _index_of(x):
    """The lance Index of a build result or a merge result."""
    if isinstance(x, SegmentResult):
        return x.index
    return x[0]


def _merge_task(plan: IndexPlan, inputs: list, storage_options):
    return merge_segments(plan.uri, plan.version, [_index_of(x) for x in inputs], storage_options)


def _commit_task(plan, final, built, merged, storage_options, plan_seconds, artifacts, artifacts_uri=None):
    result = commit_index(
        plan,
        [_index_of(x) for x in final],
        built,
        merged,
        storage_options,
        plan_seconds=plan_seconds,
        artifacts_source=artifacts.source,
    )
    from .saved import save_after_build  # artifacts kept for dli.update_index

    save_after_build(plan, artifacts, result, storage_options, artifacts_uri)
    return result


def build_graph(
    plan: IndexPlan,
    given: IndexArtifacts,
    storage_options: dict | None = None,
    plan_seconds: float = 0.0,
    artifacts_uri: str | None = None,
) -> IndexBuild:
    """The lazy graph that carries out ``plan``; ``given`` holds user-supplied artifacts."""
    tok = plan.build_id[:8]
    plan_key = delayed(plan, name=f"dli-plan-{tok}")

    if plan.train:
        samples = [
            delayed(sample_fragment, pure=True)(
                plan.uri,
                plan.version,
                plan.column,
                plan.dimension,
                frag.fragment_id,
                frag.num_rows,
                n,
                plan.seed,
                plan.build_id,
                storage_options,
                dask_key_name=f"dli-sample-{tok}-{frag.fragment_id}",
            )
            for frag, n in zip(plan.fragments, plan.samples)
            if n > 0
        ]
        artifacts = delayed(train_artifacts, pure=True)(
            samples,
            params=plan.params,
            dimension=plan.dimension,
            train=plan.train,
            given=given,
            seed=plan.seed,
            build_id=plan.build_id,
            dask_key_name=f"dli-artifacts-{tok}",
        )
    else:
        artifacts = delayed(given, name=f"dli-artifacts-{tok}")

    slots: list = [
        delayed(build_segment, pure=True)(
            plan_key, i, artifacts, storage_options, dask_key_name=f"dli-build-{tok}-{i}"
        )
        for i in range(plan.num_tasks)
    ]
    built = list(slots)
    merged = []
    for stage in plan.merges.stages:
        for step in stage:
            m = delayed(_merge_task, pure=True)(
                plan_key,
                [slots[i] for i in step.inputs],
                storage_options,
                dask_key_name=f"dli-merge-{tok}-{step.output}",
            )
            assert len(slots) == step.output
            slots.append(m)
            merged.append(m)
    commit = delayed(_commit_task, pure=True)(
        plan_key,
        [slots[i] for i in plan.merges.final],
        built,
        merged,
        storage_options,
        plan_seconds,
        artifacts,
        artifacts_uri,
        dask_key_name=f"dli-commit-{tok}",
    )
    return IndexBuild(commit.key, commit.dask, plan, storage_options)
