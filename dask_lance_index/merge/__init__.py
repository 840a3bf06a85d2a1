"""Merge: built segments merged by Lance into fewer, where it merges that type correctly.

:class:`MergeSegments` is the merge task (journaled); the stages are planned
in :mod:`dask_lance_index.plan.merges`.
"""

from .merge import MergeSegments, merge_segments

__all__ = ["MergeSegments", "merge_segments"]
