"""Finalize a partition artifact into a committed Lance index.

pylance 14.0.2 has no reader for partition artifacts, so each finalize task
reads the artifact partition by partition (by the manifest's ranges only),
keeps exactly the rows of its own fragments, and hands Lance those rows as a
"precomputed shuffle buffer" dataset together with the artifact's centroids
and codebook. Lance reads that buffer dataset whole and ignores
``fragment_ids`` (../shared/LANCE_NOTES.md), so a segment given anyone else's
rows would silently index them twice; hence the filter by fragment. The
segments then go through the same staged merges and the same validated commit
(:func:`.commit.commit_index`) as every other build.

:func:`finalize_artifact` finalizes an artifact that already exists: one
written by an earlier build that died before its commit (resume without
encoding again), or one written by another backend in Lance's upstream layout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from .build import SegmentResult
from .errors import InvalidInputError
from .artifact_io import PartitionArtifact
from .partition_artifacts import ArtifactMetadata, InvalidPartitionArtifactError
from .plan import METRICS, IndexPlan

__all__ = ["finalize_segment", "finalize_artifact", "check_artifact_fits", "check_row_ids"]

_BATCH_ROWS = 65536


def check_artifact_fits(md: ArtifactMetadata, *, dimension: int, num_partitions: int,
                        num_sub_vectors: int | None, metric: str) -> None:
    """Raise :class:`InvalidPartitionArtifactError` unless the artifact's model fits the index."""
    problems = []
    if md.dimension != dimension:
        problems.append(f"dimension {md.dimension} (the column has {dimension})")
    if md.num_partitions != num_partitions:
        problems.append(f"{md.num_partitions} partitions (the index has {num_partitions})")
    if num_sub_vectors is not None and md.num_sub_vectors != num_sub_vectors:
        problems.append(f"{md.num_sub_vectors} sub-vectors (the index has {num_sub_vectors})")
    if METRICS.get(md.distance_type) != metric:
        problems.append(f"distance_type {md.distance_type!r} (the index uses {metric!r})")
    if problems:
        raise InvalidPartitionArtifactError(
            "the partition artifact does not fit this index: it has " + "; ".join(problems)
            + ". Fix: finalize it with the parameters it was encoded with, or encode again."
        )


def check_row_ids(plan: IndexPlan, storage_options: dict | None = None) -> None:
    """Refuse, before any work, a split finalize on a dataset whose row ids do not name their fragment."""
    from ._lance import open_dataset

    if plan.num_tasks > 1 and open_dataset(plan.uri, plan.version, storage_options).has_stable_row_ids:
        raise InvalidInputError(
            "the dataset uses stable row ids, which do not name their fragment, so a partition "
            "artifact cannot be split into per-fragment segments. Fix: num_tasks=1."
        )


