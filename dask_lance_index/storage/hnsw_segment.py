"""IVF_HNSW_FLAT, IVF_HNSW_SQ and IVF_HNSW_PQ segments written here: the rows, and the
graphs we build.

A segment is two Lance files, as Lance writes them:

* ``auxiliary.idx``, the storage: ``_rowid`` and the stored rows (``flat`` float32 rows,
  unit vectors for cosine; ``__sq_code`` bytes with the model's shared bounds; or
  ``__pq_code`` bytes, each partition's codes transposed in a segment over the whole
  dataset, and the codebook), grouped by partition, exactly as an IVF_FLAT, IVF_SQ or
  IVF_PQ segment's file;
* ``index.idx``, the graphs: per partition, one row per node and level
  (``__vector_id`` uint32, ``__neighbors`` list<uint32>, ``_distance`` list<float32>),
  level 0 first with every node in id order, then each upper level's nodes; a node id
  is the row's position among its partition's rows in ``auxiliary.idx``. The IVF
  protobuf (a global buffer named by ``lance:ivf``) counts these graph rows per
  partition and holds the centroids; ``lance:hnsw`` is a JSON list with one JSON text
  per partition: ``entry_point`` (a node of the top level: Lance's search descends
  from it), the build ``params`` and ``level_offsets`` (``max_level + 1`` cumulative
  row counts; ``""`` for an empty partition).

Lance's reader checks that level 0's ids are the row positions, that the entry point
and every neighbour id are within the partition, and that the graph has as many
nodes as the partition's stored rows. A graph's distances are those between the stored
rows as Lance decodes them: the rows, the SQ codes decoded with the bounds, or the PQ
codes looked up in the codebook (residuals, as stored; measured against Lance's own
IVF_HNSW_PQ graph files: the same distances). The ``_distance`` lists are read when Lance
remaps a graph after compaction (without them it builds that graph again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
from lance.file import LanceFileReader, LanceFileWriter

from .partition_runs import PartitionRuns
from .segment_concat import WrittenSegment
from .segment_files import (
    PQ_CODE_COLUMN,
    AUX_FILE_VERSION,
    _segment_dir,
    ivf_message,
    read_pq_codebook,
    row_major_storage,
    write_pq_storage,
    write_row_major_runs,
    write_row_major_storage,
)
from .segments import index_dir

__all__ = ["HNSW_PREFETCH_DISTANCE", "STORAGE_TYPES", "StoredRows", "add_hnsw_graphs", "decode_stored",
           "write_hnsw_segment"]

# The index type whose segment stores each HNSW type's rows: the same ``auxiliary.idx``.
STORAGE_TYPES = {"IVF_HNSW_FLAT": "IVF_FLAT", "IVF_HNSW_SQ": "IVF_SQ", "IVF_HNSW_PQ": "IVF_PQ"}
# Lance's default, recorded in each graph's params (it only tunes Lance's own build).
HNSW_PREFETCH_DISTANCE = 2

_GRAPH_SCHEMA = pa.schema([
    pa.field("__vector_id", pa.uint32()),
    pa.field("__neighbors", pa.list_(pa.uint32())),
    pa.field("_distance", pa.list_(pa.float32())),
])


def _graph_batch(graph) -> pa.RecordBatch:
    """One partition's graph rows: every level's nodes, level 0 first."""
    ids, offsets, neighbours, dists = [], [np.zeros(1, np.int64)], [], []
    base = 0
    for nodes, level_offsets, level_ids, level_dist in graph.levels:
        ids.append(nodes)
        offsets.append(level_offsets[1:] + base)
        base += int(level_offsets[-1])
        neighbours.append(level_ids)
        dists.append(level_dist)
    offsets = pa.array(np.concatenate(offsets).astype(np.int32))
    return pa.record_batch([
        pa.array(np.concatenate(ids).astype(np.uint32)),
        pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(neighbours).astype(np.uint32))),
        pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(dists).astype(np.float32))),
    ], schema=_GRAPH_SCHEMA)


def decode_stored(index_type: str, values: np.ndarray, bounds: tuple[float, float] | None = None,
                  num_bits: int = 8, codebook: np.ndarray | None = None) -> np.ndarray:
    """The float32 rows a graph is built on from stored ``values`` (row-major): the rows
    themselves (IVF_HNSW_FLAT), the SQ codes decoded with ``bounds`` (IVF_HNSW_SQ), or the
    PQ codes looked up in ``codebook`` (IVF_HNSW_PQ): the distances Lance's search sees."""
    if index_type == "IVF_HNSW_SQ":
        step = (float(bounds[1]) - float(bounds[0])) / (2**num_bits - 1)
        rows = values.astype(np.float32)  # in place from here: one float32 copy of the codes, not three
        rows *= np.float32(step)
        rows += np.float32(bounds[0])
        return rows
    if index_type == "IVF_HNSW_PQ":
        m, _, sub = codebook.shape
        out = np.empty((len(values), m * sub), np.float32)
        for j in range(m):
            np.take(codebook[j], values[:, j], axis=0, out=out[:, j * sub : (j + 1) * sub])
        return out
    return np.asarray(values, dtype=np.float32)


