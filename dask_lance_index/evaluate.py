"""Exact neighbours with NumPy BLAS, and recall of a committed Lance index."""

from __future__ import annotations

import time

import numpy as np

__all__ = ["exact_knn", "search", "recall_at_k"]


def exact_knn(data: np.ndarray, queries: np.ndarray, k: int = 10, metric: str = "l2", batch: int = 65536) -> np.ndarray:
    """Row positions of the ``k`` exact nearest rows of ``data`` for each query.

    Rows of ``data`` holding NaN or infinity are never neighbours (Lance never
    indexes them). Work is ``q @ X.T`` in batches of rows with a running top-k.
    """
    data = np.asarray(data, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    for start in range(0, len(data), batch):
        x = data[start : start + batch]
        if metric == "l2":
            s = 2.0 * (q @ x.T) - np.einsum("ij,ij->i", x, x)[None, :]
        elif metric == "cosine":
            xn = np.linalg.norm(x, axis=1)
            s = (q @ x.T) / np.maximum(xn, 1e-30)[None, :]
        elif metric == "dot":
            s = q @ x.T
        else:
            raise ValueError(f"unknown metric {metric!r}")
        s = np.where(np.isfinite(x).all(axis=1)[None, :], s, -np.inf)
        s = np.nan_to_num(s, nan=-np.inf)
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(x)), s.shape)], axis=1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, top, axis=1)
        best_i = np.take_along_axis(cand_i, top, axis=1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, axis=1)


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
    out = np.full((len(queries), k), -1, dtype=np.int64)
    t0 = time.perf_counter()
    for i, v in enumerate(np.asarray(queries, dtype=np.float32)):
        nearest = {"column": column, "q": v, "k": k, "nprobes": nprobes}
        if refine_factor:
            nearest["refine_factor"] = refine_factor
        ids = (
            ds.to_table(columns=[id_column], nearest=nearest, disable_scoring_autoprojection=True)
            .column(id_column)
            .to_numpy()
        )
        out[i, : len(ids)] = ids
    return out, (time.perf_counter() - t0) / max(len(queries), 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true neighbours found, per query."""
    k = truth.shape[1]
    hits = [len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k
