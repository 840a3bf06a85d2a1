"""Lance's segment files: IVF_PQ, IVF_RQ, IVF_SQ and IVF_FLAT segments written from codes computed with NumPy.

Lance's ``create_index_uncommitted`` costs 0.6-0.7 s per million rows to turn
precomputed PQ codes into a segment (after we write them to a scratch dataset
it reads back), and takes no RaBitQ codes at all: it rotates and quantises
every IVF_RQ row itself, at 12.6-15 s per million rows (``docs/lance.md``).
This module writes the two files it would write for one segment, laid out as
Lance lays them out (read back and pinned by ``tests/test_segment_write.py``
against segments Lance built), and returns the ``lance.dataset.Index`` that
Lance's merge and commit take (the layout is described in ``docs/lance.md``):

``_indices/<uuid>/auxiliary.idx``
    one row per indexed row, grouped by partition in partition order, each
    partition's rows in the order given: ``_rowid`` and the codes. IVF_PQ:
    ``__pq_code``; IVF_RQ: ``_rabit_codes`` (sign bits), ``__add_factors``,
    ``__scale_factors``, ``__error_factors`` and, for ``num_bits > 1``,
    ``__blocked_ex_codes``, ``__add_factors_ex``, ``__scale_factors_ex``.
    Schema metadata: ``distance_type``, ``storage_metadata`` (the quantizer
    as JSON) and ``lance:ivf`` (the global buffer holding the IVF protobuf:
    partition offsets and lengths); IVF_PQ keeps its codebook in a second
    global buffer.
``_indices/<uuid>/index.idx``
    no rows; schema metadata ``lance:index``, ``lance:flat`` and ``lance:ivf``
    (IVF protobuf with the centroids and the loss).

A segment over every fragment of the dataset is stored as Lance stores a full
index: PQ codes transposed per partition, RaBitQ sign bits in fast-scan blocks
(``"transposed"`` / ``"packed"`` true). A partial segment keeps them row-major,
and Lance's merge converts them.

The codes come from :mod:`dask_lance_index.model.pq` and
:mod:`dask_lance_index.model.rabitq_encoder`; :mod:`.rq_layout` holds the
RaBitQ code layouts. :func:`read_rq_segment` reads an IVF_RQ segment back. An
``auxiliary.idx`` on a local disk is written by :class:`~.lance_file.PlainFileWriter`
straight from the task's arrays (the same file, without Lance's copies;
:data:`LANCE_FILE_WRITER_ENV` set in the environment turns that off); ``index.idx``, and
every file on an object store, through Lance's ``LanceFileWriter``.
"""

from __future__ import annotations

import datetime
import json
import os
import struct
from typing import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from lance.bitmap import Bitmap
from lance.dataset import Index, IndexFile
from lance.file import LanceFileReader, LanceFileWriter

from ..errors import InvalidInputError
from . import protobuf as pb
from .files import filesystem, is_local
from .lance_file import PlainFileWriter, plain_columns
from .rq_layout import pack_lance_codes, unpack_lance_codes
from .segments import index_dir

__all__ = ["PQ_CODE_COLUMN", "RQSegment", "index_details", "ivf_message", "partition_offsets", "read_rq_segment",
           "segment_index", "transposed_by_partition", "write_pq_segment", "write_row_major_runs", "write_rq_segment"]

INDEX_DETAILS_TYPE = "/lance.index.pb.VectorIndexDetails"
PQ_CODE_COLUMN = "__pq_code"  # Lance's column of PQ codes, in its index files and shuffle buffers
_FLOAT32 = 2  # lance.index.pb.TensorDataType.FLOAT32
# Bytes per written batch. The batch's reordered copies (and Lance's own copies of them)
# stay well below runtime.malloc's 32 MB mmap threshold, so the heap hands the same memory back
# batch after batch. At 65,536 rows of 128-d (32 MB) every batch was a fresh mmap: writing
# 1M IVF_FLAT rows in one process faulted in 250k pages and took 0.90-1.93 s, against
# 0.40-0.71 s in 16,384-row batches (8 MB); the cluster's 1M-row build task wrote its
# files in 0.99-1.34 s against 1.44-1.94 s (docs/benchmarks.md).
_WRITE_BYTES = 8 << 20
# The Lance file format of auxiliary.idx, the file holding every indexed row's codes. Lance
# writes 2.2 and reads any version. 2.0 stores fixed-width columns as plain pages: writing 1M
# IVF_FLAT rows at 128-d (490 MB) took 0.23-0.44 s in 2.0 and 0.80-1.44 s in 2.2, whose
# structural encoding costs CPU per value, and queries were as fast (docs/benchmarks.md).
AUX_FILE_VERSION = "2.0"
# lance.index.pb.VectorMetricType; l2 is the protobuf default, which is not written
_METRIC_TYPE = {"l2": 0, "cosine": 1, "dot": 2}
# the Index.index_version Lance gives a segment it writes, per quantizer (pylance 14.0.2)
# The aux file's global buffer holding a PQ codebook (the IVF message is the first).
PQ_CODEBOOK_POSITION = 2

