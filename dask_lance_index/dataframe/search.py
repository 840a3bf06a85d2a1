"""Batch search: a DataFrame of query vectors in, the nearest neighbours of each row out.

Each partition's task opens the committed dataset at the version pinned when
:func:`batch_search` was called and asks Lance for the nearest rows of each of
its queries, exactly as one-at-a-time search does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import InvalidInputError
from ..storage import column_info, hide_secrets, open_or_fail
from .vectors import check_vector_type, vector_array, vectors_to_numpy

__all__ = ["SearchPartition", "batch_search"]


def _valid_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


def _binary_queries(col: pd.Series, dimension: int) -> np.ndarray:
    """uint8 query vectors as float32 (null rows NaN, skipped as every invalid query)."""
    arr = pa.array(col.array) if not isinstance(col.dtype, pd.ArrowDtype) else pa.chunked_array(
        col.array._pa_array).combine_chunks()
    if not isinstance(arr.type, (pa.FixedSizeListType, pa.ListType)):
        raise InvalidInputError(f"query column {col.name!r} has Arrow type {arr.type}; binary queries are uint8 lists.")
    out = np.full((len(arr), dimension), np.nan, np.float32)
    for i, v in enumerate(arr.to_pylist()):
        if v is not None:
            if len(v) != dimension:
                raise InvalidInputError(
                    f"query column {col.name!r} has a {len(v)}-byte query; the binary column has {dimension} bytes. "
                    "Fix: pack the queries' bits as the column's.")
            out[i] = v
    return out


@dataclass(frozen=True)
class SearchPartition:
    """Search task of :func:`batch_search`: called with one partition of queries, returns it
    with each row's nearest ``ids`` and ``distances`` against the pinned, committed index."""

    uri: str
    version: int
    column: str
    query_column: str
    k: int
    nprobes: int
    dimension: int
    refine_factor: int | None = None
    id_column: str | None = None
    filter: str | None = None
    prefilter: bool = False
    storage_options: dict | None = None
    kind: str = "vector"  # the column's kind (storage.COLUMN_KINDS)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        n, k, dimension = len(df), self.k, self.dimension
        ids = np.full((n, k), -1, dtype=np.int64)
        dists = np.full((n, k), np.inf, dtype=np.float32)
        if n:
            col = df[self.query_column]
            if _all_null(col):
                q = np.full((n, dimension), np.nan, np.float32)
            elif self.kind == "binary":
                q = _binary_queries(col, dimension)
            else:
                q = vectors_to_numpy(col)
            if q.shape[1] != dimension:
                raise InvalidInputError(
                    f"query column {self.query_column!r} has dimension {q.shape[1]}; the dataset's "
                    f"{self.column!r} has {dimension}. Fix: embed the queries with the same model."
                )
            # One handle per task: Lance handles are not thread-safe.
            ds = open_or_fail(self.uri, self.version, self.storage_options)
            id_col = self.id_column or "_rowid"
            cols = [id_col, "_distance"] if self.id_column else ["_distance"]
            # Lance answers one query vector per call; the loop is over queries, not rows of data.
            valid = _valid_rows(q)
            if self.kind == "binary":  # Lance compares a binary column's bits with uint8 queries only
                q = np.where(valid[:, None], q, 0).astype(np.uint8)
            for i in np.flatnonzero(valid):
                nearest = {"column": self.column, "q": q[i], "k": k, "nprobes": self.nprobes}
                if self.refine_factor:
                    nearest["refine_factor"] = self.refine_factor
                t = ds.to_table(
                    columns=cols, nearest=nearest, filter=self.filter, prefilter=self.prefilter,
                    with_row_id=self.id_column is None, disable_scoring_autoprojection=True,
                )
                m = t.num_rows
                ids[i, :m] = np.asarray(t.column(id_col).to_numpy(), dtype=np.int64)
                dists[i, :m] = np.asarray(t.column("_distance").to_numpy(), dtype=np.float32)
        out = df.copy()
        out["ids"] = pd.arrays.ArrowExtensionArray(pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), k))
        out["distances"] = pd.arrays.ArrowExtensionArray(
            pa.FixedSizeListArray.from_arrays(pa.array(dists.reshape(-1)), k)
        )
        return out


def _all_null(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.ArrowDtype) and pa.array(s.array).null_count == len(s)


