"""The engines: who assigns and encodes the rows of each build task's segment, behind one
interface (:class:`Engine`) and a registry (:func:`get_engine`, :func:`resolve_engine`).

* ``"lance"``: Lance does it all (:mod:`.lance`);
* ``"partitions"``: we assign IVF partitions, Lance encodes (:mod:`.partitions`);
* ``"precomputed"``: we assign and encode, and write the segment files (IVF_PQ, IVF_RQ, IVF_SQ, IVF_FLAT;
  IVF_HNSW_FLAT, IVF_HNSW_SQ and IVF_HNSW_PQ with the graphs we build, once: in the one build task,
  or in a build of several by the merge, :class:`GraphsAtMerge`) (:mod:`.precomputed`);
* ``"artifact"``: as precomputed, through a partition artifact (:mod:`.artifact`);
* ``"scalar"``: Lance builds a scalar or full-text index (BTREE, INVERTED, ...) (:mod:`.scalar`).
"""

from .artifact import ArtifactEngine
from .base import Engine, SegmentTask
from .lance import LanceEngine
from .partitions import PartitionsEngine
from .precomputed import GraphsAtMerge, PrecomputedEngine, writes_codes
from .scalar import ScalarEngine
from .registry import ENGINE_NAMES, ENGINES, get_engine, resolve_engine

__all__ = [
    "ENGINES", "ENGINE_NAMES", "ArtifactEngine", "Engine", "GraphsAtMerge", "LanceEngine", "PartitionsEngine", "PrecomputedEngine",
    "ScalarEngine",
    "SegmentTask", "get_engine", "resolve_engine", "writes_codes",
]
