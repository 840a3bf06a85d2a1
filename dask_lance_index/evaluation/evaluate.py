"""Recall and latency of a committed index: :func:`evaluate_index`.

The exact neighbours come from :func:`.knn.exact_knn_dataset` (on the cluster);
the index is then queried from this process, one query at a time as an
application would, at each ``nprobes`` / ``refine_factor`` setting, and the
result is an :class:`~dask_lance_index.evaluation.EvaluationTable` of recall@k
and latency.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..errors import InvalidInputError
from ..storage import column_info, drawn_vectors, open_or_fail
from .knn import _check_metric, check_queries, exact_knn_dataset
from .table import EvaluationRow, EvaluationTable

__all__ = ["evaluate_index", "index_on", "recall_at_k", "sample_query_rows", "search", "timed_search"]


def _nearest(ds, column: str, v: np.ndarray, k: int, nprobes: int, refine_factor, id_column: str | None) -> np.ndarray:
    nearest = {"column": column, "q": v, "k": k, "nprobes": nprobes}
    if refine_factor:
        nearest["refine_factor"] = refine_factor
    if id_column is None:
        t = ds.to_table(columns=[], nearest=nearest, with_row_id=True, disable_scoring_autoprojection=True)
        return t.column("_rowid").to_numpy().astype(np.int64)
    t = ds.to_table(columns=[id_column], nearest=nearest, disable_scoring_autoprojection=True)
    return np.asarray(t.column(id_column).to_numpy(zero_copy_only=False)).astype(np.int64)


def timed_search(
    ds,
    column: str,
    queries: np.ndarray,
    k: int = 10,
    *,
    nprobes: int = 20,
    refine_factor: int | None = None,
    id_column: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Query the committed index one query at a time, as an application would.

    Returns ``(ids (num_queries, k) padded with -1, seconds per query)``; ids are
    row ids unless ``id_column`` is given.
    """
    out = np.full((len(queries), k), -1, dtype=np.int64)
    seconds = np.empty(len(queries), dtype=np.float64)
    # Binary columns are searched with uint8 queries (Lance compares their bits).
    queries = queries if np.asarray(queries).dtype == np.uint8 else np.asarray(queries, dtype=np.float32)
    for i, v in enumerate(queries):  # one query per call: latency is per query
        t0 = time.perf_counter()
        ids = _nearest(ds, column, v, k, nprobes, refine_factor, id_column)
        seconds[i] = time.perf_counter() - t0
        out[i, : len(ids)] = ids[:k]
    return out, seconds