def batch_search(
    queries,
    uri,
    column: str = "vector",
    k: int = 10,
    *,
    query_column: str | None = None,
    nprobes: int = 20,
    refine_factor: int | None = None,
    id_column: str | None = "id",
    filter: str | None = None,
    prefilter: bool = False,
    version: int | None = None,
    storage_options: dict | None = None,
):
    """Nearest neighbours of every query row, each partition searching the committed index.

    Parameters
    ----------
    queries : dask.dataframe.DataFrame
        One query vector per row in ``query_column``.
    uri : str, path or LanceDataset
        The indexed dataset; its version is pinned when this is called.
    column : str
        The dataset's vector column (the indexed one).
    k : int
        Neighbours per query.
    query_column : str, optional
        The queries' vector column (default: ``column``).
    nprobes, refine_factor : int
        Lance's search parameters.
    id_column : str or None
        Dataset column whose values identify the neighbours (default ``"id"``);
        ``None`` returns Lance's ``_rowid``.
    filter : str, optional
        A SQL filter on the dataset rows, as Lance's ``to_table(nearest=...,
        filter=...)``.
    prefilter : bool
        Apply ``filter`` before the vector search (every answer passes it, up
        to ``k`` of them) rather than to its ``k`` results (Lance's default).
    version : int, optional
        Dataset version to search (default: latest at call time).
    storage_options : dict, optional

    Returns
    -------
    dask.dataframe.DataFrame
        The query rows with two more columns: ``ids`` (Arrow
        ``fixed_size_list<int64>[k]``, nearest first, padded with -1) and
        ``distances`` (``fixed_size_list<float32>[k]``, Lance's ``_distance``,
        padded with infinity). Null or non-finite query vectors get only padding.
    """
    if k < 1:
        raise InvalidInputError(f"k={k}; it must be at least 1.")
    if nprobes < 1:
        raise InvalidInputError(f"nprobes={nprobes}; it must be at least 1.")
    query_column = query_column or column
    storage_options = hide_secrets(storage_options)  # the tasks carry them: no secret in a logged repr
    ds = open_or_fail(uri, version, storage_options)
    info = column_info(ds, column)
    if info.kind == "multivector":
        raise InvalidInputError(
            f"batch_search takes one query vector per row; {column!r} holds multivectors, which Lance searches "
            "with a list of query vectors each. Fix: search them with Lance, "
            "ds.to_table(nearest={'column': column, 'q': [vectors of one query], 'k': k})."
        )
    if id_column is not None and id_column not in ds.schema.names:
        raise InvalidInputError(
            f"id_column {id_column!r} is not in the dataset; its columns are {ds.schema.names}. "
            "Fix: pass the identifying column, or id_column=None for Lance row ids."
        )
    meta = queries._meta
    if query_column not in meta.columns:
        raise InvalidInputError(
            f"query column {query_column!r} is not in the queries DataFrame; its columns are {list(meta.columns)}."
        )
    qdtype = meta[query_column].dtype
    if isinstance(qdtype, pd.ArrowDtype) and info.kind == "binary":
        t = qdtype.pyarrow_dtype
        if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t)) or not pa.types.is_uint8(t.value_type):
            raise InvalidInputError(
                f"query column {query_column!r} has Arrow type {t}; {column!r} holds binary vectors, searched "
                "with uint8 queries. Fix: pack the queries' bits into uint8 lists as the column's."
            )
    elif isinstance(qdtype, pd.ArrowDtype):
        check_vector_type(qdtype.pyarrow_dtype, query_column)
        t = qdtype.pyarrow_dtype
        if pa.types.is_fixed_size_list(t) and t.list_size != info.dimension:
            raise InvalidInputError(
                f"query column {query_column!r} has dimension {t.list_size}; the dataset's {column!r} "
                f"has {info.dimension}. Fix: embed the queries with the same model."
            )
    elif qdtype != object:
        vector_array(meta[query_column], query_column)
    for name in ("ids", "distances"):
        if name in meta.columns:
            raise InvalidInputError(f"the queries already have a column {name!r}; rename it first.")
    if filter is not None:
        try:
            ds.scanner(filter=filter).explain_plan()
        except (ValueError, OSError) as exc:
            raise InvalidInputError(f"the filter {filter!r} is not valid for this dataset: {exc}") from None
    out_meta = meta.copy()
    out_meta["ids"] = pd.Series([], dtype=pd.ArrowDtype(pa.list_(pa.int64(), k)))
    out_meta["distances"] = pd.Series([], dtype=pd.ArrowDtype(pa.list_(pa.float32(), k)))
    search = SearchPartition(ds.uri, ds.version, info.name, query_column, int(k), int(nprobes), info.dimension,
                             refine_factor, id_column, filter, bool(prefilter), storage_options, info.kind)
    return queries.map_partitions(
        search,
        meta=out_meta,
        enforce_metadata=False,
        align_dataframes=False,
    )
