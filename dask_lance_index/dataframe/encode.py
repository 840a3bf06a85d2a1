"""IVF partition ids and PQ codes for the rows of a pandas partition (for ``ddf.map_partitions``).

The codes are :class:`~dask_lance_index.model.PQEncoder`'s: what an IVF_PQ
index built with the same model stores for each row. Rows whose vector is
null or not finite get nulls (Lance never indexes them). Both functions accept
dask's all-null meta partitions, so ``map_partitions`` infers their output
without ``meta=``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import InvalidInputError
from ..model import PartitionAssigner, PQEncoder
from ..runtime import one_blas_thread
from .vectors import vectors_to_numpy

__all__ = ["add_ivf_partition", "add_pq_codes"]


def _valid_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


@one_blas_thread()  # partitions run side by side: one BLAS thread each (runtime.blas)
def add_ivf_partition(
    df: pd.DataFrame,
    model,
    column: str = "vector",
    *,
    metric: str = "l2",
    partition_column: str = "__ivf_part_id",
) -> pd.DataFrame:
    """Add each row's IVF partition id (for ``ddf.map_partitions``).

    Parameters
    ----------
    df : pandas.DataFrame
        One partition, with an embedding column.
    model : IndexModel
        A trained model (:func:`dask_lance_index.load_model` gives a build's);
        only ``ivf_centroids`` is used.
    column : str
        The embedding column.
    metric : {"l2", "cosine", "dot"}
        The metric the centroids were trained for: cosine rows are normalised
        first, dot assigns by largest inner product (as Lance).
    partition_column : str
        Name of the new column.

    Returns
    -------
    pandas.DataFrame
        ``df`` with ``partition_column`` (Arrow uint32; null where the vector is
        null or holds NaN/infinity, rows Lance never indexes).

    Examples
    --------
    >>> ddf = ddf.map_partitions(add_ivf_partition, model, "vector")  # doctest: +SKIP
    """
    centroids = _centroids(model)
    x, valid = _vectors_of(df, column, centroids.shape[1])
    parts = np.zeros(len(x), dtype=np.uint32)
    if valid.any():
        # as the build assigns: cosine rows normalised, dot by largest inner product,
        # a two-level model among the nearest groups' partitions
        parts[valid] = PartitionAssigner(centroids, metric, getattr(model, "coarse_index", None)).assign(x[valid])
    out = df.copy()
    out[partition_column] = pd.arrays.ArrowExtensionArray(pa.array(parts, mask=~valid))
    return out


@one_blas_thread()  # partitions run side by side: one BLAS thread each (runtime.blas)
def add_pq_codes(
    df: pd.DataFrame,
    model,
    column: str = "vector",
    *,
    metric: str = "l2",
    partition_column: str = "__ivf_part_id",
    code_column: str = "__pq_code",
) -> pd.DataFrame:
    """Add each row's IVF partition id and PQ code (for ``ddf.map_partitions``).

    The codes are :class:`~dask_lance_index.model.PQEncoder`'s, i.e. what
    Lance stores for the row in an IVF_PQ index trained with this model.

    Parameters
    ----------
    df : pandas.DataFrame
        One partition, with an embedding column.
    model : IndexModel
        A trained model with ``ivf_centroids`` and ``pq_codebook``.
    column : str
        The embedding column.
    metric : {"l2", "cosine", "dot"}
        The metric the model was trained for.
    partition_column, code_column : str
        Names of the new columns (default: Lance's shuffle-buffer names).

    Returns
    -------
    pandas.DataFrame
        ``df`` with ``partition_column`` (Arrow uint32) and ``code_column``
        (Arrow ``fixed_size_list<uint8>[num_sub_vectors]``), both null where the
        vector is null or not finite.

    Examples
    --------
    >>> coded = ddf.map_partitions(add_pq_codes, model, "vector", metric="l2")  # doctest: +SKIP
    """
    centroids = _centroids(model)
    codebook = getattr(model, "pq_codebook", None)
    if codebook is None:
        raise InvalidInputError("add_pq_codes needs a model with a pq_codebook (an IVF_PQ model).")
    if metric not in ("l2", "cosine", "dot"):
        raise InvalidInputError(f"metric={metric!r} is not one of 'l2', 'cosine', 'dot'.")
    encoder = PQEncoder(centroids, codebook, metric, getattr(model, "coarse_index", None))
    x, valid = _vectors_of(df, column, centroids.shape[1])
    m = encoder.num_sub_vectors
    parts = np.zeros(len(x), dtype=np.uint32)
    codes = np.zeros((len(x), m), dtype=np.uint8)
    if valid.any():
        p, c = encoder.encode(x[valid])
        parts[valid], codes[valid] = p, c
    mask = pa.array(~valid)
    out = df.copy()
    out[partition_column] = pd.arrays.ArrowExtensionArray(pa.array(parts, mask=~valid))
    out[code_column] = pd.arrays.ArrowExtensionArray(
        pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), m, mask=mask)
    )
    return out


def _centroids(model) -> np.ndarray:
    c = getattr(model, "ivf_centroids", None)
    if c is None:
        raise InvalidInputError(
            "model must be an IndexModel with ivf_centroids. Fix: "
            "IndexModel(ivf_centroids=..., pq_codebook=...), or dli.load_model(uri, name).model."
        )
    return np.ascontiguousarray(c, dtype=np.float32)


def _vectors_of(df: pd.DataFrame, column: str, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    if column not in df.columns:
        raise InvalidInputError(f"column {column!r} is not in the partition; its columns are {list(df.columns)}.")
    if len(df) == 0:
        return np.empty((0, dimension), np.float32), np.zeros(0, bool)
    s = df[column]
    if isinstance(s.dtype, pd.ArrowDtype) and pa.array(s.array).null_count == len(s):
        # All null (e.g. dask's meta inference): nothing to encode, every row null.
        return np.zeros((len(s), dimension), np.float32), np.zeros(len(s), bool)
    x = vectors_to_numpy(s)
    if x.shape[1] != dimension:
        raise InvalidInputError(
            f"column {column!r} has dimension {x.shape[1]} but the model was trained on "
            f"{dimension}-d vectors. Fix: use the model of this column."
        )
    return x, _valid_rows(x)