# Set (to anything) in a worker's environment: every auxiliary.idx through Lance's LanceFileWriter
# too, as before storage.lance_file (a way back, and benchmarks/bench_flat_task.py's comparison).
LANCE_FILE_WRITER_ENV = "DASK_LANCE_INDEX_LANCE_FILE_WRITER"
_INDEX_VERSION = {"PQ": 1, "RQ": 2, "SQ": 1, "FLAT": 1}


def _tensor(array: np.ndarray, shape) -> bytes:
    """``lance.index.pb.Tensor``: float32 data type (1), shape (2), raw little-endian data (3)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return pb.uint_field(1, _FLOAT32) + pb.field(2, pb.packed(shape)) + pb.field(3, data.tobytes())


def partition_offsets(lengths) -> np.ndarray:
    """Where each partition's rows start in a file holding them partition after partition. Pure."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]]).astype(np.int64)


def ivf_message(lengths, centroids: np.ndarray | None = None, loss: float | None = None) -> bytes:
    """Lance's ``lance.index.pb.IVF`` message for rows stored partition after partition:
    packed offsets (2) and lengths (3), the centroids as a Tensor (4) and the loss (5, a
    double)."""
    msg = pb.field(2, pb.packed(partition_offsets(lengths))) + pb.field(3, pb.packed(lengths))
    if centroids is not None:
        msg += pb.field(4, _tensor(centroids, np.shape(centroids)))
    if loss is not None:
        msg += pb.varint(5 << 3 | 1) + struct.pack("<d", float(loss))
    return msg


def index_details(quantizer: str, metric: str, num_bits: int, num_sub_vectors: int | None = None,
                  hnsw: tuple[int, int, int] | None = None) -> tuple[str, bytes]:
    """``Index.index_details`` as Lance records it: VectorIndexDetails with the metric
    (field 1; Lance's refine step reads it: without it a cosine index is re-ranked by
    raw l2), for the HNSW types the graph's ``(m, ef_construction, max_level)`` (field 3),
    and the compression: PQ (field 4: ``num_bits``, ``num_sub_vectors``) or
    RaBitQ (field 6: ``num_bits``). Lance appends its build parameters (field 9), which
    are informational and left out here."""
    metric_type = _METRIC_TYPE[metric]
    head = pb.uint_field(1, metric_type) if metric_type else b""
    if hnsw is not None:
        head += pb.field(3, b"".join(pb.uint_field(i + 1, v) for i, v in enumerate(hnsw)))
    if quantizer == "PQ":
        body = pb.field(4, pb.uint_field(1, num_bits) + pb.uint_field(2, num_sub_vectors))
    elif quantizer == "SQ":
        body = pb.field(5, pb.uint_field(1, num_bits))
    elif quantizer == "FLAT":
        body = pb.field(8, b"")
    else:
        body = pb.field(6, pb.uint_field(1, num_bits))
    return INDEX_DETAILS_TYPE, head + body


def _segment_dir(dataset_uri: str, index_uuid: str) -> str:
    base = index_dir(dataset_uri, index_uuid)
    if is_local(base):
        base = base.removeprefix("file://")
        os.makedirs(base, exist_ok=True)
    return base


def _partition_order(part_ids: np.ndarray, num_partitions: int):
    """Rows grouped by partition (stable), the partition lengths and offsets."""
    order = np.argsort(part_ids, kind="stable")
    lengths = np.bincount(part_ids, minlength=num_partitions)
    return order, lengths, partition_offsets(lengths)


