"""dask_lance_index: build Lance vector, scalar and full-text indexes at cluster scale on Dask.

>>> import dask_lance_index as dli
>>> ds = dli.create_index("data/docs.lance", "vector", "IVF_PQ",
...                       num_partitions=256, num_sub_vectors=16, metric="l2")  # doctest: +SKIP

The package is laid out in pipeline order: :mod:`.plan` decides a build,
:mod:`.train` samples and trains its model, :mod:`.build` writes one segment
per fragment group (by an engine), :mod:`.merge` merges segments, and
:mod:`.commit` commits them as one index; :mod:`.graph` lays those stages out
as one Dask graph and :mod:`.api` holds the verbs. Beside the pipeline:
:mod:`.model` (the shared centroids, codebook and rotation, in NumPy),
:mod:`.partition_artifacts` (encoded rows on disk), :mod:`.update`,
:mod:`.dataframe`, :mod:`.evaluation`, :mod:`.recovery` (journal, retries,
resume, cleanup), :mod:`.storage` (every file and dataset touched) and
:mod:`.runtime` (where tasks run). This module exports the verbs users call and
the result and error types; everything else is importable from its subpackage.
"""

__version__ = "0.1.0"

from .api import create_index, create_scalar_index, finalize_artifact, plan_index, plan_scalar_index, run
from .commit import BuildResult, SavedModel, load_model, save_model
from .dataframe import (
    WriteResult,
    add_ivf_partition,
    add_pq_codes,
    batch_search,
    read_lance,
    to_lance,
    vector_series,
    vectors_to_numpy,
)
from .errors import (
    BuildAbortedError,
    ClusterLostError,
    CommittedDespiteError,
    CoverageError,
    DaskLanceIndexError,
    DatasetChangedError,
    IndexExistsError,
    InvalidInputError,
    InvalidModelError,
)
from .evaluation import (
    EvaluationRow,
    EvaluationTable,
    RQBitsResult,
    evaluate_index,
    evaluate_rq_bits,
    exact_knn_dataset,
    plot_recall,
)
from .graph import IndexBuild
from .model import IndexModel, RQRotation, build_rq_rotation
from .partition_artifacts import (
    InvalidPartitionArtifactError,
    PartitionArtifact,
    PartitionArtifactWriter,
)
from .plan import INDEX_TYPES, SCALAR_INDEX_TYPES, IndexParams, IndexPlan
from .recovery import BuildJournal, cleanup
from .update import IndexUpdate, UpdateResult, update_index

__all__ = [
    # build, update, clean up
    "create_index",
    "create_scalar_index",
    "plan_index",
    "plan_scalar_index",
    "run",
    "update_index",
    "finalize_artifact",
    "cleanup",
    # what they plan, return and keep
    "INDEX_TYPES",
    "SCALAR_INDEX_TYPES",
    "IndexPlan",
    "IndexParams",
    "IndexBuild",
    "IndexUpdate",
    "BuildResult",
    "UpdateResult",
    "IndexModel",
    "SavedModel",
    "load_model",
    "save_model",
    "BuildJournal",
    # errors
    "DaskLanceIndexError",
    "InvalidInputError",
    "InvalidModelError",
    "IndexExistsError",
    "CoverageError",
    "DatasetChangedError",
    "BuildAbortedError",
    "ClusterLostError",
    "CommittedDespiteError",
    "InvalidPartitionArtifactError",
    # Dask DataFrames
    "read_lance",
    "to_lance",
    "WriteResult",
    "add_ivf_partition",
    "add_pq_codes",
    "batch_search",
    "vector_series",
    "vectors_to_numpy",
    # evaluation
    "evaluate_index",
    "exact_knn_dataset",
    "EvaluationRow",
    "EvaluationTable",
    "plot_recall",
    # RaBitQ
    "build_rq_rotation",
    "RQRotation",
    "evaluate_rq_bits",
    "RQBitsResult",
    # partition artifacts
    "PartitionArtifact",
    "PartitionArtifactWriter",
]
