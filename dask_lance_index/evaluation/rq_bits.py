"""Choose IVF_RQ's ``num_bits`` before paying for a build: distance error and recall per bit width.

:func:`evaluate_rq_bits` encodes a sample with Lance's own RaBitQ quantiser
(:mod:`dask_lance_index.model.rabitq_encoder`: residuals to IVF centroids, the fast
rotation, sign bits plus ``num_bits - 1`` ex-bits per coordinate), estimates
every query-to-row squared L2 distance from the codes alone, and compares with
exact distances. All distances are GEMMs over chunks of queries (BLAS).

The estimator is the one Lance's stored factors encode (see
:func:`~dask_lance_index.model.rabitq_encoder.rq_factors`):
``|q - c|^2 + |r|^2 - 2 |r|^2 <R(q - c), u> / <r, u>``, with ``u`` the centred
code of the rotated residual ``r``, i.e. extended RaBitQ's unbiased estimate,
here in float64. Lance's search also quantises the query's lookup table for
its SIMD scan, so its own numbers can be slightly worse, but the ranking of bit
widths is the same. Recall here is over a full scan (every row), so it
measures the loss of quantisation alone, not of probing too few partitions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InvalidInputError
from ..model import RQ_NUM_BITS, RQRotation, build_rq_rotation
from ..model.kmeans import kmeans
from ..model.rabitq_encoder import RQCodes, assign_l2, ex_codes, sign_codes
from ..storage.rq_layout import EX_BLOCK_DIMS

__all__ = ["RQBitsResult", "evaluate_rq_bits"]

_QUERY_CHUNK = 64  # queries per GEMM block: (64, n) float64 distance tables stay small


@dataclass(frozen=True)
class RQBitsResult:
    """How well ``num_bits``-bit RaBitQ codes estimate distances on a sample.

    Attributes
    ----------
    num_bits : int
        Bits per dimension (1 = sign bits only).
    code_bytes : int
        Bytes of code per vector as Lance stores them (sign bits plus ex-codes,
        the latter padded to 64-dim blocks), without the per-row float factors.
    distance_error : float
        Mean relative error of the estimated squared L2 distance over all
        (query, row) pairs: ``mean(|d_est - d| / d)``.
    distance_error_p95 : float
        95th percentile of that relative error.
    recall : float
        Recall@k of the estimated top k against the exact top k (full scan).
    recall_refined : float
        Recall@k after re-ranking the estimated top ``refine_factor * k`` with
        exact distances, as Lance's ``refine_factor`` does.
    k : int
    refine_factor : int
    """

    num_bits: int
    code_bytes: int
    distance_error: float
    distance_error_p95: float
    recall: float
    recall_refined: float
    k: int = 10
    refine_factor: int = 5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RQBitsResult:
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> RQBitsResult:
        return cls.from_dict(json.loads(s))


def _code_bytes(dim: int, num_bits: int) -> int:
    ex = -(-dim // EX_BLOCK_DIMS) * EX_BLOCK_DIMS * (num_bits - 1) // 8
    return dim // 8 + ex


def _top_k(d: np.ndarray, k: int) -> np.ndarray:
    idx = np.argpartition(d, k - 1, axis=1)[:, :k]
    return np.take_along_axis(idx, np.argsort(np.take_along_axis(d, idx, axis=1), axis=1), axis=1)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    # hits per query without a Python loop: membership by broadcasting (k x k per query)
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())


def evaluate_rq_bits(
    sample,
    num_bits=(1, 2, 4, 8),
    *,
    queries=None,
    num_queries: int = 100,
    centroids=None,
    num_partitions: int = 16,
    k: int = 10,
    refine_factor: int = 5,
    metric: str = "l2",
    seed: int = 0,
) -> list[RQBitsResult]:
    """Estimated distance error and recall@k of RaBitQ codes per bit width, on a sample.

    Parameters
    ----------
    sample : array_like, shape (n, d)
        Rows like those to index (a few thousand are enough); ``d`` a multiple of 8.
    num_bits : sequence of int
        Bit widths to compare, each 1 to 9 (Lance's range).
    queries : array_like, shape (q, d), optional
        Queries; default: ``num_queries`` rows held out of ``sample``.
    centroids : array_like, shape (p, d), optional
        IVF centroids the residuals are taken against, as in the index; default:
        ``num_partitions`` k-means centroids of the sample.
    k, refine_factor : int
        Recall@k, and the re-ranking depth of ``recall_refined``.
    metric : {"l2", "cosine"}
        Cosine normalises rows and queries first, as Lance does.
    seed : int
        Seeds the held-out queries, the k-means and the rotation.

    Returns
    -------
    list of RQBitsResult
        One per bit width, in the order given.
    """
    x = np.asarray(sample, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % 8 or x.shape[1] < 8:
        raise InvalidInputError(
            f"sample must be a 2-D array of vectors whose dimension is a multiple of 8 (IVF_RQ), got shape {x.shape}"
        )
    bits = tuple(int(b) for b in np.atleast_1d(num_bits))
    if not bits or any(b not in RQ_NUM_BITS for b in bits):
        raise InvalidInputError(f"num_bits={num_bits!r}: each bit width must be 1 to 9, as Lance takes")
    if metric not in ("l2", "cosine"):
        raise InvalidInputError(f"metric={metric!r}: evaluate_rq_bits supports 'l2' and 'cosine'")
    if k < 1 or refine_factor < 1:
        raise InvalidInputError("k and refine_factor must be at least 1")
    rng = np.random.default_rng(seed)
    if queries is None:
        if len(x) < num_queries + k * refine_factor + 1:
            raise InvalidInputError(
                f"a sample of {len(x)} rows is too small to hold out {num_queries} queries and rank "
                f"{k * refine_factor}; pass more rows or fewer num_queries"
            )
        held = rng.choice(len(x), num_queries, replace=False)
        keep = np.ones(len(x), bool)
        keep[held] = False
        q, x = x[held], x[keep]
    else:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != x.shape[1]:
            raise InvalidInputError(f"queries have shape {q.shape}; they need {x.shape[1]} columns like the sample")
    if len(x) < k * refine_factor:
        raise InvalidInputError(f"the sample needs at least k * refine_factor = {k * refine_factor} rows")
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    if centroids is None:
        c = kmeans(x, min(num_partitions, len(x)), seed=seed, max_iters=20)[0].astype(np.float32)
    else:
        c = np.asarray(centroids, dtype=np.float32)
        if c.ndim != 2 or c.shape[1] != x.shape[1]:
            raise InvalidInputError(f"centroids have shape {c.shape}; they need {x.shape[1]} columns")

    rot = RQRotation.from_json(build_rq_rotation(x.shape[1], num_bits=1, seed=seed))
    parts = assign_l2(x, c)
    rotated = rot.apply(x - c[parts])
    r2 = np.einsum("ij,ij->i", rotated, rotated)
    qr, cr = rot.apply(q), rot.apply(c)
    # exact and per-centroid squared distances, in float64 so that cancellation does not blur them
    q64, x64, c64 = q.astype(np.float64), x.astype(np.float64), c.astype(np.float64)
    qn, xn, cn = (np.einsum("ij,ij->i", a, a) for a in (q64, x64, c64))
    exact = np.maximum(qn[:, None] + xn[None, :] - 2 * (q64 @ x64.T), 0)
    qc2 = (qn[:, None] + cn[None, :] - 2 * (q64 @ c64.T))[:, parts]
    truth = _top_k(exact, k)
    pos = exact > 0

    binary = sign_codes(rotated)
    out = []
    for b in bits:
        ex = ex_codes(rotated, b - 1)[0] if b > 1 else None
        u = RQCodes(part_ids=parts, binary=binary, ex=ex, rotated=rotated).centred(b)
        ip_ru = np.einsum("ij,ij->i", rotated, u)
        scale = np.divide(r2, ip_ru, out=np.zeros_like(r2), where=ip_ru != 0).astype(np.float64)
        cu = np.einsum("ij,ij->i", cr[parts], u).astype(np.float64)
        est = np.empty_like(exact)
        for s in range(0, len(q), _QUERY_CHUNK):
            g = (qr[s : s + _QUERY_CHUNK] @ u.T).astype(np.float64)  # BLAS: (chunk, n)
            est[s : s + _QUERY_CHUNK] = qc2[s : s + _QUERY_CHUNK] + r2 - 2 * (g - cu) * scale
        rel = np.abs(est - exact)[pos] / exact[pos]
        found = _top_k(est, k)
        deep = _top_k(est, k * refine_factor)
        reranked = np.take_along_axis(deep, _top_k(np.take_along_axis(exact, deep, axis=1), k), axis=1)
        out.append(
            RQBitsResult(
                num_bits=b,
                code_bytes=_code_bytes(x.shape[1], b),
                distance_error=float(rel.mean()),
                distance_error_p95=float(np.percentile(rel, 95)),
                recall=_recall(found, truth),
                recall_refined=_recall(reranked, truth),
                k=k,
                refine_factor=refine_factor,
            )
        )
    return out