def _batch_rows(row_bytes: int) -> int:
    """Rows of a written batch of about :data:`_WRITE_BYTES`."""
    return max(1024, _WRITE_BYTES // max(row_bytes, 1))


def _in_order(order: np.ndarray, reordered: dict, gathered: dict,
              copied: Callable[[np.ndarray], object] | None = None) -> Iterator[dict]:
    """Batches of about :data:`_WRITE_BYTES` of the columns in ``order``: ``reordered`` ones are
    already in that order (full length), ``gathered`` ones are taken through it a slice at a time.
    ``copied`` is called with each slice of ``order`` once its rows are taken (copies)."""
    rows = _batch_rows(sum(np.asarray(v).dtype.itemsize * int(np.prod(np.shape(v)[1:]))
                           for v in (*reordered.values(), *gathered.values())))
    for lo in range(0, len(order), rows):
        take = order[lo : lo + rows]
        cols = {k: v[lo : lo + len(take)] for k, v in reordered.items()}
        cols.update({k: np.asarray(v)[take] for k, v in gathered.items()})
        if copied is not None:
            copied(take)
        yield cols


# Rows of a run handed to ``written`` at a time (or the run's last): fewer, larger calls.
_WRITTEN_ROWS = 512


def _runs_copied(part_ids: np.ndarray, runs, written: Callable[[int, int], object]) -> Callable[[np.ndarray], None]:
    """For :func:`_in_order`: tells ``written(start, stop)`` which rows of each run no later
    batch reads. ``runs``: the first row of each run, every run's rows sorted by partition,
    so the stable partition order takes a run's rows front to back (checked here: were a
    run out of order, rows still to be written would be handed back)."""
    starts = np.asarray(runs, dtype=np.int64)
    ends = np.append(starts[1:], len(part_ids))
    if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) < 0):
        raise ValueError(f"runs must start at row 0 and ascend: {starts[:8].tolist()}...")
    falls = np.flatnonzero(np.diff(np.asarray(part_ids, dtype=np.int64)) < 0) + 1  # where the partition id drops
    if not np.isin(falls, starts).all():
        raise ValueError("each run's rows must be sorted by partition id to be handed back as written")
    taken = np.zeros(len(starts), np.int64)  # rows of each run taken so far: a prefix of it
    given = np.zeros(len(starts), np.int64)  # ... and already handed to ``written``

    def copied(take: np.ndarray) -> None:
        taken[:] += np.bincount(np.searchsorted(starts, take, side="right") - 1, minlength=len(starts))
        due = np.flatnonzero((taken - given >= _WRITTEN_ROWS) | ((taken > given) & (starts + taken == ends)))
        for r in due:
            written(int(starts[r] + given[r]), int(starts[r] + taken[r]))
        given[due] = taken[due]

    return copied


def _write_aux(base: str, schema, batches: Iterable[dict], *, ivf: bytes, extra_buffers: list, metric: str,
               quantizer_json: str, storage_options) -> None:
    """``auxiliary.idx`` from ``batches`` of its columns (NumPy arrays by name), in order."""
    def column(name, values):
        field = schema.field(name)
        if pa.types.is_fixed_size_list(field.type):
            return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), field.type.list_size)
        return pa.array(values, type=field.type)

    aux = LanceFileWriter(f"{base}/auxiliary.idx", schema, version=AUX_FILE_VERSION, storage_options=storage_options)
    for cols in batches:
        aux.write_batch(pa.record_batch([column(name, cols[name]) for name in schema.names], schema=schema))
    _close_aux(aux, ivf=ivf, extra_buffers=extra_buffers, metric=metric, quantizer_json=quantizer_json)


def _close_aux(aux, *, ivf: bytes, extra_buffers: list, metric: str, quantizer_json: str) -> None:
    """The global buffers and schema metadata of ``auxiliary.idx``, and close it (``aux``: a
    ``LanceFileWriter`` or a :class:`~.lance_file.PlainFileWriter`)."""
    pos = aux.add_global_buffer(ivf)
    for buffer in extra_buffers:
        aux.add_global_buffer(buffer)
    aux.add_schema_metadata("distance_type", metric)
    aux.add_schema_metadata("storage_metadata", json.dumps([quantizer_json]))
    aux.add_schema_metadata("lance:ivf", str(pos))
    aux.close()


# Bytes of a contiguous piece of a column on average, at the least, for the partition order's
# pieces to be written straight from it (_plain_pieces); fewer (many partitions, narrow
# columns such as row ids and factors): copied out in partition order a batch at a time.
_PIECE_BYTES = 4096


