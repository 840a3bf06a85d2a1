"""Writing a partition artifact on Dask: encode, shuffle by bucket, write the files.

::

    dli-encode-<i> ──► dli-piece-<i>-<r> ──► dli-buckets-<r> ──► dli-manifest ──► (finalize: build tasks)
         │  (one per fragment group)          (one per reducer)    (one task)
         └──► dli-encode-stats-<i> ───────────────────────────────────┘

Encode tasks (:class:`EncodeGroup`) read their fragment group's vectors and
compute partition ids and PQ codes with BLAS against the shared model
(:class:`dask_lance_index.model.PQEncoder`); they split their rows by reducer
(``bucket % num_reducers``), so each bucket is written by exactly one
reduction task: the shuffle is dask's, by task, and moves 8 + 4 + m bytes per
row (a 128-d float32 row is 512). Reduction tasks (:class:`WriteBuckets`)
stream their pieces through a :class:`.writer.PartitionArtifactWriter`
restricted to their buckets. One task (:class:`WriteArtifact`) assembles and
writes ``metadata.lance`` and, last, ``manifest.json``. The finalize tasks
(:mod:`.finalize`) then build the Lance segments from the artifact, so a build
that dies after the manifest is written is resumed with
:func:`dask_lance_index.finalize_artifact` without encoding again. The graph
is laid out by the ``"artifact"`` engine (:mod:`dask_lance_index.build.engines.artifact`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np

from ..model import PQEncoder
from ..runtime import one_blas_thread
from ..storage import RowCounts, Store, open_dataset, valid_rows
from .layout import (
    ArtifactMetadata,
    BucketSummary,
    assemble_manifest,
    default_num_buckets,
)
from .reader import write_manifest, write_metadata
from .writer import PartitionArtifactWriter

__all__ = ["ArtifactSummary", "EncodeGroup", "EncodeStats", "WriteArtifact", "WriteBuckets", "num_reducers_for",
           "remove_artifact"]

# Written next to the manifest: which dataset version and rows the artifact encodes.
PROVENANCE_FILE = "dli_build.json"
# The folder under a dataset that holds the temporary artifacts of builds.
TEMPORARY_DIR = "_dli_artifacts"


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


def num_reducers_for(plan) -> int:
    """As many bucket writers as encode tasks, at most one per bucket."""
    return max(1, min(plan.num_tasks, default_num_buckets(plan.params.num_partitions)))


@dataclass(frozen=True)
class EncodeGroup:
    """Encode task: ``(piece_0, ..., piece_{R-1}, EncodeStats)`` of one fragment group.

    ``piece_r`` is ``(row_ids uint64, part_ids uint32, codes uint8 (n, m))``
    of the rows whose bucket goes to reducer ``r``. Null and non-finite vectors
    are counted and left out, as Lance leaves them out.
    """

    num_reducers: int
    storage_options: dict | None = None

    @one_blas_thread()  # groups run side by side: one BLAS thread each (runtime.blas)
    def __call__(self, plan, task: int, model) -> tuple:
        t0 = time.time()
        ds = open_dataset(plan.uri, plan.version, self.storage_options)
        encoder = PQEncoder(model.ivf_centroids, model.pq_codebook, plan.params.metric, model.coarse_index)
        nb, R = default_num_buckets(plan.params.num_partitions), self.num_reducers
        chunks: list[list] = [[] for _ in range(R)]
        counts = RowCounts()
        for x, rid in valid_rows(ds, plan.column, plan.dimension, list(plan.groups[task]), counts):
            parts, codes = encoder.encode(x)
            red = (parts % nb) % R
            for r in range(R):
                sel = red == r if R > 1 else slice(None)
                chunks[r].append((rid[sel], parts[sel], codes[sel]))
        m = encoder.num_sub_vectors
        pieces = []
        for cs in chunks:
            if cs:
                pieces.append(tuple(np.concatenate([c[k] for c in cs]) for k in range(3)))
            else:
                pieces.append((np.empty(0, np.uint64), np.empty(0, np.uint32), np.empty((0, m), np.uint8)))
        stats = EncodeStats(task, counts.rows, counts.nulls, counts.nan_rows, t0, time.time())
        return (*pieces, stats)


@dataclass(frozen=True)
class WriteBuckets:
    """Reduction task: write the buckets ``b`` with ``b % num_reducers == reducer``."""

    root: str
    num_reducers: int
    num_partitions: int
    num_sub_vectors: int
    storage_options: dict | None = None

    def __call__(self, reducer: int, pieces: list) -> BucketSummary:
        nb = default_num_buckets(self.num_partitions)
        w = PartitionArtifactWriter(
            self.root, self.num_partitions, self.num_sub_vectors,
            buckets=[b for b in range(nb) if b % self.num_reducers == reducer],
            storage_options=self.storage_options,
        )
        step = 65536  # appended in slices: the writer's buffers stay within their budget
        for rid, part, codes in pieces:
            for s in range(0, len(rid), step):
                w.append(rid[s : s + step], part[s : s + step], codes[s : s + step])
        return w.finish()


@dataclass(frozen=True)
class WriteArtifact:
    """Manifest task: metadata.lance, the provenance record, then manifest.json (last)."""

    root: str
    storage_options: dict | None = None

    def __call__(self, plan, model, summaries: list, stats: list) -> ArtifactSummary:
        root, opts = self.root, self.storage_options
        write_metadata(
            root,
            ArtifactMetadata(plan.params.metric, model.ivf_centroids, model.pq_codebook, plan.params.num_bits or 8),
            opts,
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
        Store(root, opts).write(PROVENANCE_FILE, json.dumps(provenance))
        write_manifest(root, manifest, opts)
        return ArtifactSummary(
            root=root,
            num_rows=rows,
            stats=tuple(sorted(stats, key=lambda s: s.task)),
            peak_buffered_bytes=max((s.peak_buffered_bytes for s in summaries), default=0),
        )


def remove_artifact(root: str, storage_options: dict | None = None) -> None:
    """Delete an artifact (on an object store with the build's ``storage_options``), and
    the dataset's folder of temporary artifacts once it is empty."""
    store = Store(root, storage_options)
    store.remove_tree()
    parent = os.path.dirname(store.path().rstrip("/"))
    if store.local and os.path.basename(parent) == TEMPORARY_DIR:
        Store(parent).remove_empty_dir()  # only when no other build's artifact is in it
