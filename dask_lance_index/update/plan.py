"""What an update will do, decided before anything runs: a pure planner.

:func:`plan_update` takes the index's committed segments (with whether Lance
can merge each again, :func:`segment_mergeable`) and the live fragments, and
returns an :class:`UpdateDecision`: the new fragments and their build groups,
and the action (``noop``, ``delta``, ``merge``, ``rebuild``) with its reasons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from ..errors import InvalidInputError
from ..plan import FragmentInfo, group_fragments, merge_depth

__all__ = ["ACTIONS", "DEFAULT_MAX_DELTAS", "SegmentState", "UpdateDecision", "plan_update", "segment_mergeable"]

DEFAULT_MAX_DELTAS = 4
ACTIONS = ("noop", "delta", "merge", "rebuild")


@dataclass(frozen=True)
class SegmentState:
    """One committed segment as the planner sees it.

    ``mergeable``: Lance can merge it again (see :func:`segment_mergeable`).
    """

    uuid: str
    fragment_ids: tuple[int, ...]
    num_rows: int
    mergeable: bool


@dataclass(frozen=True)
class UpdateDecision:
    """What an update will do. Pure data; JSON round trip."""

    action: str
    reasons: tuple[str, ...]
    new_fragments: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]
    stale_fragments: tuple[int, ...] = ()
    dropped_segments: tuple[str, ...] = ()
    merge_segments: tuple[str, ...] = ()  # committed segments merged with the new ones
    retrain_advised: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["groups"] = [list(g) for g in self.groups]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UpdateDecision":
        return cls(
            action=d["action"],
            reasons=tuple(d["reasons"]),
            new_fragments=tuple(d["new_fragments"]),
            groups=tuple(tuple(g) for g in d["groups"]),
            stale_fragments=tuple(d.get("stale_fragments", ())),
            dropped_segments=tuple(d.get("dropped_segments", ())),
            merge_segments=tuple(d.get("merge_segments", ())),
            retrain_advised=bool(d.get("retrain_advised", False)),
        )


def plan_update(
    index_type: str,
    segments: Sequence[SegmentState],
    live: dict[int, int],
    *,
    base_segments: int = 1,
    max_deltas: int = DEFAULT_MAX_DELTAS,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    parallelism: int = 1,
    rebuild: bool = True,
    one_segment_reason: str | None = None,
    engine: str | None = None,
) -> UpdateDecision:
    """Decide what an update does. Pure.

    Parameters
    ----------
    index_type : str
    segments : sequence of SegmentState
        The index's committed segments.
    live : dict
        ``{fragment id: rows}`` of the dataset's current version.
    base_segments : int
        Segments the last full build committed; the index may hold up to
        ``base_segments + max_deltas`` before the policy acts.
    max_deltas : int
        Extra segments allowed beside the base.
    num_tasks, rows_per_task, parallelism
        How the new fragments are grouped into build tasks (as in a build).
    rebuild : bool
        When the deltas pass the threshold and Lance cannot merge them
        correctly: ``True`` rebuilds from the saved model, ``False``
        commits the deltas and only advises the rebuild.
    one_segment_reason : str, optional
        Why the build's engine cannot build this index correctly over part of
        the data (dot-metric PQ encoded by Lance): every update is then a
        rebuild, for that reason.
    engine : str, optional
        The engine that built the index: IVF_SQ segments we wrote share their
        bounds and merge (:func:`dask_lance_index.plan.merge_depth`).
    """
    if max_deltas < 0:
        raise InvalidInputError(f"max_deltas must be >= 0, got {max_deltas}")
    covered = {f for s in segments for f in s.fragment_ids}
    new = tuple(sorted(set(live) - covered))
    stale = tuple(sorted(covered - set(live)))
    dropped = tuple(s.uuid for s in segments if s.fragment_ids and not set(s.fragment_ids) & set(live))
    kept = [s for s in segments if s.uuid not in dropped]
    reasons: list[str] = []
    if stale:
        reasons.append(
            f"fragments {list(stale)} are covered by the index but no longer exist (deleted, or compacted "
            "without an index remap): their rows are masked; every fragment the index does not cover is indexed"
        )
    if not new:
        reasons.insert(0, "every fragment of the current version is covered by the index: nothing to update")
        if dropped:
            reasons.append(
                f"segments {[u[:8] for u in dropped]} cover only fragments that no longer exist: harmless "
                "(their rows are gone); the next update that commits removes them"
            )
        return UpdateDecision("noop", tuple(reasons), (), (), stale, (), ())
    if dropped:
        reasons.append(f"segments {[u[:8] for u in dropped]} cover only fragments that no longer exist: removed")
    frags = [FragmentInfo(f, live[f]) for f in new]
    groups = group_fragments(
        frags, num_tasks=num_tasks, rows_per_task=rows_per_task,
        min_tasks=parallelism if rows_per_task is None else 1,
    )
    rows = sum(live[f] for f in new)
    reasons.insert(0, f"{len(new)} fragments ({rows} rows) are not covered by the index")

    if one_segment_reason:
        reasons.append(f"{one_segment_reason}: rebuilt from the saved model as one segment")
        return UpdateDecision("rebuild", tuple(reasons), new, groups, stale, dropped, ())

    limit = base_segments + max_deltas
    total = len(kept) + len(groups)
    if total <= limit:
        reasons.append(f"{total} segments after the update, within base {base_segments} + max_deltas {max_deltas}")
        return UpdateDecision("delta", tuple(reasons), new, groups, stale, dropped, ())

    depth = merge_depth(index_type, engine)
    over = f"{total} segments would pass base {base_segments} + max_deltas {max_deltas}"
    if depth == 0:
        why = f"{over}, and Lance's merge of {index_type} segments is silently wrong (each trains its own bounds)"
        return _rebuild_or_advise(rebuild, reasons, why, new, groups, stale, dropped)
    mergeable = [s for s in kept if s.mergeable]
    after = len(kept) - len(mergeable) + 1
    if after <= limit:
        reasons.append(
            f"{over}: merged the {len(groups)} new and {len(mergeable)} mergeable committed segments into one"
        )
        return UpdateDecision("merge", tuple(reasons), new, groups, stale, dropped, tuple(s.uuid for s in mergeable))
    why = (
        f"{over}, and {len(kept) - len(mergeable)} segments were merged before (or cover the whole data as one "
        f"segment): Lance cannot merge {index_type} segments again"
    )
    return _rebuild_or_advise(rebuild, reasons, why, new, groups, stale, dropped)


def _rebuild_or_advise(rebuild, reasons, why, new, groups, stale, dropped) -> UpdateDecision:
    if rebuild:
        reasons.append(f"{why}: rebuilt the whole index from the saved model (no training)")
        return UpdateDecision("rebuild", tuple(reasons), new, groups, stale, dropped, ())
    reasons.append(f"{why}: committed as deltas; rebuild advised (update_index(..., rebuild=True))")
    return UpdateDecision("delta", tuple(reasons), new, groups, stale, dropped, ())


def segment_mergeable(index_type: str, segment_stats: dict, engine: str | None = None) -> bool:
    """Whether Lance can merge this committed segment again, from its index statistics.

    IVF_FLAT, and IVF_SQ we wrote (shared bounds): always. Other SQ: never. PQ / RQ / HNSW types: only a segment
    built over part of the data and never merged: Lance stores a merged (or
    whole-data) segment's PQ codes transposed and its RQ codes packed, and
    refuses to merge those ("stores transposed PQ codes"), and a merged
    segment has no training loss.
    """
    depth = merge_depth(index_type, engine)
    if depth is None:
        return True
    if depth == 0:
        return False
    sub = segment_stats.get("sub_index") or {}
    return segment_stats.get("loss") is not None and not sub.get("transposed") and not sub.get("packed")