def _write_aux_in_order(base: str, schema, order: np.ndarray, reordered: dict, gathered: dict, *, ivf: bytes,
                        extra_buffers: list, metric: str, quantizer_json: str, storage_options,
                        copied: tuple[str, Callable[[np.ndarray], object]] | None = None) -> None:
    """``auxiliary.idx`` of the columns in ``order``: ``reordered`` ones already in it (full
    length), ``gathered`` ones taken through it (:func:`_in_order`). On a local disk, for
    columns :class:`~.lance_file.PlainFileWriter` writes, straight from the arrays with it
    (unless :data:`LANCE_FILE_WRITER_ENV` is set); else through Lance's writer. ``copied``:
    (a gathered column, the callback told which of its rows are written)."""
    columns = plain_columns(schema)
    if not (is_local(base) and len(order) and columns) or os.environ.get(LANCE_FILE_WRITER_ENV):
        batches = _in_order(order, reordered, gathered, None if copied is None else copied[1])
        _write_aux(base, schema, batches, ivf=ivf, extra_buffers=extra_buffers, metric=metric,
                   quantizer_json=quantizer_json, storage_options=storage_options)
        return
    with PlainFileWriter(f"{base}/auxiliary.idx", columns, len(order)) as aux:
        # the widest columns first: their rows are the ones a build task gives back as written
        for i in sorted(range(len(columns)), key=lambda i: -columns[i].row_bytes):
            name, dtype = columns[i].name, columns[i].dtype
            if name in reordered:
                aux.write_column(i, [np.ascontiguousarray(reordered[name], dtype=dtype)])
            else:
                told = copied[1] if copied is not None and copied[0] == name else None
                aux.write_column(i, *_plain_pieces(order, np.ascontiguousarray(gathered[name], dtype=dtype), told))
        _close_aux(aux, ivf=ivf, extra_buffers=extra_buffers, metric=metric, quantizer_json=quantizer_json)


def _plain_pieces(order: np.ndarray, values: np.ndarray, copied: Callable[[np.ndarray], object] | None):
    """``values`` in ``order``, as pieces for :meth:`~.lance_file.PlainFileWriter.write_column`,
    and its ``written`` callback telling ``copied`` which rows are written."""
    n = len(order)
    row_bytes = values.dtype.itemsize * int(np.prod(values.shape[1:]))
    cuts = np.flatnonzero(np.diff(order) != 1) + 1  # where ``order`` stops running through consecutive rows
    if (len(cuts) + 1) * _PIECE_BYTES <= n * row_bytes:  # straight from ``values``, a run of consecutive rows a piece
        ends = np.append(cuts, n)
        firsts = order[np.append(0, cuts)]
        pieces = (values[f : f + (e - b)] for f, b, e in zip(firsts.tolist(), np.append(0, cuts).tolist(),
                                                              ends.tolist()))
    else:  # each piece a copy of a batch's rows (fresh: the writer holds several at once)
        rows = _batch_rows(row_bytes)
        ends = np.minimum(np.arange(rows, n + rows, rows), n)
        pieces = (values[order[lo : lo + rows]] for lo in range(0, n, rows))
    done = [0]

    def written(k: int) -> None:
        stop = int(ends[k - 1])
        if copied is not None and stop > done[0]:
            copied(order[done[0] : stop])
        done[0] = stop

    return pieces, written


def _write_index_file(base: str, index_type: str, metric: str, centroids: np.ndarray, loss: float,
                      storage_options) -> None:
    """``index.idx``: no rows; the centroids and loss in an IVF protobuf with zero lengths."""
    num_partitions = len(centroids)
    flat_schema = pa.schema([pa.field("__flat_marker", pa.uint64(), nullable=False)])
    idx = LanceFileWriter(f"{base}/index.idx", flat_schema, version="2.2", storage_options=storage_options)
    zeros = [0] * num_partitions
    pos = idx.add_global_buffer(ivf_message(zeros, centroids, loss))
    idx.add_schema_metadata("lance:index", json.dumps({"type": index_type, "distance_type": metric}, separators=(",", ":")))
    idx.add_schema_metadata("lance:flat", json.dumps([""] * num_partitions, separators=(",", ":")))
    idx.add_schema_metadata("lance:ivf", str(pos))
    idx.close()


def write_pq_segment(
    dataset_uri: str,
    index_uuid: str,
    *,
    row_ids: np.ndarray,
    part_ids: np.ndarray,
    codes: np.ndarray,
    codebook: np.ndarray,
    centroids: np.ndarray,
    metric: str,
    loss: float,
    transposed: bool = False,
    storage_options: dict | None = None,
) -> list:
    """Write one IVF_PQ segment's files; returns the file names.

    ``codes``: ``(n, num_sub_vectors)`` uint8 PQ codes; ``codebook``:
    ``(num_sub_vectors, 256, d / num_sub_vectors)``. ``transposed``: store each
    partition's codes transposed, as Lance does for a segment over every
    fragment of the dataset.
    """
    centroids = np.asarray(centroids, dtype=np.float32)
    base = _segment_dir(dataset_uri, index_uuid)
    write_pq_storage(base, codes, codebook, row_ids=row_ids, part_ids=part_ids, num_partitions=len(centroids),
                     metric=metric, transposed=transposed, storage_options=storage_options)
    _write_index_file(base, "IVF_PQ", metric, centroids, loss, storage_options)
    return ["auxiliary.idx", "index.idx"]


