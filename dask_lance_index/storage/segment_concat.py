"""One segment from several written here: their partitions concatenated, nothing encoded again.

Segments of the ``precomputed`` engine (:mod:`.segment_files`) share one model,
so merging them needs no distances and no codes: partition ``p`` of the merged
segment is partition ``p`` of each input, one after another. Lance's own merge
(``merge_existing_index_segments``) gives the same rows, but its output searched
1.5-1.7x slower than a segment written in one piece with the same model (GloVe, 4,096
partitions, nprobes 20, median ms per query: IVF_FLAT 4.79 against 2.82, IVF_PQ 5.49 against
3.63; ``benchmarks/bench_merge_queries.py``), and ours as fast as the one piece.

The inputs are read a run of partitions at a time (:data:`CONCAT_ROWS` rows of
output), so the merge holds a bounded slice of the index, never all of it. A
merged segment over every fragment of the dataset is stored as Lance stores a
full index (PQ codes transposed, RaBitQ sign bits packed); otherwise row-major,
as its inputs.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lance.file import LanceFileReader, LanceFileWriter

from ..errors import InvalidInputError
from . import protobuf as pb
from .rq_layout import pack_lance_codes
from .segment_files import (
    PQ_CODE_COLUMN,
    AUX_FILE_VERSION,
    _ivf_centroids,
    _ivf_lengths,
    _segment_dir,
    _write_index_file,
    ivf_message,
    transposed_by_partition,
)
from .segments import index_dir

__all__ = ["CONCAT_ROWS", "CONCAT_TYPES", "WrittenSegment", "concat_segments"]

# Index types whose segments this module merges (the ones the precomputed engine writes).
CONCAT_TYPES = ("IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ")
# Output rows per slice read from the inputs and written (whole partitions).
CONCAT_ROWS = 262_144


class WrittenSegment:
    """A segment this library wrote, as its files say: the ``auxiliary.idx`` reader, its
    schema metadata and rows per partition, and ``index.idx``'s centroids and loss."""

    def __init__(self, dataset_uri: str, uuid: str, storage_options: dict | None):
        base = index_dir(dataset_uri, uuid)
        self.reader = LanceFileReader(f"{base}/auxiliary.idx", storage_options=storage_options)
        self.schema = self.reader.metadata().schema
        meta = self.schema.metadata or {}
        if b"lance:ivf" not in meta:
            raise InvalidInputError(f"index segment {uuid} has no IVF metadata: not a segment this library wrote")
        self.meta = meta
        self.lengths = np.array(_ivf_lengths(bytes(self.reader.read_global_buffer(int(meta[b"lance:ivf"])))),
                                dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        index = LanceFileReader(f"{base}/index.idx", storage_options=storage_options)
        ivf = bytes(index.read_global_buffer(int((index.metadata().schema.metadata or {})[b"lance:ivf"])))
        self.centroids = _ivf_centroids(ivf)
        loss = pb.fields(ivf).get(5)
        self.loss = struct.unpack("<d", loss[0])[0] if loss else 0.0

    @property
    def quantizer(self) -> dict:
        """The storage's quantizer metadata (SQ bounds, PQ ``transposed``, ...)."""
        return json.loads(json.loads(self.meta[b"storage_metadata"])[0])

    def read(self, p0: int, p1: int) -> pa.Table:
        start, stop = int(self.offsets[p0]), int(self.offsets[p1])
        if stop == start:
            return self.schema.empty_table()
        return self.reader.read_range(start, stop - start, batch_size=stop - start).to_table()


def _runs(lengths: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Partitions ``[p0, p1)`` in runs of at most ``max_rows`` rows (a larger partition
    alone in its run). Pure."""
    runs, p0, acc = [], 0, 0
    for p, n in enumerate(lengths):
        if acc and acc + n > max_rows:
            runs.append((p0, p))
            p0, acc = p, 0
        acc += int(n)
    runs.append((p0, len(lengths)))
    return runs


def _fixed(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


def concat_segments(dataset_uri: str, input_uuids: list[str], output_uuid: str, *, index_type: str, whole: bool,
                    storage_options: dict | None = None) -> list[str]:
    """Write segment ``output_uuid`` from the segments ``input_uuids`` (all written by this
    library with one model); returns its file names.

    ``whole``: the output covers every fragment of the dataset, and is stored as
    Lance stores a full index (see the module's docstring).
    """
    if index_type not in CONCAT_TYPES:
        raise InvalidInputError(f"{index_type} segments are merged by Lance, not concatenated")
    inputs = [WrittenSegment(dataset_uri, u, storage_options) for u in input_uuids]
    first = inputs[0]
    k = len(first.lengths)
    if any(len(i.lengths) != k or not np.array_equal(i.centroids, first.centroids) for i in inputs):
        raise InvalidInputError("segments of different models cannot be concatenated: merge them with Lance")
    quantizer = first.quantizer
    flag = {"IVF_PQ": "transposed", "IVF_RQ": "packed"}.get(index_type)
    if flag and any(i.quantizer.get(flag) for i in inputs):
        raise InvalidInputError(f"a segment stored as a full index ({flag}) cannot be concatenated: merge it with Lance")
    lengths = sum(i.lengths for i in inputs)
    schema = first.schema.remove_metadata()
    base = _segment_dir(dataset_uri, output_uuid)
    aux = LanceFileWriter(f"{base}/auxiliary.idx", schema, version=AUX_FILE_VERSION, storage_options=storage_options)
    for p0, p1 in _runs(lengths, CONCAT_ROWS):
        parts = [i.read(p0, p1) for i in inputs]
        table = _interleave(parts, np.stack([i.lengths[p0:p1] for i in inputs]), schema)
        if whole and index_type == "IVF_PQ":
            table = _transpose_pq(table, lengths[p0:p1])
        if whole and index_type == "IVF_RQ":
            table = _pack_rq(table, lengths[p0:p1])
        for batch in table.to_batches():  # the run as taken: one copy of its rows
            aux.write_batch(batch)
    pos = aux.add_global_buffer(ivf_message(lengths))
    if index_type == "IVF_PQ":  # the codebook, as its inputs keep it
        aux.add_global_buffer(bytes(first.reader.read_global_buffer(int(quantizer["codebook_position"]))))
    if flag:
        quantizer[flag] = bool(whole)
    for key, value in first.meta.items():
        if key not in (b"lance:ivf", b"storage_metadata"):
            aux.add_schema_metadata(key.decode(), value.decode())
    aux.add_schema_metadata("storage_metadata", json.dumps([json.dumps(quantizer, separators=(",", ":"))]))
    aux.add_schema_metadata("lance:ivf", str(pos))
    aux.close()
    metric = first.meta[b"distance_type"].decode()
    _write_index_file(base, index_type, metric, first.centroids, float(sum(i.loss for i in inputs)), storage_options)
    return ["auxiliary.idx", "index.idx"]


def _interleave(parts: list, lengths: np.ndarray, schema) -> pa.Table:
    """The inputs' rows of a run of partitions, partition by partition and each partition's
    rows input by input: ``parts[i]`` holds input ``i``'s rows grouped by partition,
    ``lengths[i]`` its rows per partition. One ``take`` of a permutation, not a slice per
    partition and input: with 16,384 partitions the slices (and as many written batches)
    made a 2-segment merge of 4M rows take 4.4 s (0.4 s at 256 partitions)."""
    total = int(lengths.sum())
    if not total:
        return schema.empty_table()
    # where each (input, partition) block starts in the inputs' concatenation
    starts = np.concatenate([[0], np.cumsum(lengths.reshape(-1))[:-1]]).reshape(lengths.shape)
    starts, sizes = starts.T.reshape(-1), lengths.T.reshape(-1)  # partition-major order of the blocks
    out_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    index = np.repeat(starts - out_starts, sizes) + np.arange(total)
    return pc.take(pa.concat_tables(parts), pa.array(index), memory_pool=_run_pool())


def _run_pool():
    """The Arrow allocator of the taken runs: jemalloc, or the system's where this pyarrow
    has none. pyarrow's default, mimalloc, backs fresh memory with transparent huge pages,
    and on a host whose memory is full of page cache (a worker's, after reading a data set)
    each first touch can wait for compaction: the first 262,144-row IVF_SQ run (36 MB) took
    0.16 s to take with it, 0.04 s with either of these (0.006 s once mimalloc has memory
    to reuse, which a merge's first runs have not)."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.system_memory_pool()


def _transpose_pq(table: pa.Table, lengths: np.ndarray) -> pa.Table:
    """Each partition's ``(rows, m)`` PQ codes stored as ``(m, rows)``, as Lance stores a full index."""
    codes = _fixed(table.column(PQ_CODE_COLUMN))
    flat = transposed_by_partition(codes, lengths).reshape(-1)
    col = pa.FixedSizeListArray.from_arrays(pa.array(flat), codes.shape[1])
    return table.set_column(table.schema.get_field_index(PQ_CODE_COLUMN), table.schema.field(PQ_CODE_COLUMN), col)


def _pack_rq(table: pa.Table, lengths: np.ndarray) -> pa.Table:
    """RaBitQ sign bits in Lance's fast-scan blocks, partition by partition."""
    codes = _fixed(table.column("_rabit_codes"))
    packed = pack_lance_codes(codes, lengths).reshape(-1)
    col = pa.FixedSizeListArray.from_arrays(pa.array(packed), codes.shape[1])
    return table.set_column(table.schema.get_field_index("_rabit_codes"), table.schema.field("_rabit_codes"), col)
