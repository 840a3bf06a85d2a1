"""The index as Lance will build it: its parameters, every default resolved. Pure.

:func:`resolve_params` checks the options of an index build against the
column's dimension and row count and fills in Lance's defaults (pylance
14.0.2), raising an error that names the fix for anything Lance would refuse
or build silently wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError
from ..model import METRICS, RQ_NUM_BITS, SQ_SAMPLE_RATE

__all__ = [
    "AGREEMENT_ROWS",
    "DEFAULT_NUM_BITS",
    "DEFAULT_TARGET_PARTITION_SIZE",
    "HIERARCHICAL_MIN_PARTITIONS",
    "HIERARCHICAL_SAMPLE_RATE",
    "INDEX_TYPES",
    "IVF_TRAININGS",
    "MAX_ITERS",
    "MAX_PARTITIONS",
    "NUM_BITS",
    "PQ_SAMPLE_RATE",
    "SAMPLE_RATE",
    "TOLERANCE",
    "IndexParams",
    "default_num_partitions",
    "default_num_sub_vectors",
    "resolve_params",
    "training_sample_size",
]

INDEX_TYPES = ("IVF_FLAT", "IVF_PQ", "IVF_SQ", "IVF_RQ", "IVF_HNSW_FLAT", "IVF_HNSW_PQ", "IVF_HNSW_SQ")

# Lance's defaults (pylance 14.0.2): rows per IVF partition, training rows per
# centroid, and k-means iterations.
DEFAULT_TARGET_PARTITION_SIZE = 8192
MAX_PARTITIONS = 4096
SAMPLE_RATE = 256
MAX_ITERS = 50
# Our training choices (benchmarks/bench_build.py measures them against Lance's
# recall): rows per PQ code word (Lance's 256: with 64, GloVe's recall@10 without
# refine was 0.010-0.013 below Lance's at nprobes 10/20/50, 1,000 queries), and
# k-means' relative-inertia stopping rule (per incremental pass, see kmeans.py).
PQ_SAMPLE_RATE = 256
TOLERANCE = 5e-3
# Bits per code that Lance accepts, per quantizer.
NUM_BITS = {"PQ": (4, 8), "SQ": (8,), "RQ": RQ_NUM_BITS}
DEFAULT_NUM_BITS = {"PQ": 8, "SQ": 8, "RQ": 5}
# How the IVF centroids are trained: Lance's flat k-means, or two levels
# (model/coarse.py). "auto" trains two levels from this many partitions on (l2 and
# cosine): at 4,096 partitions on 1M rows flat training took 35 s and two levels
# 4.4 s, with the same partition recall (docs/benchmarks.md).
IVF_TRAININGS = ("auto", "flat", "hierarchical")
HIERARCHICAL_MIN_PARTITIONS = 4096
# Training rows per centroid when training in two levels (``sample_rate=None``).
# Lance's 256 is for flat k-means; two levels converge on fewer, and every row
# costs a restricted pass per refinement: on GloVe at 4,096 partitions the IVF
# recall of the true top 10 at nprobes 10/20/50 was 0.707/0.798/0.900 with 64
# rows per centroid (3 refinement passes) against 0.714/0.802/0.898 with all
# 400k rows (97 per centroid) in half the time; on 128-d clustered data 64 and
# 256 gave the same (docs/benchmarks.md).
HIERARCHICAL_SAMPLE_RATE = 64
# Rows a two-level build draws beyond its training rows, held out of training, on
# which the coarse probes are chosen and the model's assignment agreement measured.
# Measured on the rows a model trained on, the agreement flatters it: at 16,384
# partitions 99.52% there against 98.97% on the rows the build then indexed.
AGREEMENT_ROWS = 16384


def quantizer_of(index_type: str) -> str | None:
    for q in ("PQ", "SQ", "RQ"):
        if index_type.endswith("_" + q):
            return q
    return None


@dataclass(frozen=True)
class IndexParams:
    """The index as Lance will build it, every default resolved."""

    index_type: str
    metric: str
    num_partitions: int
    num_sub_vectors: int | None = None
    num_bits: int | None = None
    m: int | None = None
    ef_construction: int | None = None
    sample_rate: int = SAMPLE_RATE
    max_iters: int = MAX_ITERS
    pq_sample_rate: int = PQ_SAMPLE_RATE
    tolerance: float = TOLERANCE
    ivf_training: str = "flat"
    coarse_probes: int | None = None
    # A scalar index's options for Lance (tokenizer settings, ...), as sorted JSON.
    options: str | None = None

    @property
    def quantizer(self) -> str | None:
        return quantizer_of(self.index_type)

    @property
    def is_scalar(self) -> bool:
        """A scalar or full-text index (BTREE, INVERTED, ...): no vectors, no model."""
        return self.index_type not in INDEX_TYPES

    @property
    def is_hnsw(self) -> bool:
        return "HNSW" in self.index_type

    def lance_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_index_uncommitted`` (besides the model)."""
        if self.is_scalar:
            return json.loads(self.options) if self.options else {}
        kw: dict[str, Any] = {"metric": self.metric, "num_partitions": self.num_partitions}
        for key in ("num_sub_vectors", "num_bits", "m", "ef_construction"):
            if getattr(self, key) is not None:
                kw[key] = getattr(self, key)
        return kw



