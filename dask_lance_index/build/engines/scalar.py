"""The ``"scalar"`` engine: Lance builds a scalar or full-text index over one fragment group.

Each task calls Lance's ``create_index_uncommitted(column, index_type,
fragment_ids=...)`` with the plan's options (tokenizer settings and the
like) on a fresh handle at the pinned version. Lance picks the segment's uuid
(BTREE, LABEL_LIST and NGRAM refuse a given one), so :attr:`picks_uuid` tells
the build task to journal its attempt, by which a failed attempt's files are
found and removed (as a merge's). No vectors, no model: the only engine for
scalar types, and it builds nothing else.
"""

from __future__ import annotations

import time

from ...storage import SegmentResult, open_dataset
from .base import Engine

__all__ = ["ScalarEngine"]


class ScalarEngine(Engine):
    name = "scalar"
    picks_uuid = True

    def refuses(self, params) -> str | None:
        if not params.is_scalar:
            return f"engine 'scalar' builds scalar and full-text indexes, not {params.index_type}"
        return None

    def build_segment(self, plan, task, model, storage_options=None, options=None, upstream=None) -> SegmentResult:
        started = time.time()
        fragment_ids = list(plan.groups[task])
        ds = open_dataset(plan.uri, plan.version, storage_options)
        index = ds.create_index_uncommitted(
            plan.column, plan.params.index_type, name=plan.name, fragment_ids=fragment_ids,
            replace=True,  # an existing index of the name: replacing it is the commit's decision (plan.replace)
            **plan.params.lance_kwargs(),
        )
        rows = {f.fragment_id: f.num_rows for f in plan.fragments}
        return SegmentResult(
            slot=task,
            index=index,
            fragment_ids=tuple(fragment_ids),
            num_rows=sum(rows[f] for f in fragment_ids),
            null_rows=0,
            nan_rows=0,
            started=started,
            finished=time.time(),
        )
