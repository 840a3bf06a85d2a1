"""The build task: one Lance segment from one group of fragments.

Each task opens the dataset itself at the plan's pinned version (a handle
shared across threads fails in Lance) and writes its segment under a uuid that
is unique to the build and task and the same when the task is retried.

Three engines:

``"lance"``
    Lance reads the rows, assigns and encodes them (``create_index_uncommitted``
    with the shared artifacts). Every index type.
``"partitions"``
    Every index type: the task streams the rows and assigns IVF partitions with
    NumPy BLAS (:class:`.encode.PartitionAssigner`), writes the row id ->
    partition map to a scratch Lance file on the worker's disk, and Lance reads
    the map instead of assigning (``precomputed_partition_dataset``), then
    encodes. Lance drops rows missing from the map silently, so the map holds
    every row it would index: the valid rows of the task's fragments.
``"precomputed"``
    The task streams the rows, assigns partitions and encodes them with NumPy
    BLAS, and writes the segment's two files itself in Lance's layout
    (:mod:`.segment_write`); Lance merges and commits them as its own. IVF_PQ:
    :class:`.encode.PQEncoder`; IVF_RQ (l2, cosine; Lance takes no RaBitQ codes):
    :class:`.rq_encode.RQEncoder`. IVF_HNSW_PQ, whose graphs Lance builds: the
    codes go to a scratch Lance dataset on the worker's disk and Lance builds the
    segment from those "precomputed shuffle buffers"; Lance reads the whole buffer
    dataset, ignoring ``fragment_ids``, so each task's buffer holds exactly its
    own rows.

Both count the rows Lance leaves out (null vectors, vectors with NaN or
infinity), which Lance skips silently while its statistics still count them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass


from .artifacts import IndexArtifacts
from .plan import IndexPlan

__all__ = ["SegmentResult", "build_segment"]


@dataclass(frozen=True)
class SegmentResult:
    """What one build task produced."""

    task: int
    uuid: str
    index: object  # lance.dataset.Index: pickles in about 1 KB
    fragment_ids: tuple[int, ...]
    num_rows: int
    null_rows: int
    nan_rows: int
    started: float
    finished: float


def build_segment(
    plan: IndexPlan,
    task: int,
    artifacts: IndexArtifacts,
    storage_options: dict | None = None,
) -> SegmentResult:
    """Build task ``task`` of ``plan``: write one uncommitted segment.

    A retried task first removes whatever its earlier attempt wrote under the
    same uuid, so no partial files survive and no other task's files are touched.
    """
    from ._lance import open_dataset, remove_index_dir

    t0 = time.time()
    fragment_ids = list(plan.groups[task])
    uuid = plan.segment_uuid(task)
    ds = open_dataset(plan.uri, plan.version, storage_options)
    remove_index_dir(plan.uri, uuid, storage_options)

    kwargs = {**plan.params.lance_kwargs(), **artifacts.lance_kwargs()}

    def create(**extra):
        return ds.create_index_uncommitted(
            plan.column,
            plan.params.index_type,
            name=plan.name,
            replace=plan.replace,
            fragment_ids=fragment_ids,
            index_uuid=uuid,
            **kwargs,
            **extra,
        )

    if plan.engine == "precomputed" and plan.params.index_type in ("IVF_PQ", "IVF_RQ"):
        index, nulls, bad = _write_segment(ds, plan, fragment_ids, artifacts, uuid, create, storage_options)
    elif plan.engine == "precomputed":
        index, nulls, bad = _build_from_codes(ds, plan, fragment_ids, artifacts, create)
    elif plan.engine == "partitions":
        index, nulls, bad = _build_from_partitions(ds, plan, fragment_ids, artifacts, create)
    else:
        nulls, bad = _count_unindexable(ds, plan, fragment_ids)
        index = create()
    rows = {f.fragment_id: f.num_rows for f in plan.fragments}
    return SegmentResult(
        task=task,
        uuid=uuid,
        index=index,
        fragment_ids=tuple(fragment_ids),
        num_rows=sum(rows[f] for f in fragment_ids),
        null_rows=int(nulls),
        nan_rows=int(bad - nulls),
        started=t0,
        finished=time.time(),
    )


def _count_unindexable(ds, plan: IndexPlan, fragment_ids) -> tuple[int, int]:
    """(null vectors, all unindexable vectors) of the fragments, by one scan."""
    from ._lance import iter_vectors

    bad = nulls = 0
    for b in iter_vectors(ds, plan.column, plan.dimension, fragment_ids):
        bad += int((~b.valid).sum())
        nulls += b.nulls
    return nulls, bad


def _valid_rows(ds, plan: IndexPlan, fragment_ids, counts: dict):
    """Stream ``(vectors, row ids)`` of the rows Lance would index (not null, all
    finite), batch by batch; ``counts`` gathers nulls, unindexable rows and rows."""
    from ._lance import iter_vectors

    for b in iter_vectors(ds, plan.column, plan.dimension, fragment_ids, with_row_id=True):
        counts["nulls"] += b.nulls
        counts["bad"] += int((~b.valid).sum())
        x, rid = (b.vectors, b.row_ids) if b.valid.all() else (b.vectors[b.valid], b.row_ids[b.valid])
        if len(x):
            counts["rows"] += len(x)
            yield x, rid


def _hand_off(name: str, schema, batches, counts: dict, create, inputs, **write_kwargs):
    """Stream ``batches`` into a scratch Lance dataset on the worker's disk (the
    writer pulls one batch at a time: bounded memory), then let Lance build the
    segment from it: ``create(**inputs(path, written dataset))``. Returns
    ``(Index, nulls, unindexable)``; the scratch is removed either way."""
    import lance
    import pyarrow as pa

    scratch = tempfile.mkdtemp(prefix=f"dli-{name}-")
    try:
        path = os.path.join(scratch, f"{name}.lance")
        written = lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches), path, **write_kwargs)
        # Nothing indexable here: let Lance build its (empty) segment itself.
        index = create(**inputs(path, written)) if counts["rows"] else create()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return index, counts["nulls"], counts["bad"]


def _build_from_codes(ds, plan: IndexPlan, fragment_ids, artifacts: IndexArtifacts, create):
    """Encode the rows here and hand Lance the codes; returns (Index, nulls, unindexable)."""
    import pyarrow as pa

    from .encode import PQEncoder

    encoder = PQEncoder(artifacts.ivf_centroids, artifacts.pq_codebook, plan.params.metric)
    m = encoder.num_sub_vectors
    schema = pa.schema(
        [("row_id", pa.uint64()), ("__ivf_part_id", pa.uint32()), ("__pq_code", pa.list_(pa.uint8(), m))]
    )
    counts = {"nulls": 0, "bad": 0, "rows": 0}

    def batches():
        for x, rid in _valid_rows(ds, plan, fragment_ids, counts):
            parts, codes = encoder.encode(x)
            yield pa.record_batch(
                [
                    pa.array(rid, pa.uint64()),
                    pa.array(parts, pa.uint32()),
                    pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), m),
                ],
                schema=schema,
            )

    def inputs(path, written):
        return {
            "precomputed_shuffle_buffers": [f.path for frag in written.get_fragments() for f in frag.data_files()],
            "precomputed_shuffle_buffers_path": os.path.join(path, "data"),
        }

    return _hand_off("codes", schema, batches(), counts, create, inputs)


def _build_from_partitions(ds, plan: IndexPlan, fragment_ids, artifacts: IndexArtifacts, create):
    """Assign partitions here and hand Lance the map; returns (Index, nulls, unindexable)."""
    import pyarrow as pa

    from .encode import PartitionAssigner

    assigner = PartitionAssigner(artifacts.ivf_centroids, plan.params.metric)
    schema = pa.schema([("row_id", pa.uint64()), ("partition", pa.uint32())])
    counts = {"nulls": 0, "bad": 0, "rows": 0}

    def batches():
        for x, rid in _valid_rows(ds, plan, fragment_ids, counts):
            yield pa.record_batch([pa.array(rid, pa.uint64()), pa.array(assigner.assign(x), pa.uint32())], schema=schema)

    # Lance reads the map only as one fragment of one file: never split it
    # (a limit past 2**31 - 1 rows overflows inside Lance: one fragment per batch).
    return _hand_off(
        "partitions", schema, batches(), counts, create,
        lambda path, written: {"precomputed_partition_dataset": path}, max_rows_per_file=2**31 - 1,
    )


def _write_segment(ds, plan: IndexPlan, fragment_ids, artifacts: IndexArtifacts, uuid: str, create,
                   storage_options):
    """Encode the rows here and write the IVF_PQ or IVF_RQ segment's files; returns
    (Index, nulls, unindexable).

    The task holds its rows' codes until it writes them grouped by partition, so
    its memory grows with its rows: 28 bytes a row for IVF_PQ with 16 sub-vectors
    (4 of partition, 8 of row id, 16 of codes), 112 for IVF_RQ at 128-d and 5 bits
    (16 of sign bits, 64 of ex-codes, 20 of factors): 56 and 224 MB for the
    default 2M-row task.
    """
    import numpy as np

    from .segment_write import segment_index, write_pq_segment, write_rq_segment

    params = plan.params
    centroids = np.asarray(artifacts.ivf_centroids, dtype=np.float32)
    if params.quantizer == "PQ":
        from .encode import PQEncoder

        encoder = PQEncoder(centroids, artifacts.pq_codebook, params.metric)

        def encode(x):
            parts, codes, loss = encoder.encode(x, with_loss=True)
            return {"part_ids": parts, "codes": codes}, loss
    else:
        from .rotation import RQRotation
        from .rq_encode import RQEncoder

        encoder = RQEncoder(centroids, RQRotation.from_json(artifacts.rabitq_model), params.metric, params.num_bits)

        def encode(x):
            out = encoder.encode(x)
            return out, out.pop("loss")

    counts = {"nulls": 0, "bad": 0, "rows": 0}
    # One array per column, sized by the fragments' rows (an upper bound of the valid
    # rows) and filled batch by batch: no second copy when the task ends.
    mine = set(fragment_ids)
    bound = sum(f.num_rows for f in plan.fragments if f.fragment_id in mine)
    codes, row_ids, loss, n = {}, np.empty(bound, np.uint64), 0.0, 0
    for x, rid in _valid_rows(ds, plan, fragment_ids, counts):
        out, batch_loss = encode(x)
        loss += batch_loss
        if not codes:
            codes = {k: np.empty((bound,) + v.shape[1:], v.dtype) for k, v in out.items()}
        for k, v in out.items():
            codes[k][n : n + len(v)] = v
        row_ids[n : n + len(rid)] = rid
        n += len(rid)
    if not counts["rows"]:
        return create(), counts["nulls"], counts["bad"]  # nothing indexable: Lance's own empty segment
    codes = {k: v[:n] for k, v in codes.items()}
    # Lance stores a segment over the whole dataset as a full index (PQ codes
    # transposed, RaBitQ sign bits packed) and a partial one row-major: do as it does.
    whole = {f.fragment_id for f in ds.get_fragments()} == mine
    common = dict(row_ids=row_ids[:n], part_ids=codes.pop("part_ids"), centroids=centroids, metric=params.metric,
                  loss=loss, storage_options=storage_options)
    if params.quantizer == "PQ":
        files = write_pq_segment(plan.uri, uuid, codes=codes["codes"], codebook=artifacts.pq_codebook,
                                 transposed=whole, **common)
    else:
        files = write_rq_segment(plan.uri, uuid, binary=codes.pop("binary"), ex_codes=codes.pop("ex", None),
                                 factors=codes, model=artifacts.rabitq_model, num_bits=params.num_bits,
                                 packed=whole, **common)
    index = segment_index(ds, index_uuid=uuid, name=plan.name, column=plan.column, fragment_ids=fragment_ids,
                          quantizer=params.quantizer, metric=params.metric, num_bits=params.num_bits,
                          num_sub_vectors=params.num_sub_vectors, files=files, storage_options=storage_options)
    return index, counts["nulls"], counts["bad"]
