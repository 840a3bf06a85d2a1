"""Training the shared artifacts: per-fragment sampling tasks, then one training task.

The sample is small by design (Lance's rule: ``sample_rate`` rows per IVF
centroid and per PQ code word), so after the per-fragment sampling tasks the
k-means runs in one task on one worker with BLAS. Null vectors and vectors with
NaN or infinity are dropped from the sample, as Lance drops them from the index.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._blas import one_blas_thread
from ._malloc import in_bulk
from .artifacts import IndexArtifacts
from .errors import InvalidInputError
from .kmeans import assign, kmeans, kmeans_batched, normalize_rows

__all__ = [
    "sample_fragment",
    "sample_offsets",
    "train_ivf",
    "train_shards",
    "train_pq",
    "make_rabitq_model",
    "train_artifacts",
    "prepare_vectors",
    "residuals",
]


def _seed_for(build_seed: int | None, build_id: str, *parts: int) -> np.random.SeedSequence:
    """A seed stream per (build, fragment): same draws when a task is retried."""
    base = build_seed if build_seed is not None else int(hashlib.sha1(build_id.encode()).hexdigest()[:12], 16)
    return np.random.SeedSequence([base, *parts])


# Rows per run of a training sample. Lance's random take reads scattered rows one by
# one: 65k rows of a 2M-row set (250k-row fragments) took 2.64 s scattered, 0.34 s as
# runs of 8. Runs cost no recall: on GloVe (rows sorted by word frequency; 1,000
# queries, 4 seeds each) 0.549/0.562/0.570 at nprobes 10/20/50 against 0.549/0.564/0.570
# scattered; on the synthetic 2M-row set (300 queries, 12 seeds each) recall@10
# 0.5152 (sd 0.0106) against 0.5135 (sd 0.0073) scattered, and 0.8436 against 0.8439
# with refine_factor 5, while the sample stage took 0.40 s against 1.08 s (sync
# scheduler). An earlier single build at 0.496 was within that spread of seeds.
SAMPLE_RUN = 8


def sample_offsets(num_rows: int, num_samples: int, rng: np.random.Generator, run: int = SAMPLE_RUN) -> np.ndarray:
    """``min(num_samples, num_rows)`` distinct sorted row offsets of a fragment, drawn
    as runs of ``run`` adjacent rows at random aligned positions. Pure.

    A dense sample (a quarter of the runs or more) is drawn row by row instead:
    it reads about as much either way, and runs would clump it.
    """
    k = min(int(num_samples), int(num_rows))
    slots = -(-num_rows // run)
    need = -(-k // run) + 1  # one spare run: the last slot may be short
    if run <= 1 or need * 4 > slots:
        return np.sort(rng.choice(num_rows, size=k, replace=False))
    starts = rng.choice(slots, size=need, replace=False) * run
    offsets = (starts[:, None] + np.arange(run)).reshape(-1)
    offsets = offsets[offsets < num_rows]
    return np.sort(rng.choice(offsets, size=k, replace=False))


def sample_fragment(
    uri: str,
    version: int,
    column: str,
    dimension: int,
    fragment_id: int,
    fragment_rows: int,
    num_samples: int,
    seed: int | None,
    build_id: str,
    storage_options: dict | None = None,
):
    """Sampling task: ``num_samples`` random rows of one fragment
    (:func:`sample_offsets`), valid rows only.

    Returns ``(vectors (k, d) float32, (started, finished))``.
    """
    from ._lance import open_dataset, take_vectors

    t0 = time.time()
    if num_samples <= 0 or fragment_rows <= 0:
        return np.empty((0, dimension), np.float32), (t0, time.time())
    rng = np.random.default_rng(_seed_for(seed, build_id, fragment_id))
    offsets = sample_offsets(fragment_rows, num_samples, rng)
    ds = open_dataset(uri, version, storage_options)
    x, valid = take_vectors(ds, column, dimension, fragment_id, offsets)
    return np.ascontiguousarray(x[valid]), (t0, time.time())


def prepare_vectors(x: np.ndarray, metric: str) -> np.ndarray:
    """The space Lance's IVF model lives in: unit vectors for cosine, raw otherwise."""
    return normalize_rows(x) if metric == "cosine" else np.asarray(x, dtype=np.float32)