@dataclass(frozen=True)
class StoredRows:
    """A written segment's ``auxiliary.idx``, from which a run of its partitions' rows is
    read back (by a graph task on another worker, :func:`write_hnsw_segment`). Picklable:
    nothing large in it (a PQ codebook is read from the file)."""

    dataset_uri: str
    index_uuid: str
    index_type: str
    bounds: tuple[float, float] | None = None
    num_bits: int = 8
    storage_options: dict | None = None
    transposed: bool = False  # PQ codes stored (m, rows) per partition

    def read(self, run: list) -> list:
        """The decoded rows (:func:`decode_stored`) of ``run``'s partitions,
        ``(partition, first stored row, rows)`` consecutive in the file, read in one range."""
        reader = LanceFileReader(f"{index_dir(self.dataset_uri, self.index_uuid)}/auxiliary.idx",
                                 storage_options=self.storage_options)
        start = run[0][1]
        count = run[-1][1] + run[-1][2] - start
        name = PQ_CODE_COLUMN if self.index_type == "IVF_HNSW_PQ" else row_major_storage(
            self.index_type, 0, bounds=self.bounds, num_bits=self.num_bits)[0].name
        column = reader.read_range(start, count, batch_size=max(count, 1)).to_table().column(name).combine_chunks()
        width = column.type.list_size
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(count, width)
        codebook = read_pq_codebook(reader, width) if self.index_type == "IVF_HNSW_PQ" else None
        out = []
        for _, lo, n in run:
            block = values[lo - start : lo - start + n]
            if self.transposed:
                block = block.reshape(-1).reshape(width, n).T
            out.append(decode_stored(self.index_type, block, self.bounds, self.num_bits, codebook))
        return out


def write_hnsw_segment(
    dataset_uri: str,
    index_uuid: str,
    *,
    index_type: str,
    row_ids: np.ndarray | None,
    part_ids: np.ndarray | None,
    values: np.ndarray | None,
    centroids: np.ndarray,
    metric: str,
    loss: float,
    m: int,
    ef_construction: int,
    max_level: int,
    build_graphs: Callable,
    bounds: tuple[float, float] | None = None,
    num_bits: int = 8,
    codebook: np.ndarray | None = None,
    transposed: bool = False,
    runs: PartitionRuns | None = None,
    storage_options: dict | None = None,
) -> list:
    """Write one IVF_HNSW_FLAT, IVF_HNSW_SQ or IVF_HNSW_PQ segment, building each
    partition's graph; returns the file names.

    ``values``: the stored rows, ``(n, d)``: float32 rows as Lance stores them for
    IVF_HNSW_FLAT, uint8 SQ codes made with ``bounds`` for IVF_HNSW_SQ (whose graphs
    are built on the decoded codes, the distances Lance's search sees), uint8 PQ codes
    ``(n, num_sub_vectors)`` of ``codebook`` for IVF_HNSW_PQ (its graphs on the codes
    looked up; ``transposed``: each partition's codes stored transposed, as Lance does for
    a segment over every fragment of the dataset). ``runs``: IVF_HNSW_FLAT's or
    IVF_HNSW_SQ's rows spilled to disk (:class:`PartitionRuns` of ``_rowid`` and
    ``values``) instead of ``row_ids``, ``part_ids`` and ``values``: the same files.
    ``build_graphs(stored, partitions, rows_of)``: the graphs
    (:func:`dask_lance_index.model.build_hnsw`) of the non-empty ``partitions``, a list
    of ``(partition, first stored row, rows)``, in that order; each partition's float32
    rows in stored order are ``rows_of(partition)`` here, or read back from the written
    ``auxiliary.idx`` through ``stored`` (:class:`StoredRows`) elsewhere
    (:class:`dask_lance_index.build.graphs.PartitionGraphs`).
    """
    centroids = np.asarray(centroids, dtype=np.float32)
    base = _segment_dir(dataset_uri, index_uuid)
    transposed = transposed and index_type == "IVF_HNSW_PQ"  # row-major types are stored as they are
    if runs is not None:
        if index_type == "IVF_HNSW_PQ":
            raise ValueError("IVF_HNSW_PQ codes are written from the codes held, not from spilled runs")
        order = None
        lengths, offsets = write_row_major_runs(base, index_type, runs, centroids.shape[1], metric=metric,
                                                bounds=bounds, num_bits=num_bits, storage_options=storage_options)
    elif index_type == "IVF_HNSW_PQ":
        codebook = np.asarray(codebook, dtype=np.float32)
        order, lengths, offsets = write_pq_storage(
            base, values, codebook, row_ids=row_ids, part_ids=part_ids, num_partitions=len(centroids), metric=metric,
            transposed=transposed, storage_options=storage_options)
    else:
        order, lengths, offsets = write_row_major_storage(
            base, index_type, values, row_ids=row_ids, part_ids=part_ids, num_partitions=len(centroids),
            metric=metric, bounds=bounds, num_bits=num_bits, storage_options=storage_options)
    stored = StoredRows(dataset_uri, index_uuid, index_type, None if bounds is None else tuple(map(float, bounds)),
                        num_bits, storage_options, transposed)

    def held_rows(p: int) -> np.ndarray:
        return decode_stored(index_type, np.asarray(values)[order[offsets[p] : offsets[p] + lengths[p]]], bounds,
                             num_bits, codebook)

    # rows spilled are on disk only: read back from the written file
    rows_of = _read_back(stored, lengths, offsets) if order is None else held_rows

    _write_graphs(base, build_graphs(stored, _partitions(lengths, offsets), rows_of), lengths,
                  index_type=index_type, centroids=centroids, metric=metric, loss=loss, m=m,
                  ef_construction=ef_construction, max_level=max_level, storage_options=storage_options)
    return ["auxiliary.idx", "index.idx"]


