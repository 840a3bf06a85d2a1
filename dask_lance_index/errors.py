"""Exceptions raised by dask_lance_index.

Every error raised on bad input names the problem and the fix, and is raised
before any task runs, so the dataset is left exactly as it was.
"""

from __future__ import annotations

__all__ = [
    "DaskLanceIndexError",
    "InvalidInputError",
    "InvalidModelError",
    "IndexExistsError",
    "CoverageError",
    "DatasetChangedError",
    "BuildAbortedError",
    "ClusterLostError",
    "CommittedDespiteError",
]


class DaskLanceIndexError(Exception):
    """Base class of this library's errors."""


class InvalidInputError(DaskLanceIndexError, ValueError):
    """A parameter, column or dataset cannot be indexed as asked."""


class InvalidModelError(InvalidInputError):
    """A user-given model (centroid array, PQ codebook or RaBitQ rotation) does not fit the index."""


class IndexExistsError(InvalidInputError):
    """An index of that name exists and ``replace=True`` was not given."""


class CoverageError(DaskLanceIndexError, RuntimeError):
    """The built segments do not cover the planned fragments exactly once."""


class DatasetChangedError(DaskLanceIndexError, RuntimeError):
    """The dataset changed under the build in a way the index cannot absorb (e.g. compaction)."""


class BuildAbortedError(DaskLanceIndexError, RuntimeError):
    """The build was abandoned (it failed elsewhere); this task removed what it wrote."""


class ClusterLostError(DaskLanceIndexError, ConnectionError):
    """The connection to the Dask scheduler was lost mid-job; the journal keeps the finished
    work, and the same call with ``journal=`` that location (``.journal``) resumes it."""

    def __init__(self, message: str, journal: str | None = None):
        super().__init__(message)
        self.journal = journal


class CommittedDespiteError(DaskLanceIndexError, RuntimeError):
    """The run failed after its commit landed (e.g. the client lost the scheduler while the
    commit task ran on a worker): the index is committed at ``version``; do not run it again.
    The error that ended the run is its ``__cause__``."""

    def __init__(self, message: str, version: int):
        super().__init__(message)
        self.version = version
