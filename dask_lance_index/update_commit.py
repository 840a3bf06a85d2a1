"""The barrier task of an update: check the delta, commit it, clean up; and its result.

The checks mirror a build's commit (:mod:`.commit`): the final segments cover
exactly the fragments planned, those still exist, and nothing another writer
committed meanwhile is overwritten or covered twice.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, field

from .build import SegmentResult
from .errors import CoverageError, DatasetChangedError
from .plan import IndexPlan
from .update_plan import UpdateDecision

__all__ = ["UpdateResult", "commit_update", "report_update"]

log = logging.getLogger("dask_lance_index")


@dataclass(frozen=True)
class UpdateResult:
    """What an update did.

    ``action`` is ``"noop"``, ``"delta"`` (new segments added), ``"merge"``
    (new and mergeable committed segments merged) or ``"rebuild"`` (the whole
    index rebuilt from the saved artifacts); ``reasons`` say why.
    ``drift`` holds the drift measurement; ``retrain_advised`` is True when the
    new rows sit further from the trained centroids than ``drift_threshold``
    times the old rows' distance.
    """

    uri: str
    name: str
    index_type: str
    action: str
    reasons: tuple[str, ...]
    version: int
    read_version: int
    new_fragments: tuple[int, ...] = ()
    stale_fragments: tuple[int, ...] = ()
    segments_added: tuple[str, ...] = ()
    segments_removed: tuple[str, ...] = ()
    num_segments: int = 0
    num_segments_built: int = 0
    num_merges: int = 0
    num_rows_indexed: int = 0
    num_rows_skipped: int = 0
    drift: dict | None = None
    retrain_advised: bool = False
    seconds: dict = field(default_factory=dict)

    def dataset(self, storage_options: dict | None = None):
        from ._lance import open_dataset

        return open_dataset(self.uri, self.version, storage_options)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("reasons", "new_fragments", "stale_fragments", "segments_added", "segments_removed"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UpdateResult":
        d = dict(d)
        for k in ("reasons", "new_fragments", "stale_fragments", "segments_added", "segments_removed"):
            d[k] = tuple(d[k])
        return cls(**d)

    def __str__(self) -> str:
        s = f"update of {self.index_type} index {self.name!r}: {self.action} at version {self.version}"
        if self.action != "noop":
            s += (f", {len(self.new_fragments)} new fragments, {self.num_segments_built} segments built, "
                  f"{self.num_merges} merges, {self.num_segments} segments now")
        if self.drift and self.drift.get("ratio") is not None:
            s += f"; drift ratio {self.drift['ratio']:.2f}"
        return s + "".join(f"\n  {r}" for r in self.reasons)


def report_update(result: UpdateResult) -> UpdateResult:
    """Warn about retraining and unindexed rows in the calling process, and log."""
    if result.retrain_advised:
        d = result.drift or {}
        warnings.warn(
            f"the new rows of index {result.name!r} sit {d.get('ratio', float('nan')):.2f}x further from the "
            f"trained IVF centroids than the old rows (threshold {d.get('threshold')}): the data has drifted. "
            "Retraining is advised: dli.create_index(..., replace=True).",
            UserWarning,
            stacklevel=3,
        )
    if result.num_rows_skipped:
        warnings.warn(
            f"{result.num_rows_skipped} new rows were not indexed (null vectors or NaN/inf): Lance never indexes them.",
            UserWarning,
            stacklevel=3,
        )
    log.info("%s", result)
    return result


def _index_of(x):
    if isinstance(x, SegmentResult):
        return x.index
    return x[0] if isinstance(x, tuple) else x


def commit_update(
    plan: IndexPlan,
    decision: UpdateDecision,
    final: list,
    built: list,
    merged: list,
    drift: dict | None,
    storage_options: dict | None = None,
    plan_seconds: float = 0.0,
    num_segments_before: int = 0,
) -> UpdateResult:
    """Commit task: check the delta, commit it in one CreateIndex transaction, clean up.

    Checked: the final segments cover exactly the new fragments plus the
    fragments of the committed segments merged into them; the new fragments
    still exist; the committed segments this update replaces are still part of
    the index; and no other writer has covered the new fragments meanwhile.
    """
    from ._lance import remove_index_dir

    t0 = time.time()
    final_ix = [_index_of(x) for x in final]
    merged_ix = [_index_of(x) for x in merged]
    ours = {r.uuid for r in built} | {ix.uuid for ix in merged_ix}
    try:
        committed, removed = _check_and_commit_update(plan, decision, final_ix, storage_options)
    except BaseException:
        for u in ours:
            remove_index_dir(plan.uri, u, storage_options)
        raise
    final_uuids = {ix.uuid for ix in final_ix}
    for u in ours - final_uuids:  # new segments a merge consumed: referenced by no version
        remove_index_dir(plan.uri, u, storage_options)
    null_rows = sum(r.null_rows for r in built)
    bad = null_rows + sum(r.nan_rows for r in built)
    seconds = {"plan": round(plan_seconds, 4)}
    if built:
        seconds["build"] = round(max(r.finished for r in built) - min(r.started for r in built), 4)
    if merged:
        seconds["merge"] = round(max(x[1][1] for x in merged) - min(x[1][0] for x in merged), 4)
    seconds["commit"] = round(time.time() - t0, 4)
    return UpdateResult(
        uri=plan.uri,
        name=plan.name,
        index_type=plan.params.index_type,
        action=decision.action,
        reasons=decision.reasons,
        version=committed.version,
        read_version=plan.version,
        new_fragments=decision.new_fragments,
        stale_fragments=decision.stale_fragments,
        segments_added=tuple(ix.uuid for ix in final_ix),
        segments_removed=tuple(removed),
        num_segments=num_segments_before - len(removed) + len(final_ix),
        num_segments_built=len(built),
        num_merges=len(merged),
        num_rows_indexed=sum(r.num_rows for r in built) - bad,
        num_rows_skipped=bad,
        drift=drift,
        retrain_advised=bool(drift and drift.get("retrain_advised")),
        seconds=seconds,
    )


def _check_and_commit_update(plan: IndexPlan, decision: UpdateDecision, final: list, storage_options):
    import lance
    from lance import LanceOperation

    from ._lance import open_dataset
    from .commit import _as_lance_index, check_coverage

    latest = open_dataset(plan.uri, None, storage_options)
    desc = next((d for d in latest.describe_indices() if d.name == plan.name), None)
    if desc is None:
        raise DatasetChangedError(
            f"index {plan.name!r} was dropped during the update. Fix: build it again with dli.create_index."
        )
    current = {s.uuid: s for s in desc.segments}
    replaced = set(decision.merge_segments) | set(decision.dropped_segments)
    missing = sorted(replaced - set(current))
    if missing:
        raise DatasetChangedError(
            f"segments {[m[:8] for m in missing]} of index {plan.name!r} were replaced by another writer "
            "during the update (a compaction's remap, an optimize or a rebuild). Fix: run update_index again."
        )
    merged_frags = {f for u in decision.merge_segments for f in current[u].fragment_ids}
    check_coverage(set(decision.new_fragments) | merged_frags, [(ix.uuid, list(ix.fragment_ids)) for ix in final])
    live = {f.fragment_id for f in latest.get_fragments()}
    gone = sorted(set(decision.new_fragments) - live)
    if gone:
        raise DatasetChangedError(
            f"fragments {gone} of version {plan.version} no longer exist at version {latest.version} "
            "(compacted or deleted during the update). Fix: run update_index again."
        )
    theirs = {f for u, s in current.items() if u not in replaced for f in s.fragment_ids}
    overlap = sorted(theirs & set(decision.new_fragments))
    if overlap:
        raise CoverageError(
            f"fragments {overlap} were indexed by another writer during this update; committing would "
            "cover them twice. Nothing was committed."
        )
    removed = [_as_lance_index(desc, current[u]) for u in sorted(replaced)]
    ds = lance.LanceDataset.commit(
        plan.uri,
        LanceOperation.CreateIndex(new_indices=list(final), removed_indices=removed),
        read_version=latest.version,
        storage_options=storage_options,
    )
    return ds, sorted(replaced)


def _noop_result(uri, name, index_type, version, decision: UpdateDecision, plan_seconds) -> UpdateResult:
    return UpdateResult(
        uri=uri, name=name, index_type=index_type, action="noop", reasons=decision.reasons,
        version=version, read_version=version, stale_fragments=decision.stale_fragments,
        seconds={"plan": round(plan_seconds, 4)},
    )


def _rebuild_result(build_result, decision: UpdateDecision, drift: dict | None, replaced: tuple) -> UpdateResult:
    r = build_result
    return UpdateResult(
        uri=r.uri, name=r.name, index_type=r.index_type, action="rebuild", reasons=decision.reasons,
        version=r.version, read_version=r.read_version, new_fragments=decision.new_fragments,
        stale_fragments=decision.stale_fragments, segments_added=tuple(r.segments),
        segments_removed=tuple(replaced), num_segments=len(r.segments), num_segments_built=r.num_segments_built,
        num_merges=r.num_merges, num_rows_indexed=r.num_rows_indexed, num_rows_skipped=r.num_rows_skipped,
        drift=drift, retrain_advised=bool(drift and drift.get("retrain_advised")), seconds=dict(r.seconds),
    )
