"""The ``"lance"`` engine: Lance reads, assigns and encodes every row itself.

Each task calls ``create_index_uncommitted`` on its fragments with the shared
model; we only count the rows Lance leaves out (null vectors, NaN or infinity),
which it skips silently while its statistics still count them. Every index
type; the slowest engine (Lance's own per-row work, about 7 s per million rows
for IVF_PQ), kept as the reference the others are measured against.
"""

from __future__ import annotations

from ...storage import SegmentResult
from .base import Engine, SegmentTask, lance_mis_encodes_partial_dot_pq

__all__ = ["LanceEngine"]


class LanceEngine(Engine):
    name = "lance"

    def one_segment_reason(self, params) -> str | None:
        return lance_mis_encodes_partial_dot_pq(params)

    def build_segment(self, plan, task, model, storage_options=None, options=None, upstream=None) -> SegmentResult:
        seg = SegmentTask(plan, task, model, storage_options)
        seg.count_unindexable()
        return seg.result(seg.create())
