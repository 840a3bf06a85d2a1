"""Staged merges of built segments: a pure planner.

What Lance merges correctly differs per index type (pylance 14.0.2, measured;
``docs/lance.md``):

* IVF_FLAT merges at any depth, so large builds merge as a tree of stages;
* IVF_PQ, IVF_RQ, IVF_HNSW_FLAT and IVF_HNSW_PQ merge one level only (a merged
  segment cannot be merged again: "stores transposed PQ codes" / "packed RQ codes");
* IVF_SQ and IVF_HNSW_SQ never when Lance encodes them: each segment trains its
  own SQ bounds and the merged index is silently wrong (recall 0.945 -> 0.41), so
  their segments are committed unmerged. IVF_SQ segments that share one pair of
  bounds (the ``precomputed`` engine writes them so) merge correctly at any depth
  (:func:`merge_depth`).

Segments are addressed by *slot*: build task ``i`` fills slot ``i``; each merge
step reads some slots and fills a new one, numbered after all earlier slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import InvalidInputError

__all__ = ["MERGE_DEPTH", "MergePlan", "MergeStep", "merge_depth", "plan_merges"]

# How many times a segment of each type can go through Lance's merge.
# None: any depth; 0: never.
MERGE_DEPTH: dict[str, int | None] = {
    "IVF_FLAT": None,
    "IVF_PQ": 1,
    "IVF_RQ": 1,
    "IVF_HNSW_FLAT": 1,
    "IVF_HNSW_PQ": 1,
    "IVF_SQ": 0,
    "IVF_HNSW_SQ": 0,
    # Scalar and full-text segments merge at any depth (measured; plan/scalar.py).
    **{t: None for t in ("BTREE", "BITMAP", "LABEL_LIST", "INVERTED", "NGRAM", "ZONEMAP", "BLOOMFILTER")},
}


def merge_depth(index_type: str, engine: str | None = None) -> int | None:
    """How many times a segment of ``index_type`` built by ``engine`` can go through
    Lance's merge (None: any). Pure.

    IVF_SQ segments written by the ``precomputed`` engine share the model's SQ
    bounds; Lance merged such segments, and merged ones again, to the recall of one
    segment (0.957 and 0.958 against 0.960 at nprobes 4, measured).
    """
    if index_type == "IVF_SQ" and engine == "precomputed":
        return None
    return MERGE_DEPTH[index_type]


@dataclass(frozen=True)
class MergeStep:
    """Merge the segments in ``inputs`` (slots) into a new segment in ``output``."""

    inputs: tuple[int, ...]
    output: int


@dataclass(frozen=True)
class MergePlan:
    """Stages of merges; the steps of one stage are independent of each other."""

    num_inputs: int
    stages: tuple[tuple[MergeStep, ...], ...]
    final: tuple[int, ...]

    @property
    def num_merges(self) -> int:
        return sum(len(s) for s in self.stages)

    def consumed(self) -> tuple[int, ...]:
        """Slots whose segments a merge has consumed (to delete after commit)."""
        return tuple(sorted(i for stage in self.stages for step in stage for i in step.inputs))

    def to_dict(self) -> dict:
        return {
            "num_inputs": self.num_inputs,
            "stages": [[{"inputs": list(s.inputs), "output": s.output} for s in st] for st in self.stages],
            "final": list(self.final),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "MergePlan":
        return cls(
            num_inputs=int(d["num_inputs"]),
            stages=tuple(
                tuple(MergeStep(tuple(s["inputs"]), int(s["output"])) for s in st) for st in d["stages"]
            ),
            final=tuple(d["final"]),
        )


def _balanced_groups(slots: Sequence[int], weights: Sequence[int], num_groups: int) -> list[list[int]]:
    """Split ``slots`` (in order) into ``num_groups`` contiguous runs of near-equal weight."""
    total = float(sum(weights)) or float(len(slots))
    w = list(weights) if sum(weights) else [1] * len(slots)
    groups: list[list[int]] = []
    current: list[int] = []
    acc = 0.0
    for i, (slot, wt) in enumerate(zip(slots, w)):
        current.append(slot)
        acc += wt
        remaining_slots = len(slots) - i - 1
        remaining_groups = num_groups - len(groups) - 1
        boundary = total * (len(groups) + 1) / num_groups
        if remaining_groups > 0 and (acc >= boundary or remaining_slots == remaining_groups):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def plan_merges(
    index_type: str,
    segment_rows: Sequence[int],
    *,
    num_segments: int = 1,
    fan_in: int = 16,
    engine: str | None = None,
    concatenated: bool = False,
) -> MergePlan:
    """Plan staged merges of built segments toward ``num_segments`` final segments.

    Parameters
    ----------
    index_type : str
        Lance index type; decides how deep merges may go (:data:`MERGE_DEPTH`).
    segment_rows : sequence of int
        Rows in each built segment (slot ``i`` holds ``segment_rows[i]``).
    num_segments : int
        Target number of final segments. Types that cannot be merged keep every
        built segment; types that merge one level reach the target in one stage.
    fan_in : int
        Most segments one merge step reads, for types that merge at any depth.
    engine : str, optional
        The engine that builds the segments (:func:`merge_depth`).
    concatenated : bool
        The merges concatenate segments this build wrote (storage only, whatever the
        type: :func:`dask_lance_index.plan.graphs_built_at_merge`), at any depth.

    Returns
    -------
    MergePlan
    """
    n = len(segment_rows)
    if num_segments < 1:
        raise InvalidInputError(f"num_segments must be a positive int, got {num_segments!r}. Fix: num_segments=1 (fastest queries) or more.")
    if fan_in < 2:
        raise InvalidInputError(f"merge_fan_in must be at least 2, got {fan_in!r}. Fix: merge_fan_in=16 (the default).")
    depth = None if concatenated else merge_depth(index_type, engine)
    slots = list(range(n))
    if depth == 0 or n <= num_segments:
        return MergePlan(n, (), tuple(slots))

    weights = dict(enumerate(segment_rows))
    next_slot = n
    stages: list[tuple[MergeStep, ...]] = []
    level = 0
    while len(slots) > num_segments and (depth is None or level < depth):
        if depth is None:
            # As few groups as the fan-in allows this stage, never below the target.
            k = max(num_segments, -(-len(slots) // fan_in))
        else:
            k = num_segments
        groups = _balanced_groups(slots, [weights[s] for s in slots], k)
        steps = []
        new_slots = []
        for g in groups:
            if len(g) == 1:  # nothing to merge: carry the segment to the next stage
                new_slots.append(g[0])
                continue
            steps.append(MergeStep(tuple(g), next_slot))
            weights[next_slot] = sum(weights[s] for s in g)
            new_slots.append(next_slot)
            next_slot += 1
        if not steps:
            break
        stages.append(tuple(steps))
        slots = new_slots
        level += 1
    return MergePlan(n, tuple(stages), tuple(slots))
