"""The ``"artifact"`` engine on Dask: encode, shuffle by bucket, write a partition artifact.

::

    dli-encode-<i> ──► dli-piece-<i>-<r> ──► dli-buckets-<r> ──► dli-manifest ──► dli-finalize-<i> ─► merge ─► commit
         │  (one per fragment group)          (one per reducer)    (one task)       (one per group)
         └──► dli-encode-stats-<i> ───────────────────────────────────┘

Encode tasks read their fragment group's vectors and compute partition ids and
PQ codes with BLAS against the shared artifacts (:class:`.encode.PQEncoder`);
they split their rows by reducer (``bucket % num_reducers``), so each bucket
is written by exactly one reduction task: the shuffle is dask's, by task, and
moves 8 + 4 + m bytes per row (a 128-d float32 row is 512). Reduction tasks
stream their pieces through a :class:`.artifact_writer.PartitionArtifactWriter`
restricted to their buckets. One task assembles and writes ``metadata.lance``
and, last, ``manifest.json``. The finalize tasks (:mod:`.finalize`) build the
Lance segments from the artifact, so a build that dies after the manifest is
written is resumed with :func:`dask_lance_index.finalize_artifact` without
encoding again.
"""

from __future__ import annotations

import json
import operator
import os
import time
from dataclasses import dataclass

import numpy as np
from dask.delayed import delayed

from ._blas import one_blas_thread
from .artifacts import IndexArtifacts
from .artifact_io import _join, _write_text, write_manifest, write_metadata
from .artifact_writer import PartitionArtifactWriter
from .partition_artifacts import ArtifactMetadata, BucketSummary, assemble_manifest, default_num_buckets
from .plan import IndexPlan

__all__ = ["EncodeStats", "ArtifactSummary", "encode_group", "write_buckets", "write_artifact", "artifact_tasks"]

# Written next to the manifest: which dataset version and rows the artifact encodes.
PROVENANCE_FILE = "dli_build.json"


@dataclass(frozen=True)
class EncodeStats:
    """What one encode task saw."""

    task: int
    rows: int  # rows encoded
    null_rows: int
    nan_rows: int
    started: float
    finished: float


@dataclass(frozen=True)
class ArtifactSummary:
    """What the manifest task wrote: the artifact root and per-task encode figures."""

    root: str
    num_rows: int
    stats: tuple[EncodeStats, ...]
    peak_buffered_bytes: int

    def stats_of(self, task: int) -> EncodeStats | None:
        return next((s for s in self.stats if s.task == task), None)


def num_reducers_for(plan: IndexPlan) -> int:
    """As many bucket writers as encode tasks, at most one per bucket."""
    return max(1, min(plan.num_tasks, default_num_buckets(plan.params.num_partitions)))


@one_blas_thread()  # partitions run side by side: one BLAS thread each (see _blas)
def encode_group(plan: IndexPlan, task: int, artifacts: IndexArtifacts, num_reducers: int,
                 storage_options: dict | None = None) -> tuple:
    """Encode task: ``(piece_0, ..., piece_{R-1}, EncodeStats)``.

    ``piece_r`` is ``(row_ids uint64, part_ids uint32, codes uint8 (n, m))``
    of the rows whose bucket goes to reducer ``r``. Null and non-finite vectors
    are counted and left out, as Lance leaves them out.
    """
    from ._lance import iter_vectors, open_dataset
    from .encode import PQEncoder

    t0 = time.time()
    ds = open_dataset(plan.uri, plan.version, storage_options)
    encoder = PQEncoder(artifacts.ivf_centroids, artifacts.pq_codebook, plan.params.metric)
    nb = default_num_buckets(plan.params.num_partitions)
    chunks: list[list] = [[] for _ in range(num_reducers)]
    nulls = bad = rows = 0
    for b in iter_vectors(ds, plan.column, plan.dimension, list(plan.groups[task]), with_row_id=True):
        nulls += b.nulls
        bad += int((~b.valid).sum())
        x, rid = (b.vectors, b.row_ids) if b.valid.all() else (b.vectors[b.valid], b.row_ids[b.valid])
        if not len(x):
            continue
        parts, codes = encoder.encode(x)
        rows += len(x)
        red = (parts % nb) % num_reducers
        for r in range(num_reducers):
            sel = red == r if num_reducers > 1 else slice(None)
            chunks[r].append((rid[sel], parts[sel], codes[sel]))
    m = encoder.num_sub_vectors
    pieces = []
    for cs in chunks:
        if cs:
            pieces.append(tuple(np.concatenate([c[k] for c in cs]) for k in range(3)))
        else:
            pieces.append((np.empty(0, np.uint64), np.empty(0, np.uint32), np.empty((0, m), np.uint8)))
    stats = EncodeStats(task, rows, int(nulls), int(bad - nulls), t0, time.time())
    return (*pieces, stats)


