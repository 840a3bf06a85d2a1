"""The barrier task: check the segments, commit them as one index, clean up.

Lance's commit accepts segments that cover nothing (after a compaction), cover
a fragment twice, or sit next to an old index of the same name; each of those
is a silently worse index. So before committing, this task checks that the
final segments cover every planned fragment exactly once and that those
fragments still exist, and it replaces an old index atomically, in the same
transaction, instead of adding a delta beside it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from .errors import CoverageError, DatasetChangedError, IndexExistsError
from .plan import IndexPlan

__all__ = ["BuildResult", "check_coverage", "commit_index"]


@dataclass(frozen=True)
class BuildResult:
    """What a committed build did.

    Attributes
    ----------
    uri, name, index_type : str
    version : int
        The dataset version that holds the new index.
    read_version : int
        The version the build read (the plan's pinned version).
    segments : tuple of str
        UUIDs of the committed segments.
    num_rows_indexed : int
        Rows in the index.
    num_rows_skipped : int
        Rows Lance left out: null vectors plus vectors with NaN or infinity.
    num_rows_unindexed : int
        Rows of the committed version the index does not cover: rows appended
        by other writers during the build (Lance scans them flat at query time).
    null_rows, nan_rows : int
        The two kinds of skipped rows.
    num_segments_built, num_merges : int
    seconds : dict
        Wall seconds per stage: plan, sample, train, build, merge, commit (each
        present, 0.0 for a stage that did not run), and ``total`` when the build
        ran through :func:`~dask_lance_index.create_index` or :func:`~dask_lance_index.run`.
    build_id : str
    """

    uri: str
    name: str
    index_type: str
    version: int
    read_version: int
    segments: tuple[str, ...]
    num_rows_indexed: int
    num_rows_skipped: int
    null_rows: int
    nan_rows: int
    num_segments_built: int
    num_merges: int
    seconds: dict = field(default_factory=dict)
    build_id: str = ""
    num_rows_unindexed: int = 0

    def dataset(self, storage_options: dict | None = None):
        """The dataset at the version this build committed."""
        from ._lance import open_dataset

        return open_dataset(self.uri, self.version, storage_options)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segments"] = list(self.segments)
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: dict) -> "BuildResult":
        d = dict(d)
        d["segments"] = tuple(d["segments"])
        return cls(**d)

    def __str__(self) -> str:
        secs = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        s = (
            f"{self.index_type} index {self.name!r} committed at version {self.version}: "
            f"{self.num_rows_indexed} rows in {len(self.segments)} segment(s) "
            f"({self.num_segments_built} built, {self.num_merges} merges); {secs}"
        )
        if self.num_rows_skipped:
            s += f"; {self.num_rows_skipped} rows not indexed ({self.null_rows} null, {self.nan_rows} NaN/inf)"
        if self.num_rows_unindexed:
            s += f"; {self.num_rows_unindexed} rows appended during the build are not in the index"
        return s


def check_coverage(planned: Iterable[int], segments: Sequence[tuple[str, Iterable[int]]]) -> None:
    """Raise :class:`CoverageError` unless the segments cover ``planned`` exactly once. Pure.

    ``segments`` holds ``(uuid, fragment ids)`` pairs.
    """
    planned = set(planned)
    seen: dict[int, str] = {}
    for uuid, frags in segments:
        frags = list(frags)
        if not frags:
            raise CoverageError(f"segment {uuid} covers no fragment")
        for f in frags:
            if f in seen:
                raise CoverageError(f"fragment {f} is covered twice: by segments {seen[f]} and {uuid}")
            if f not in planned:
                raise CoverageError(f"segment {uuid} covers fragment {f}, which is not in the plan")
            seen[f] = uuid
    missing = planned - set(seen)
    if missing:
        raise CoverageError(f"fragments {sorted(missing)} are covered by no segment")


def _as_lance_index(desc, seg, files=None):
    """A ``lance.dataset.Index`` for committed segment ``seg`` of index ``desc``
    (``files``: its file list, which Lance's merge reads)."""
    from lance.dataset import Index

    extra = {} if files is None else {"files": files}
    return Index(
        uuid=seg.uuid,
        name=desc.name,
        fields=list(desc.fields),
        dataset_version=seg.dataset_version_at_last_update,
        fragment_ids=set(seg.fragment_ids),
        index_version=seg.index_version,
        **extra,
    )


def commit_index(
    plan: IndexPlan,
    final: list,
    built: list,
    merged: list,
    storage_options: dict | None = None,
    plan_seconds: float = 0.0,
    artifacts_source: dict | None = None,
) -> BuildResult:
    """Commit task: validate coverage, commit atomically, delete merged-away segments.

    Parameters
    ----------
    final : list of lance.dataset.Index
        The segments to commit (the merge plan's final slots).
    built : list of SegmentResult
        Every build task's result, for the row counts.
    merged : list of (Index, (started, finished))
        Every merge step's result, for timing.
    """
    from ._lance import remove_index_dir

    t0 = time.time()
    ours = {r.uuid for r in built} | {ix.uuid for ix, _ in merged} | {ix.uuid for ix in final}
    try:
        committed = _check_and_commit(plan, final, storage_options)
    except BaseException:
        # Nothing of this build was published: remove every segment it wrote,
        # and only those (other builds may be in flight on the same dataset).
        for uuid in ours:
            remove_index_dir(plan.uri, uuid, storage_options)
        raise
    planned = {f.fragment_id for f in plan.fragments}
    appended = sum(int(f.metadata.num_rows) for f in committed.get_fragments() if f.fragment_id not in planned)
    # Segments a merge consumed are referenced by no version: delete them now.
    final_uuids = {ix.uuid for ix in final}
    for uuid in ours - final_uuids:
        remove_index_dir(plan.uri, uuid, storage_options)

    t1 = time.time()
    seconds: dict[str, float] = {"plan": round(plan_seconds, 4)}
    src = artifacts_source or {}
    seconds["sample"] = float(src.get("sample_seconds", 0.0))
    seconds["train"] = float(src.get("train_seconds", 0.0))
    # Every stage is always reported (0.0 when it did not run), so tables line up.
    seconds["build"] = round(max(r.finished for r in built) - min(r.started for r in built), 4) if built else 0.0
    seconds["merge"] = round(max(t[1] for _, t in merged) - min(t[0] for _, t in merged), 4) if merged else 0.0
    seconds["commit"] = round(t1 - t0, 4)
    null_rows = sum(r.null_rows for r in built)
    nan_rows = sum(r.nan_rows for r in built)
    total_rows = sum(r.num_rows for r in built)
    return BuildResult(
        uri=plan.uri,
        name=plan.name,
        index_type=plan.params.index_type,
        version=committed.version,
        read_version=plan.version,
        segments=tuple(ix.uuid for ix in final),
        num_rows_indexed=total_rows - null_rows - nan_rows,
        num_rows_skipped=null_rows + nan_rows,
        null_rows=null_rows,
        nan_rows=nan_rows,
        num_segments_built=len(built),
        num_merges=len(merged),
        seconds=seconds,
        build_id=plan.build_id,
        num_rows_unindexed=appended,
    )


# How often a commit that lost a race to another writer's commit is checked and tried again.
COMMIT_ATTEMPTS = 5


def _check_and_commit(plan: IndexPlan, final: list, storage_options: dict | None):
    """Coverage check, then dataset checks and one CreateIndex transaction, again
    on the new version when another writer's commit wins the race."""
    from lance.commit import CommitConflictError

    planned = [f.fragment_id for f in plan.fragments]
    check_coverage(planned, [(ix.uuid, list(ix.fragment_ids)) for ix in final])
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return _commit_once(plan, planned, final, storage_options)
        except CommitConflictError as exc:
            # Lance refused because a concurrent transaction landed first: check
            # again against the version it made (it may be a racing index).
            last = exc
            logging.getLogger("dask_lance_index").info("commit of %s lost a race (%s); checking again", plan.name, exc)
            time.sleep(0.05 * (attempt + 1))
    raise DatasetChangedError(
        f"the commit of index {plan.name!r} lost {COMMIT_ATTEMPTS} races to other writers' commits "
        f"({last}). Nothing was committed. Fix: run the build again when the dataset is quieter."
    )


def deleted_fragments(ds, since_version: int) -> set[int]:
    """Fragments that Delete transactions removed after ``since_version`` (all their rows deleted)."""
    n = ds.version - since_version
    out: set[int] = set()
    if n <= 0:
        return out
    for t in ds.get_transactions(n):
        if t is not None and t.read_version >= since_version:
            out.update(getattr(t.operation, "deleted_fragment_ids", None) or ())
    return out


def _commit_once(plan: IndexPlan, planned: list, final: list, storage_options: dict | None):
    import lance
    from lance import LanceOperation

    from ._lance import open_dataset

    latest = open_dataset(plan.uri, None, storage_options)
    live = {f.fragment_id for f in latest.get_fragments()}
    # A fragment whose rows were all deleted is harmless to cover; one that a
    # compaction or update rewrote would leave its rows outside the index.
    gone = sorted(set(planned) - live - deleted_fragments(latest, plan.version))
    if gone:
        raise DatasetChangedError(
            f"fragments {gone} of version {plan.version} no longer exist at version "
            f"{latest.version} (compacted or deleted during the build); committing now would "
            "give an index that covers them as nothing. Fix: build again on the current version."
        )
    removed = []
    ours = {ix.uuid for ix in final}
    for desc in latest.describe_indices():
        if desc.name == plan.name:
            if {seg.uuid for seg in desc.segments} == ours:
                return latest  # committed already, by an earlier attempt of this build
            if not plan.replace:
                raise IndexExistsError(
                    f"an index named {plan.name!r} was committed by another writer during this "
                    "build. Fix: pass replace=True, or choose another name."
                )
            removed = [_as_lance_index(desc, seg) for seg in desc.segments]
    return lance.LanceDataset.commit(
        plan.uri,
        LanceOperation.CreateIndex(new_indices=list(final), removed_indices=removed),
        read_version=latest.version,
        storage_options=storage_options,
    )
