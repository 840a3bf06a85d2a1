"""The model: what every segment of one index shares, trained and applied in NumPy/SciPy.

IVF centroids (:mod:`.ivf`, trained flat or in two levels with
coarse-to-fine assignment by :mod:`.coarse`), a PQ codebook (:mod:`.pq`) and a RaBitQ rotation
(:mod:`.rabitq`, :mod:`.rabitq_encoder`), SQ bounds and codes (:mod:`.sq_bounds`, :mod:`.sq`), held together as one
:class:`IndexModel`; each partition's HNSW graph, built from exact neighbours (:mod:`.hnsw`;
under dot :mod:`.hnsw_dot`; the neighbour lists :mod:`.hnsw_edges`; equal rows :mod:`.hnsw_copies`; large partitions on
their leading principal directions, :mod:`.principal`); k-means underneath
(:mod:`.kmeans`); a training sample held
in pieces that two-level training never gathers (:mod:`.sample_rows`). Pure computation on
in-memory arrays: no Dask, no Lance dataset (the only storage it knows is the
RaBitQ code layout it encodes into).
"""

from .coarse import (
    DEFAULT_PROBES,
    TARGET_AGREEMENT,
    CoarseIndex,
    assignment_agreement,
    choose_probes,
    train_ivf_hierarchical,
)
from .hnsw import HnswGraph, build_hnsw
from .index_model import METRICS, IndexModel, coerce_array, validate_model
from .ivf import FlatEncoder, PartitionAssigner, prepare_vectors, residuals, train_ivf
from .kmeans import assign, kmeans_batched, normalize_rows
from .pq import PQEncoder, train_pq
from .rabitq import RQ_NUM_BITS, RQRotation, build_rq_rotation
from .rabitq_encoder import RQEncoder
from .sample_rows import LocalRows, SampleRows
from .sq import SQ_SAMPLE_RATE, SQEncoder, train_sq_bounds

__all__ = [
    "DEFAULT_PROBES", "METRICS", "TARGET_AGREEMENT", "CoarseIndex", "FlatEncoder", "HnswGraph", "IndexModel", "LocalRows", "PQEncoder", "PartitionAssigner", "RQEncoder", "RQRotation", "RQ_NUM_BITS", "SQEncoder", "SQ_SAMPLE_RATE", "SampleRows",
    "assign", "assignment_agreement", "build_hnsw", "build_rq_rotation", "choose_probes", "coerce_array", "kmeans_batched", "normalize_rows",
    "prepare_vectors", "residuals", "train_ivf", "train_ivf_hierarchical", "train_pq", "train_sq_bounds",
    "validate_model",
]
