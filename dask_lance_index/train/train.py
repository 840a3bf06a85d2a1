"""Training: the build's model from the samples, in one task, with BLAS.

The sample is small by design (Lance's rule: ``sample_rate`` rows per IVF
centroid and per PQ code word), so the k-means runs in one task on one worker
with BLAS (:mod:`dask_lance_index.model`); what it can spread, it spreads:
Lloyd passes over a large IVF sample go to the other workers as partial sums
(:func:`cluster_partials`), and PQ's independent groups of sub-spaces train
side by side (:func:`map_groups`): as cluster tasks inside a worker that has
others to share with, in threads under dask's local schedulers.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from distributed import worker_client

from ..errors import InvalidInputError
from ..model import (
    IndexModel,
    LocalRows,
    SQ_SAMPLE_RATE,
    SampleRows,
    build_rq_rotation,
    prepare_vectors,
    residuals,
    train_ivf,
    train_pq,
)
from ..model.coarse import (
    TARGET_AGREEMENT,
    CoarseIndex,
    assignment_agreement,
    choose_probes,
    train_ivf_hierarchical,
)
from ..model.kmeans import combine_partials, lloyd_partial
from ..model.sq_bounds import combine_sq_bounds
from ..plan.params import AGREEMENT_ROWS
from ..recovery.journal import read_model, write_model
from ..runtime import host_blas_threads, host_cores, in_bulk, one_blas_thread, with_small_pages
from ..runtime.client import num_workers, other_hosts, worker_client_or_none
from .cluster_rows import draw_sample, tree_reduce
from .sample import seed_for

__all__ = ["DISTRIBUTED_TRAIN_MIN_WORK", "TrainModel", "cluster_partials", "map_groups", "train_ivf_on_cluster",
           "train_model", "train_shards", "two_level_sample"]

# Lloyd iterations spread over the cluster only when one iteration is big
# enough (rows x centroids x dims multiply-adds) to dwarf a round of task
# scheduling: about 4 s of single-core GEMM. Below it, one task is faster.
DISTRIBUTED_TRAIN_MIN_WORK = 2**34


def train_shards(num_rows: int, num_partitions: int, dimension: int, num_workers: int,
                 min_work: int = DISTRIBUTED_TRAIN_MIN_WORK) -> int:
    """How many shards the IVF training rows are split into (1: train in this task).

    Pure: one shard per worker once an iteration's work passes ``min_work``.
    """
    if num_workers < 2 or num_rows * num_partitions * dimension < min_work:
        return 1
    return int(min(num_workers, max(1, num_rows // max(num_partitions, 1))))


def cluster_partials(client, x: np.ndarray, shards: int) -> Callable:
    """``partials(centroids)`` for :func:`dask_lance_index.model.kmeans.kmeans`: the rows
    live on the workers in ``shards`` pieces; each iteration computes one partial per
    piece there and merges them pairwise as a tree, so only ``(k, d)`` sums travel."""
    pieces = client.scatter(np.array_split(x, shards), hash=False)

    def partials(centroids):
        c = client.scatter(centroids, broadcast=True, hash=False)
        return tree_reduce(client, [client.submit(lloyd_partial, piece, c, pure=False) for piece in pieces],
                           combine_partials).result()

    return partials


def train_ivf_on_cluster(x: np.ndarray, num_partitions: int, metric: str, *, max_iters: int, seed,
                         tol: float = 1e-3, shards: int | None = None) -> tuple[np.ndarray, float]:
    """:func:`dask_lance_index.model.train_ivf`, its Lloyd passes spread over the
    cluster's workers when this runs inside a dask worker and one pass is big enough
    (``shards=None``: decided by :func:`train_shards`)."""
    n, d = x.shape
    client = None
    if shards is None and n * num_partitions * d >= DISTRIBUTED_TRAIN_MIN_WORK:
        client = worker_client_or_none()
        # Workers on this host only share its cores: the incremental passes of one task
        # do the same in fewer full-pass equivalents than distributed full Lloyd steps.
        if client is not None and other_hosts(client):
            shards = train_shards(n, num_partitions, d, num_workers(client))
    elif shards is not None and shards > 1:
        client = worker_client_or_none()
    if client is None or not shards or shards < 2:
        return train_ivf(x, num_partitions, metric, max_iters=max_iters, seed=seed, tol=tol)
    with worker_client() as wc:  # secedes: this task waits on the shard tasks
        return train_ivf(x, num_partitions, metric, max_iters=max_iters, seed=seed, tol=tol,
                         partials=cluster_partials(wc, x, shards))


@in_bulk
@one_blas_thread()
def _group_task(fn: Callable, item: tuple):
    """One group of PQ sub-spaces, as a task on another worker."""
    return fn(*item)


def map_groups(fn: Callable, items: Sequence) -> list:
    """Run independent training groups side by side: PQ's groups of sub-spaces
    (``map_groups`` of :func:`dask_lance_index.model.train_pq`) and the second
    level of a two-level IVF (:func:`dask_lance_index.model.coarse.train_ivf_hierarchical`),
    always one BLAS thread per group. Each item's first element is its rows.

    Inside a dask worker of a cluster that spans hosts, the groups are tasks on
    the cluster; their rows travel scattered, as data, not inside the task graph.
    Otherwise (dask's local schedulers, or every worker on this host) they run
    as threads of this task, one per core of the host: this task is the one the
    others wait for, so the host's other workers are idle, and the rows need not
    be serialised to their processes (NumPy releases the GIL in the GEMMs and
    argmaxes). Measured on the 384-d sentence embeddings (65,536 rows, 24
    sub-spaces) on a 2-worker LocalCluster on 2 vCPUs: PQ training 2.78 s as
    tasks on the two workers, 2.39 s as two threads.
    """
    in_worker = worker_client_or_none()
    if in_worker is not None and len(items) > 1 and other_hosts(in_worker):  # other hosts: other workers
        with worker_client() as wc:  # secedes: this task waits on the group tasks
            rows = wc.scatter([item[0] for item in items])
            return wc.gather([wc.submit(_group_task, fn, (r, *item[1:]), pure=False) for r, item in zip(rows, items)])
    threads = max(1, min(len(items), host_cores()))
    with one_blas_thread(), ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda item: fn(*item), items))


def _with_probes(check: np.ndarray, centroids: np.ndarray, coarse: CoarseIndex, probes: int | None,
                 source: dict) -> CoarseIndex | None:
    """The coarse index with its probes: the given ones, or the fewest that assign
    :data:`TARGET_AGREEMENT` of the ``check`` rows to their exact nearest partition;
    None (assign exactly) when no affordable number does. Records the agreement in
    ``source``."""
    if probes is None:
        probes, agreement = choose_probes(check, centroids, coarse)
    else:
        agreement = assignment_agreement(check, centroids, coarse, probes)
    if probes is None:
        source["assignment"] = (f"exact: no affordable number of coarse probes reached {TARGET_AGREEMENT:.1%} "
                                f"agreement ({agreement:.2%} at the last tried)")
        return None
    source["coarse_probes"] = int(probes)
    source["assignment_agreement"] = round(agreement, 5)
    return coarse.with_probes(probes)


def _hold_out(rows: SampleRows, params, seed) -> np.ndarray:
    """Take the rows the coarse probes are chosen on out of the training sample:
    the :data:`AGREEMENT_ROWS` the plan drew beyond the training rows, or, where the
    table held fewer rows than that, at most a sixteenth of the sample, never so
    many that fewer rows than partitions remain to train on."""
    n, k = rows.num_rows, params.num_partitions
    m = min(AGREEMENT_ROWS, max(n - k * params.sample_rate, n // 16), n - k)
    return rows.hold_out(max(0, m), np.random.default_rng(seed))


def train_model(
    samples: list,
    *,
    params,
    dimension: int,
    train: tuple[str, ...],
    given: IndexModel,
    seed: int | None,
    build_id: str,
    sampler: Callable | None = None,
) -> IndexModel:
    """The model of one build from the per-fragment samples.

    ``given`` holds the parts the user gave; only those named in ``train`` are
    trained. ``samples`` are the outputs of the sampling tasks
    (:func:`.sample.sample_fragment`), or, with ``sampler``, their arguments:
    this task then draws the sample itself (:func:`.cluster_rows.draw_sample`),
    on the cluster when it runs in a dask worker. A two-level IVF trains over the
    sample in pieces, never gathered (:func:`_train_two_level`).
    """
    if sampler is not None or (params.ivf_training == "hierarchical" and "ivf_centroids" in train):
        return _train_two_level(samples, sampler, params=params, dimension=dimension, train=train, given=given,
                                seed=seed, build_id=build_id)
    t0 = time.time()
    source: dict = {k: "user" for k in ("ivf_centroids", "pq_codebook", "rabitq_model") if getattr(given, k) is not None}
    centroids, codebook, sq_bounds = given.ivf_centroids, given.pq_codebook, given.sq_bounds
    if samples:
        source["sample_seconds"] = _span([s[1] for s in samples])
    if "ivf_centroids" in train or "pq_codebook" in train or "sq_bounds" in train:
        with host_blas_threads():  # every other task waits for this one
            centroids, codebook, sq_bounds = _train_flat(samples, params=params, dimension=dimension, train=train,
                                                         seed=seed, build_id=build_id, source=source,
                                                         given=(centroids, codebook, sq_bounds))
    return _model(centroids, codebook, given, given.coarse_index, sq_bounds, params=params, dimension=dimension,
                  train=train, seed=seed, build_id=build_id, source=source, started=t0)


def _train_flat(samples: list, *, params, dimension: int, train, seed, build_id: str, source: dict, given: tuple):
    """:func:`train_model`'s flat IVF, PQ and SQ training on the gathered sample:
    ``(centroids, codebook, sq_bounds)``, the ``given`` ones where not trained."""
    centroids, codebook, sq_bounds = given
    x = np.concatenate([s[0] for s in samples]) if samples else np.empty((0, dimension), np.float32)
    # sampling tasks that sent on only IVF's rows (.sample.kept_samples) send the SQ bounds
    # of all the rows they drew, and how many those were
    reduced = [s[2] for s in samples if len(s) > 2 and s[2] is not None]
    _check_sample(len(x), params)
    source["sample_rows"] = int(sum(b[2] for b in reduced)) if reduced else int(len(x))
    x = prepare_vectors(x, params.metric)
    ivf_seed, pq_seed = seed_for(seed, build_id, 2**31).spawn(2)
    if "ivf_centroids" in train:
        ivf_rows = min(len(x), params.num_partitions * params.sample_rate)
        xi = x if ivf_rows == len(x) else x[np.random.default_rng(ivf_seed).choice(len(x), ivf_rows, replace=False)]
        t1 = time.time()
        centroids, inertia = train_ivf_on_cluster(
            xi, params.num_partitions, params.metric, max_iters=params.max_iters, seed=ivf_seed,
            tol=params.tolerance,
        )
        source["ivf_centroids"] = "trained"
        source["ivf_inertia"] = inertia
        source["ivf_seconds"] = round(time.time() - t1, 4)
    if "pq_codebook" in train:
        pq_rows = min(len(x), _pq_rows(len(x), params))
        xp = x if pq_rows == len(x) else x[np.random.default_rng(pq_seed).choice(len(x), pq_rows, replace=False)]
        codebook = _train_codebook(xp, centroids, params, pq_seed, source)
    if "sq_bounds" in train and reduced:  # every row drawn is in Lance's SQ sample: its bounds
        sq_bounds = combine_sq_bounds(reduced)
        source["sq_bounds"] = "trained"
    elif "sq_bounds" in train:
        sq_bounds = _sq_bounds(LocalRows([x]), params, seed, build_id, source)
    return centroids, codebook, sq_bounds


def _span(times: list) -> float:
    """Seconds from the first ``(started, finished)`` to the last."""
    return round(max(t[1] for t in times) - min(t[0] for t in times), 4)


def _check_sample(rows: int, params) -> None:
    if rows < params.num_partitions:
        raise InvalidInputError(
            f"only {rows} valid (non-null, finite) vectors were found in the training sample, "
            f"fewer than num_partitions={params.num_partitions}. Fix: lower num_partitions, or "
            "check the column for null/NaN vectors."
        )


def _pq_rows(rows: int, params) -> int:
    """PQ's training rows (``2**num_bits x pq_sample_rate``), once the sample is known to hold
    one row per code word."""
    k = 2 ** params.num_bits
    if rows < k:
        raise InvalidInputError(
            f"PQ with num_bits={params.num_bits} needs at least {k} valid training vectors; "
            f"found {rows}. Fix: num_bits=4, or a larger dataset."
        )
    return k * params.pq_sample_rate


def _train_codebook(xp: np.ndarray, centroids: np.ndarray, params, pq_seed, source: dict,
                    coarse: CoarseIndex | None = None) -> np.ndarray:
    """The PQ codebook on the residuals of rows ``xp`` (against the partitions a two-level
    model's ``coarse`` search gives them); its groups of sub-spaces go to the cluster by
    :func:`map_groups`."""
    t1 = time.time()
    codebook = train_pq(residuals(xp, centroids, params.metric, coarse), params.num_sub_vectors, params.num_bits,
                        max_iters=params.max_iters, seed=pq_seed, tol=params.tolerance, map_groups=map_groups)
    source["pq_codebook"] = "trained"
    source["pq_seconds"] = round(time.time() - t1, 4)
    return codebook


def _sq_bounds(rows: SampleRows, params, seed, build_id: str, source: dict) -> tuple[float, float]:
    """SQ bounds from Lance's SQ sample (``2**num_bits x 256`` rows) of the prepared sample,
    each piece reducing its own rows (the SQ sample is never gathered)."""
    m = 2 ** params.num_bits * SQ_SAMPLE_RATE
    bounds = rows.sq_bounds(m, np.random.default_rng(seed_for(seed, build_id, 2**31 + 2)))
    source["sq_bounds"] = "trained"
    return bounds


def _model(centroids, codebook, given: IndexModel, coarse: CoarseIndex | None, sq_bounds, *, params, dimension: int,
           train, seed, build_id: str, source: dict, started: float, excluded: float = 0.0) -> IndexModel:
    """The model from its trained parts, the RaBitQ rotation made here if it is to be;
    training took the time since ``started`` less ``excluded``."""
    rabitq = given.rabitq_model
    if "rabitq_model" in train:
        rabitq = build_rq_rotation(dimension, num_bits=params.num_bits, seed=seed_for(seed, build_id, 2**31 + 1))
        source["rabitq_model"] = "trained"
    source["train_seconds"] = round(time.time() - started - excluded, 4)
    return IndexModel(ivf_centroids=centroids, pq_codebook=codebook, rabitq_model=rabitq, source=source,
                      ivf_coarse=None if coarse is None else coarse.coarse,
                      ivf_groups=None if coarse is None else coarse.groups,
                      ivf_probes=None if coarse is None else coarse.probes, sq_bounds=sq_bounds)


def two_level_sample(plan) -> bool:
    """Whether a build's training task draws its sample itself and keeps it in pieces:
    a two-level IVF to train. Pure."""
    return plan.params.ivf_training == "hierarchical" and "ivf_centroids" in plan.train


def _train_two_level(samples: list, sampler: Callable | None, *, params, dimension: int, train: tuple[str, ...],
                     given: IndexModel, seed: int | None, build_id: str) -> IndexModel:
    """:func:`train_model` for a two-level IVF whose sample stays in pieces. With a
    ``sampler``, ``samples`` are the sampling tasks' arguments and the pieces are drawn
    here: as tasks whose rows stay on the workers inside a dask worker, in threads
    otherwise. Without, ``samples`` are the sampling tasks' outputs, in this process."""
    t0 = time.time()
    source: dict = {k: "user" for k in ("pq_codebook", "rabitq_model") if getattr(given, k) is not None}
    codebook, sq_bounds = given.pq_codebook, given.sq_bounds
    cluster = sampler is not None and worker_client_or_none() is not None
    # secedes inside a worker: this task waits on the sample's tasks
    with worker_client() if cluster else contextlib.nullcontext() as client:
        if sampler is not None:
            rows, times = draw_sample(sampler, samples, params.metric, dimension, client,
                                      num_workers(client) if cluster else 1, map_groups)
        else:
            rows = LocalRows([prepare_vectors(s[0], params.metric) for s in samples], dimension, map_groups)
            times = [s[1] for s in samples]
        if times:
            source["sample_seconds"] = _span(times)
        _check_sample(rows.num_rows, params)
        source["sample_rows"] = rows.num_rows
        source["sample_pieces"] = len(rows.lengths)
        ivf_seed, pq_seed = seed_for(seed, build_id, 2**31).spawn(2)
        if "sq_bounds" in train:  # from the whole sample, before its probes' rows leave it
            sq_bounds = _sq_bounds(rows, params, seed, build_id, source)
        t1 = time.time()
        check = _hold_out(rows, params, ivf_seed)
        centroids, inertia, coarse = train_ivf_hierarchical(rows, params.num_partitions, max_iters=params.max_iters,
                                                            seed=ivf_seed, tol=params.tolerance)
        source["ivf_training"] = f"hierarchical, {coarse.num_groups} groups"
        if not len(check):  # as many rows as partitions: none to spare
            check = rows.sample(AGREEMENT_ROWS, np.random.default_rng(ivf_seed))
        source["agreement_rows"] = len(check)
        coarse = _with_probes(check, centroids, coarse, params.coarse_probes, source)
        source["ivf_centroids"] = "trained"
        source["ivf_inertia"] = inertia
        source["ivf_seconds"] = round(time.time() - t1, 4)
        pq_rows = None
        if "pq_codebook" in train:
            pq_rows = rows.sample(_pq_rows(rows.num_rows, params), np.random.default_rng(pq_seed))
        del rows
    if pq_rows is not None:  # after the worker client: PQ's groups go to the cluster by map_groups
        with host_blas_threads():  # the other tasks wait for this one
            codebook = _train_codebook(pq_rows, centroids, params, pq_seed, source, coarse)
    # a sample drawn inside this task is reported as its own stage
    drawn_here = source.get("sample_seconds", 0.0) if sampler is not None else 0.0
    return _model(centroids, codebook, given, coarse, sq_bounds, params=params, dimension=dimension, train=train,
                  seed=seed, build_id=build_id, source=source, started=t0, excluded=drawn_here)


@dataclass(frozen=True)
class TrainModel:
    """Training task of one build: called with the samples, returns the :class:`IndexModel`
    (:func:`train_model`). With a journal it returns a model journaled by an earlier
    attempt instead of training again, and journals the one it trains. With a
    ``sampler`` (a two-level build) it is called with the sampling tasks'
    arguments instead and draws the sample itself (:func:`two_level_sample`)."""

    params: object
    dimension: int
    train: tuple[str, ...]
    given: IndexModel
    seed: int | None
    build_id: str
    storage_options: dict | None = None
    journal: str | None = None
    sampler: Callable | None = None

    @in_bulk  # large temporaries from the heap, not one mmap each (runtime.malloc)
    @with_small_pages  # fresh arrays without huge pages (runtime.malloc)
    def __call__(self, samples: list) -> IndexModel:
        if self.journal is not None:
            model = read_model(self.journal, self.storage_options)
            if model is not None:
                return model
        model = train_model(samples, params=self.params, dimension=self.dimension, train=self.train,
                            given=self.given, seed=self.seed, build_id=self.build_id, sampler=self.sampler)
        if self.journal is not None:
            write_model(self.journal, model, self.storage_options)
        return model
