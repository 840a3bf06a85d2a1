"""The verbs that build an index: :func:`plan_index`, :func:`create_index`, :func:`finalize_artifact`,
and for scalar and full-text indexes :func:`plan_scalar_index`, :func:`create_scalar_index`.

Each reads the dataset's metadata once (the I/O edge of planning), checks the
request before any task runs, lays out the graph (:mod:`.graph`) and runs it
through the one runner (:func:`dask_lance_index.recovery.run`), or hands the
lazy build back with ``compute=False``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

from .build import ENGINES, resolve_engine
from .errors import IndexExistsError, InvalidInputError
from .graph import build_graph
from .model import IndexModel, coerce_array, validate_model
from .model.hnsw import one_norm
from .model.hnsw_dot import energy_axes, projection, spread_projection
from .partition_artifacts import (
    InvalidPartitionArtifactError,
    PartitionArtifact,
    check_artifact_fits,
    check_row_ids,
)
from .plan import (
    MAX_ITERS,
    PQ_SAMPLE_RATE,
    TOLERANCE,
    FragmentInfo,
    IndexPlan,
    check_column,
    column_engine,
    check_scalar_column,
    make_plan,
    make_scalar_plan,
    model_parts_to_train,
    normalize_scalar_type,
    resolve_params,
    scalar_params,
)
from .recovery import resume_build, run, start_journal
from .runtime import parallelism, resolve_client
from .storage import (column_info, drawn_vectors, field_type, fragment_rows, has_values, index_names,
                      open_or_fail)

__all__ = ["create_index", "create_scalar_index", "finalize_artifact", "plan_index", "plan_scalar_index", "run"]


# Rows read at planning for a dot-metric HNSW build under engine "auto": enough for the
# top directions of 384-1536-d rows (_drawn_rows), 1.5-12 MB.
PLAN_SAMPLE_ROWS = 2048


def plan_index(
    uri,
    column: str,
    index_type: str,
    name: str | None = None,
    metric: str = "l2",
    replace: bool = False,
    num_partitions: int | None = None,
    target_partition_size: int | None = None,
    num_sub_vectors: int | None = None,
    num_bits: int | None = None,
    *,
    m: int | None = None,
    ef_construction: int | None = None,
    ivf_centroids=None,
    pq_codebook=None,
    rabitq_model: str | None = None,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    parallelism: int = 1,
    num_segments: int = 1,
    merge_fan_in: int = 16,
    sample_rate: int | None = None,
    max_iters: int = MAX_ITERS,
    pq_sample_rate: int = PQ_SAMPLE_RATE,
    tolerance: float = TOLERANCE,
    ivf_training: str = "auto",
    coarse_probes: int | None = None,
    seed: int | None = None,
    engine: str = "auto",
    version: int | None = None,
    storage_options: dict | None = None,
    build_id: str | None = None,
    fragment_groups: Sequence[Sequence[int]] | None = None,
) -> IndexPlan:
    """Plan an index build without running anything: an :class:`~dask_lance_index.plan.IndexPlan`.

    Opens the dataset once, pins its version, reads the vector column's schema
    and the fragments' row counts (metadata only), and decides the build
    (:func:`dask_lance_index.plan.make_plan`). Parameters follow
    :func:`create_index`; ``parallelism`` is the worker threads the build will
    have (one build task each at least). Raises a
    :class:`~dask_lance_index.InvalidInputError` subclass on bad input.
    """
    ds = open_or_fail(uri, version, storage_options)
    info = column_info(ds, column)
    column = info.name  # Lance's spelling of a field path, as its index records it
    ivf_training = check_column(info.kind, column, index_type, metric, ivf_training)
    name = name or f"{column}_idx"
    if name in index_names(ds) and not replace:
        raise IndexExistsError(
            f"the dataset already has an index named {name!r}. Fix: pass replace=True to "
            "replace it, or choose another name."
        )
    fragments = tuple(FragmentInfo(i, n) for i, n in fragment_rows(ds))
    total = sum(f.num_rows for f in fragments)
    if total == 0:
        raise InvalidInputError(
            f"the dataset at {ds.uri} has no rows at version {ds.version}; there is nothing to "
            "index. Fix: write data first."
        )
    if ivf_centroids is not None and num_partitions is None:
        num_partitions = len(ivf_centroids)
    # hamming is a binary column's metric (checked above); the other options resolve as for l2.
    hamming = info.kind == "binary"
    params = resolve_params(
        index_type,
        dimension=info.dimension,
        num_rows=total,
        metric="l2" if hamming else metric,
        num_partitions=num_partitions,
        target_partition_size=target_partition_size,
        num_sub_vectors=num_sub_vectors,
        num_bits=num_bits,
        m=m,
        ef_construction=ef_construction,
        sample_rate=sample_rate,
        max_iters=max_iters,
        pq_sample_rate=pq_sample_rate,
        tolerance=tolerance,
        ivf_training=ivf_training,
        coarse_probes=coarse_probes,
    )
    if hamming:
        params = dataclasses.replace(params, metric="hamming")
    train = model_parts_to_train(params, ivf_centroids=ivf_centroids is not None,
                                 pq_codebook=pq_codebook is not None, rabitq_model=rabitq_model is not None)
    chosen_name = column_engine(info.kind, column, engine) or engine
    drawn = _drawn_rows(ds, column, info.dimension) if _graphs_by_rows(chosen_name, params) else (None, False, False)
    chosen = resolve_engine(chosen_name, params, total, info.dimension, *drawn)
    return make_plan(
        uri=ds.uri,
        version=ds.version,
        column=column,
        dimension=info.dimension,
        fragments=fragments,
        params=params,
        engine=chosen.name,
        one_segment_reason=chosen.one_segment_reason(params),
        name=name,
        replace=replace,
        train=train,
        num_tasks=num_tasks,
        rows_per_task=rows_per_task,
        parallelism=parallelism,
        num_segments=num_segments,
        merge_fan_in=merge_fan_in,
        seed=seed,
        fragment_groups=fragment_groups,
        build_id=build_id,
        column_kind=info.kind,
    )


def _graphs_by_rows(engine: str, params) -> bool:
    """Whether engine ``"auto"`` weighs our dot-metric graphs against Lance's by the rows
    themselves (:func:`_drawn_rows`)."""
    return engine == "auto" and params.metric == "dot" and params.index_type in ("IVF_HNSW_FLAT", "IVF_HNSW_SQ")


def _drawn_rows(ds, column: str, dimension: int) -> tuple[int | None, bool, bool]:
    """Of up to :data:`PLAN_SAMPLE_ROWS` rows drawn from the dataset, the
    columns of their :func:`~dask_lance_index.model.hnsw_dot.projection` (0 for none),
    whether they are of :func:`~dask_lance_index.model.hnsw.one_norm`, and where they have no
    projection whether they have a
    :func:`~dask_lance_index.model.hnsw_dot.spread_projection`: how costly our dot graphs of
    its partitions would be
    (:func:`~dask_lance_index.build.engines.precomputed.dot_graph_rows`). One read of a few
    MB at planning; None where no usable (non-null, finite) row was drawn."""
    sample = drawn_vectors(ds, column, PLAN_SAMPLE_ROWS, dimension=dimension)
    if not len(sample):
        return None, False, False
    axes = energy_axes(sample)
    basis = projection(sample, axes)
    if basis is not None:
        return basis.shape[1], one_norm(sample), False
    return 0, one_norm(sample), spread_projection(sample, axes) is not None


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
    sample_rate: int | None = None,
    max_iters: int = MAX_ITERS,
    pq_sample_rate: int = PQ_SAMPLE_RATE,
    tolerance: float = TOLERANCE,
    ivf_training: str = "auto",
    coarse_probes: int | None = None,
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
    model_uri: str | None = None,
) -> Any:
    """Build a Lance vector index in parallel on Dask.

    Parameters
    ----------
    uri : str, path or LanceDataset
        The dataset. Its current version is pinned for the whole build.
    column : str
        The vector column, or a field path into structs as Lance spells it (``"emb.v"``; a
        field name holding a dot in backticks, ``"s.`v.w`"``). Float vectors
        (``fixed_size_list<float>[d]``) take every type and l2, cosine, dot; binary vectors
        (``fixed_size_list<uint8>[d]``) IVF_FLAT and IVF_HNSW_FLAT with ``metric="hamming"``;
        multivectors (``list<fixed_size_list<float>[d]>``) every type with ``metric="cosine"``
        (:mod:`dask_lance_index.plan.columns`).
    index_type : str
        One of IVF_FLAT, IVF_PQ, IVF_SQ, IVF_RQ, IVF_HNSW_FLAT, IVF_HNSW_PQ, IVF_HNSW_SQ.
    name : str, optional
        Index name; default ``f"{column}_idx"`` (as Lance).
    metric : {"l2", "cosine", "dot", "hamming"}
        ``"hamming"`` for binary columns only: k-modes centroids, as Lance trains them.
    replace : bool
        Replace an existing index of that name, atomically in one commit.
    num_partitions : int, optional
        IVF partitions; default ``num_rows // target_partition_size`` in [1, 4096].
    ivf_centroids, pq_codebook : array, optional
        A pre-trained float32 model, shapes ``(num_partitions, dim)`` and
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
        one task per worker thread, more when tasks would exceed 2M rows;
        IVF_FLAT and IVF_SQ tasks (engine ``"precomputed"``), and HNSW types whose
        graphs we build, of at most 1 GiB of held rows (4d + 12 bytes a row for the
        FLAT types, d + 12 for SQ, 12 + num_sub_vectors for PQ), not split further (a merge reads and
        writes every row again; an HNSW build of several tasks builds its graphs
        once, at the merge); HNSW types Lance builds: one task (Lance's merge would
        build every graph again).
    num_segments : int
        Segments the committed index should have (default 1: fastest queries).
        IVF_HNSW_SQ segments are never merged (Lance codes each with its own
        SQ bounds, and its merge of them is silently wrong), so they keep one
        segment per task; IVF_SQ segments share the model's bounds and merge.
    merge_fan_in : int
        Most segments one merge reads (IVF_FLAT merges in stages).
    sample_rate : int, optional
        Training rows per IVF centroid: Lance's 256 for flat training, 64 for
        two levels (``plan.params.HIERARCHICAL_SAMPLE_RATE``, chosen by measured
        recall).
    max_iters : int
        Most k-means iterations (Lance's 50).
    pq_sample_rate : int
        Training rows per PQ code word (Lance's 256).
    tolerance : float
        k-means stops when inertia changes by at most this fraction from one
        pass over the training rows to the next (default 5e-3). Training is
        incremental (centroids move after each chunk of 32 rows per centroid):
        with 5e-3 its GloVe partitions are within 0.006 of Lance's (1e-4) in
        IVF recall, where full Lloyd steps to 5e-3 were 0.016 short
        (``docs/benchmarks.md``).
    ivf_training : {"auto", "flat", "hierarchical"}
        How the IVF centroids are trained. ``"flat"``: one k-means over all
        partitions, as Lance trains them; its cost grows with the square of
        ``num_partitions``. ``"hierarchical"`` (l2 and cosine): two levels, about
        ``sqrt(num_partitions)`` coarse groups, each group's partitions trained on
        its own rows, then Lloyd passes over all partitions together to
        ``tolerance``; rows are then assigned among the partitions of their
        ``coarse_probes`` nearest groups, and the build reports how often that
        agrees with exact assignment (``BuildResult.assignment_agreement``;
        :mod:`dask_lance_index.model.coarse`). ``"auto"``: hierarchical from
        4,096 partitions on, flat below and for dot.
    coarse_probes : int, optional
        Coarse groups searched per row when assigning rows to a two-level model.
        Default: the fewest that put 99.5% of 16,384 sampled rows, held out of
        training, in their exact nearest partition, measured after training
        (exact assignment when that would take more than half the groups).
    seed : int, optional
        Seed of sampling and training; the same seed and data give the same model.
    engine : {"auto", "precomputed", "partitions", "lance", "artifact"}
        Who assigns and encodes the rows. ``"precomputed"``: the workers, with
        NumPy BLAS, and they write each IVF_PQ, IVF_SQ, IVF_FLAT and IVF_RQ (l2,
        cosine) segment's files in Lance's layout
        (:mod:`dask_lance_index.storage.segment_files`), build and write the graphs of
        IVF_HNSW_FLAT, IVF_HNSW_SQ and IVF_HNSW_PQ (IVF_HNSW_PQ up to 1 GiB of codes
        and not under dot, else they hand Lance the codes and Lance builds the graphs;
        past 1 GiB of IVF_HNSW_FLAT or IVF_HNSW_SQ rows the one task writing the segment
        spills them to its disk; :mod:`dask_lance_index.model.hnsw`); for
        IVF_RQ the ex-codes' rescale factor chosen from three candidates per row
        instead of Lance's full sweep (recall@10 within 0.001 of Lance's own
        encoding of the same partitions, ``docs/benchmarks.md``).
        ``"partitions"`` (any type): the workers assign IVF partitions with
        NumPy BLAS and Lance encodes from that map; ``"lance"``: Lance itself.
        ``"auto"``: ``"precomputed"`` for 8-bit PQ types, IVF_FLAT, IVF_SQ, IVF_RQ
        under l2 and cosine, and IVF_HNSW_FLAT and IVF_HNSW_SQ (under dot up to a number of
        rows a partition on average set by 2,048 rows drawn at planning: 262,144 where they
        project on at most 256 directions, 81,920 on more, 4,096 where they do not, 24,576 of
        one norm, 77,824 where most of their directions keep their largest products:
        :func:`~dask_lance_index.build.engines.precomputed.dot_graph_rows` (an explicit
        ``"precomputed"`` builds those dot graphs at any size, at a cost that grows
        faster with a partition's rows than Lance's)), ``"partitions"`` otherwise.
        ``"artifact"`` (8-bit PQ types): the workers encode into a partition
        artifact in Lance's upstream layout (a shuffle by bucket), which is
        then finalized; see :mod:`dask_lance_index.partition_artifacts`.
        Each engine is described in :mod:`dask_lance_index.build.engines`.
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
        object whose ``.compute()`` (or :func:`run`) runs the build and returns a
        :class:`~dask_lance_index.BuildResult`.
    journal : str or False, optional
        Where the build journal goes (a directory or object-store prefix): the
        plan, the trained model and every finished segment, as JSON. Default
        ``<uri>/_dli/<build id>``, removed once the index is committed. Give a
        location to be able to resume; ``False``: no journal (no resume, and
        :func:`~dask_lance_index.cleanup` cannot find what a crash left).
    resume : bool
        When ``journal`` names an existing journal: carry on that build
        (finished segments and merges are not redone, a journaled model is not
        trained again) instead of failing.
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
    model_uri : str, optional
        Where to save the model and the plan for
        :func:`~dask_lance_index.update_index`; default
        ``<uri>/_dli_models/<name>/model.json``.
    """
    t0 = time.time()
    client = resolve_client(client, scheduler)
    given = given_model(ivf_centroids, pq_codebook, rabitq_model)
    resumed = resume_build(journal, uri, column, index_type, name, given, storage_options) if journal and resume else None
    if resumed is not None:  # carry on the journaled build: its plan, its model
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
            parallelism=parallelism(client),
            num_segments=num_segments,
            merge_fan_in=merge_fan_in,
            sample_rate=sample_rate,
            max_iters=max_iters,
            pq_sample_rate=pq_sample_rate,
            tolerance=tolerance,
            ivf_training=ivf_training,
            coarse_probes=coarse_probes,
            seed=seed,
            engine=engine,
            storage_options=storage_options,
            fragment_groups=fragment_groups,
        )
    validate_model(
        given,
        index_type=plan.params.index_type,
        dimension=plan.dimension,
        num_partitions=plan.params.num_partitions,
        num_sub_vectors=plan.params.num_sub_vectors,
        num_bits=plan.params.num_bits,
    )
    plan, options = ENGINES[plan.engine].prepare(plan, storage_options, artifact_uri=artifact_uri)
    location = str(journal) if resumed is not None else start_journal(plan, journal, given, storage_options)
    build = build_graph(plan, given, storage_options, plan_seconds=time.time() - t0, journal=location,
                        retries=retries, engine_options=options, model_uri=model_uri)
    if not compute:
        return build
    return run(build, client=client, scheduler=scheduler, retries=retries, progress=progress).dataset(storage_options)


def given_model(ivf_centroids=None, pq_codebook=None, rabitq_model=None) -> IndexModel:
    """The parts of the model the user gave, checked for type (shapes: :func:`validate_model`)."""
    c = coerce_array(ivf_centroids, "ivf_centroids") if ivf_centroids is not None else None
    cb = coerce_array(pq_codebook, "pq_codebook") if pq_codebook is not None else None
    if rabitq_model is not None and not isinstance(rabitq_model, str):
        raise InvalidInputError("rabitq_model must be the JSON string of a RaBitQ model")
    return IndexModel(ivf_centroids=c, pq_codebook=cb, rabitq_model=rabitq_model)


def finalize_artifact(
    uri,
    column: str,
    artifact_uri: str,
    *,
    index_type: str = "IVF_PQ",
    name: str | None = None,
    replace: bool = False,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    num_segments: int = 1,
    merge_fan_in: int = 16,
    storage_options: dict | None = None,
    client=None,
    scheduler: str | None = None,
    compute: bool = True,
    journal=None,
    retries: int = 2,
    progress: bool | None = None,
):
    """Build and commit an index from an existing partition artifact, without encoding.

    The artifact (``manifest.json``, ``metadata.lance``, bucket files) is
    validated against its files and against the column before any task runs.
    Its model (centroids, codebook, metric, sub-vectors) decides the index's
    parameters. Each fragment group's segment gets exactly its fragments' rows
    of the artifact; the commit is the same validated commit as
    :func:`create_index`, and the run the same (retries, journal, cleanup on
    failure).

    Parameters
    ----------
    uri : str or LanceDataset
    column : str
    artifact_uri : str
        The artifact root: one written by ``create_index(engine="artifact",
        artifact_uri=...)`` or by another backend in Lance's layout.
    index_type : {"IVF_PQ", "IVF_HNSW_PQ"}
    name, replace, num_tasks, rows_per_task, num_segments, merge_fan_in, storage_options, client, scheduler, compute, journal, retries, progress
        As :func:`create_index`.

    Returns
    -------
    LanceDataset, or an IndexBuild when ``compute=False``.
    """
    t0 = time.time()
    client = resolve_client(client, scheduler)
    art = PartitionArtifact.open(str(artifact_uri), storage_options)
    md = art.metadata
    plan = plan_index(
        uri, column, index_type, name=name, metric=md.distance_type, replace=replace,
        num_partitions=md.num_partitions, num_sub_vectors=md.num_sub_vectors, num_bits=md.num_bits,
        ivf_centroids=md.ivf_centroids, pq_codebook=md.pq_codebook, num_tasks=num_tasks,
        rows_per_task=rows_per_task, parallelism=parallelism(client), num_segments=num_segments,
        merge_fan_in=merge_fan_in, engine="artifact", storage_options=storage_options,
    )
    check_artifact_fits(md, dimension=plan.dimension, num_partitions=plan.params.num_partitions,
                        num_sub_vectors=plan.params.num_sub_vectors, metric=plan.params.metric)
    check_row_ids(plan, storage_options)
    if art.num_rows > plan.num_rows:
        raise InvalidPartitionArtifactError(
            f"the partition artifact holds {art.num_rows} rows but the dataset has {plan.num_rows}: "
            "it was written for other data. Fix: encode again."
        )
    given = IndexModel(md.ivf_centroids, md.pq_codebook, source={"artifact": str(artifact_uri)})
    location = start_journal(plan, journal, given, storage_options)
    build = build_graph(plan, given, storage_options, plan_seconds=time.time() - t0, journal=location,
                        retries=retries,
                        engine_options={"artifact_uri": str(artifact_uri), "encode": False, "temporary": False})
    if not compute:
        return build
    return run(build, client=client, scheduler=scheduler, retries=retries, progress=progress).dataset(storage_options)


def plan_scalar_index(
    uri,
    column: str,
    index_type: str,
    name: str | None = None,
    *,
    replace: bool = True,
    num_tasks: int | None = None,
    rows_per_task: int | None = None,
    parallelism: int = 1,
    num_segments: int = 1,
    merge_fan_in: int = 16,
    fragment_groups: Sequence[Sequence[int]] | None = None,
    version: int | None = None,
    storage_options: dict | None = None,
    build_id: str | None = None,
    **kwargs,
) -> IndexPlan:
    """Plan a scalar or full-text index build without running anything: an
    :class:`~dask_lance_index.plan.IndexPlan` (:func:`dask_lance_index.plan.make_scalar_plan`).

    Opens the dataset once, pins its version, checks the request (the index
    type, the column and its type, an existing index, a column with no values)
    and reads the fragments' row counts. Parameters follow
    :func:`create_scalar_index`; ``parallelism`` is the worker threads the build
    will have. Raises an :class:`~dask_lance_index.InvalidInputError` subclass
    on bad input, before any task runs.
    """
    params = scalar_params(index_type, kwargs)
    ds = open_or_fail(uri, version, storage_options)
    check_scalar_column(column, params.index_type, field_type(ds, column))
    name = name or f"{column}_idx"
    if name in index_names(ds) and not replace:
        raise IndexExistsError(
            f"the dataset already has an index named {name!r}. Fix: pass replace=True to "
            "replace it (in the same commit), or choose another name."
        )
    fragments = tuple(FragmentInfo(i, n) for i, n in fragment_rows(ds))
    if sum(f.num_rows for f in fragments) == 0 or not has_values(ds, column):
        raise InvalidInputError(
            f"column {column!r} of the dataset at {ds.uri} has no values at version {ds.version} "
            "(no rows, or every value null); there is nothing to index. Fix: write data first."
        )
    return make_scalar_plan(
        uri=ds.uri, version=ds.version, column=column, fragments=fragments, params=params, name=name,
        replace=replace, num_tasks=num_tasks, rows_per_task=rows_per_task, parallelism=parallelism,
        num_segments=num_segments, merge_fan_in=merge_fan_in, fragment_groups=fragment_groups, build_id=build_id,
    )


def create_scalar_index(
    uri,
    column: str,
    index_type: str,
    name: str | None = None,
    *,
    replace: bool = True,
    client=None,
    num_tasks: int | None = None,
    storage_options: dict[str, str] | None = None,
    compute: bool = True,
    progress: bool | None = None,
    rows_per_task: int | None = None,
    num_segments: int = 1,
    merge_fan_in: int = 16,
    fragment_groups=None,
    scheduler: str | None = None,
    journal=None,
    resume: bool = True,
    retries: int = 2,
    **kwargs,
) -> Any:
    """Build a Lance scalar or full-text index in parallel on Dask.

    Each task builds one uncommitted segment over a group of fragments with
    Lance's own ``create_index_uncommitted(..., fragment_ids=...)``; Lance
    merges them (``merge_existing_index_segments``), and one checked commit
    publishes the index (every fragment of the pinned version covered exactly
    once, an old index of the same name replaced in the same transaction).
    Queries then give exactly what Lance's single-process
    ``ds.create_scalar_index`` gives (``docs/scalar.md``).

    Parameters
    ----------
    uri : str, path or LanceDataset
        The dataset. Its current version is pinned for the whole build.
    column : str
        The column, or a nested field as ``"parent.child"``.
    index_type : str
        One of BTREE, BITMAP, LABEL_LIST, INVERTED (alias FTS), NGRAM, ZONEMAP,
        BLOOMFILTER, as Lance.
    name : str, optional
        Index name; default ``f"{column}_idx"`` (as Lance).
    replace : bool
        Replace an existing index of that name, atomically in one commit
        (default True, as Lance's ``create_scalar_index``); False refuses.
    client : distributed.Client, optional
        Cluster to run on; default the current client, if any, else the local
        ``scheduler`` (dask's threaded scheduler by default).
    num_tasks, rows_per_task : int, optional
        How many build tasks (one fragment group each), or rows per task.
        Default: one task per worker thread, more when tasks would exceed 2M rows.
    storage_options : dict, optional
        Passed to Lance in every task.
    compute : bool
        ``True``: run now and return the committed ``LanceDataset``. ``False``:
        return the lazy :class:`~dask_lance_index.graph.IndexBuild`, whose
        ``.compute()`` (or :func:`run`) returns a :class:`~dask_lance_index.BuildResult`.
    progress : bool, optional
        Draw a progress bar (default: when someone is watching), as :func:`create_index`.
    num_segments : int
        Segments the committed index should have (default 1: Lance's merge
        joins the parts).
    merge_fan_in : int
        Most segments one merge reads (merges run in stages above it).
    fragment_groups : list of lists of int, optional
        The build tasks' fragment groups, chosen by hand.
    scheduler, journal, resume, retries
        As :func:`create_index`: the local scheduler, where the journal goes
        (resume after a crash, cleanup), and how often failing tasks and lost
        runs are retried.
    **kwargs
        Passed to Lance for every part: e.g. ``with_position=True`` (phrase
        queries), ``base_tokenizer``, ``language``, ``stem``,
        ``remove_stop_words``, ``lower_case``, ``max_token_length`` (INVERTED);
        plain values only.

    Returns
    -------
    LanceDataset, or an IndexBuild when ``compute=False``.

    Raises
    ------
    InvalidInputError
        Before any task runs, the dataset unchanged: an unknown index type, a
        missing column, a column of a type the index cannot hold, an existing
        index with ``replace=False`` (:class:`~dask_lance_index.IndexExistsError`),
        a column with no values.
    """
    t0 = time.time()
    index_type = normalize_scalar_type(index_type)  # an unknown type: an error naming the types there are
    client = resolve_client(client, scheduler)
    given = IndexModel()
    resumed = resume_build(journal, uri, column, index_type, name, given, storage_options) if journal and resume else None
    if resumed is not None:
        plan, given = resumed
    else:
        plan = plan_scalar_index(
            uri, column, index_type, name, replace=replace, num_tasks=num_tasks, rows_per_task=rows_per_task,
            parallelism=parallelism(client), num_segments=num_segments, merge_fan_in=merge_fan_in,
            fragment_groups=fragment_groups, storage_options=storage_options, **kwargs,
        )
    location = str(journal) if resumed is not None else start_journal(plan, journal, given, storage_options)
    build = build_graph(plan, given, storage_options, plan_seconds=time.time() - t0, journal=location,
                        retries=retries)
    if not compute:
        return build
    return run(build, client=client, scheduler=scheduler, retries=retries, progress=progress).dataset(storage_options)
