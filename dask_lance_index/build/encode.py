"""A precomputed segment's rows assigned and encoded: in its build task, or spread over the
cluster's workers (or this machine's threads) a fragment at a time.

:class:`EncodeFragments` reads the rows Lance would index from some fragments, assigns and
encodes them (:mod:`dask_lance_index.model`) and returns the columns the segment's files
are written from (:class:`Encoded`). A build task calls it over all its fragments; but when
the plan has a single build task (the data fits one task: it is not split into a task per
worker and merged again, which reads and writes every code once more) and its fragments are
several, the task spreads them (:func:`encode_rows`): on a ``dask.distributed`` worker of a
cluster with more than one thread, as tasks ``dli-encode-<segment>-<fragment>`` on every
worker (the model and plan scattered once; the build task seceded meanwhile), and without a
cluster in a thread per CPU. Their results come back in fragment order, so the segment is
the one the task would write alone (IVF_RQ: each fragment calibrates its own ex-code
rescale factor, so its codes may differ from one pass's as they do between batchings).
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from distributed import worker_client

from ..model import FlatEncoder, PQEncoder, RQEncoder, RQRotation, SQEncoder
from ..runtime import cluster_threads, in_bulk, one_blas_thread, small_pages
from ..storage import RowCounts, open_dataset, valid_rows

__all__ = ["EncodeFragments", "Encoded", "encode_rows"]

# Fragments encoded at once (as tasks submitted or in threads) per thread, ahead of the
# one whose results the build task takes next.
FRAGMENTS_IN_FLIGHT = 2


@dataclass
class Encoded:
    """Encoded rows: ``codes`` columns (``part_ids`` and the type's), ``row_ids``, the
    IVF loss, the scan's counts, and the assignment audit's checked and agreeing rows."""

    codes: dict
    row_ids: np.ndarray
    loss: float = 0.0
    counts: RowCounts = field(default_factory=RowCounts)
    checked: int = 0
    agreed: int = 0

    @classmethod
    def concat(cls, parts: list) -> "Encoded":
        """One result from the results of fragments, in order. Each part's columns are
        dropped once copied, so the peak is the whole plus one part."""
        if len(parts) == 1:
            return parts[0]
        counts = RowCounts()
        for p in parts:
            counts.nulls += p.counts.nulls
            counts.unindexable += p.counts.unindexable
            counts.rows += p.counts.rows
        n = sum(len(p.row_ids) for p in parts)
        like = next((p.codes for p in parts if p.codes), {})  # a fragment with no indexable rows has none
        with small_pages():
            codes = {k: np.empty((n,) + v.shape[1:], v.dtype) for k, v in like.items()}
            row_ids = np.empty(n, np.uint64)
        at = 0
        for p in parts:
            m = len(p.row_ids)
            for k in codes:
                if m:
                    codes[k][at : at + m] = p.codes.pop(k)
            row_ids[at : at + m] = p.row_ids
            p.row_ids = None
            at += m
        return cls(codes, row_ids, float(sum(p.loss for p in parts)), counts,
                   sum(p.checked for p in parts), sum(p.agreed for p in parts))


@dataclass(frozen=True)
class EncodeFragments:
    """Assign and encode the indexable rows of some fragments as the precomputed engine
    does for ``plan`` with ``model``: a picklable callable (the ``dli-encode`` task's work),
    opening its own dataset handle (one shared across threads fails in Lance)."""

    plan: object
    model: object
    storage_options: dict | None = None

    def __call__(self, fragment_ids) -> Encoded:
        plan, model, params = self.plan, self.model, self.plan.params
        ds = open_dataset(plan.uri, plan.version, self.storage_options)
        mine = set(fragment_ids)
        bound = sum(f.num_rows for f in plan.fragments if f.fragment_id in mine)
        centroids = np.asarray(model.ivf_centroids, dtype=np.float32)
        direct = {}  # columns the encoder writes into in place, rows [at, at + len(x))
        if params.quantizer == "PQ":
            encoder = PQEncoder(centroids, model.pq_codebook, params.metric, model.coarse_index)

            def encode(x, at):
                parts, codes, loss = encoder.encode(x, with_loss=True)
                return {"part_ids": parts, "codes": codes}, loss
        elif params.index_type in ("IVF_FLAT", "IVF_HNSW_FLAT"):
            encoder = FlatEncoder(centroids, params.metric, model.coarse_index)
            # 4d bytes a row: the encoder writes the stored rows straight into the task's array
            with small_pages():
                direct["codes"] = np.empty((bound, centroids.shape[1]), np.float32)

            def encode(x, at):
                parts, _, loss = encoder.encode(x, out=direct["codes"][at : at + len(x)])
                return {"part_ids": parts}, loss
        elif params.quantizer == "SQ":
            encoder = SQEncoder(centroids, model.sq_bounds, params.metric, model.coarse_index, params.num_bits)

            def encode(x, at):
                parts, codes, loss = encoder.encode(x)
                return {"part_ids": parts, "codes": codes}, loss
        else:
            encoder = RQEncoder(centroids, RQRotation.from_json(model.rabitq_model), params.metric, params.num_bits,
                                coarse=model.coarse_index)

            def encode(x, at):
                out = encoder.encode(x)
                return out, out.pop("loss")

        # One array per column, sized by the fragments' rows (an upper bound of the valid
        # rows) and filled batch by batch: no second copy when the task ends.
        # These arrays, and the copies the writers make, are fresh memory touched once: made
        # without transparent huge pages (runtime.malloc: a fresh 512 MB array took 0.04 s or,
        # when the kernel had to compact memory for its huge pages, 1.1-1.8 s to fill, against
        # 0.20-0.27 s with small pages).
        counts, codes, loss, n = RowCounts(), {}, 0.0, 0
        with small_pages():
            row_ids = np.empty(bound, np.uint64)
        for x, rid in valid_rows(ds, plan.column, plan.dimension, list(fragment_ids), counts):
            out, batch_loss = encode(x, n)
            loss += batch_loss
            if not codes:
                with small_pages():
                    codes = {k: np.empty((bound,) + v.shape[1:], v.dtype) for k, v in out.items()}
            for k, v in out.items():
                codes[k][n : n + len(v)] = v
            row_ids[n : n + len(rid)] = rid
            n += len(rid)
        codes = {k: v[:n] for k, v in {**codes, **direct}.items()} if n else {}
        assigner = encoder.assigner
        return Encoded(codes, row_ids[:n], loss, counts, getattr(assigner, "checked", 0),
                       getattr(assigner, "agreed", 0))


@dataclass(frozen=True)
class _EncodeTask:
    """A ``dli-encode`` task: one fragment, the scattered plan and model, BLAS and heap
    settings as the build task's."""

    storage_options: dict | None = None

    @in_bulk
    @one_blas_thread()
    def __call__(self, plan, model, fragment_id: int) -> Encoded:
        return EncodeFragments(plan, model, self.storage_options)([fragment_id])


def encode_rows(plan, model, fragment_ids: list, segment: str, storage_options: dict | None = None,
                spread: bool = False) -> Encoded:
    """The encoded rows of ``fragment_ids``; with ``spread``, a fragment at a time on the
    cluster's workers or this machine's threads (see the module's docstring)."""
    encode = EncodeFragments(plan, model, storage_options)
    if not spread or len(fragment_ids) < 2:
        return encode(fragment_ids)
    threads = cluster_threads()
    if threads > 1:
        return Encoded.concat(list(_on_cluster(plan, model, fragment_ids, segment, storage_options)))
    if threads == 0 and (os.cpu_count() or 1) > 1:
        return Encoded.concat(list(_in_threads(encode, fragment_ids, os.cpu_count())))
    return encode(fragment_ids)


def _in_threads(encode: EncodeFragments, fragment_ids: list, threads: int):
    with ThreadPoolExecutor(threads, thread_name_prefix="dli-encode") as pool:
        yield from pool.map(lambda f: encode([f]), fragment_ids)


def _on_cluster(plan, model, fragment_ids: list, segment: str, storage_options: dict | None):
    task = _EncodeTask(storage_options)
    todo = iter(fragment_ids)
    with worker_client() as client:
        threads = cluster_threads(client)
        plan_f, model_f = client.scatter([plan, model], hash=False)
        pending = collections.deque()

        def submit() -> None:
            f = next(todo, None)
            if f is not None:
                pending.append(client.submit(task, plan_f, model_f, f, key=f"dli-encode-{segment}-{f}", pure=False))

        for _ in range(FRAGMENTS_IN_FLIGHT * max(threads, 1)):
            submit()
        while pending:
            future = pending.popleft()
            done = future.result()
            future.release()
            submit()
            yield done
