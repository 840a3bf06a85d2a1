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
per query. :func:`dask_lance_index.evaluate_index` runs it, then queries the
committed index (:mod:`.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from ..errors import InvalidInputError
from ..runtime import compute_with_progress, one_blas_thread, resolve_client
from ..storage import column_info, field_of, hide_secrets, open_dataset, to_float32_matrix

__all__ = ["FragmentTopK", "check_queries", "exact_knn", "exact_knn_dataset", "merge_topk"]

_METRICS = ("l2", "cosine", "dot", "hamming")
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
    if metric == "hamming":
        return -_hamming(q, x)
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


def _hamming(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Hamming distances of uint8 (bit-packed) queries to uint8 rows, as float32: the
    bits unpacked, two GEMMs count the ones of q that x lacks and the ones x has that q lacks."""
    qb = np.unpackbits(np.asarray(q).astype(np.uint8), axis=1).astype(np.float32)
    xb = np.unpackbits(np.asarray(x).astype(np.uint8), axis=1).astype(np.float32)
    return qb @ (1.0 - xb).T + (1.0 - qb) @ xb.T


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


@dataclass(frozen=True)
class FragmentTopK:
    """Task of :func:`exact_knn_dataset`: called with ``(fragment_id, queries)``, the ``k``
    nearest rows of that fragment for each (prepared) query.

    Returns ``(scores, ids)``, both ``(num_queries, k)``, unordered; ``ids`` are
    Lance row ids (``_rowid``) or the values of ``id_column``. Null vectors and
    vectors with NaN or infinity are never neighbours. The fragment is streamed
    in batches, so memory stays bounded for any fragment size.
    """

    uri: str
    version: int
    column: str
    k: int
    metric: str
    id_column: str | None = None
    storage_options: dict | None = None

    @one_blas_thread()  # partitions run side by side: one BLAS thread each (runtime.blas)
    def __call__(self, fragment_id: int, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ds = open_dataset(self.uri, self.version, self.storage_options)
        dimension = column_info(ds, self.column).dimension
        batch_rows = int(max(1024, min(65536, _SCORE_BUDGET // max(len(queries), 1))))
        id_column, k = self.id_column, self.k
        scanner = ds.scanner(
            columns=[self.column] + ([id_column] if id_column else []),
            fragments=[ds.get_fragment(fragment_id)],
            batch_size=batch_rows,
            with_row_id=id_column is None,
        )
        best = (np.full((len(queries), k), -np.inf, dtype=np.float32), np.full((len(queries), k), -1, dtype=np.int64))
        for batch in scanner.to_batches():
            if not batch.num_rows:
                continue
            x, valid = to_float32_matrix(field_of(batch, self.column), dimension)
            ids = np.asarray(batch.column(id_column or "_rowid").to_numpy(zero_copy_only=False)).astype(np.int64)
            s = _scores(queries, x, self.metric)
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
    metric = _check_metric(metric)
    if int(k) < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}.")
    k = int(k)
    storage_options = hide_secrets(storage_options)  # the tasks carry them: no secret in a logged repr
    ds = open_dataset(uri, version, storage_options)
    info = column_info(ds, column)
    q = check_queries(queries, info.dimension)
    if id_column is not None and id_column not in ds.schema.names:
        raise InvalidInputError(f"id_column {id_column!r} is not in the dataset; its columns are {ds.schema.names}.")
    fragments = [f.fragment_id for f in ds.get_fragments()]
    if not fragments:
        raise InvalidInputError(f"the dataset at {ds.uri} has no fragments at version {ds.version}.")
    prepared = _prepare_queries(q, metric)
    tok = tokenize(ds.uri, ds.version, column, prepared, k, metric, id_column)[:8]
    q_key = delayed(prepared, name=f"dli-queries-{tok}")
    topk = FragmentTopK(ds.uri, ds.version, column, k, metric, id_column, storage_options)
    level = [delayed(topk, pure=True)(f, q_key, dask_key_name=f"dli-knn-{tok}-{f}") for f in fragments]
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
    client = resolve_client(client, scheduler)
    return compute_with_progress(ids, client=client, scheduler=scheduler, progress=progress)


def check_queries(queries, dimension: int) -> np.ndarray:
    """``queries`` as a ``(num_queries, dimension)`` float32 array, or a clear error."""
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
