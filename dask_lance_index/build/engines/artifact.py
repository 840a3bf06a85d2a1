"""The ``"artifact"`` engine: codes written to a partition artifact first, then finalized.

As ``"precomputed"`` for 8-bit PQ types, but through a partition artifact in
upstream Lance's layout (:mod:`dask_lance_index.partition_artifacts`): encode
tasks, a shuffle by bucket and a manifest task run upstream of the build
tasks, and each build task finalizes its fragment group's segment from the
artifact (Lance takes the rows as a precomputed shuffle buffer with the
artifact's model). A build that dies after the manifest is written is resumed
with :func:`dask_lance_index.finalize_artifact`, without encoding again.
"""

from __future__ import annotations

import dataclasses
import operator

from dask.delayed import delayed

from ...errors import InvalidInputError
from ...model import IndexModel
from ...partition_artifacts import (
    MANIFEST_FILE,
    EncodeGroup,
    GroupRows,
    WriteArtifact,
    WriteBuckets,
    check_row_ids,
    num_reducers_for,
    remove_artifact,
)
from ...partition_artifacts.encode import TEMPORARY_DIR
from ...storage import (
    SegmentResult,
    Store,
    join,
    scratch_dataset,
    shuffle_buffer_inputs,
    shuffle_buffer_schema,
)
from .base import Engine, SegmentTask

__all__ = ["ArtifactEngine"]


class ArtifactEngine(Engine):
    name = "artifact"

    def refuses(self, params) -> str | None:
        if params.quantizer == "PQ" and params.num_bits == 8:
            return None
        return f"engine='artifact' needs an 8-bit PQ index type (IVF_PQ or IVF_HNSW_PQ), not {params.index_type}"

    def for_updates(self) -> str:
        """The same codes, written straight to the segments: an artifact for a delta gains nothing."""
        return "precomputed"

    def prepare(self, plan, storage_options=None, artifact_uri=None):
        """Where the artifact goes (a temporary one under the dataset, deleted after the
        commit, unless ``artifact_uri`` is given), refusing to overwrite a complete one."""
        check_row_ids(plan, storage_options)
        if artifact_uri is None:
            root, temporary = join(plan.uri, f"{TEMPORARY_DIR}/{plan.build_id}"), True
        else:
            root, temporary = str(artifact_uri), False
            if Store(root, storage_options).exists(MANIFEST_FILE):
                raise InvalidInputError(
                    f"{root} already holds a complete partition artifact. Fix: finalize it with "
                    "dask_lance_index.finalize_artifact(...) (no encoding), or choose an empty artifact_uri."
                )
        note = f"partition artifact at {root}"
        if note not in plan.notes:  # a resumed build's journaled plan has it already
            plan = dataclasses.replace(plan, notes=plan.notes + (note,))
        return plan, {"artifact_uri": root, "encode": True, "temporary": temporary}

    def upstream(self, plan, plan_key, model_key, options, storage_options, tok):
        """encode (one per group) -> pieces -> buckets (one per reducer) -> manifest;
        nothing when finalizing an artifact that exists."""
        if not options.get("encode", True):
            return None
        root, R = options["artifact_uri"], num_reducers_for(plan)
        encode = EncodeGroup(R, storage_options)
        encoded = [
            delayed(encode, pure=True)(plan_key, i, model_key, dask_key_name=f"dli-encode-{tok}-{i}")
            for i in range(plan.num_tasks)
        ]
        stats = [
            delayed(operator.getitem, pure=True)(e, R, dask_key_name=f"dli-encode-stats-{tok}-{i}")
            for i, e in enumerate(encoded)
        ]
        write = WriteBuckets(root, R, plan.params.num_partitions, plan.params.num_sub_vectors, storage_options)
        buckets = [
            delayed(write, pure=True)(
                r,
                [delayed(operator.getitem, pure=True)(e, r, dask_key_name=f"dli-piece-{tok}-{i}-{r}")
                 for i, e in enumerate(encoded)],
                dask_key_name=f"dli-buckets-{tok}-{r}",
            )
            for r in range(R)
        ]
        return delayed(WriteArtifact(root, storage_options), pure=True)(
            plan_key, model_key, buckets, stats, dask_key_name=f"dli-manifest-{tok}"
        )

    def build_segment(self, plan, task, model, storage_options=None, options=None, upstream=None) -> SegmentResult:
        """Finalize: the group's rows of the artifact handed to Lance with the artifact's
        model. ``upstream`` is the manifest task's summary (None when finalizing an
        existing artifact: rows of the group it does not hold are reported as not indexed)."""
        seg = SegmentTask(plan, task, model, storage_options)
        rows = GroupRows(plan, task, options["artifact_uri"], seg.ds.has_stable_row_ids, storage_options)
        md = rows.metadata
        artifact_model = IndexModel(md.ivf_centroids, md.pq_codebook)

        with scratch_dataset("finalize", shuffle_buffer_schema(md.num_sub_vectors), rows.batches()) as (path, written):
            rows.finish()
            # The artifact holds none of these fragments' rows: Lance builds the segment itself.
            index = seg.create(artifact_model, **(shuffle_buffer_inputs(path, written) if rows.rows else {}))
        stats = upstream.stats_of(task) if upstream is not None else None
        if stats is None:
            return seg.result(index, null_rows=0, nan_rows=seg.num_rows - rows.rows)
        if stats.rows != rows.rows:
            raise RuntimeError(
                f"finalize task {task} read {rows.rows} rows of its fragments from the artifact, "
                f"but its encode task wrote {stats.rows}"
            )
        return seg.result(index, null_rows=stats.null_rows, nan_rows=stats.nan_rows, started=stats.started)

    def has_after_commit(self, options: dict) -> bool:
        return bool(options.get("temporary"))

    def after_commit(self, result, options, storage_options=None):
        """Delete a temporary artifact once the index is committed."""
        if options.get("temporary"):
            remove_artifact(options["artifact_uri"], storage_options)
        return result

