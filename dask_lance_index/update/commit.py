"""The barrier task of an update: check the delta, commit it, clean up; and its result.

The checks mirror a build's commit (:mod:`dask_lance_index.commit`), whose
transaction and clean-up it shares: the final segments cover exactly the
fragments planned, those still exist, and nothing another writer committed
meanwhile is overwritten or covered twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

from ..commit import (
    IndexResult,
    check_coverage,
    check_fragments_live,
    commit_segments,
    removing_on_failure,
)
from ..commit.results import stage_seconds
from ..errors import CoverageError, DatasetChangedError
from ..storage import SegmentResult, as_lance_index, remove_index_dir
from .plan import UpdateDecision

__all__ = ["CommitUpdate", "RebuildResult", "UpdateResult", "noop_result", "rebuild_result"]


@dataclass(frozen=True)
class UpdateResult(IndexResult):
    """What an update did.

    ``action`` is ``"noop"``, ``"delta"`` (new segments added), ``"merge"``
    (new and mergeable committed segments merged) or ``"rebuild"`` (the whole
    index rebuilt from the saved model); ``reasons`` say why.
    ``drift`` holds the drift measurement; ``retrain_advised`` is True when the
    new rows sit further from the trained centroids than ``drift_threshold``
    times the old rows' distance.
    """

    _TUPLES: ClassVar[tuple[str, ...]] = ("reasons", "new_fragments", "stale_fragments", "segments_added",
                                          "segments_removed")

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

    def warnings(self) -> list[str]:
        out = []
        if self.retrain_advised:
            d = self.drift or {}
            out.append(
                f"the new rows of index {self.name!r} sit {d.get('ratio', float('nan')):.2f}x further from the "
                f"trained IVF centroids than the old rows (threshold {d.get('threshold')}): the data has drifted. "
                "Retraining is advised: dli.create_index(..., replace=True)."
            )
        if self.num_rows_skipped:
            out.append(
                f"{self.num_rows_skipped} new rows were not indexed (null vectors or NaN/inf): Lance never indexes them."
            )
        return out

    def committed_segments(self) -> tuple[str, ...]:
        return self.segments_added

    def __str__(self) -> str:
        s = f"update of {self.index_type} index {self.name!r}: {self.action} at version {self.version}"
        if self.action != "noop":
            s += (f", {len(self.new_fragments)} new fragments, {self.num_segments_built} segments built, "
                  f"{self.num_merges} merges, {self.num_segments} segments now")
        if self.drift and self.drift.get("ratio") is not None:
            s += f"; drift ratio {self.drift['ratio']:.2f}"
        return s + "".join(f"\n  {r}" for r in self.reasons)


@dataclass(frozen=True)
class CommitUpdate:
    """Commit task of an update: called with ``(plan, final, built, merged, drift)``,
    returns the :class:`UpdateResult`.

    Checked: the final segments cover exactly the new fragments plus the
    fragments of the committed segments merged into them; the new fragments
    still exist; the committed segments this update replaces are still part of
    the index; and no other writer has covered the new fragments meanwhile.
    """

    decision: UpdateDecision
    num_segments_before: int = 0
    storage_options: dict | None = None
    plan_seconds: float = 0.0

    def __call__(self, plan, final: list[SegmentResult], built: list[SegmentResult], merged: list[SegmentResult],
                 drift: dict | None) -> UpdateResult:
        t0 = time.time()
        opts, decision = self.storage_options, self.decision
        ours = {s.uuid for s in built} | {s.uuid for s in merged}
        replaced = set(decision.merge_segments) | set(decision.dropped_segments)
        with removing_on_failure(plan.uri, ours, opts):
            committed = commit_segments(plan.uri, plan.name, lambda latest: _delta(plan, decision, final, latest),
                                        opts, attempts=1)
        for uuid in ours - {s.uuid for s in final}:  # new segments a merge consumed: referenced by no version
            remove_index_dir(plan.uri, uuid, opts)
        bad = sum(s.null_rows + s.nan_rows for s in built)
        seconds = {"plan": round(self.plan_seconds, 4), **stage_seconds(built, merged),
                   "commit": round(time.time() - t0, 4)}
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
            segments_added=tuple(s.uuid for s in final),
            segments_removed=tuple(sorted(replaced)),
            num_segments=self.num_segments_before - len(replaced) + len(final),
            num_segments_built=len(built),
            num_merges=len(merged),
            num_rows_indexed=sum(s.num_rows for s in built) - bad,
            num_rows_skipped=bad,
            drift=drift,
            retrain_advised=bool(drift and drift.get("retrain_advised")),
            seconds=seconds,
        )


def _delta(plan, decision: UpdateDecision, final: list[SegmentResult], latest):
    """The update's transaction on ``latest``: its segments, replacing the committed
    segments merged into them and those that cover only fragments that are gone."""
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
    check_coverage(set(decision.new_fragments) | merged_frags, [(s.uuid, s.fragment_ids) for s in final])
    check_fragments_live(latest, decision.new_fragments, plan.version, "update")
    theirs = {f for u, s in current.items() if u not in replaced for f in s.fragment_ids}
    overlap = sorted(theirs & set(decision.new_fragments))
    if overlap:
        raise CoverageError(
            f"fragments {overlap} were indexed by another writer during this update; committing would "
            "cover them twice. Nothing was committed."
        )
    return [s.index for s in final], [as_lance_index(desc, current[u]) for u in sorted(replaced)]


def noop_result(uri, name, index_type, version, decision: UpdateDecision, plan_seconds) -> UpdateResult:
    return UpdateResult(
        uri=uri, name=name, index_type=index_type, action="noop", reasons=decision.reasons,
        version=version, read_version=version, stale_fragments=decision.stale_fragments,
        seconds={"plan": round(plan_seconds, 4)},
    )


@dataclass(frozen=True)
class RebuildResult:
    """An update that rebuilt the index: the build's result as the update's."""

    decision: UpdateDecision
    replaced: tuple[str, ...]

    def __call__(self, build_result, drift: dict | None) -> UpdateResult:
        return rebuild_result(build_result, self.decision, drift, self.replaced)


def rebuild_result(build_result, decision: UpdateDecision, drift: dict | None, replaced: tuple) -> UpdateResult:
    r = build_result
    return UpdateResult(
        uri=r.uri, name=r.name, index_type=r.index_type, action="rebuild", reasons=decision.reasons,
        version=r.version, read_version=r.read_version, new_fragments=decision.new_fragments,
        stale_fragments=decision.stale_fragments, segments_added=tuple(r.segments),
        segments_removed=tuple(replaced), num_segments=len(r.segments), num_segments_built=r.num_segments_built,
        num_merges=r.num_merges, num_rows_indexed=r.num_rows_indexed, num_rows_skipped=r.num_rows_skipped,
        drift=drift, retrain_advised=bool(drift and drift.get("retrain_advised")), seconds=dict(r.seconds),
    )
