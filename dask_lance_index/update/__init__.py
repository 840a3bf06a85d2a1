"""Update: new fragments join an index without retraining, with the model its build saved.

:mod:`.plan` decides what an update does (pure: delta, merge, rebuild or nothing),
:mod:`.drift` measures whether the new rows have drifted from the model,
:mod:`.graph` lays out the tasks (the build's own build and merge tasks),
:mod:`.commit` checks and commits the delta, and :mod:`.api` holds
:func:`update_index`.
"""

from .api import DRIFT_SAMPLE_ROWS, update_index
from .commit import CommitUpdate, UpdateResult
from .drift import DEFAULT_DRIFT_THRESHOLD, measure_drift
from .graph import IndexUpdate
from .plan import (
    ACTIONS,
    DEFAULT_MAX_DELTAS,
    SegmentState,
    UpdateDecision,
    plan_update,
    segment_mergeable,
)

__all__ = [
    "ACTIONS", "DEFAULT_DRIFT_THRESHOLD", "DEFAULT_MAX_DELTAS", "DRIFT_SAMPLE_ROWS", "CommitUpdate", "IndexUpdate",
    "SegmentState", "UpdateDecision", "UpdateResult", "measure_drift", "plan_update", "segment_mergeable",
    "update_index",
]