def finalize_segment(plan: IndexPlan, task: int, root: str, summary=None,
                     storage_options: dict | None = None) -> SegmentResult:
    """Finalize task: one uncommitted segment over ``plan.groups[task]`` from the artifact.

    ``summary`` is the manifest task's :class:`.artifact_build.ArtifactSummary`
    (None when resuming from an existing artifact: rows of the group that the
    artifact does not hold are then reported as not indexed).
    """
    import lance
    import pyarrow as pa

    from ._lance import open_dataset, remove_index_dir

    t0 = time.time()
    frags = list(plan.groups[task])
    uuid = plan.segment_uuid(task)
    ds = open_dataset(plan.uri, plan.version, storage_options)
    remove_index_dir(plan.uri, uuid, storage_options)
    art = PartitionArtifact.open(root, storage_options)
    md = art.metadata
    check_artifact_fits(md, dimension=plan.dimension, num_partitions=plan.params.num_partitions,
                        num_sub_vectors=plan.params.num_sub_vectors, metric=plan.params.metric)
    planned = {f.fragment_id: f.num_rows for f in plan.fragments}
    whole = len(plan.groups) == 1
    if ds.has_stable_row_ids and not whole:
        raise InvalidInputError(
            "the dataset uses stable row ids, which do not name their fragment, so an artifact "
            "cannot be split into per-fragment segments. Fix: num_tasks=1."
        )
    all_ids = np.array(sorted(planned), dtype=np.uint64)
    mine = np.array(frags, dtype=np.uint64)
    m = md.num_sub_vectors
    schema = pa.schema([("row_id", pa.uint64()), ("__ivf_part_id", pa.uint32()), ("__pq_code", pa.list_(pa.uint8(), m))])
    kept_frags: list[np.ndarray] = []
    state = {"rows": 0, "error": None}

    def batch_of(pending):
        rid = np.concatenate([p[0] for p in pending])
        part = np.concatenate([p[1] for p in pending])
        codes = np.concatenate([p[2] for p in pending])
        return pa.record_batch(
            [pa.array(rid, pa.uint64()), pa.array(part, pa.uint32()),
             pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), m)],
            schema=schema,
        )

    def batches():
        pending, n = [], 0
        for p, rid, codes in art.iter_partitions():
            if not ds.has_stable_row_ids:
                frag = rid >> np.uint64(32)
                stray = ~np.isin(frag, all_ids)
                if stray.any():
                    state["error"] = InvalidPartitionArtifactError(
                        f"the partition artifact holds rows of fragments "
                        f"{sorted(set(frag[stray].tolist()))[:10]}, which version {plan.version} of "
                        f"{plan.uri} does not have: it was written for other data. Fix: encode again."
                    )
                    return
                if not whole:
                    keep = np.isin(frag, mine)
                    rid, codes, frag = rid[keep], codes[keep], frag[keep]
                kept_frags.append(np.unique(frag, return_counts=True))
            if not len(rid):
                continue
            pending.append((rid, np.full(len(rid), p, np.uint32), codes))
            n += len(rid)
            state["rows"] += len(rid)
            if n >= _BATCH_ROWS:
                yield batch_of(pending)
                pending, n = [], 0
        if pending:
            yield batch_of(pending)

    kwargs = {**plan.params.lance_kwargs(), "ivf_centroids": md.ivf_centroids, "pq_codebook": md.pq_codebook}

    def create(**extra):
        return ds.create_index_uncommitted(
            plan.column, plan.params.index_type, name=plan.name, replace=plan.replace,
            fragment_ids=frags, index_uuid=uuid, **kwargs, **extra,
        )

    scratch = tempfile.mkdtemp(prefix="dli-finalize-")
    try:
        path = os.path.join(scratch, "codes.lance")
        buf = lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), path)
        if state["error"] is not None:
            raise state["error"]
        _check_fragment_counts(kept_frags, planned, plan)
        if state["rows"] == 0:
            # The artifact holds none of these fragments' rows: Lance builds the segment itself.
            index = create()
        else:
            files = [f.path for frag in buf.get_fragments() for f in frag.data_files()]
            index = create(precomputed_shuffle_buffers=files,
                           precomputed_shuffle_buffers_path=os.path.join(path, "data"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    group_rows = sum(planned[f] for f in frags)
    stats = summary.stats_of(task) if summary is not None else None
    if stats is not None:
        if stats.rows != state["rows"]:
            raise RuntimeError(
                f"finalize task {task} read {state['rows']} rows of its fragments from the artifact, "
                f"but its encode task wrote {stats.rows}"
            )
        null_rows, nan_rows, started = stats.null_rows, stats.nan_rows, stats.started
    else:
        null_rows, nan_rows, started = 0, group_rows - state["rows"], t0
    return SegmentResult(
        task=task, uuid=uuid, index=index, fragment_ids=tuple(frags), num_rows=group_rows,
        null_rows=int(null_rows), nan_rows=int(nan_rows), started=started, finished=time.time(),
    )


def _check_fragment_counts(kept: list, planned: dict, plan: IndexPlan) -> None:
    """No fragment may have more rows in the artifact than it has in the dataset."""
    if not kept:
        return
    ids = np.concatenate([k[0] for k in kept])
    counts = np.concatenate([k[1] for k in kept])
    uniq, inv = np.unique(ids, return_inverse=True)
    totals = np.bincount(inv, weights=counts).astype(np.int64)
    for f, n in zip(uniq.tolist(), totals.tolist()):
        if n > planned[int(f)]:
            raise InvalidPartitionArtifactError(
                f"the partition artifact holds {n} rows of fragment {f}, which has {planned[int(f)]} "
                f"rows at version {plan.version}: the artifact was written for other data. Fix: encode again."
            )


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
):
    """Build and commit an index from an existing partition artifact, without encoding.

    The artifact (``manifest.json``, ``metadata.lance``, bucket files) is
    validated against its files and against the column before any task runs.
    Its model (centroids, codebook, metric, sub-vectors) decides the index's
    parameters. Each fragment group's segment gets exactly its fragments' rows
    of the artifact; the commit is the same validated commit as
    :func:`dask_lance_index.create_index`.

    Parameters
    ----------
    uri : str or LanceDataset
    column : str
    artifact_uri : str
        The artifact root: one written by ``create_index(engine="artifact",
        artifact_uri=...)`` or by another backend in Lance's layout.
    index_type : {"IVF_PQ", "IVF_HNSW_PQ"}
    name, replace, num_tasks, rows_per_task, num_segments, merge_fan_in, storage_options, client, scheduler, compute
        As :func:`dask_lance_index.create_index`.

    Returns
    -------
    LanceDataset, or an IndexBuild when ``compute=False``.
    """
    from .api import _parallelism, resolve_client, run
    from .artifacts import IndexArtifacts
    from .graph import build_graph
    from .plan import plan_index

    t0 = time.time()
    client = client if scheduler is not None else resolve_client(client)
    art = PartitionArtifact.open(str(artifact_uri), storage_options)
    md = art.metadata
    plan = plan_index(
        uri, column, index_type, name=name, metric=md.distance_type, replace=replace,
        num_partitions=md.num_partitions, num_sub_vectors=md.num_sub_vectors, num_bits=md.num_bits,
        ivf_centroids=md.ivf_centroids, pq_codebook=md.pq_codebook, num_tasks=num_tasks,
        rows_per_task=rows_per_task, parallelism=_parallelism(client), num_segments=num_segments,
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
    given = IndexArtifacts(md.ivf_centroids, md.pq_codebook, source={"artifact": str(artifact_uri)})
    build = build_graph(plan, given, storage_options, plan_seconds=time.time() - t0,
                        artifact_uri=str(artifact_uri), encode=False)
    if not compute:
        return build
    return run(build, client=client, scheduler=scheduler).dataset(storage_options)
