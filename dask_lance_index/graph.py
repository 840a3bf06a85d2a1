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

import dask
from dask.delayed import Delayed, delayed

from .artifacts import IndexArtifacts
from .commit import BuildResult, commit_index
from .plan import IndexPlan
from .tasks import build_task, index_of, merge_task, sample_task, train_task

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
    if getattr(result, "num_rows_unindexed", 0):
        warnings.warn(
            f"{result.num_rows_unindexed} rows appended during the build are not in the index "
            "(queries still find them, by a slower flat scan). Fix: build again, or let Lance's "
            "optimize_indices add them.",
            UserWarning,
            stacklevel=3,
        )
    log.info("%s", result)
    return result


def _finish(results, journal: str | None = None, storage_options: dict | None = None) -> BuildResult:
    if journal is not None:
        from .cleanup import finish_journal

        finish_journal(journal, results[0], storage_options)
    return report(results[0])


class IndexBuild(Delayed):
    """A lazy index build: a dask collection whose result is a :class:`BuildResult`.

    ``build.compute()`` (or ``dask.compute(build)``, or ``client.compute(build)``)
    runs it; ``build.plan`` is the :class:`IndexPlan` it carries out. The
    warning about unindexed rows is raised where dask finalises the result: on
    a distributed cluster that is a worker, so use :func:`dask_lance_index.run`
    to have it raised in your process.
    """

    __slots__ = ("plan", "storage_options", "journal")

    def __init__(self, key, dsk, plan: IndexPlan, storage_options: dict | None = None,
                 journal: str | None = None):
        super().__init__(key, dsk)
        self.plan = plan
        self.storage_options = storage_options
        self.journal = journal  # location of the build journal (dask_lance_index.journal), if any

    def __dask_postcompute__(self):
        return _finish, (self.journal, self.storage_options)

    def __repr__(self) -> str:
        return f"IndexBuild({self.plan.params.index_type} {self.plan.name!r}, {len(self.dask)} tasks)"


def _commit_task(plan, final, built, merged, storage_options, plan_seconds, artifacts, saved_artifacts_uri=None):
    result = commit_index(
        plan,
        [index_of(x) for x in final],
        built,
        merged,
        storage_options,
        plan_seconds=plan_seconds,
        artifacts_source=artifacts.source,
    )
    from .saved import save_after_build  # artifacts kept for dli.update_index

    save_after_build(plan, artifacts, result, storage_options, saved_artifacts_uri)
    return result


def build_graph(
    plan: IndexPlan,
    given: IndexArtifacts,
    storage_options: dict | None = None,
    plan_seconds: float = 0.0,
    journal: str | None = None,
    retries: int = 2,
    artifact_uri: str | None = None,
    encode: bool = True,
    drop_artifact: bool = False,
    saved_artifacts_uri: str | None = None,
) -> IndexBuild:
    """The lazy graph that carries out ``plan``; ``given`` holds user-supplied artifacts.

    With ``journal`` (a location), tasks journal their results there and reuse
    results journaled by an earlier attempt (:mod:`.tasks`).

    For ``plan.engine == "artifact"``: the partition artifact's root, whether
    to encode it (False: finalize an existing one) and whether to delete it
    after the commit (:mod:`.artifact_build`).
    """
    from ._lance import hide_secrets

    storage_options = hide_secrets(storage_options)  # a worker logs a failing task's arguments
    tok = plan.build_id[:8]
    plan_key = delayed(plan, name=f"dli-plan-{tok}")

    # Lost or failing sample/train/build/merge tasks are retried (they are idempotent:
    # a retried task replaces its own partial output); the commit task is not.
    with dask.annotate(retries=retries):
        if plan.train:
            samples = [
                delayed(sample_task, pure=True)(
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
                    journal=journal,
                    dask_key_name=f"dli-sample-{tok}-{frag.fragment_id}",
                )
                for frag, n in zip(plan.fragments, plan.samples)
                if n > 0
            ]
            artifacts = delayed(train_task, pure=True)(
                samples,
                journal=journal,
                storage_options=storage_options,
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

        if plan.engine == "artifact":
            from .artifact_build import artifact_tasks

            slots: list = artifact_tasks(plan, plan_key, artifacts, artifact_uri, storage_options, tok, encode)
        else:
            slots = [
                delayed(build_task, pure=True)(
                    plan_key, i, artifacts, storage_options, journal, dask_key_name=f"dli-build-{tok}-{i}"
                )
                for i in range(plan.num_tasks)
            ]
        built = list(slots)
        merged = []
        for stage in plan.merges.stages:
            for step in stage:
                m = delayed(merge_task, pure=True)(
                    plan_key,
                    step.output,
                    [slots[i] for i in step.inputs],
                    storage_options,
                    journal,
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
        saved_artifacts_uri,
        dask_key_name=f"dli-commit-{tok}",
    )
    if drop_artifact:
        from .artifact_build import drop_artifact as _drop

        commit = delayed(_drop, pure=True)(commit, artifact_uri, storage_options,
                                           dask_key_name=f"dli-drop-artifact-{tok}")
    return IndexBuild(commit.key, commit.dask, plan, storage_options, journal)