def default_num_partitions(num_rows: int, target_partition_size: int | None = None) -> int:
    """Lance's rule: ``num_rows // target_partition_size`` clamped to [1, 4096]."""
    tps = DEFAULT_TARGET_PARTITION_SIZE if target_partition_size is None else target_partition_size
    if not isinstance(tps, int) or tps < 1:
        raise InvalidInputError(f"target_partition_size must be positive, got {tps}")
    return min(max(1, num_rows // tps), MAX_PARTITIONS)


def default_num_sub_vectors(dimension: int) -> int:
    """Sub-vectors of 16 dimensions when they divide evenly, else of 8, else one per 4, else 1.

    Follows the common Lance/LanceDB choice (dimension / 16); falls back to the
    largest of dimension / 8, / 4, / 2 that divides the dimension, and to 1.
    """
    for sub_dim in (16, 8, 4, 2):
        if dimension % sub_dim == 0:
            return dimension // sub_dim
    return 1


def resolve_params(
    index_type: str,
    *,
    dimension: int,
    num_rows: int,
    metric: str = "l2",
    num_partitions: int | None = None,
    target_partition_size: int | None = None,
    num_sub_vectors: int | None = None,
    num_bits: int | None = None,
    m: int | None = None,
    ef_construction: int | None = None,
    sample_rate: int | None = None,
    max_iters: int = MAX_ITERS,
    pq_sample_rate: int = PQ_SAMPLE_RATE,
    tolerance: float = TOLERANCE,
    ivf_training: str = "auto",
    coarse_probes: int | None = None,
) -> IndexParams:
    """Validate the index options and fill in Lance's defaults. Pure."""
    if not isinstance(index_type, str) or index_type.upper() not in INDEX_TYPES:
        raise InvalidInputError(
            f"index_type {index_type!r} is not supported; choose one of {', '.join(INDEX_TYPES)}."
        )
    index_type = index_type.upper()
    if not isinstance(metric, str) or metric.lower() not in METRICS:
        raise InvalidInputError(
            f"metric {metric!r} is not supported; choose 'l2', 'cosine' or 'dot'."
        )
    metric = METRICS[metric.lower()]
    q = quantizer_of(index_type)

    if num_partitions is None:
        num_partitions = default_num_partitions(num_rows, target_partition_size)
    if not isinstance(num_partitions, int) or isinstance(num_partitions, bool) or num_partitions < 1:
        raise InvalidInputError(f"num_partitions must be a positive int, got {num_partitions!r}")
    if num_partitions > num_rows:
        raise InvalidInputError(
            f"num_partitions={num_partitions} exceeds the {num_rows} rows to index; k-means "
            f"needs at least one row per partition. Fix: num_partitions <= {num_rows}."
        )

    if q == "PQ":
        if num_sub_vectors is None:
            num_sub_vectors = default_num_sub_vectors(dimension)
        if not isinstance(num_sub_vectors, int) or num_sub_vectors < 1:
            raise InvalidInputError(f"num_sub_vectors must be a positive int, got {num_sub_vectors!r}")
        if dimension % num_sub_vectors:
            divisors = [k for k in range(1, dimension + 1) if dimension % k == 0]
            raise InvalidInputError(
                f"num_sub_vectors={num_sub_vectors} does not divide the dimension {dimension}; "
                f"PQ splits each vector into equal sub-vectors. Fix: pick one of {divisors}."
            )
    elif num_sub_vectors is not None:
        raise InvalidInputError(f"num_sub_vectors applies to PQ index types only, not {index_type}.")

    if q is None:
        if num_bits is not None:
            raise InvalidInputError(f"num_bits applies to quantized index types only, not {index_type}.")
    else:
        if num_bits is None:
            num_bits = DEFAULT_NUM_BITS[q]
        if num_bits not in NUM_BITS[q]:
            raise InvalidInputError(
                f"num_bits={num_bits!r} is out of range for {q}; Lance takes {list(NUM_BITS[q])}."
            )
    if q == "RQ" and dimension % 8:
        raise InvalidInputError(
            f"IVF_RQ needs a dimension that is a multiple of 8; the column has {dimension}. "
            "Fix: use IVF_PQ or IVF_SQ, or pad the vectors to a multiple of 8."
        )
    if "HNSW" not in index_type and (m is not None or ef_construction is not None):
        raise InvalidInputError(f"m and ef_construction apply to IVF_HNSW_* types only, not {index_type}.")
    for name, v in (("m", m), ("ef_construction", ef_construction)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise InvalidInputError(f"{name} must be a positive int, got {v!r}")
    if (sample_rate is not None and sample_rate < 1) or max_iters < 1 or pq_sample_rate < 1:
        raise InvalidInputError("sample_rate, pq_sample_rate and max_iters must be positive")
    if not 0 <= tolerance < 1:
        raise InvalidInputError(f"tolerance must be in [0, 1), got {tolerance}")
    if ivf_training not in IVF_TRAININGS:
        raise InvalidInputError(f"ivf_training={ivf_training!r} is not one of {IVF_TRAININGS}.")
    if ivf_training == "hierarchical" and metric == "dot":
        raise InvalidInputError(
            "ivf_training='hierarchical' trains l2 and cosine centroids; dot-metric IVF is trained as Lance "
            "trains it (spherical k-means). Fix: ivf_training='auto' or 'flat'."
        )
    if ivf_training == "auto":
        big = num_partitions >= HIERARCHICAL_MIN_PARTITIONS and metric != "dot"
        ivf_training = "hierarchical" if big else "flat"
    if sample_rate is None:
        sample_rate = HIERARCHICAL_SAMPLE_RATE if ivf_training == "hierarchical" else SAMPLE_RATE
    if coarse_probes is not None and (
        not isinstance(coarse_probes, int) or isinstance(coarse_probes, bool) or coarse_probes < 1
    ):
        raise InvalidInputError(
            f"coarse_probes must be a positive int, or None to choose it by measured agreement, got {coarse_probes!r}"
        )
    return IndexParams(
        index_type=index_type,
        metric=metric,
        num_partitions=num_partitions,
        num_sub_vectors=num_sub_vectors,
        num_bits=num_bits,
        m=m,
        ef_construction=ef_construction,
        sample_rate=sample_rate,
        max_iters=max_iters,
        pq_sample_rate=pq_sample_rate,
        tolerance=tolerance,
        ivf_training=ivf_training,
        coarse_probes=coarse_probes,
    )


def training_sample_size(params: IndexParams) -> int:
    """Rows to train on: ``sample_rate`` rows per IVF centroid (Lance's 256 for flat
    training, :data:`HIERARCHICAL_SAMPLE_RATE` for two levels),
    ``pq_sample_rate`` rows per PQ code word, and 256 per SQ code value (Lance's SQ
    sample, from which the SQ bounds come); two levels draw :data:`AGREEMENT_ROWS`
    more, held out of training."""
    n = params.num_partitions * params.sample_rate
    if params.quantizer == "PQ":
        n = max(n, (2 ** (params.num_bits or 8)) * params.pq_sample_rate)
    if params.quantizer == "SQ":
        n = max(n, (2 ** (params.num_bits or 8)) * SQ_SAMPLE_RATE)
    if params.ivf_training == "hierarchical":
        n += AGREEMENT_ROWS
    return n


