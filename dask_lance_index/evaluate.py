"""Exact neighbours with NumPy BLAS, on one machine or across a cluster, and recall of a committed index.

:func:`exact_knn` is brute force over an array in memory. :func:`exact_knn_dataset`
does the same over a Lance dataset as a Dask graph laid out as a tree reduction::

    dli-knn-<frag> ─┐
    dli-knn-<frag> ─┴► dli-knn-merge-<stage>-<i> ─┐
    dli-knn-<frag> ─┐                             ├► ... ─► dli-knn-ids
    dli-knn-<frag> ─┴► dli-knn-merge-<stage>-<i> ─┘

one task per fragment (distances of every query to that fragment's vectors with
one GEMM per batch of rows, top-k by ``argpartition``), then pairwise merges of
the per-fragment top-k lists, so no task ever holds more than ``2k`` candidates
per query. :func:`evaluate_index` runs it, then queries the committed index at
each ``nprobes`` / ``refine_factor`` setting and returns an
:class:`~dask_lance_index.evaltable.EvaluationTable` of recall@k and latency.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ._blas import one_blas_thread
from .errors import InvalidInputError
from .evaltable import EvaluationRow, EvaluationTable

__all__ = [
    "exact_knn",
    "exact_knn_dataset",
    "fragment_topk",
    "merge_topk",
    "search",
    "recall_at_k",
    "evaluate_index",
]

_METRICS = ("l2", "cosine", "dot")
# Scores of (queries x rows) held at once by a fragment task: 16M float32 = 64 MB.
_SCORE_BUDGET = 1 << 24


def _check_metric(metric: str) -> str:
    m = {"euclidean": "l2"}.get(str(metric).lower(), str(metric).lower())
    if m not in _METRICS:
        raise InvalidInputError(f"unknown metric {metric!r}. Fix: use one of {list(_METRICS)}.")
    return m


def _prepare_queries(queries, metric: str) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float32)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    return q


def _scores(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """Similarity of prepared queries to rows ``x`` (higher is nearer), ``-inf`` for unusable rows.

    l2 ranks by ``2 q.x - |x|^2`` (``|q|^2`` is the same for every row of a query),
    so the whole block is one GEMM plus a row vector, updated in place.
    """
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        x = np.where(finite[:, None], x, 0.0).astype(np.float32)  # no NaN may leak into the GEMM
    s = q @ x.T
    if metric == "l2":
        s *= 2.0
        s -= np.einsum("ij,ij->i", x, x)[None, :]
    elif metric == "cosine":
        s /= np.maximum(np.linalg.norm(x, axis=1), 1e-30)[None, :]
    elif metric != "dot":
        raise ValueError(f"unknown metric {metric!r}")
    if not finite.all():
        s[:, ~finite] = -np.inf
    return s


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row (unordered), padding with -inf / -1 when fewer.

    ``ids`` is either ``(n,)`` (the same ids for every row) or ``scores``' shape.
    """
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.concatenate([scores, np.full((len(scores), pad), -np.inf, scores.dtype)], axis=1)
        ids = np.broadcast_to(ids, (len(scores), ids.shape[-1]))
        ids = np.concatenate([ids, np.full((len(ids), pad), -1, ids.dtype)], axis=1)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best = np.take_along_axis(scores, top, axis=1)
    return best, (ids[top] if ids.ndim == 1 else np.take_along_axis(ids, top, axis=1))


def _running_top(best, s: np.ndarray, ids: np.ndarray, k: int):
    """Fold one block of scores ``(queries, rows)`` with 1-D row ``ids`` into a running top-k.

    Once every query holds k finite candidates, only the block's entries that
    beat a query's current k-th best are gathered (one comparison pass; few
    pass after the first blocks), instead of partitioning the whole block.
    """
    if best is None or not np.isfinite(best[0]).all():
        head = min(s.shape[1], max(4 * k, 1024))  # a small first block fills the top-k cheaply
        block = _top(s[:, :head], ids[:head], k)
        best = block if best is None else merge_topk(best, block, k)
        s, ids = s[:, head:], ids[head:]
        if not s.shape[1]:
            return best
        if not np.isfinite(best[0]).all():  # (almost) no usable rows yet: partition the block
            return merge_topk(best, _top(s, ids, k), k)
    bs, bi = best
    nq = len(bs)
    qi, cj = np.nonzero(s > bs.min(axis=1)[:, None])
    if not len(qi):
        return best
    all_q = np.concatenate([np.repeat(np.arange(nq), k), qi])
    all_s = np.concatenate([bs.ravel(), s[qi, cj]])
    all_i = np.concatenate([bi.ravel(), ids[cj]])
    order = np.lexsort((-all_s, all_q))  # by query, best first
    starts = np.concatenate([[0], np.cumsum(np.bincount(all_q, minlength=nq))[:-1]])
    take = order[starts[:, None] + np.arange(k)[None, :]]
    return all_s[take], all_i[take]


