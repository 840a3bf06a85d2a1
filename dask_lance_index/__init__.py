"""dask_lance_index: build Lance vector indexes at cluster scale on Dask.

>>> import dask_lance_index as dli
>>> ds = dli.create_index("data/docs.lance", "vector", "IVF_PQ",
...                       num_partitions=256, num_sub_vectors=16, metric="l2")  # doctest: +SKIP
"""

from .api import create_index, run
from .artifacts import IndexArtifacts
from .commit import BuildResult
from .errors import (
    CoverageError,
    DaskLanceIndexError,
    DatasetChangedError,
    IndexExistsError,
    InvalidArtifactError,
    InvalidInputError,
)
from .graph import IndexBuild
from .plan import INDEX_TYPES, IndexParams, IndexPlan, plan_index
from .rabitq import build_rq_rotation
from .rotation import RQRotation
from .rq_eval import RQBitsResult, evaluate_rq_bits
from .dataframe import WriteResult, read_lance, to_lance
from .frame_encode import add_ivf_partition, add_pq_codes
from .frame_search import batch_search
from .vectors import vector_series, vectors_to_numpy
from .evaluate import evaluate_index, exact_knn_dataset
from .evaltable import EvaluationRow, EvaluationTable, plot_recall
from .finalize import finalize_artifact
from .artifact_io import PartitionArtifact
from .artifact_writer import PartitionArtifactWriter
from .partition_artifacts import InvalidPartitionArtifactError
from .saved import SavedIndex, load_artifacts, save_artifacts
from .update import IndexUpdate, UpdateResult, run_update, update_index

__version__ = "0.1.0"

__all__ = [
    "create_index",
    "plan_index",
    "run",
    "build_rq_rotation",
    "IndexPlan",
    "IndexParams",
    "IndexArtifacts",
    "IndexBuild",
    "BuildResult",
    "INDEX_TYPES",
    "DaskLanceIndexError",
    "InvalidInputError",
    "InvalidArtifactError",
    "IndexExistsError",
    "CoverageError",
    "DatasetChangedError",
    "RQRotation",
    "evaluate_rq_bits",
    "RQBitsResult",
    "read_lance",
    "to_lance",
    "WriteResult",
    "add_ivf_partition",
    "add_pq_codes",
    "batch_search",
    "vector_series",
    "vectors_to_numpy",
    "evaluate_index",
    "exact_knn_dataset",
    "EvaluationRow",
    "EvaluationTable",
    "plot_recall",
    "finalize_artifact",
    "PartitionArtifact",
    "PartitionArtifactWriter",
    "InvalidPartitionArtifactError",
    "update_index",
    "run_update",
    "UpdateResult",
    "IndexUpdate",
    "SavedIndex",
    "load_artifacts",
    "save_artifacts",
]

from .cleanup import cleanup  # noqa: E402
from .errors import BuildAbortedError  # noqa: E402
from .journal import BuildJournal  # noqa: E402

__all__ += ["cleanup", "BuildJournal", "BuildAbortedError"]