def write_buckets(root: str, reducer: int, num_reducers: int, num_partitions: int, num_sub_vectors: int,
                  pieces: list, storage_options: dict | None = None) -> BucketSummary:
    """Reduction task: write the buckets ``b`` with ``b % num_reducers == reducer``."""
    nb = default_num_buckets(num_partitions)
    w = PartitionArtifactWriter(
        root, num_partitions, num_sub_vectors,
        buckets=[b for b in range(nb) if b % num_reducers == reducer],
        storage_options=storage_options,
    )
    step = 65536  # appended in slices: the writer's buffers stay within their budget
    for rid, part, codes in pieces:
        for s in range(0, len(rid), step):
            w.append(rid[s : s + step], part[s : s + step], codes[s : s + step])
    return w.finish()


def write_artifact(root: str, plan: IndexPlan, artifacts: IndexArtifacts, summaries: list,
                   stats: list, storage_options: dict | None = None) -> ArtifactSummary:
    """Manifest task: metadata.lance, the provenance record, then manifest.json (last)."""
    write_metadata(
        root,
        ArtifactMetadata(plan.params.metric, artifacts.ivf_centroids, artifacts.pq_codebook, plan.params.num_bits or 8),
        storage_options,
    )
    manifest = assemble_manifest(plan.params.num_partitions, summaries)
    rows = sum(s.rows for s in stats)
    if manifest.num_rows != rows:
        raise RuntimeError(f"the bucket writers wrote {manifest.num_rows} rows but the encoders produced {rows}")
    provenance = {
        "uri": plan.uri,
        "version": plan.version,
        "column": plan.column,
        "build_id": plan.build_id,
        "groups": [list(g) for g in plan.groups],
        "rows": [s.rows for s in stats],
        "null_rows": [s.null_rows for s in stats],
        "nan_rows": [s.nan_rows for s in stats],
    }
    _write_text(_join(root, PROVENANCE_FILE), json.dumps(provenance), storage_options)
    write_manifest(root, manifest, storage_options)
    return ArtifactSummary(
        root=root,
        num_rows=rows,
        stats=tuple(sorted(stats, key=lambda s: s.task)),
        peak_buffered_bytes=max((s.peak_buffered_bytes for s in summaries), default=0),
    )


def artifact_tasks(plan: IndexPlan, plan_key, artifacts, root: str, storage_options: dict | None,
                   tok: str, encode: bool = True) -> list:
    """The delayed finalize tasks (one per fragment group, each giving a SegmentResult),
    with the encode / bucket-write / manifest tasks upstream of them when ``encode``."""
    from .finalize import finalize_segment

    summary = None
    if encode:
        R = num_reducers_for(plan)
        encoded = [
            delayed(encode_group, pure=True)(plan_key, i, artifacts, R, storage_options,
                                             dask_key_name=f"dli-encode-{tok}-{i}")
            for i in range(plan.num_tasks)
        ]
        stats = [
            delayed(operator.getitem, pure=True)(e, R, dask_key_name=f"dli-encode-stats-{tok}-{i}")
            for i, e in enumerate(encoded)
        ]
        buckets = [
            delayed(write_buckets, pure=True)(
                root, r, R, plan.params.num_partitions, plan.params.num_sub_vectors,
                [delayed(operator.getitem, pure=True)(e, r, dask_key_name=f"dli-piece-{tok}-{i}-{r}")
                 for i, e in enumerate(encoded)],
                storage_options,
                dask_key_name=f"dli-buckets-{tok}-{r}",
            )
            for r in range(R)
        ]
        summary = delayed(write_artifact, pure=True)(
            root, plan_key, artifacts, buckets, stats, storage_options, dask_key_name=f"dli-manifest-{tok}"
        )
    return [
        delayed(finalize_segment, pure=True)(plan_key, i, root, summary, storage_options,
                                             dask_key_name=f"dli-finalize-{tok}-{i}")
        for i in range(plan.num_tasks)
    ]


def drop_artifact(result, root: str, storage_options: dict | None = None):
    """After a successful commit: delete a temporary artifact and pass the result on
    (on an object store with the build's ``storage_options``)."""
    from .artifact_io import _is_local, _local

    if _is_local(root):
        import shutil

        shutil.rmtree(_local(root), ignore_errors=True)
        parent = os.path.dirname(_local(root).rstrip("/"))
        if os.path.basename(parent) == "_dli_artifacts":
            try:
                os.rmdir(parent)  # only when no other build's artifact is in it
            except OSError:
                pass
    else:
        from ._lance import filesystem

        fs, p = filesystem(root, storage_options)
        fs.delete_dir(p.rstrip("/"))
    return result