def _sorted(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best first; ids of unusable rows (score -inf: null/NaN rows, padding) become -1."""
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    return scores, np.where(scores > -np.inf, ids, -1)


def exact_knn(data: np.ndarray, queries: np.ndarray, k: int = 10, metric: str = "l2", batch: int = 65536) -> np.ndarray:
    """Row positions of the ``k`` exact nearest rows of ``data`` for each query.

    Rows of ``data`` holding NaN or infinity are never neighbours (Lance never
    indexes them). Work is ``q @ X.T`` in batches of rows with a running top-k.
    """
    data = np.asarray(data, dtype=np.float32)
    q = _prepare_queries(queries, metric)
    best = None
    for start in range(0, len(data), batch):
        x = data[start : start + batch]
        best = _running_top(best, _scores(q, x, metric), np.arange(start, start + len(x)), k)
    if best is None:
        return np.full((len(q), k), -1, dtype=np.int64)
    return _sorted(*best)[1]


# -- exact neighbours over a Lance dataset, as a Dask graph ---------------------------------------


@one_blas_thread()  # partitions run side by side: one BLAS thread each (see _blas)
def fragment_topk(
    uri: str,
    version: int,
    column: str,
    fragment_id: int,
    queries: np.ndarray,
    k: int,
    metric: str,
    id_column: str | None = None,
    storage_options: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Task: the ``k`` nearest rows of one fragment for each (prepared) query.

    Returns ``(scores, ids)``, both ``(num_queries, k)``, unordered; ``ids`` are
    Lance row ids (``_rowid``) or the values of ``id_column``. Null vectors and
    vectors with NaN or infinity are never neighbours. The fragment is streamed
    in batches, so memory stays bounded for any fragment size.
    """
    from ._lance import _to_float32_matrix, column_info, open_dataset

    ds = open_dataset(uri, version, storage_options)
    dimension = column_info(ds, column).dimension
    batch_rows = int(max(1024, min(65536, _SCORE_BUDGET // max(len(queries), 1))))
    columns = [column] + ([id_column] if id_column else [])
    scanner = ds.scanner(
        columns=columns,
        fragments=[ds.get_fragment(fragment_id)],
        batch_size=batch_rows,
        with_row_id=id_column is None,
    )
    best = (np.full((len(queries), k), -np.inf, dtype=np.float32), np.full((len(queries), k), -1, dtype=np.int64))
    for batch in scanner.to_batches():
        if not batch.num_rows:
            continue
        x, valid = _to_float32_matrix(batch.column(column), dimension)
        ids = np.asarray(batch.column(id_column or "_rowid").to_numpy(zero_copy_only=False)).astype(np.int64)
        s = _scores(queries, x, metric)
        if not valid.all():
            s[:, ~valid] = -np.inf  # nulls were zero-filled: they must never rank
        best = _running_top(best, s, ids, k)
    return best


def merge_topk(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int):
    """Task: the ``k`` best of two per-query top-k lists ``(scores, ids)``."""
    return _top(np.concatenate([a[0], b[0]], axis=1), np.concatenate([a[1], b[1]], axis=1), k)


def _finish_knn(top) -> np.ndarray:
    return _sorted(*top)[1]


def exact_knn_dataset(
    uri,
    column: str,
    queries,
    k: int = 10,
    metric: str = "l2",
    *,
    id_column: str | None = None,
    version: int | None = None,
    storage_options: dict | None = None,
    client=None,
    scheduler: str | None = None,
    compute: bool = True,
    progress: bool | None = False,
):
    """Exact ``k`` nearest neighbours of each query over a Lance dataset, in parallel on Dask.

    Parameters
    ----------
    uri : str, path or LanceDataset
    column : str
        The vector column.
    queries : array (num_queries, dim)
    k : int
    metric : {"l2", "cosine", "dot"}
    id_column : str, optional
        Return this column's values as ids; default Lance row ids (``_rowid``),
        which is what a nearest-neighbour query returns with ``with_row_id=True``.
    version : int, optional
        Dataset version; default the latest.
    client, scheduler, progress
        As in :func:`dask_lance_index.create_index`.
    compute : bool
        ``False``: return the lazy ``Delayed`` instead of the ids.

    Returns
    -------
    ndarray of int64, shape (num_queries, k)
        Ids of the nearest rows, nearest first; ``-1`` pads when the dataset has
        fewer than ``k`` usable rows.
    """
    from dask.base import tokenize
    from dask.delayed import delayed

    from ._lance import column_info, hide_secrets, open_dataset

    metric = _check_metric(metric)
    if int(k) < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}.")
    k = int(k)
    storage_options = hide_secrets(storage_options)  # the tasks carry them: no secret in a logged repr
    ds = open_dataset(uri, version, storage_options)
    info = column_info(ds, column)
    q = _check_queries(queries, info.dimension)
    if id_column is not None and id_column not in ds.schema.names:
        raise InvalidInputError(f"id_column {id_column!r} is not in the dataset; its columns are {ds.schema.names}.")
    fragments = [f.fragment_id for f in ds.get_fragments()]
    if not fragments:
        raise InvalidInputError(f"the dataset at {ds.uri} has no fragments at version {ds.version}.")
    prepared = _prepare_queries(q, metric)
    tok = tokenize(ds.uri, ds.version, column, prepared, k, metric, id_column)[:8]
    q_key = delayed(prepared, name=f"dli-queries-{tok}")
    level = [
        delayed(fragment_topk, pure=True)(
            ds.uri, ds.version, column, f, q_key, k, metric, id_column, storage_options,
            dask_key_name=f"dli-knn-{tok}-{f}",
        )
        for f in fragments
    ]
    stage = 0
    while len(level) > 1:  # pairwise tree: depth log2(fragments), 2k candidates per task
        nxt = [
            delayed(merge_topk, pure=True)(level[i], level[i + 1], k, dask_key_name=f"dli-knn-merge-{tok}-{stage}-{i // 2}")
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level, stage = nxt, stage + 1
    ids = delayed(_finish_knn, pure=True)(level[0], dask_key_name=f"dli-knn-ids-{tok}")
    if not compute:
        return ids
    from .api import resolve_client
    from .progress import compute_with_progress

    client = client if scheduler is not None else resolve_client(client)
    return compute_with_progress(ids, client=client, scheduler=scheduler, progress=progress)


def _check_queries(queries, dimension: int) -> np.ndarray:
    try:
        q = np.asarray(queries, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"queries must be a 2-D array of floats: {exc}") from None
    if q.ndim == 1 and q.size == dimension:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dimension or len(q) == 0:
        raise InvalidInputError(
            f"queries must have shape (num_queries, {dimension}) to match the vector column; "
            f"got {q.shape}. Fix: pass one row per query vector."
        )
    if not np.isfinite(q).all():
        raise InvalidInputError("queries hold NaN or infinity. Fix: drop or repair those query vectors.")
    return q


# -- querying the committed index -----------------------------------------------------------------


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
    for i, v in enumerate(np.asarray(queries, dtype=np.float32)):  # one query per call: latency is per query
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


def _index_on(ds, column: str, name: str | None):
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
        One :class:`~dask_lance_index.evaltable.EvaluationRow` per setting;
        ``.to_pandas()``, ``.to_markdown()``, ``.plot()``.
    """
    from ._lance import column_info, open_dataset

    k = int(k)
    if k < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}.")
    nprobes = _as_tuple(nprobes, "nprobes")
    refine_factors = _as_tuple(refine_factors, "refine_factors", allow_none=True)
    try:
        ds = open_dataset(uri, version, storage_options)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"cannot open a Lance dataset at {uri!r}: {exc}") from None
    info = column_info(ds, column)
    q = _check_queries(queries, info.dimension)
    index = _index_on(ds, column, name)
    metric = _check_metric(metric) if metric is not None else _index_metric(ds, index)
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