def search(
    ds,
    column: str,
    queries: np.ndarray,
    k: int = 10,
    *,
    nprobes: int = 20,
    refine_factor: int | None = None,
    id_column: str = "id",
) -> tuple[np.ndarray, float]:
    """Query the committed index; returns (ids of shape (q, k), mean seconds per query)."""
    found, seconds = timed_search(ds, column, queries, k, nprobes=nprobes, refine_factor=refine_factor, id_column=id_column)
    return found, float(seconds.mean()) if len(seconds) else 0.0


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true neighbours found, per query (``k = truth.shape[1]``)."""
    truth = np.asarray(truth)
    k = truth.shape[1]
    found = np.asarray(found)[:, :k]
    # Each true neighbour counts once, wherever it appears among the found ids.
    hits = (truth[:, :, None] == found[:, None, :]).any(axis=2)
    return float(hits.sum()) / (len(truth) * k) if len(truth) else 0.0


def index_on(ds, column: str, name: str | None):
    """The index named ``name`` (or the index on ``column``), or a clear error."""
    for d in ds.describe_indices():
        if (name is None and column in list(d.field_names)) or d.name == name:
            return d
    have = [(d.name, list(d.field_names)) for d in ds.describe_indices()]
    what = f"named {name!r}" if name else f"on column {column!r}"
    raise InvalidInputError(
        f"the dataset at {ds.uri} (version {ds.version}) has no index {what}; it has {have or 'none'}. "
        "Fix: build one first (dask_lance_index.create_index, or `dask-lance-index build`)."
    )


def _index_metric(ds, index) -> str:
    details = getattr(index, "details", None) or {}
    if details.get("metric_type"):
        return _check_metric(details["metric_type"])
    stats = ds.stats.index_stats(index.name)
    for seg in stats.get("indices", []):
        if "metric_type" in seg:
            return _check_metric(seg["metric_type"])
    raise InvalidInputError(f"cannot read the metric of index {index.name!r}. Fix: pass metric=.")


def _as_tuple(values, what: str, allow_none: bool = False) -> tuple:
    if values is None or isinstance(values, (int, np.integer)):
        values = (values,)
    out = []
    for v in values:
        if v is None and allow_none:
            out.append(None)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1:
            out.append(int(v))
        else:
            raise InvalidInputError(f"{what} must be integers >= 1{' or None' if allow_none else ''}; got {v!r}.")
    if not out:
        raise InvalidInputError(f"{what} is empty. Fix: give at least one value.")
    return tuple(out)


def evaluate_index(
    uri,
    column: str,
    queries,
    k: int = 10,
    nprobes: Sequence[int] = (1, 5, 10, 20, 50),
    refine_factors: Sequence[int | None] = (None, 5),
    *,
    name: str | None = None,
    metric: str | None = None,
    id_column: str | None = None,
    truth: np.ndarray | None = None,
    version: int | None = None,
    storage_options: dict | None = None,
    client=None,
    scheduler: str | None = None,
    progress: bool | None = None,
    warmup: int = 10,
) -> EvaluationTable:
    """Recall@k and query latency of the committed index, for each nprobes and refine factor.

    The exact neighbours are computed on the cluster with
    :func:`exact_knn_dataset` (one task per fragment, top-k merged as a tree).
    The index is then queried from this process, one query at a time and one
    setting after another, so that the latencies measure the index and not
    contention between concurrent searches.

    Parameters
    ----------
    uri : str, path or LanceDataset
    column : str
        The indexed vector column.
    queries : array (num_queries, dim)
    k : int
        Neighbours per query.
    nprobes : sequence of int
        IVF partitions to probe, one table row per value (and refine factor).
    refine_factors : sequence of int or None
        Lance's ``refine_factor`` (re-rank ``k * refine_factor`` candidates by
        exact distance); ``None`` for no refinement.
    name : str, optional
        The index; default the index on ``column``.
    metric : str, optional
        Metric of the exact search; default the index's own.
    id_column : str, optional
        Compare the values of this column; default Lance row ids.
    truth : array (num_queries, >=k), optional
        Precomputed exact neighbour ids (in the same id space); skips the
        exact search.
    version : int, optional
        Dataset version to evaluate; default the latest.
    client, scheduler, progress
        Where the exact search runs, as in :func:`dask_lance_index.create_index`.
    warmup : int
        Queries run untimed first, so the index's first load from storage is
        not counted as query latency.

    Returns
    -------
    EvaluationTable
        One :class:`~dask_lance_index.evaluation.EvaluationRow` per setting;
        ``.to_pandas()``, ``.to_markdown()``, ``.plot()``.
    """
    k = int(k)
    if k < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}.")
    nprobes = _as_tuple(nprobes, "nprobes")
    refine_factors = _as_tuple(refine_factors, "refine_factors", allow_none=True)
    ds = open_or_fail(uri, version, storage_options)
    info = column_info(ds, column)
    if info.kind == "multivector":
        raise InvalidInputError(
            f"evaluate_index measures one query vector against one vector per row; {column!r} holds multivectors, "
            "which Lance scores against a list of query vectors. Fix: compare ds.to_table(nearest={'column': "
            "column, 'q': [query vectors], 'k': k}) with and without use_index=False."
        )
    column = info.name  # Lance's spelling of a field path, as the index records it
    q = check_queries(queries, info.dimension)
    if info.kind == "binary":
        q = q.astype(np.uint8)
    index = index_on(ds, column, name)
    metric = _check_metric(metric) if metric is not None else _index_metric(ds, index)
    if (metric == "hamming") != (info.kind == "binary"):
        raise InvalidInputError(
            f"metric {metric!r} cannot rank the {info.kind} column {column!r}: hamming compares the bits of "
            "binary (uint8) columns, and only those. Fix: leave metric=None to use the index's, or pass "
            + ("'hamming'." if info.kind == "binary" else "'l2', 'cosine' or 'dot'.")
        )
    if truth is not None:
        truth = np.asarray(truth)
        if truth.ndim != 2 or len(truth) != len(q) or truth.shape[1] < k:
            raise InvalidInputError(f"truth must have shape ({len(q)}, >= {k}); got {truth.shape}.")
        truth, exact_seconds = truth[:, :k].astype(np.int64), 0.0
    else:
        t0 = time.perf_counter()
        truth = exact_knn_dataset(
            ds.uri, column, q, k, metric, id_column=id_column, version=ds.version,
            storage_options=storage_options, client=client, scheduler=scheduler, progress=progress,
        )
        exact_seconds = time.perf_counter() - t0

    if warmup:  # load the index and the refine path's data pages before timing anything
        for rf in refine_factors:
            timed_search(ds, column, q[:warmup], k, nprobes=max(nprobes), refine_factor=rf, id_column=id_column)
    rows = []
    for n in nprobes:
        for rf in refine_factors:
            found, secs = timed_search(ds, column, q, k, nprobes=n, refine_factor=rf, id_column=id_column)
            ms = secs * 1000.0
            rows.append(
                EvaluationRow(
                    nprobes=n,
                    refine_factor=rf,
                    recall=round(recall_at_k(found, truth), 6),
                    latency_ms=round(float(ms.mean()), 4),
                    p50_ms=round(float(np.percentile(ms, 50)), 4),
                    p95_ms=round(float(np.percentile(ms, 95)), 4),
                )
            )
    return EvaluationTable(
        uri=ds.uri,
        column=column,
        index_name=index.name,
        index_type=str(index.index_type),
        metric=metric,
        version=ds.version,
        k=k,
        num_queries=len(q),
        exact_seconds=round(exact_seconds, 4),
        rows=tuple(rows),
    )


def sample_query_rows(ds, column: str, num_queries: int, *, seed: int = 0, dimension: int) -> np.ndarray:
    """``num_queries`` random usable (non-null, finite) vectors of the dataset, as float32."""
    if ds.count_rows() == 0:
        raise InvalidInputError(f"the dataset at {ds.uri} has no rows to draw queries from.")
    # Draw a few spare rows: null or NaN vectors are dropped.
    x = drawn_vectors(ds, column, 2 * num_queries + 16, dimension=dimension, seed=seed)[:num_queries]
    if len(x) == 0:
        raise InvalidInputError(f"no usable (non-null, finite) vectors found in column {column!r} to query with.")
    return x