def write_pq_storage(base: str, codes: np.ndarray, codebook: np.ndarray, *, row_ids, part_ids, num_partitions: int,
                     metric: str, transposed: bool, storage_options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write the ``auxiliary.idx`` of a PQ segment (IVF_PQ, IVF_HNSW_PQ: the same file),
    ``_rowid`` and ``__pq_code`` grouped by partition, each partition's ``(rows, m)`` codes
    stored as ``(m, rows)`` when ``transposed``; returns the partition order, lengths and
    offsets it wrote them in."""
    codebook = np.asarray(codebook, dtype=np.float32)
    num_sub_vectors, num_codes, sub_dim = codebook.shape
    order, lengths, offsets = _partition_order(np.asarray(part_ids), num_partitions)
    stored = np.asarray(codes, dtype=np.uint8)[order]
    if transposed:
        stored = transposed_by_partition(stored, lengths)
    schema = pa.schema([("_rowid", pa.uint64()), (PQ_CODE_COLUMN, pa.list_(pa.uint8(), num_sub_vectors))])
    quantizer = {
        "codebook_position": PQ_CODEBOOK_POSITION, "nbits": int(np.log2(num_codes)),
        "num_sub_vectors": num_sub_vectors, "dimension": num_sub_vectors * sub_dim, "codebook_tensor": [],
        "transposed": bool(transposed),
    }
    _write_aux_in_order(
        base, schema, order, {PQ_CODE_COLUMN: stored}, {"_rowid": np.asarray(row_ids, dtype=np.uint64)},
        ivf=ivf_message(lengths),
        # the codebook as Lance stores it: [sub-vector][code][sub-dim] data under a (codes, d) shape
        extra_buffers=[_tensor(codebook, (num_codes, num_sub_vectors * sub_dim))],
        metric=metric, quantizer_json=json.dumps(quantizer, separators=(",", ":")),
        storage_options=storage_options,
    )
    return order, lengths, offsets


def transposed_by_partition(codes: np.ndarray, lengths) -> np.ndarray:
    """``(n, m)`` PQ codes grouped by partition, each partition's ``(rows, m)`` block
    stored as ``(m, rows)``, as Lance stores a full index: the same shape, new bytes."""
    m = codes.shape[1]
    flat = np.empty(codes.size, dtype=np.uint8)
    start = 0
    for n in lengths:
        n = int(n)
        flat[start * m : (start + n) * m] = codes[start : start + n].T.reshape(-1)
        start += n
    return flat.reshape(-1, m)


def read_pq_codebook(reader, num_sub_vectors: int) -> np.ndarray:
    """The ``(num_sub_vectors, codes, d / num_sub_vectors)`` codebook of a PQ segment's
    ``auxiliary.idx`` (an open ``LanceFileReader``): its Tensor's raw data (field 3)."""
    tensor = _read_tensor(bytes(reader.read_global_buffer(PQ_CODEBOOK_POSITION)))  # (codes, d)
    codes, dimension = tensor.shape
    return tensor.reshape(num_sub_vectors, codes, dimension // num_sub_vectors)


def row_major_storage(index_type: str, dimension: int, *, bounds: tuple[float, float] | None = None,
                      num_bits: int = 8) -> tuple[pa.Field, dict]:
    """The code column and quantizer metadata of a row-major segment's ``auxiliary.idx``:
    SQ types ``__sq_code`` (one byte a dimension, with the shared ``bounds``), FLAT types
    ``flat`` (the vectors, not nullable). Pure."""
    if index_type.endswith("_SQ"):
        return (pa.field("__sq_code", pa.list_(pa.uint8(), dimension)),
                {"dim": dimension, "num_bits": num_bits,
                 "bounds": {"start": float(bounds[0]), "end": float(bounds[1])}})
    return pa.field("flat", pa.list_(pa.float32(), dimension), nullable=False), {"dim": dimension}


def write_row_major_storage(base: str, index_type: str, values: np.ndarray, *, row_ids, part_ids,
                            num_partitions: int, metric: str, bounds: tuple[float, float] | None = None,
                            num_bits: int = 8, storage_options, runs=None,
                            written: Callable[[int, int], object] | None = None,
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write the ``auxiliary.idx`` of a row-major segment (IVF_SQ, IVF_FLAT and their HNSW
    types: :func:`row_major_storage`), ``_rowid`` and ``values`` grouped by partition;
    returns the partition order, lengths and offsets it wrote them in.

    ``runs`` and ``written``: where the rows come in runs each sorted by partition (the first
    row of each), ``written(start, stop)`` is told of the rows of ``values`` no later batch
    reads, as the file is written (a build task gives their memory back:
    :func:`dask_lance_index.runtime.give_back`). The file is the same either way."""
    part_ids = np.asarray(part_ids)
    order, lengths, offsets = _partition_order(part_ids, num_partitions)
    copied = None if runs is None or written is None else _runs_copied(part_ids, runs, written)
    schema, quantizer_json = _row_major_schema(index_type, np.shape(values)[1], bounds=bounds, num_bits=num_bits)
    name = schema.names[1]
    _write_aux_in_order(
        base, schema, order, {}, {"_rowid": np.asarray(row_ids, dtype=np.uint64), name: values},
        ivf=ivf_message(lengths), extra_buffers=[], metric=metric, quantizer_json=quantizer_json,
        storage_options=storage_options, copied=None if copied is None else (name, copied),
    )
    return order, lengths, offsets


def write_row_major_runs(base: str, index_type: str, runs, dimension: int, *, metric: str,
                         bounds: tuple[float, float] | None = None, num_bits: int = 8,
                         storage_options) -> tuple[np.ndarray, np.ndarray]:
    """:func:`write_row_major_storage` from rows spilled in ``runs``
    (:class:`~dask_lance_index.storage.PartitionRuns` of ``_rowid`` and ``values``); the
    same file as from the rows held whole. Returns the partition lengths and offsets."""
    lengths = runs.lengths
    _write_row_major(base, index_type, dimension, runs.batches(_batch_rows(runs.row_bytes)), lengths,
                     metric=metric, bounds=bounds, num_bits=num_bits, storage_options=storage_options)
    return lengths, partition_offsets(lengths)


def _row_major_schema(index_type: str, dimension: int, *, bounds, num_bits: int) -> tuple[pa.Schema, str]:
    """A row-major ``auxiliary.idx``'s schema (``_rowid``, then the stored rows:
    :func:`row_major_storage`) and its quantizer as JSON, whether its rows are held or spilled."""
    field, quantizer = row_major_storage(index_type, dimension, bounds=bounds, num_bits=num_bits)
    return pa.schema([pa.field("_rowid", pa.uint64()), field]), json.dumps(quantizer, separators=(",", ":"))


def _write_row_major(base: str, index_type: str, dimension: int, batches: Iterable[dict], lengths, *,
                     metric: str, bounds, num_bits: int, storage_options) -> None:
    schema, quantizer_json = _row_major_schema(index_type, dimension, bounds=bounds, num_bits=num_bits)
    _write_aux(
        base, schema, ({"_rowid": b["_rowid"], schema.names[1]: b["values"]} for b in batches),
        ivf=ivf_message(lengths), extra_buffers=[], metric=metric, quantizer_json=quantizer_json,
        storage_options=storage_options,
    )


def write_sq_segment(
    dataset_uri: str,
    index_uuid: str,
    *,
    row_ids: np.ndarray,
    part_ids: np.ndarray,
    codes: np.ndarray,
    bounds: tuple[float, float],
    centroids: np.ndarray,
    metric: str,
    loss: float,
    num_bits: int = 8,
    storage_options: dict | None = None,
    runs=None,
    written: Callable[[int, int], object] | None = None,
) -> list:
    """Write one IVF_SQ segment's files; returns the file names.

    ``codes``: ``(n, d)`` uint8 SQ codes made with ``bounds`` (:mod:`dask_lance_index.model.sq`),
    the same for every segment of the index, which is what lets Lance merge them.
    Lance stores SQ codes row-major in whole and partial segments alike. ``runs``,
    ``written``: as :func:`write_row_major_storage`.
    """
    centroids = np.asarray(centroids, dtype=np.float32)
    base = _segment_dir(dataset_uri, index_uuid)
    write_row_major_storage(base, "IVF_SQ", np.asarray(codes, dtype=np.uint8), row_ids=row_ids, part_ids=part_ids,
                            num_partitions=len(centroids), metric=metric, bounds=bounds, num_bits=num_bits,
                            storage_options=storage_options, runs=runs, written=written)
    _write_index_file(base, "IVF_SQ", metric, centroids, loss, storage_options)
    return ["auxiliary.idx", "index.idx"]


def write_flat_segment(
    dataset_uri: str,
    index_uuid: str,
    *,
    row_ids: np.ndarray,
    part_ids: np.ndarray,
    vectors: np.ndarray,
    centroids: np.ndarray,
    metric: str,
    loss: float,
    storage_options: dict | None = None,
    runs=None,
    written: Callable[[int, int], object] | None = None,
) -> list:
    """Write one IVF_FLAT segment's files; returns the file names. ``vectors``: the rows
    as Lance stores them (unit vectors for cosine, raw otherwise), float32. ``runs``,
    ``written``: as :func:`write_row_major_storage`."""
    centroids = np.asarray(centroids, dtype=np.float32)
    base = _segment_dir(dataset_uri, index_uuid)
    write_row_major_storage(base, "IVF_FLAT", np.asarray(vectors, dtype=np.float32), row_ids=row_ids,
                            part_ids=part_ids, num_partitions=len(centroids), metric=metric,
                            storage_options=storage_options, runs=runs, written=written)
    _write_index_file(base, "IVF_FLAT", metric, centroids, loss, storage_options)
    return ["auxiliary.idx", "index.idx"]


def _rq_schema(dimension: int, num_bits: int):
    fields = [
        ("_rowid", pa.uint64()),
        ("_rabit_codes", pa.list_(pa.uint8(), dimension // 8)),
        ("__add_factors", pa.float32()),
        ("__scale_factors", pa.float32()),
        ("__error_factors", pa.float32()),
    ]
    if num_bits > 1:
        ex_bytes = -(-dimension // 64) * 8 * (num_bits - 1)
        fields += [
            ("__blocked_ex_codes", pa.list_(pa.uint8(), ex_bytes)),
            ("__add_factors_ex", pa.float32()),
            ("__scale_factors_ex", pa.float32()),
        ]
    return pa.schema(fields)


def write_rq_segment(
    dataset_uri: str,
    index_uuid: str,
    *,
    row_ids: np.ndarray,
    part_ids: np.ndarray,
    binary: np.ndarray,
    ex_codes: np.ndarray | None,
    factors: dict,
    model: str,
    centroids: np.ndarray,
    metric: str,
    num_bits: int,
    loss: float,
    packed: bool = False,
    storage_options: dict | None = None,
) -> list:
    """Write one IVF_RQ segment's files; returns the file names.

    ``binary``: the sign bits, row-major ``(n, dimension / 8)``; ``ex_codes``: the
    ex-codes in Lance's blocked layout (:func:`.rq_layout.pack_blocked_ex_codes`),
    ``None`` for ``num_bits=1``; ``factors``: the float columns by Lance's names.
    ``packed``: store the sign bits in Lance's fast-scan blocks, as Lance does
    for a segment over every fragment of the dataset.
    """
    centroids = np.asarray(centroids, dtype=np.float32)
    dimension = centroids.shape[1]
    order, lengths, _ = _partition_order(np.asarray(part_ids), len(centroids))
    # The sign bits are small (d / 8 bytes a row): reorder and pack them whole, since
    # a packed block spans 32 rows of one partition. The rest is gathered in slices.
    stored = np.asarray(binary, dtype=np.uint8)[order]
    if packed:
        stored = pack_lance_codes(stored, lengths).reshape(-1, dimension // 8)
    gathered = {"_rowid": np.asarray(row_ids, dtype=np.uint64)}
    names = ["__add_factors", "__scale_factors", "__error_factors"]
    if num_bits > 1:
        names += ["__add_factors_ex", "__scale_factors_ex"]
        gathered["__blocked_ex_codes"] = ex_codes
    gathered.update({k: factors[k] for k in names})
    # the model as Lance re-serialises it, with the layout of the codes
    model_json = json.dumps({**json.loads(model), "packed": bool(packed)}, separators=(",", ":"))
    base = _segment_dir(dataset_uri, index_uuid)
    _write_aux_in_order(
        base, _rq_schema(dimension, num_bits), order, {"_rabit_codes": stored}, gathered,
        ivf=ivf_message(lengths), extra_buffers=[],
        metric=metric, quantizer_json=model_json,
        storage_options=storage_options,
    )
    _write_index_file(base, "IVF_RQ", metric, centroids, loss, storage_options)
    return ["auxiliary.idx", "index.idx"]


def segment_index(ds, *, index_uuid: str, name: str, column: str, fragment_ids, quantizer: str, metric: str,
                  num_bits: int, num_sub_vectors: int | None = None, files: list,
                  storage_options: dict | None = None, hnsw: tuple[int, int, int] | None = None):
    """The ``lance.dataset.Index`` of a segment written here, as ``create_index_uncommitted``
    returns it for the segment it writes (details: :func:`index_details`)."""
    fs, path = filesystem(index_dir(ds.uri, index_uuid), storage_options)
    infos = fs.get_file_info([f"{path}/{f}" for f in files])
    return Index(
        uuid=index_uuid,
        name=name,
        fields=[ds.lance_schema.field(column).id()],
        dataset_version=ds.version,
        fragment_ids=Bitmap(int(f) for f in fragment_ids),
        index_version=_INDEX_VERSION[quantizer],
        created_at=datetime.datetime.now(datetime.timezone.utc),
        base_id=None,
        files=[IndexFile(path=f, size_bytes=info.size) for f, info in zip(files, infos)],
        index_details=index_details(quantizer, metric, num_bits, num_sub_vectors, hnsw),
        covering_fields=[],
    )


# -- reading an IVF_RQ segment back ---------------------------------------------------------
@dataclass(frozen=True)
class RQSegment:
    """What one IVF_RQ segment stores, read back with Lance's file reader.

    ``codes`` are the binary codes in row-major form (unpacked), aligned with
    ``row_ids`` and ``part_ids``; ``lengths`` are the rows per partition.
    """

    model: str
    centroids: np.ndarray  # (num_partitions, dimension) float32, from index.idx
    row_ids: np.ndarray
    part_ids: np.ndarray
    lengths: np.ndarray
    codes: np.ndarray
    stored_codes: np.ndarray  # the code column's bytes exactly as stored
    columns: dict  # the other stored columns (factors, ex-codes) as NumPy arrays


def _ivf_lengths(buf: bytes) -> list[int]:
    """Partition lengths (field 3, packed uint32) of Lance's IVF protobuf message."""
    return [v for chunk in pb.fields(buf).get(3, []) for v in pb.packed_varints(chunk)]


def _ivf_centroids(buf: bytes) -> np.ndarray:
    """Centroids (field 4, a Tensor) of Lance's IVF protobuf message."""
    return _read_tensor(pb.fields(buf)[4][0])


def _read_tensor(buf: bytes) -> np.ndarray:
    """A ``lance.index.pb.Tensor`` (shape field 2, raw little-endian data field 3) as
    float32, in its shape (:func:`_tensor` writes one)."""
    tensor = pb.fields(buf)
    shape = [v for chunk in tensor[2] for v in pb.packed_varints(chunk)]
    data = tensor[3][0]
    width = len(data) // int(np.prod(shape))
    dtype = {2: "<f2", 4: "<f4", 8: "<f8"}[width]
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.float32)


def read_rq_segment(dataset_uri: str, index_uuid: str) -> RQSegment:
    """Read what an IVF_RQ segment stores: its model, IVF centroids (``index.idx``) and, per
    row, the partition, binary codes and other columns (``auxiliary.idx``)."""
    path = os.path.join(str(dataset_uri), "_indices", str(index_uuid), "auxiliary.idx")
    if not os.path.exists(path):
        raise InvalidInputError(f"no IVF_RQ segment file at {path}")
    reader = LanceFileReader(path)
    schema = reader.metadata().schema
    if "_rabit_codes" not in schema.names:
        raise InvalidInputError(
            f"index segment {index_uuid} stores {schema.names}, not RaBitQ codes: it is not an IVF_RQ segment"
        )
    meta = schema.metadata or {}
    lengths = np.array(_ivf_lengths(bytes(reader.read_global_buffer(int(meta[b"lance:ivf"])))), dtype=np.int64)
    index_reader = LanceFileReader(os.path.join(os.path.dirname(path), "index.idx"))
    index_meta = index_reader.metadata().schema.metadata or {}
    centroids = _ivf_centroids(bytes(index_reader.read_global_buffer(int(index_meta[b"lance:ivf"]))))
    model = json.loads(meta[b"storage_metadata"])[0]
    table = reader.read_all().to_table()
    codes_col = table.column("_rabit_codes").combine_chunks()
    code_bytes = codes_col.type.list_size
    stored = codes_col.flatten().to_numpy(zero_copy_only=False).astype(np.uint8, copy=False)
    columns = {}
    for name in table.column_names:
        if name in ("_rowid", "_rabit_codes"):
            continue
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            columns[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        else:
            columns[name] = col.to_numpy(zero_copy_only=False)
    return RQSegment(
        model=model,
        centroids=centroids,
        row_ids=table.column("_rowid").to_numpy(),
        part_ids=np.repeat(np.arange(len(lengths)), lengths),
        lengths=lengths,
        codes=unpack_lance_codes(stored, lengths, code_bytes),
        stored_codes=stored,
        columns=columns,
    )
