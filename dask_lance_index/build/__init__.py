"""Build: one uncommitted Lance segment per fragment group, by one of the engines.

:class:`BuildSegment` is the build task (journal, abort, retries);
:mod:`.engines` are who assigns and encodes the rows.
"""

from .engines import (
           ENGINE_NAMES,
           ENGINES,
           Engine,
           GraphsAtMerge,
           SegmentTask,
           get_engine,
           resolve_engine,
           writes_codes,
)
from .segment import BuildSegment

__all__ = ["ENGINES", "ENGINE_NAMES", "BuildSegment", "Engine", "GraphsAtMerge", "SegmentTask", "get_engine", "resolve_engine",
           "writes_codes"]
