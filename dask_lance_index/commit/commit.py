"""The barrier task: check the segments, commit them as one index in one transaction, clean up.

Before committing, :class:`CommitIndex` checks that the final segments cover
every planned fragment exactly once and that those fragments still exist
(:mod:`.checks`), and it replaces an old index atomically, in the same
transaction, instead of adding a delta beside it. A commit that loses a race
to another writer's is checked again against the version that writer made.
If anything fails, every segment the job wrote is removed (other builds may be
in flight on the same dataset: only its own); after a successful commit, the
segments a merge consumed (referenced by no version) are removed, and the
model is saved for later updates (:mod:`.saved`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import lance
from lance import LanceOperation
from lance.commit import CommitConflictError

from ..errors import DatasetChangedError, IndexExistsError
from ..storage import SegmentResult, as_lance_index, open_dataset, remove_index_dir
from .checks import check_coverage, check_fragments_live
from .results import BuildResult, stage_seconds
from .saved import save_after_build

__all__ = ["COMMIT_ATTEMPTS", "CommitIndex", "commit_segments", "removing_on_failure"]

log = logging.getLogger("dask_lance_index")

# How often a commit that lost a race to another writer's commit is checked and tried again.
COMMIT_ATTEMPTS = 5


@contextlib.contextmanager
def removing_on_failure(uri: str, uuids: Iterable[str], storage_options: dict | None = None) -> Iterator[None]:
    """Remove the segments ``uuids`` if the block fails: nothing of the job was published."""
    try:
        yield
    except BaseException:
        for uuid in uuids:
            remove_index_dir(uri, uuid, storage_options)
        raise


def commit_segments(uri: str, name: str, check: Callable, storage_options: dict | None = None,
                    attempts: int = COMMIT_ATTEMPTS):
    """One CreateIndex transaction: ``check(latest)`` looks at the dataset's latest
    version and returns ``(new segments, removed segments)`` or the dataset when the
    job is committed already; Lance commits on that version. A commit that loses a
    race to another writer's is checked again on the version that writer made.
    Returns the committed dataset."""
    for attempt in range(attempts):
        latest = open_dataset(uri, None, storage_options)
        decided = check(latest)
        if not isinstance(decided, tuple):
            return decided  # committed already, by an earlier attempt of this job
        new, removed = decided
        try:
            return lance.LanceDataset.commit(
                uri,
                LanceOperation.CreateIndex(new_indices=list(new), removed_indices=list(removed)),
                read_version=latest.version,
                storage_options=storage_options,
            )
        except CommitConflictError as exc:
            # Lance refused because a concurrent transaction landed first: check
            # again against the version it made (it may be a racing index).
            last = exc
            log.info("commit of %s lost a race (%s); checking again", name, exc)
            time.sleep(0.05 * (attempt + 1))
    raise DatasetChangedError(
        f"the commit of index {name!r} lost {attempts} races to other writers' commits "
        f"({last}). Nothing was committed. Fix: run the build again when the dataset is quieter."
    )


@dataclass(frozen=True)
class CommitIndex:
    """Commit task of one build: called with ``(plan, final, built, merged, model)`` (the
    final, built and merged segments' :class:`~dask_lance_index.storage.SegmentResult`),
    returns the :class:`BuildResult`.

    ``plan_seconds``: how long planning took (for the result's seconds);
    ``model_uri``: where to save the model for updates (None: beside the index).
    """

    storage_options: dict | None = None
    plan_seconds: float = 0.0
    model_uri: str | None = None

    def __call__(self, plan, final: list[SegmentResult], built: list[SegmentResult], merged: list[SegmentResult],
                 model) -> BuildResult:
        t0 = time.time()
        opts = self.storage_options
        ours = {s.uuid for s in built} | {s.uuid for s in merged} | {s.uuid for s in final}
        planned = [f.fragment_id for f in plan.fragments]
        with removing_on_failure(plan.uri, ours, opts):
            check_coverage(planned, [(s.uuid, s.fragment_ids) for s in final])
            committed = commit_segments(plan.uri, plan.name, lambda latest: _build_delta(plan, planned, final, latest),
                                        opts)
        appended = sum(int(f.metadata.num_rows) for f in committed.get_fragments() if f.fragment_id not in set(planned))
        # Segments a merge consumed are referenced by no version: delete them now.
        for uuid in ours - {s.uuid for s in final}:
            remove_index_dir(plan.uri, uuid, opts)
        src = model.source or {}
        # Every stage is always reported (0.0 when it did not run), so tables line up.
        seconds = {"plan": round(self.plan_seconds, 4), "sample": float(src.get("sample_seconds", 0.0)),
                   "train": float(src.get("train_seconds", 0.0)), **stage_seconds(built, merged),
                   "commit": round(time.time() - t0, 4)}
        null_rows = sum(s.null_rows for s in built)
        nan_rows = sum(s.nan_rows for s in built)
        result = BuildResult(
            uri=plan.uri,
            name=plan.name,
            index_type=plan.params.index_type,
            version=committed.version,
            read_version=plan.version,
            segments=tuple(s.uuid for s in final),
            num_rows_indexed=sum(s.num_rows for s in built) - null_rows - nan_rows,
            num_rows_skipped=null_rows + nan_rows,
            null_rows=null_rows,
            nan_rows=nan_rows,
            num_segments_built=len(built),
            num_merges=len(merged),
            seconds=seconds,
            build_id=plan.build_id,
            num_rows_unindexed=appended,
            assignment_agreement=src.get("assignment_agreement"),
            coarse_probes=src.get("coarse_probes"),
            build_agreement=_agreement(built),
        )
        save_after_build(plan, model, result, opts, self.model_uri)  # kept for dli.update_index
        return result


def _agreement(built: list[SegmentResult]) -> float | None:
    """The build tasks' audit of a two-level assignment, pooled (None: nothing checked)."""
    checked = sum(s.checked_rows for s in built)
    return round(sum(s.agreeing_rows for s in built) / checked, 5) if checked else None


def _build_delta(plan, planned: list, final: list[SegmentResult], latest):
    """The build's transaction on ``latest``: its segments, replacing an old index of
    the same name (``replace=True``), or ``latest`` itself when committed already."""
    check_fragments_live(latest, planned, plan.version, "build")
    removed = []
    ours = {s.uuid for s in final}
    for desc in latest.describe_indices():
        if desc.name == plan.name:
            if {seg.uuid for seg in desc.segments} == ours:
                return latest  # committed already, by an earlier attempt of this build
            if not plan.replace:
                raise IndexExistsError(
                    f"an index named {plan.name!r} was committed by another writer during this "
                    "build. Fix: pass replace=True, or choose another name."
                )
            removed = [as_lance_index(desc, seg) for seg in desc.segments]
    return [s.index for s in final], removed