def residuals(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """What Lance's PQ encodes: ``x - centroid(x)`` for l2 and cosine (on unit
    vectors), the raw vectors for dot (Lance uses no residual for dot)."""
    if metric == "dot":
        return np.asarray(x, dtype=np.float32)
    labels, _ = assign(x, centroids, "l2")
    return x - centroids[labels]


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


def _cluster_partials(client, x: np.ndarray, shards: int):
    """``partials(centroids)`` for :func:`.kmeans.kmeans`: the rows live on the
    workers in ``shards`` pieces; each iteration computes one partial per piece
    there and merges them pairwise as a tree, so only ``(k, d)`` sums travel."""
    from .kmeans import combine_partials, lloyd_partial

    pieces = client.scatter(np.array_split(x, shards), hash=False)

    def partials(centroids):
        c = client.scatter(centroids, broadcast=True, hash=False)
        level = [client.submit(lloyd_partial, piece, c, pure=False) for piece in pieces]
        while len(level) > 1:
            level = [
                client.submit(combine_partials, *level[i : i + 2], pure=False) if i + 1 < len(level) else level[i]
                for i in range(0, len(level), 2)
            ]
        return level[0].result()

    return partials


def train_ivf(
    x: np.ndarray,
    num_partitions: int,
    metric: str,
    *,
    max_iters: int,
    seed,
    tol: float = 1e-3,
    shards: int | None = None,
) -> tuple[np.ndarray, float]:
    """IVF centroids of prepared vectors ``x``, trained as Lance trains them.

    l2: k-means. cosine: k-means in l2 on unit vectors, centroids left
    unnormalised. dot: spherical k-means (unit centroids, so the nearest in l2
    is the one of largest inner product, which is how Lance assigns for dot),
    best of 3 restarts: with rows of varied norms it has more poor local optima
    (measured on the test data, IVF recall at nprobes 6 of 16 over 8 seeds:
    0.968-0.997 with one start, 0.981-0.995 with three).

    ``shards``: split the rows over the cluster's workers for the Lloyd
    iterations (partial sums merged as a tree). ``None`` decides by the size
    of the work (:func:`train_shards`) when this runs inside a dask worker.
    """
    n, d = x.shape
    client = None
    if shards is None and n * num_partitions * d >= DISTRIBUTED_TRAIN_MIN_WORK:
        client = _worker_client_or_none()
        if client is not None:
            shards = train_shards(n, num_partitions, d, _num_workers(client))
    elif shards is not None and shards > 1:
        client = _worker_client_or_none()
    if client is None or not shards or shards < 2:
        return _train_ivf(x, num_partitions, metric, max_iters=max_iters, seed=seed, tol=tol, partials=None)
    from distributed import worker_client

    with worker_client() as wc:  # secedes: this task waits on the shard tasks
        return _train_ivf(
            x, num_partitions, metric, max_iters=max_iters, seed=seed, tol=tol, partials=_cluster_partials(wc, x, shards)
        )


def _num_workers(client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])


def _worker_client_or_none():
    try:
        from distributed import get_worker

        return get_worker().client
    except (ImportError, ValueError):
        return None


def _train_ivf(x, num_partitions, metric, *, max_iters, seed, tol, partials):
    if metric != "dot":
        return kmeans(x, num_partitions, max_iters=max_iters, tol=tol, seed=seed, partials=partials)
    seeds = (seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)).spawn(3)
    runs = [
        kmeans(x, num_partitions, max_iters=max_iters, tol=tol, seed=s, spherical=True, partials=partials)
        for s in seeds
    ]
    return min(runs, key=lambda run: run[1])


# Sub-spaces per PQ training task. Codebooks of different sub-spaces are
# independent: on a cluster the groups train in parallel tasks (the other
# workers idle during training otherwise), and each group draws from its own
# seed, so the codebook does not depend on how many workers there are.
PQ_GROUP = 4


@in_bulk
@one_blas_thread()
def _train_group(stacked: np.ndarray, k: int, **kw):
    """One group of PQ sub-spaces, as a task on another worker."""
    return kmeans_batched(stacked, k, **kw)


def train_pq(
    r: np.ndarray, num_sub_vectors: int, num_bits: int, *, max_iters: int, seed, tol: float = 1e-3
) -> np.ndarray:
    """PQ codebook of shape ``(num_sub_vectors, 2**num_bits, d // num_sub_vectors)``.

    Sub-spaces train :data:`PQ_GROUP` at a time (:func:`.kmeans.kmeans_batched`:
    one sparse product for the centroid updates of a whole group); inside a
    dask worker with other workers to share with, the groups are tasks on the
    cluster; under dask's local schedulers they run in threads here, one per
    core; otherwise one after another. Always one BLAS thread per group.
    """
    n, d = r.shape
    sub = d // num_sub_vectors
    # (n, d) -> (num_sub_vectors, n, sub): sub-space j's columns as member j.
    stacked = np.ascontiguousarray(np.asarray(r, dtype=np.float32).reshape(n, num_sub_vectors, sub).transpose(1, 0, 2))
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    groups = [slice(a, min(a + PQ_GROUP, num_sub_vectors)) for a in range(0, num_sub_vectors, PQ_GROUP)]
    seeds = seq.spawn(len(groups))
    kw = dict(max_iters=max_iters, tol=tol)

    def one(group, group_seed):
        return kmeans_batched(stacked[group], 2**num_bits, seed=group_seed, **kw)[0]

    in_worker = _worker_client_or_none()
    if in_worker is not None and len(groups) > 1 and _num_workers(in_worker) > 1:
        from distributed import worker_client

        with worker_client() as wc:  # secedes: this task waits on the group tasks
            futures = [wc.submit(_train_group, stacked[g], 2**num_bits, seed=s, pure=False, **kw)
                       for g, s in zip(groups, seeds)]
            books = [book for book, _ in wc.gather(futures)]
    else:
        # Under dask's local schedulers this task runs alone (every build task
        # waits for it), so the groups take the cores as threads, one BLAS thread
        # each (NumPy releases the GIL in the GEMMs and argmaxes); in a lone
        # worker, one after another. Measured at 65,536 rows x 16 sub-spaces on
        # 2 vCPUs: 1.89-2.32 s one group after another (one BLAS thread;
        # 2.70-2.93 s with two), 1.41-1.82 s in two threads.
        threads = min(len(groups), os.cpu_count() or 1) if in_worker is None else 1
        with one_blas_thread(), ThreadPoolExecutor(threads) as pool:
            books = list(pool.map(one, groups, seeds))
    return np.concatenate(books)


