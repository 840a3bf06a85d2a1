"""The model: what every segment of one index shares, trained and applied in NumPy/SciPy.

IVF centroids (:mod:`.ivf`), a PQ codebook (:mod:`.pq`) and a RaBitQ rotation
(:mod:`.rabitq`, :mod:`.rabitq_encoder`), held together as one
:class:`IndexModel`; k-means underneath (:mod:`.kmeans`). Pure computation on
in-memory arrays: no Dask, no Lance dataset (the only storage it knows is the
RaBitQ code layout it encodes into).
"""

from .index_model import METRICS, IndexModel, coerce_array, validate_model
from .ivf import PartitionAssigner, prepare_vectors, residuals, train_ivf
from .kmeans import assign, kmeans_batched, normalize_rows
from .pq import PQEncoder, train_pq
from .rabitq import RQ_NUM_BITS, RQRotation, build_rq_rotation
from .rabitq_encoder import RQEncoder

__all__ = [
    "METRICS", "IndexModel", "PQEncoder", "PartitionAssigner", "RQEncoder", "RQRotation", "RQ_NUM_BITS",
    "assign", "build_rq_rotation", "coerce_array", "kmeans_batched", "normalize_rows",
    "prepare_vectors", "residuals", "train_ivf", "train_pq", "validate_model",
]