def add_hnsw_graphs(dataset_uri: str, index_uuid: str, *, index_type: str, m: int, ef_construction: int,
                    max_level: int, build_graphs: Callable, storage_options: dict | None = None) -> list:
    """Make a written IVF_FLAT, IVF_SQ or IVF_PQ segment the ``index_type`` segment
    (IVF_HNSW_FLAT, IVF_HNSW_SQ, IVF_HNSW_PQ) over the same ``auxiliary.idx``: build each
    partition's graph and write ``index.idx`` in place of the storage type's. The two
    types' ``auxiliary.idx`` are the same file, so a segment concatenated from storage-only
    segments (:func:`~dask_lance_index.storage.concat_segments`) gets its graphs once,
    here; everything (rows per partition, centroids, SQ bounds, PQ codebook and layout)
    is read from the segment's own files. ``build_graphs`` as for
    :func:`write_hnsw_segment`, whose rows are always read back here. Returns the file
    names."""
    written = WrittenSegment(dataset_uri, index_uuid, storage_options)
    quantizer = written.quantizer
    bounds = (quantizer["bounds"]["start"], quantizer["bounds"]["end"]) if "bounds" in quantizer else None
    stored = StoredRows(dataset_uri, index_uuid, index_type, bounds, int(quantizer.get("num_bits", 8)),
                        storage_options, bool(quantizer.get("transposed", False)))
    lengths, offsets = written.lengths, written.offsets[:-1]
    _write_graphs(_segment_dir(dataset_uri, index_uuid),
                  build_graphs(stored, _partitions(lengths, offsets), _read_back(stored, lengths, offsets)),
                  lengths, index_type=index_type, centroids=written.centroids,
                  metric=written.meta[b"distance_type"].decode(), loss=written.loss, m=m,
                  ef_construction=ef_construction, max_level=max_level, storage_options=storage_options)
    return ["auxiliary.idx", "index.idx"]


def _partitions(lengths, offsets) -> list:
    """``(partition, first stored row, rows)`` of the non-empty partitions. Pure."""
    return [(p, int(offsets[p]), int(lengths[p])) for p in range(len(lengths)) if lengths[p]]


def _read_back(stored: StoredRows, lengths, offsets) -> Callable:
    """``rows_of(partition)`` for ``build_graphs``: the partition's rows read back from the
    written file."""
    return lambda p: stored.read([(p, int(offsets[p]), int(lengths[p]))])[0]


def _write_graphs(base: str, graphs, lengths, *, index_type: str, centroids: np.ndarray,
                  metric: str, loss: float, m: int, ef_construction: int, max_level: int,
                  storage_options: dict | None) -> None:
    """``index.idx``: the ``graphs`` of the non-empty partitions, in partition order."""
    graphs = iter(graphs)
    params = {"max_level": max_level, "m": m, "ef_construction": ef_construction,
              "prefetch_distance": HNSW_PREFETCH_DISTANCE}
    graphs_meta, graph_rows = [], []
    writer = LanceFileWriter(f"{base}/index.idx", _GRAPH_SCHEMA, version=AUX_FILE_VERSION,
                             storage_options=storage_options)
    for p in range(len(centroids)):
        if not lengths[p]:
            graphs_meta.append("")
            graph_rows.append(0)
            continue
        graph = next(graphs)
        if graph.num_nodes != lengths[p]:
            raise RuntimeError(f"partition {p}'s graph has {graph.num_nodes} nodes for {lengths[p]} rows")
        batch = _graph_batch(graph)
        writer.write_batch(batch)
        graph_rows.append(batch.num_rows)
        graphs_meta.append(json.dumps({"entry_point": graph.entry_point, "params": params,
                                       "level_offsets": graph.level_offsets(max_level)}, separators=(",", ":")))
    pos = writer.add_global_buffer(ivf_message(graph_rows, centroids, loss))
    writer.add_schema_metadata("lance:index", json.dumps({"type": index_type, "distance_type": metric},
                                                         separators=(",", ":")))
    writer.add_schema_metadata("lance:hnsw", json.dumps(graphs_meta, separators=(",", ":")))
    writer.add_schema_metadata("lance:ivf", str(pos))
    writer.close()
