"""``create_index``: plan, check, build the graph, and run it (or hand it back lazily)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from .artifacts import IndexArtifacts, coerce_array, validate_artifacts
from .errors import InvalidInputError
from .graph import IndexBuild, build_graph
from .plan import MAX_ITERS, PQ_SAMPLE_RATE, SAMPLE_RATE, TOLERANCE, plan_index

__all__ = ["create_index", "resolve_client"]


def resolve_client(client=None):
    """The ``distributed.Client`` to run on: the one given (or one connected to the
    scheduler address given), else the current one, else None."""
    if isinstance(client, str):
        from .faults import connect

        return connect(client)
    if client is not None:
        from .faults import check_client

        check_client(client)
        return client
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _parallelism(client) -> int:
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # a client that cannot answer: plan as for one machine
            pass
    return os.cpu_count() or 1


def create_index(
    uri,
    column: str,
    index_type: str,
    name: str | None = None,
    metric: str = "l2",
    replace: bool = False,
    num_partitions: int | None = None,
    ivf_centroids=None,
    pq_codebook=None,
    num_sub_vectors: int | None = None,
    *,
    num_bits: int | None = None,
    target_partition_size: int | None = None,
    rabitq_model: str | None = None,
    m: int | None = None,
    ef_construction: int | None = None,
    storage_options: dict[str, str] | None = None,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    num_segments: int = 1,
    merge_fan_in: int = 16,
    sample_rate: int = SAMPLE_RATE,
    max_iters: int = MAX_ITERS,
    pq_sample_rate: int = PQ_SAMPLE_RATE,
    tolerance: float = TOLERANCE,
    seed: int | None = None,
    engine: str = "auto",
    artifact_uri: str | None = None,
    client=None,
    scheduler: str | None = None,
    compute: bool = True,
    journal=None,
    resume: bool = True,
    retries: int = 2,
    fragment_groups=None,
    progress: bool | None = None,
    saved_artifacts_uri: str | None = None,
) -> Any:
    """Build a Lance vector index in parallel on Dask.

    Parameters
    ----------
    uri : str, path or LanceDataset
        The dataset. Its current version is pinned for the whole build.
    column : str
        The vector column (fixed-size list of floats).
    index_type : str
        One of IVF_FLAT, IVF_PQ, IVF_SQ, IVF_RQ, IVF_HNSW_FLAT, IVF_HNSW_PQ, IVF_HNSW_SQ.
    name : str, optional
        Index name; default ``f"{column}_idx"`` (as Lance).
    metric : {"l2", "cosine", "dot"}
    replace : bool
        Replace an existing index of that name, atomically in one commit.
    num_partitions : int, optional
        IVF partitions; default ``num_rows // target_partition_size`` in [1, 4096].
    ivf_centroids, pq_codebook : array, optional
        Pre-trained float32 artifacts, shapes ``(num_partitions, dim)`` and
        ``(num_sub_vectors, 2**num_bits, dim // num_sub_vectors)``: skip training.
    num_sub_vectors : int, optional
        PQ sub-vectors; default ``dim / 16`` (or /8, /4, /2 when 16 does not divide).
    num_bits : int, optional
        Bits per code: PQ 4 or 8 (default 8), SQ 8, RQ 1-9 (default 5), as Lance.
    target_partition_size : int, optional
        Rows per IVF partition when num_partitions is not given (default 8192).
    rabitq_model : str, optional
        A RaBitQ model JSON (IVF_RQ); default: one is minted for the build and
        shared by every task.
    m, ef_construction : int, optional
        HNSW graph parameters (IVF_HNSW_* types).
    storage_options : dict, optional
        Passed to Lance in every task.
    num_tasks, rows_per_task : int, optional
        How many build tasks (one segment each), or rows per task. Default:
        one task per worker thread, more when tasks would exceed 2M rows.
    num_segments : int
        Segments the committed index should have (default 1: fastest queries).
        IVF_SQ and IVF_HNSW_SQ segments are never merged (Lance's merge of them
        is silently wrong), so they keep one segment per task.
    merge_fan_in : int
        Most segments one merge reads (IVF_FLAT merges in stages).
    sample_rate, max_iters : int
        Training rows per IVF centroid, and most k-means iterations (Lance's defaults).
    pq_sample_rate : int
        Training rows per PQ code word (Lance's 256).
    tolerance : float
        k-means stops when inertia changes by at most this fraction from one
        pass over the training rows to the next (default 5e-3). Training is
        incremental (centroids move after each chunk of 32 rows per centroid):
        with 5e-3 its GloVe partitions are within 0.006 of Lance's (1e-4) in
        IVF recall, where full Lloyd steps to 5e-3 were 0.016 short
        (docs/benchmarks.md).
    seed : int, optional
        Seed of sampling and training; the same seed and data give the same artifacts.
    engine : {"auto", "precomputed", "partitions", "lance", "artifact"}
        Who assigns and encodes the rows. ``"precomputed"``: the workers, with
        NumPy BLAS, and they write each IVF_PQ and IVF_RQ (l2, cosine) segment's
        files in Lance's layout (:mod:`dask_lance_index.segment_write`; for
        IVF_HNSW_PQ they hand Lance the codes and Lance builds the graphs); for
        IVF_RQ the ex-codes' rescale factor chosen from three candidates per row
        instead of Lance's full sweep (recall@10 within 0.001 of Lance's own
        encoding of the same partitions, docs/benchmarks.md).
        ``"partitions"`` (any type): the workers assign IVF partitions with
        NumPy BLAS and Lance encodes from that map; ``"lance"``: Lance itself.
        ``"auto"``: ``"precomputed"`` for 8-bit PQ types and IVF_RQ under l2
        and cosine, ``"partitions"`` otherwise.
        ``"artifact"`` (8-bit PQ types): the workers encode into a partition
        artifact in Lance's upstream layout (a shuffle by bucket), which is
        then finalized; see :mod:`dask_lance_index.partition_artifacts`.
    artifact_uri : str, optional
        ``engine="artifact"``: where the artifact is written (storage every
        worker reaches). It is kept, so a build that fails after encoding can
        be resumed with :func:`dask_lance_index.finalize_artifact`. Default: a
        temporary directory under the dataset (``_dli_artifacts/<build id>``),
        deleted after the commit.
    client : distributed.Client, optional
        Cluster to run on; default the current client, if any, else the local
        ``scheduler`` (dask's threaded scheduler by default).
    scheduler : str, optional
        A local dask scheduler (``"sync"``, ``"threads"``, ...); when given,
        it is used instead of a current client (an explicit ``client`` still wins).
    compute : bool
        ``True``: run now and return the committed ``LanceDataset``. ``False``:
        return an :class:`~dask_lance_index.graph.IndexBuild`, a lazy dask
        object whose ``.compute()`` runs the build and returns a
        :class:`~dask_lance_index.commit.BuildResult`.
    journal : str or False, optional
        Where the build journal goes (a directory or object-store prefix): the
        plan, the trained artifacts and every finished segment, as JSON. Default
        ``<uri>/_dli/<build id>``, removed once the index is committed. Give a
        location to be able to resume; ``False``: no journal (no resume, and
        :func:`~dask_lance_index.cleanup` cannot find what a crash left).
    resume : bool
        When ``journal`` names an existing journal: carry on that build
        (finished segments and merges are not redone) instead of failing.
    fragment_groups : list of lists of int, optional
        The build tasks' fragment groups, chosen by hand (instead of
        ``num_tasks`` / ``rows_per_task``): every fragment in exactly one group.
    retries : int
        On a cluster: times a failing task is retried, and times the whole run
        is resubmitted after tasks were lost with dying workers (finished work
        is taken from the journal).
    progress : bool, optional
        Draw a progress bar while the build runs (``distributed.progress`` on a
        cluster, dask's ``ProgressBar`` otherwise), on standard error. Default:
        on in a notebook or when standard error is a terminal, off in batch jobs
        whose output goes to a file or pipe.
    saved_artifacts_uri : str, optional
        Where to save the artifacts and the plan for
        :func:`~dask_lance_index.update_index`; default
        ``<uri>/_dli_models/<name>/artifacts.json``.
    """
    t0 = time.time()
    # An explicit local scheduler wins over a default client picked up implicitly.
    client = client if scheduler is not None else resolve_client(client)
    given = _given_artifacts(ivf_centroids, pq_codebook, rabitq_model)
    from .faults import resume_build, start_build

    resumed = None
    if journal and resume:
        resumed = resume_build(journal, uri, column, index_type, name, given, storage_options)
    if resumed is not None:  # carry on the journaled build: its plan, its artifacts
        plan, given = resumed
    else:
        plan = plan_index(
            uri,
            column,
            index_type,
            name=name,
            metric=metric,
            replace=replace,
            num_partitions=num_partitions,
            target_partition_size=target_partition_size,
            num_sub_vectors=num_sub_vectors,
            num_bits=num_bits,
            m=m,
            ef_construction=ef_construction,
            ivf_centroids=given.ivf_centroids,
            pq_codebook=given.pq_codebook,
            rabitq_model=given.rabitq_model,
            num_tasks=num_tasks,
            rows_per_task=rows_per_task,
            parallelism=_parallelism(client),
            num_segments=num_segments,
            merge_fan_in=merge_fan_in,
            sample_rate=sample_rate,
            max_iters=max_iters,
            pq_sample_rate=pq_sample_rate,
            tolerance=tolerance,
            seed=seed,
            engine=engine,
            storage_options=storage_options,
            fragment_groups=fragment_groups,
        )
    validate_artifacts(
        given,
        index_type=plan.params.index_type,
        dimension=plan.dimension,
        num_partitions=plan.params.num_partitions,
        num_sub_vectors=plan.params.num_sub_vectors,
        num_bits=plan.params.num_bits,
    )
    art = {}
    if plan.engine == "artifact":
        from .finalize import check_row_ids

        check_row_ids(plan, storage_options)
        art = _artifact_target(plan, artifact_uri, storage_options)
        plan = dataclasses.replace(plan, notes=plan.notes + (f"partition artifact at {art['artifact_uri']}",))
    elif artifact_uri is not None:
        raise InvalidInputError(f"artifact_uri applies to engine='artifact' only, not {plan.engine!r}")
    location = str(journal) if resumed is not None else start_build(plan, journal, client, given, storage_options)
    build = build_graph(
        plan, given, storage_options, plan_seconds=time.time() - t0, journal=location, retries=retries,
        saved_artifacts_uri=saved_artifacts_uri, **art
    )
    if not compute:
        return build
    result = run(build, client=client, scheduler=scheduler, retries=retries, progress=progress)
    return result.dataset(storage_options)


def run(build: IndexBuild, client=None, scheduler: str | None = None, retries: int = 2,
        progress: bool | None = None):
    """Run a lazy build on ``client`` (or the local ``scheduler``) and return its BuildResult.

    On a cluster a failing task is retried ``retries`` times, and the run is
    resubmitted up to ``retries`` times when tasks were lost with dying workers
    (journaled work is not redone). If the build fails, its tasks are stopped
    and every uncommitted segment it wrote is removed (:func:`.cleanup.abandon_build`).

    ``progress`` is as in :func:`create_index`. The result's ``seconds`` gains
    ``"total"``: planning plus the wall time of this run.
    """
    from .faults import run_with_retries

    client = client if scheduler is not None else resolve_client(client)
    t0 = time.time()
    result = run_with_retries(build, client, scheduler, retries, progress)
    total = result.seconds.get("plan", 0.0) + time.time() - t0
    return dataclasses.replace(result, seconds={**result.seconds, "total": round(total, 4)})


def _given_artifacts(ivf_centroids, pq_codebook, rabitq_model) -> IndexArtifacts:
    c = coerce_array(ivf_centroids, "ivf_centroids") if ivf_centroids is not None else None
    cb = coerce_array(pq_codebook, "pq_codebook") if pq_codebook is not None else None
    if rabitq_model is not None and not isinstance(rabitq_model, str):
        raise InvalidInputError("rabitq_model must be the JSON string of a RaBitQ model")
    return IndexArtifacts(ivf_centroids=c, pq_codebook=cb, rabitq_model=rabitq_model)


def _artifact_target(plan, artifact_uri: str | None, storage_options: dict | None = None) -> dict:
    """Where the artifact engine writes, refusing to overwrite a complete artifact."""
    from .artifact_io import _exists, _join
    from .partition_artifacts import MANIFEST_FILE

    if artifact_uri is None:
        return {"artifact_uri": _join(plan.uri, f"_dli_artifacts/{plan.build_id}"), "drop_artifact": True}
    root = str(artifact_uri)
    if _exists(_join(root, MANIFEST_FILE), storage_options):
        raise InvalidInputError(
            f"{root} already holds a complete partition artifact. Fix: finalize it with "
            "dask_lance_index.finalize_artifact(...) (no encoding), or choose an empty artifact_uri."
        )
    return {"artifact_uri": root, "drop_artifact": False}
