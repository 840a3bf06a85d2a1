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
    "update_index",
    "run_update",
    "UpdateResult",
    "IndexUpdate",
    "SavedIndex",
    "load_artifacts",
    "save_artifacts",
]