def make_rabitq_model(dimension: int, num_bits: int, seed=None) -> str:
    """One RaBitQ model (rotation) JSON for the whole build, drawn from ``seed``."""
    from .rabitq import build_rq_rotation

    return build_rq_rotation(dimension, num_bits=num_bits, seed=seed)


def train_artifacts(
    samples: list,
    *,
    params,
    dimension: int,
    train: tuple[str, ...],
    given: IndexArtifacts,
    seed: int | None,
    build_id: str,
) -> IndexArtifacts:
    """Training task: the artifacts of one build from the per-fragment samples.

    ``given`` holds the user-supplied artifacts; only those named in ``train``
    are trained. ``samples`` are the outputs of :func:`sample_fragment`.
    """
    t0 = time.time()
    source: dict = {k: "user" for k in ("ivf_centroids", "pq_codebook", "rabitq_model") if getattr(given, k) is not None}
    centroids = given.ivf_centroids
    codebook = given.pq_codebook
    rabitq = given.rabitq_model
    if samples:
        sample_t0 = min(s[1][0] for s in samples)
        sample_t1 = max(s[1][1] for s in samples)
        source["sample_seconds"] = round(sample_t1 - sample_t0, 4)
    needs_data = "ivf_centroids" in train or "pq_codebook" in train
    if needs_data:
        x = np.concatenate([s[0] for s in samples]) if samples else np.empty((0, dimension), np.float32)
        if len(x) < params.num_partitions:
            raise InvalidInputError(
                f"only {len(x)} valid (non-null, finite) vectors were found in the training sample, "
                f"fewer than num_partitions={params.num_partitions}. Fix: lower num_partitions, or "
                "check the column for null/NaN vectors."
            )
        source["sample_rows"] = int(len(x))
        x = prepare_vectors(x, params.metric)
        ivf_seed, pq_seed = _seed_for(seed, build_id, 2**31).spawn(2)
        if "ivf_centroids" in train:
            ivf_rows = min(len(x), params.num_partitions * params.sample_rate)
            xi = x if ivf_rows == len(x) else x[np.random.default_rng(ivf_seed).choice(len(x), ivf_rows, replace=False)]
            t1 = time.time()
            centroids, inertia = train_ivf(
                xi, params.num_partitions, params.metric, max_iters=params.max_iters, seed=ivf_seed, tol=params.tolerance
            )
            source["ivf_centroids"] = "trained"
            source["ivf_inertia"] = inertia
            source["ivf_seconds"] = round(time.time() - t1, 4)
        if "pq_codebook" in train:
            k = 2 ** params.num_bits
            if len(x) < k:
                raise InvalidInputError(
                    f"PQ with num_bits={params.num_bits} needs at least {k} valid training vectors; "
                    f"found {len(x)}. Fix: num_bits=4, or a larger dataset."
                )
            pq_rows = min(len(x), k * params.pq_sample_rate)
            xp = x if pq_rows == len(x) else x[np.random.default_rng(pq_seed).choice(len(x), pq_rows, replace=False)]
            t1 = time.time()
            codebook = train_pq(
                residuals(xp, centroids, params.metric),
                params.num_sub_vectors,
                params.num_bits,
                max_iters=params.max_iters,
                seed=pq_seed,
                tol=params.tolerance,
            )
            source["pq_codebook"] = "trained"
            source["pq_seconds"] = round(time.time() - t1, 4)
    if "rabitq_model" in train:
        rabitq = make_rabitq_model(dimension, params.num_bits, seed=_seed_for(seed, build_id, 2**31 + 1))
        source["rabitq_model"] = "trained"
    source["train_seconds"] = round(time.time() - t0, 4)
    return IndexArtifacts(ivf_centroids=centroids, pq_codebook=codebook, rabitq_model=rabitq, source=source)

