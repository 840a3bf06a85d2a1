"""IVF_HNSW_FLAT and IVF_HNSW_SQ segments written here: the rows, and the graphs we build.

A segment is two Lance files, as Lance writes them:

* ``auxiliary.idx``, the storage: ``_rowid`` and the stored rows (``flat`` float32 rows,
  unit vectors for cosine; or ``__sq_code`` bytes with the model's shared bounds),
  grouped by partition, exactly as an IVF_FLAT or IVF_SQ segment's file;
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
nodes as the partition's stored rows. The ``_distance`` lists are read when Lance
remaps a graph after compaction (without them it builds that graph again).
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pyarrow as pa
from lance.file import LanceFileWriter

from .segment_files import AUX_FILE_VERSION, _segment_dir, ivf_message, write_row_major_storage

__all__ = ["HNSW_PREFETCH_DISTANCE", "write_hnsw_segment"]

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


def write_hnsw_segment(
    dataset_uri: str,
    index_uuid: str,
    *,
    index_type: str,
    row_ids: np.ndarray,
    part_ids: np.ndarray,
    values: np.ndarray,
    centroids: np.ndarray,
    metric: str,
    loss: float,
    m: int,
    ef_construction: int,
    max_level: int,
    build_graph: Callable,
    bounds: tuple[float, float] | None = None,
    num_bits: int = 8,
    storage_options: dict | None = None,
) -> list:
    """Write one IVF_HNSW_FLAT or IVF_HNSW_SQ segment, building each partition's graph;
    returns the file names.

    ``values``: the stored rows, ``(n, d)``: float32 rows as Lance stores them for
    IVF_HNSW_FLAT, uint8 SQ codes made with ``bounds`` for IVF_HNSW_SQ (whose graphs
    are built on the decoded codes, the distances Lance's search sees).
    ``build_graph(partition, rows)``: the graph of one partition's float32 rows in
    stored order (:func:`dask_lance_index.model.build_hnsw`).
    """
    centroids = np.asarray(centroids, dtype=np.float32)
    if index_type == "IVF_HNSW_SQ":
        step = (float(bounds[1]) - float(bounds[0])) / (2**num_bits - 1)
        decode = lambda codes: codes.astype(np.float32) * np.float32(step) + np.float32(bounds[0])  # noqa: E731
    else:
        decode = lambda rows: rows  # noqa: E731
    base = _segment_dir(dataset_uri, index_uuid)
    order, lengths, offsets = write_row_major_storage(
        base, index_type, values, row_ids=row_ids, part_ids=part_ids, num_partitions=len(centroids), metric=metric,
        bounds=bounds, num_bits=num_bits, storage_options=storage_options)
    params = {"max_level": max_level, "m": m, "ef_construction": ef_construction,
              "prefetch_distance": HNSW_PREFETCH_DISTANCE}
    graphs_meta, graph_rows = [], []
    writer = LanceFileWriter(f"{base}/index.idx", _GRAPH_SCHEMA, version=AUX_FILE_VERSION,
                             storage_options=storage_options)
    for p in range(len(centroids)):
        rows = order[offsets[p] : offsets[p] + lengths[p]]
        if not len(rows):
            graphs_meta.append("")
            graph_rows.append(0)
            continue
        graph = build_graph(p, decode(np.asarray(values)[rows]))
        batch = _graph_batch(graph)
        writer.write_batch(batch)
        graph_rows.append(batch.num_rows)
        graphs_meta.append(json.dumps({"entry_point": graph.entry_point, "params": params,
                                       "level_offsets": graph.level_offsets(max_level)}, separators=(",", ":")))
    graph_offsets = np.concatenate([[0], np.cumsum(graph_rows)[:-1]]).astype(np.int64)
    pos = writer.add_global_buffer(ivf_message(graph_offsets, graph_rows, centroids, loss))
    writer.add_schema_metadata("lance:index", json.dumps({"type": index_type, "distance_type": metric},
                                                         separators=(",", ":")))
    writer.add_schema_metadata("lance:hnsw", json.dumps(graphs_meta, separators=(",", ":")))
    writer.add_schema_metadata("lance:ivf", str(pos))
    writer.close()
    return ["auxiliary.idx", "index.idx"]
