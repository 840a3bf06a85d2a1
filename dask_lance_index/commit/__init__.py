"""Commit: the barrier task. The segments checked against the plan, committed as one index
in one transaction, what they replace removed; the result, and the model saved for updates.
"""

from .checks import check_coverage, check_fragments_live, deleted_fragments
from .commit import COMMIT_ATTEMPTS, CommitIndex, commit_segments, removing_on_failure
from .results import LOW_AGREEMENT, BuildResult, IndexResult, stage_seconds
from .saved import (
    SavedModel,
    default_model_uri,
    load_model,
    save_after_build,
    save_model,
)

__all__ = [
    "COMMIT_ATTEMPTS", "LOW_AGREEMENT", "BuildResult", "CommitIndex", "IndexResult", "SavedModel", "check_coverage",
    "check_fragments_live", "commit_segments", "default_model_uri", "deleted_fragments", "load_model",
    "removing_on_failure", "save_after_build", "save_model", "stage_seconds",
]
