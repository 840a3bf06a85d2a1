"""The build task: one Lance segment from one group of fragments.

Each task opens the dataset itself at the plan's pinned version (a handle
shared across threads fails in Lance), writes its segment under a uuid that is
unique to the build and task and the same when the task is retried, and counts
the rows Lance will leave out (null vectors, vectors with NaN or infinity),
which Lance skips silently while its statistics still count them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .artifacts import IndexArtifacts
from .plan import IndexPlan

__all__ = ["SegmentResult", "build_segment"]


@dataclass(frozen=True)
class SegmentResult:
    """What one build task produced."""

    task: int
    uuid: str
    index: object  # lance.dataset.Index: pickles in about 1 KB
    fragment_ids: tuple[int, ...]
    num_rows: int
    null_rows: int
    nan_rows: int
    started: float
    finished: float


def build_segment(
    plan: IndexPlan,
    task: int,
    artifacts: IndexArtifacts,
    storage_options: dict | None = None,
) -> SegmentResult:
    """Build task ``task`` of ``plan``: write one uncommitted segment.

    A retried task first removes whatever its earlier attempt wrote under the
    same uuid, so no partial files survive and no other task's files are touched.
    """
    from ._lance import iter_vectors, open_dataset, remove_index_dir

    t0 = time.time()
    fragment_ids = list(plan.groups[task])
    uuid = plan.segment_uuid(task)
    ds = open_dataset(plan.uri, plan.version, storage_options)
    remove_index_dir(plan.uri, uuid, storage_options)

    # Count what Lance will skip: it never indexes null or non-finite vectors.
    bad = nulls = 0
    for _, valid, batch_nulls in iter_vectors(ds, plan.column, plan.dimension, fragment_ids):
        bad += int((~valid).sum())
        nulls += batch_nulls
    rows = {f.fragment_id: f.num_rows for f in plan.fragments}

    kwargs = plan.params.lance_kwargs()
    if artifacts.ivf_centroids is not None:
        kwargs["ivf_centroids"] = artifacts.ivf_centroids
    if artifacts.pq_codebook is not None:
        kwargs["pq_codebook"] = artifacts.pq_codebook
    if artifacts.rabitq_model is not None:
        kwargs["rabitq_model"] = artifacts.rabitq_model
    index = ds.create_index_uncommitted(
        plan.column,
        plan.params.index_type,
        name=plan.name,
        replace=plan.replace,
        fragment_ids=fragment_ids,
        index_uuid=uuid,
        **kwargs,
    )
    return SegmentResult(
        task=task,
        uuid=uuid,
        index=index,
        fragment_ids=tuple(fragment_ids),
        num_rows=sum(rows[f] for f in fragment_ids),
        null_rows=int(nulls),
        nan_rows=int(bad - nulls),
        started=t0,
        finished=time.time(),
    )
