"""The ``"precomputed"`` engine: we assign and encode every row with NumPy BLAS.

IVF_PQ, IVF_SQ, IVF_FLAT and IVF_RQ (l2, cosine): each task streams its rows, assigns and encodes
them (:class:`dask_lance_index.model.PQEncoder`,
:class:`dask_lance_index.model.RQEncoder`: Lance takes no RaBitQ codes at all)
and writes the segment's two files itself in Lance's layout
(:mod:`dask_lance_index.storage.segment_files`); Lance then merges and commits
them as its own. IVF_HNSW_FLAT, IVF_HNSW_SQ and IVF_HNSW_PQ (l2, cosine; IVF_HNSW_FLAT and
IVF_HNSW_SQ under dot too): as IVF_FLAT, IVF_SQ and IVF_PQ, and the task also builds each partition's graph (:mod:`dask_lance_index.model.hnsw`; on a
cluster as graph tasks on every worker, :mod:`dask_lance_index.build.graphs`) and writes it
(:mod:`dask_lance_index.storage.hnsw_segment`); in a build of several tasks each writes its
rows only, as the storage type's segment (IVF_FLAT, IVF_SQ, IVF_PQ: the same
``auxiliary.idx``), and the merge that concatenates them builds the graphs, once
(:attr:`dask_lance_index.plan.IndexPlan.graphs_at_merge`). IVF_HNSW_PQ whose graphs Lance builds
(the dot metric, or more codes than one task holds: :func:`graphs_left_to_lance`): the codes
go to a scratch dataset on the worker's disk and Lance builds the segment from those
"precomputed shuffle buffers"; Lance reads the whole buffer dataset, ignoring
``fragment_ids``, so each task's buffer holds exactly its own rows. The default
wherever it applies (:meth:`PrecomputedEngine.refuses`).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
from distributed import get_worker

from ...model import FlatEncoder, PQEncoder, RQEncoder, RQRotation, SQEncoder
from ...model.hnsw import (
    HNSW_CANDIDATES,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    HNSW_MAX_LEVEL,
)
from ...plan.index_plan import FLAT_TASK_BYTES, held_row_bytes
from ...runtime import SpareThreads, give_back, host_cores, run_streamed, small_pages, worker_client_or_none
from ...storage import (
    SCAN_BATCH_ROWS,
    PartitionRuns,
    SegmentResult,
    add_hnsw_graphs,
    segment_index,
    shuffle_buffer_batch,
    shuffle_buffer_inputs,
    shuffle_buffer_schema,
    write_pq_segment,
    write_flat_segment,
    write_hnsw_segment,
    write_rq_segment,
    write_sq_segment,
)
from ..graphs import PartitionGraphs
from .base import Engine, SegmentTask

__all__ = ["DOT_GRAPH_ROWS", "DOT_MOST_DIRECTIONS_ROWS", "DOT_ONE_NORM_SPREAD_ROWS", "DOT_SPREAD_GRAPH_ROWS",
           "DOT_WIDE_DIMENSION", "DOT_WIDE_GRAPH_ROWS", "GraphsAtMerge", "HNSW_WRITTEN",
           "PrecomputedEngine", "SPILL_CHUNK_BYTES", "dot_graph_rows", "graphs_left_to_lance", "spills", "writes_codes"]

# HNSW types whose graphs we build (model.hnsw) and whose segment files we write (not
# IVF_HNSW_PQ under dot or past the codes one task holds: graphs_left_to_lance).
HNSW_WRITTEN = ("IVF_HNSW_FLAT", "IVF_HNSW_SQ", "IVF_HNSW_PQ")
# Rows a spilling task holds at once (spills): 256 MB of rows, ids and partitions.
SPILL_CHUNK_BYTES = FLAT_TASK_BYTES // 4
# Rows a partition, on average, past which Lance builds the dot-metric graphs. Ours compare
# each node with every node of its partition (time growing with its square), or past 32,768
# rows, where the rows group well, with the nodes of the groups it is near (model.hnsw_dot).
# 1M x 128 dot IVF_HNSW_FLAT builds at 13, 8 and 4 partitions (76,900, 125,000 and 250,000
# rows each): ours 0.70x, 0.65x and 0.67x of Lance's own build, so the bound stops a little
# past the largest measured. Past DOT_WIDE_DIMENSION dimensions, where the rows measured
# (768-d) grouped poorly and the graphs stay quadratic, the bound measured before the groups:
# at 768-d and 40,000 rows a partition ours 0.89-0.90x, Lance's graphs from our IVF 1.07x.
# Rows that need more than half their directions to hold 98% of their energy (no projection,
# model.hnsw_dot.projection of rows drawn at planning: real sentence embeddings need 256 of
# 384) group poorly too: the graphs stay quadratic in the full dimension, and their pruning
# keeps many candidates. Real 384-d sentence embeddings (75,122, one norm), dot
# IVF_HNSW_FLAT, ours against Lance's own build: with the dot construction (which rows of
# unequal norms take; measured on these rows before rows of one norm were built as under l2)
# 0.88x at 2,350 rows a partition, 2.19x at 4,700, 1.86x at 9,400, 3.64x at 37,500 (Lance's
# graphs from our IVF 1.17x, 1.10x, 1.26x); as rows of one norm now are, built as under
# l2 (model.hnsw.build_hnsw), 0.88x at 9,400 with recall equal to Lance's, 0.83x at 18,800
# (recall@10 0.979 against 0.983; Lance's graphs from our IVF 1.23x), and at 37,500 (one
# partition of 55,800) 0.70x but recall 0.972 against 0.987 (0.976 with each node in 6
# groups of 2,048 before the fine groups of model.hnsw._fine_groups). The same rows each
# scaled by a random factor in [0.5, 2] (unequal norms: the dot construction, whose pruning
# then keeps few): 0.50x at 2,350 rows a partition, 0.85x at 4,700, 1.03x at 9,400 (Lance's
# graphs from our IVF 1.07x, 1.15x, 1.04x); built on the 224 of their 384 directions that
# hold 95% of their energy and keep drawn rows' largest products
# (model.hnsw_dot.spread_projection), the graphs' build stage 12.30 s against 13.67 s at
# 9,400 rows a partition (Lance 16.83 s), 15.44 s against 19.86 s at 18,800 (Lance 19.37 s).
# So DOT_SPREAD_GRAPH_ROWS; DOT_ONE_NORM_SPREAD_ROWS for rows of one norm (a little past
# 18,800, short of 37,500). Rows of unequal norms with a spread projection, once the dot
# pruning multiplied only the candidates still in the running: 0.57-0.58x at 9,400, 0.61-0.78x
# at 18,800, and at 37,500 (partitions of 59,631 and 15,491) 1.00-1.14x, where Lance's graphs
# from our IVF took 1.14-1.27x in the same runs (recall@10 0.967 against 0.961-0.963); on the
# fewest directions keeping 93% of drawn rows' largest products (192 and 224 there) 0.84-0.90x,
# IVF_HNSW_SQ 0.98-1.08x (Lance's graphs from our IVF 1.12x); with the larger partition's graph
# also in the idle worker's thread once the smaller is built, 0.55-0.59x and IVF_HNSW_SQ
# 0.71-0.77x; in one partition of all 75,013 rows, IVF_HNSW_SQ 0.92-0.99x, where Lance's
# graphs from our IVF took 1.16x, and 0.85-0.87x (IVF_HNSW_FLAT 0.66x) once spread rows no
# longer made groups: so DOT_MOST_DIRECTIONS_ROWS, past 75,013 (docs/benchmarks.md).
DOT_GRAPH_ROWS = 262144
DOT_WIDE_GRAPH_ROWS = 81920
DOT_WIDE_DIMENSION = 256
DOT_SPREAD_GRAPH_ROWS = 4096
DOT_ONE_NORM_SPREAD_ROWS = 24576
DOT_MOST_DIRECTIONS_ROWS = 77824


def dot_graph_rows(dimension: int | None, directions: int | None = None, one_norm: bool = False,
                   spread: bool = False) -> int:
    """Rows a partition, on average, up to which we build dot-metric graphs of rows of
    ``dimension`` (unknown: the bound of wide rows). ``directions``: of rows drawn at
    planning, the columns of their :func:`~dask_lance_index.model.hnsw_dot.projection`
    (large levels are built on that many), 0 where they have none
    (:data:`DOT_SPREAD_GRAPH_ROWS`; :data:`DOT_ONE_NORM_SPREAD_ROWS` for rows of
    ``one_norm``, :data:`DOT_MOST_DIRECTIONS_ROWS` for rows with a ``spread``
    :func:`~dask_lance_index.model.hnsw_dot.spread_projection`), None if none were drawn."""
    if directions == 0:
        if one_norm:  # built as under l2 (model.hnsw.build_hnsw)
            return DOT_ONE_NORM_SPREAD_ROWS
        return DOT_MOST_DIRECTIONS_ROWS if spread else DOT_SPREAD_GRAPH_ROWS
    width = directions or dimension
    return DOT_GRAPH_ROWS if width and width <= DOT_WIDE_DIMENSION else DOT_WIDE_GRAPH_ROWS


def graphs_left_to_lance(params, num_rows: int | None, dimension: int | None = None,
                         directions: int | None = None, one_norm: bool = False, spread: bool = False) -> bool:
    """Whether an HNSW index's graphs are left to Lance: IVF_HNSW_PQ under the dot metric;
    IVF_HNSW_FLAT and IVF_HNSW_SQ under dot past :func:`dot_graph_rows` rows a partition
    (our dot graphs' time grows faster with a partition's rows than Lance's); or IVF_HNSW_PQ
    when the one task that builds the segment would hold more than
    :data:`~dask_lance_index.plan.index_plan.FLAT_TASK_BYTES` of codes (it holds every code
    until it writes them grouped by partition; IVF_HNSW_FLAT's and IVF_HNSW_SQ's rows past
    that go to its disk: :func:`spills`). Engine ``"auto"`` then builds IVF_HNSW_FLAT and
    IVF_HNSW_SQ with the ``"partitions"`` engine, and this engine hands IVF_HNSW_PQ's codes
    to Lance. Pure."""
    if params.index_type not in HNSW_WRITTEN:
        return False
    if params.metric == "dot" and params.index_type == "IVF_HNSW_PQ":
        return True
    if num_rows is None:
        return False
    if params.metric == "dot" and num_rows > dot_graph_rows(dimension, directions, one_norm, spread) * params.num_partitions:
        return True
    # IVF_HNSW_FLAT's and IVF_HNSW_SQ's rows past that go to disk (spills); PQ codes do not
    return (params.quantizer == "PQ"
            and num_rows * held_row_bytes(params.index_type, dimension or 0, params.num_sub_vectors) > FLAT_TASK_BYTES)


def spills(params, num_rows: int, dimension: int) -> bool:
    """Whether the one task writing an IVF_HNSW_FLAT or IVF_HNSW_SQ segment spills its rows to
    its disk, sorted by partition a chunk at a time (:class:`~dask_lance_index.storage.PartitionRuns`),
    rather than hold them: past :data:`~dask_lance_index.plan.index_plan.FLAT_TASK_BYTES`. Pure."""
    return (params.index_type in ("IVF_HNSW_FLAT", "IVF_HNSW_SQ")
            and num_rows * held_row_bytes(params.index_type, dimension) > FLAT_TASK_BYTES)


def _hnsw_settings(params) -> tuple[int, int, int]:
    """``(m, ef_construction, max_level)``: the build's, Lance's defaults where not given."""
    return (params.m or HNSW_M, params.ef_construction or HNSW_EF_CONSTRUCTION, HNSW_MAX_LEVEL)


def writes_codes(params) -> bool:
    """Whether our workers can compute every code of this index: 8-bit PQ types
    (IVF_PQ segments written in Lance's layout; IVF_HNSW_PQ segments too, with our
    graphs, or its codes handed to Lance as precomputed shuffle buffers where Lance
    builds the graphs: :func:`graphs_left_to_lance`) and IVF_RQ under l2 or cosine (segments
    written in Lance's layout; Lance's dot-metric RaBitQ stores other factors), and
    IVF_SQ (segments written in Lance's layout with the model's shared bounds, so
    that they merge), IVF_FLAT (the rows themselves, in Lance's layout), and
    IVF_HNSW_FLAT and IVF_HNSW_SQ (those, with the graphs we build)."""
    if params.quantizer == "PQ":
        return params.num_bits == 8
    if params.index_type in ("IVF_SQ", "IVF_FLAT"):
        return True
    if params.index_type in ("IVF_HNSW_FLAT", "IVF_HNSW_SQ"):
        return True
    return params.index_type == "IVF_RQ" and params.metric in ("l2", "cosine")


class PrecomputedEngine(Engine):
    name = "precomputed"

    def refuses(self, params) -> str | None:
        if writes_codes(params):
            return None
        return (f"engine='precomputed' needs an 8-bit PQ index type (IVF_PQ or IVF_HNSW_PQ), IVF_FLAT, IVF_SQ, "
                f"IVF_HNSW_FLAT, IVF_HNSW_SQ, or IVF_RQ under l2 or cosine; Lance encodes {params.index_type} "
                f"({params.metric}) itself")

    def build_segment(self, plan, task, model, storage_options=None, options=None, upstream=None) -> SegmentResult:
        seg = SegmentTask(plan, task, model, storage_options)
        params = plan.params
        writes_files = params.index_type in ("IVF_PQ", "IVF_RQ", "IVF_SQ", "IVF_FLAT") + HNSW_WRITTEN
        if params.index_type == "IVF_HNSW_PQ" and plan.builds_graphs(task):
            # ours unless Lance's graphs are the cheaper (or the only) ones
            writes_files = not graphs_left_to_lance(params, seg.num_rows, plan.dimension)
        write = _write_segment if writes_files else _hand_off_codes
        index, assigner = write(seg)
        return seg.result(index, assigner=assigner)


def _hand_off_codes(seg: SegmentTask):
    """Encode the rows here and hand Lance the codes (IVF_HNSW_PQ: Lance builds the graphs);
    returns the segment's Index and the encoder's partition assigner."""
    params = seg.plan.params
    encoder = PQEncoder(seg.model.ivf_centroids, seg.model.pq_codebook, params.metric, seg.model.coarse_index)
    batches = (shuffle_buffer_batch(rid, *encoder.encode(x)) for x, rid in seg.valid_rows())
    return seg.hand_off("codes", shuffle_buffer_schema(encoder.num_sub_vectors), batches,
                        shuffle_buffer_inputs), encoder.assigner


def _write_segment(seg: SegmentTask):
    """Encode the rows here and write the IVF_PQ, IVF_SQ, IVF_FLAT or IVF_RQ segment's files;
    returns its Index and the encoder's partition assigner.

    The task holds its rows' codes until it writes them grouped by partition, so
    its memory grows with its rows: 28 bytes a row for IVF_PQ with 16 sub-vectors
    (4 of partition, 8 of row id, 16 of codes), 12 + d for IVF_SQ, 12 + 4d for IVF_FLAT
    (these two planned by those bytes: :data:`dask_lance_index.plan.FLAT_TASK_BYTES`), 112 for IVF_RQ at 128-d and 5 bits
    (16 of sign bits, 64 of ex-codes, 20 of factors): 56 and 224 MB for the
    default 2M-row task. The one task of an IVF_HNSW_FLAT or IVF_HNSW_SQ segment holds at
    most :data:`SPILL_CHUNK_BYTES` of them past that, spilling the rest to its disk
    (:func:`spills`).

    Where the host has idle worker threads (the build's one task, or its last:
    :func:`_spare_threads`), the batches after the first are also encoded in those, each
    thread with its own copy of the encoder (``spawn``: IVF_FLAT, IVF_SQ, IVF_PQ and the
    HNSW types that hold their rows; not IVF_RQ, whose encoder calibrates on its first
    batch), while this thread reads the next: the same codes, in the same rows. 1M x 128
    rows, IVF_FLAT, in a worker of a 2-worker LocalCluster: read and encoded in 0.81-0.96 s
    with the other worker's thread, against 1.30-1.70 s in one (docs/benchmarks.md).

    An IVF_FLAT or IVF_SQ segment's stored rows are held in huge pages, each batch's rows
    sorted by partition, and given back to the kernel as the file is written, for its page
    cache to reuse (``ordered``, below): the 1M-row IVF_FLAT benchmark's build stage took
    0.38-0.47 s less, three pairs of runs (docs/benchmarks.md, "IVF_FLAT").
    """
    model, params = seg.model, seg.plan.params
    centroids = np.asarray(model.ivf_centroids, dtype=np.float32)
    # an HNSW segment a merge of this build reads is written as its storage only (plan.graphs_at_merge)
    graphs = seg.plan.builds_graphs(seg.task)
    bound = seg.num_rows
    runs = None
    if graphs and spills(params, seg.num_rows, centroids.shape[1]):
        # the rows go to disk a chunk at a time, sorted by partition (storage.PartitionRuns)
        bound = min(bound, max(SCAN_BATCH_ROWS, SPILL_CHUNK_BYTES // held_row_bytes(params.index_type, centroids.shape[1])))
        runs = PartitionRuns(len(centroids))
    direct = {}  # columns the encoder writes into in place, rows [at, at + len(x))
    # An IVF_FLAT or IVF_SQ segment (or an HNSW one written as storage only) keeps each
    # batch's rows sorted by partition, so the file's writer takes every batch's rows front
    # to back and gives back the whole pages it has copied out (runtime.give_back), which
    # the file's page cache then reuses. The stored rows are held in huge pages for that:
    # freed 2 MB at a time, they come back to the page cache warm, where small pages did not
    # (docs/benchmarks.md, "IVF_FLAT"). Rows of one partition keep their order: the same file.
    ordered = runs is None and not graphs and (params.quantizer == "SQ" or params.index_type in ("IVF_FLAT", "IVF_HNSW_FLAT"))
    values_pages = contextlib.nullcontext if ordered else small_pages
    local = threading.local()  # each thread's encoder (and, ordered IVF_FLAT, its rows' buffer)
    if params.quantizer == "PQ":
        encoder = PQEncoder(centroids, model.pq_codebook, params.metric, model.coarse_index)

        def encode(enc, x, at):
            parts, codes, loss = enc.encode(x, with_loss=True)
            return {"part_ids": parts, "codes": codes}, loss
    elif params.index_type in ("IVF_FLAT", "IVF_HNSW_FLAT"):
        encoder = FlatEncoder(centroids, params.metric, model.coarse_index)
        # 4d bytes a row: the encoder writes the stored rows straight into the task's array
        with values_pages():
            direct["codes"] = np.empty((bound, centroids.shape[1]), np.float32)

        def encode(enc, x, at):
            if ordered:  # into this thread's buffer, then sorted into the task's array
                if not hasattr(local, "rows") or len(local.rows) < len(x):
                    local.rows = np.empty((len(x), centroids.shape[1]), np.float32)
                parts, rows, loss = enc.encode(x, out=local.rows[: len(x)])
                return {"part_ids": parts, "codes": rows}, loss
            parts, _, loss = enc.encode(x, out=direct["codes"][at : at + len(x)])
            return {"part_ids": parts}, loss
    elif params.quantizer == "SQ":
        encoder = SQEncoder(centroids, model.sq_bounds, params.metric, model.coarse_index, params.num_bits)

        def encode(enc, x, at):
            parts, codes, loss = enc.encode(x)
            return {"part_ids": parts, "codes": codes}, loss
    else:
        encoder = RQEncoder(centroids, RQRotation.from_json(model.rabitq_model), params.metric, params.num_bits,
                            coarse=model.coarse_index)

        def encode(enc, x, at):
            out = enc.encode(x)
            return out, out.pop("loss")

    # One array per column, sized by the fragments' rows (an upper bound of the valid
    # rows; or a spilled chunk's) and filled batch by batch: no second copy when the task ends.
    # These arrays, and the copies the writers make, are fresh memory touched once: made
    # without transparent huge pages (runtime.malloc: a fresh 512 MB array took 0.04 s or,
    # when the kernel had to compact memory for its huge pages, 1.1-1.8 s to fill, against
    # 0.20-0.27 s with small pages), but for the stored rows of an ordered segment (above).
    codes, losses, n, starts = {}, [], 0, []  # starts: each batch's first row (ordered)
    with small_pages():
        row_ids = np.empty(bound, np.uint64)

    def store(out: dict, at: int) -> None:
        """A batch's encoded columns into the task's arrays at row ``at`` (sorted by partition
        if ``ordered``: its row ids with them)."""
        count = len(out["part_ids"])
        held = {**codes, **direct}
        if ordered:
            order = np.argsort(out["part_ids"], kind="stable")
            row_ids[at : at + count] = row_ids[at : at + count][order]
            for k, v in out.items():
                np.take(v, order, axis=0, out=held[k][at : at + count], mode="clip")
        else:
            for k, v in out.items():
                held[k][at : at + count] = v

    def spill(n: int) -> None:
        held = {**codes, **direct}
        runs.add(held["part_ids"][:n], {"_rowid": row_ids[:n], "values": held["codes"][:n]})

    # The batches after the first are encoded in the host's idle worker threads too, each
    # with its own copy of the encoder (its buffers), into the task's arrays at their rows.
    spawned = []

    def place(item) -> None:
        i, x, at = item
        if not hasattr(local, "encoder"):
            local.encoder = encoder if threading.current_thread() is main else encoder.spawn()
            if local.encoder is not encoder:
                spawned.append(local.encoder)
        out, losses[i] = encode(local.encoder, x, at)
        store(out, at)

    main = threading.current_thread()
    streamed = runs is None and hasattr(encoder, "spawn")
    spare = _spare_threads(seg.plan.num_tasks) if streamed else (lambda: 0)

    def batches():
        nonlocal n
        # A task with no row to index writes its (empty) files too: a merge concatenates
        # only segments written here (Lance's own empty segment has another schema, and
        # for SQ other bounds: the merged index found nothing, or the wrong rows). The
        # empty batch after the rows makes the columns when no batch did.
        empty = [(np.empty((0, centroids.shape[1]), np.float32), np.empty(0, np.uint64))]
        for x, rid in itertools.chain(seg.valid_rows(), empty):
            if len(rid) == 0 and codes:
                continue
            if runs is not None and n + len(rid) > bound:
                spill(n)
                n = 0
            losses.append(0.0)
            item = (len(losses) - 1, x, n)
            if len(rid):
                starts.append(n)
            row_ids[n : n + len(rid)] = rid
            n += len(rid)
            if not codes:  # the first batch here: its columns' arrays made from its codes
                out, losses[0] = encode(encoder, x, 0)
                for k, v in out.items():
                    if k not in direct:
                        with values_pages() if k == "codes" else small_pages():
                            codes[k] = np.empty((bound,) + v.shape[1:], v.dtype)
                store(out, 0)
                continue
            yield item

    try:  # the runs, if any, removed however the task ends
        run_streamed(place, batches(), spare)
        for other in spawned:
            encoder.assigner.absorb(other.assigner)
        loss = sum(losses)  # in the batches' order, whichever thread encoded them
        if runs is not None:
            spill(n)
            codes, held_ids, part_ids = {"runs": runs}, None, None
        else:
            codes = {k: v[:n] for k, v in {**codes, **direct}.items()}
            held_ids, part_ids = row_ids[:n], codes.pop("part_ids")
        # Lance stores a segment over the whole dataset as a full index (PQ codes
        # transposed, RaBitQ sign bits packed) and a partial one row-major: do as it does.
        whole = {f.fragment_id for f in seg.ds.get_fragments()} == set(seg.fragment_ids)
        common = dict(row_ids=held_ids, part_ids=part_ids, centroids=centroids, metric=params.metric,
                      loss=loss, storage_options=seg.storage_options)
        if ordered and n:  # nothing reads the stored rows once written: their pages go back as it writes
            stored = codes["codes"]
            common.update(runs=starts, written=lambda start, stop: give_back(stored, start, stop))
        with small_pages():
            files = _write_files(seg, codes, common, whole, graphs)
    finally:
        if runs is not None:
            runs.close()
    return _segment(seg, files, graphs), encoder.assigner


def _spare_threads(num_tasks: int) -> Callable[[], int]:
    """How many threads besides its own a build task may encode its batches in: in a dask
    worker, the idle worker threads of its host (:class:`~dask_lance_index.runtime.SpareThreads`:
    the build's one task, or its last); without a cluster, the other cores this process may
    use where the build is one task (dask's scheduler then runs nothing else), else none."""
    client = worker_client_or_none()
    if client is not None:
        return SpareThreads(client, get_worker().address).spare
    cores = host_cores() - 1 if num_tasks == 1 else 0
    return lambda: cores


def _segment(seg: SegmentTask, files: list, graphs: bool):
    """The written segment's Index (of the storage type where written without ``graphs``)."""
    plan, params = seg.plan, seg.plan.params
    return segment_index(seg.ds, index_uuid=seg.uuid, name=plan.name, column=plan.column,
                         fragment_ids=seg.fragment_ids, quantizer=params.quantizer or "FLAT", metric=params.metric,
                         num_bits=params.num_bits, num_sub_vectors=params.num_sub_vectors, files=files,
                         storage_options=seg.storage_options,
                         hnsw=_hnsw_settings(params) if graphs and params.index_type in HNSW_WRITTEN else None)


def _partition_graphs(plan, slot: int) -> PartitionGraphs:
    """The graphs of the HNSW segment of ``slot`` (a build task's, or a merge's:
    :attr:`~dask_lance_index.plan.IndexPlan.graphs_at_merge`)."""
    params = plan.params
    m, ef_construction, max_level = _hnsw_settings(params)
    # under dot a node's candidates are its ef_construction largest products (model.hnsw)
    dot = params.metric == "dot"
    return PartitionGraphs(m=m, max_level=max_level, seed=plan.graph_seed(slot), metric="dot" if dot else "l2",
                           candidates=ef_construction if dot else min(ef_construction, HNSW_CANDIDATES))


@dataclass(frozen=True)
class GraphsAtMerge:
    """The graphs of a merged HNSW segment (:attr:`~dask_lance_index.plan.IndexPlan.graphs_at_merge`):
    a picklable callable the merge task is given (``MergeSegments(graphs=...)``), called
    with ``(plan, slot, uuid, storage_options)`` once the storage-only inputs are
    concatenated into segment ``uuid``; builds and writes every partition's graph (as graph
    tasks on every worker of the cluster: the final merges are the build's last tasks, and
    several of them share the workers), and returns the segment's files and HNSW settings."""

    def __call__(self, plan, slot: int, uuid: str, storage_options: dict | None = None) -> tuple[list, tuple]:
        settings = _hnsw_settings(plan.params)
        build_graphs = _partition_graphs(plan, slot).builder(fan_out=True)
        files = add_hnsw_graphs(plan.uri, uuid, index_type=plan.params.index_type, m=settings[0],
                                ef_construction=settings[1], max_level=settings[2], build_graphs=build_graphs,
                                storage_options=storage_options)
        return files, settings


def _write_files(seg: SegmentTask, codes: dict, common: dict, whole: bool, graphs: bool) -> list:
    """Write the segment's files from the task's codes (``{"runs": PartitionRuns}`` when
    an HNSW segment's rows were spilled); without ``graphs``, an HNSW segment's storage
    only, as its storage type's segment. Returns their names."""
    plan, model, params = seg.plan, seg.model, seg.plan.params
    if params.index_type in HNSW_WRITTEN and graphs:
        m, ef_construction, max_level = _hnsw_settings(params)
        # the graphs as tasks on every worker only when no other build task shares the cluster
        build_graphs = _partition_graphs(plan, seg.task).builder(fan_out=plan.num_tasks == 1)
        return write_hnsw_segment(plan.uri, seg.uuid, index_type=params.index_type, values=codes.get("codes"),
                                  runs=codes.get("runs"),
                                  m=m, ef_construction=ef_construction, max_level=max_level,
                                  build_graphs=build_graphs, bounds=model.sq_bounds, num_bits=params.num_bits or 8,
                                  codebook=model.pq_codebook, transposed=whole, **common)
    if params.quantizer == "PQ":
        return write_pq_segment(plan.uri, seg.uuid, codes=codes["codes"], codebook=model.pq_codebook,
                                transposed=whole, **common)
    if params.index_type in ("IVF_FLAT", "IVF_HNSW_FLAT"):
        return write_flat_segment(plan.uri, seg.uuid, vectors=codes["codes"], **common)
    if params.quantizer == "SQ":
        return write_sq_segment(plan.uri, seg.uuid, codes=codes["codes"], bounds=model.sq_bounds,
                                num_bits=params.num_bits, **common)
    return write_rq_segment(plan.uri, seg.uuid, binary=codes.pop("binary"), ex_codes=codes.pop("ex", None),
                            factors=codes, model=model.rabitq_model, num_bits=params.num_bits, packed=whole, **common)
