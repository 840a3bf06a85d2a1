"""The stage costs of an HNSW index built in several tasks, measured one by one on one thread.

    python benchmarks/bench_hnsw_stages.py --rows 1000000 --dim 128 --num-partitions 64
    python benchmarks/bench_hnsw_stages.py --rows 250000 --dim 1024 --num-partitions 16

The rows are generated and assigned to their nearest of ``num_partitions`` centroids (drawn
rows) in memory; then, each stage timed alone, as a build of ``--tasks`` tasks does them:

* ``write``: each task's rows written as a storage-only segment (IVF_FLAT's or IVF_SQ's files);
* ``concat``: the merge's concatenation of those segments into one (one task, every row);
* ``graphs``: every partition's graph (``build_hnsw``, the graph tasks' work, on any worker);
* ``graph write``: the graphs written into ``index.idx`` (the merge task, every node).

It prints each as seconds and per unit (per row, per byte of stored row, per node), the figures
``benchmarks/cost_model.py --hnsw`` is fitted to. Assignment and the dataset scan are
IVF_PQ's build terms and are not measured here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--num-partitions", type=int, default=64)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--index-type", default="IVF_HNSW_FLAT", choices=["IVF_HNSW_FLAT", "IVF_HNSW_SQ"])
    args = p.parse_args()

    import numpy as np

    from dask_lance_index.build.graphs import PartitionGraphs
    from dask_lance_index.datagen import make_vectors
    from dask_lance_index.model import PartitionAssigner
    from dask_lance_index.model.hnsw import HNSW_CANDIDATES, HNSW_EF_CONSTRUCTION, HNSW_M, HNSW_MAX_LEVEL
    from dask_lance_index.model.sq import sq_codes
    from dask_lance_index.runtime import one_blas_thread
    from dask_lance_index.storage import add_hnsw_graphs, concat_segments, write_flat_segment, write_sq_segment

    x = make_vectors(args.rows, args.dim, seed=0)
    rng = np.random.default_rng(1)
    centroids = x[rng.choice(args.rows, args.num_partitions, replace=False)]
    parts = PartitionAssigner(centroids, "l2").assign(x)
    sq = args.index_type == "IVF_HNSW_SQ"
    bounds = (float(x.min()), float(x.max()))
    stored = sq_codes(x, bounds, 8) if sq else x
    row_bytes = 8 + stored.shape[1] * stored.dtype.itemsize
    root = tempfile.mkdtemp(prefix="dli-hnsw-stages-")
    uri = os.path.join(root, "d.lance")
    seconds = {}
    try:
        with one_blas_thread():
            t0 = time.perf_counter()
            uuids = []
            for i, rows in enumerate(np.array_split(np.arange(args.rows), args.tasks)):
                uuid = f"task-{i}"
                common = dict(row_ids=rows.astype(np.uint64), part_ids=parts[rows], centroids=centroids,
                              metric="l2", loss=0.0)
                if sq:
                    write_sq_segment(uri, uuid, codes=stored[rows], bounds=bounds, num_bits=8, **common)
                else:
                    write_flat_segment(uri, uuid, vectors=stored[rows], **common)
                uuids.append(uuid)
            seconds["write"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            concat_segments(uri, uuids, "merged", index_type="IVF_SQ" if sq else "IVF_FLAT", whole=False)
            seconds["concat"] = time.perf_counter() - t0

            graphs = PartitionGraphs(m=HNSW_M, max_level=HNSW_MAX_LEVEL, seed=(0, 0),
                                     candidates=min(HNSW_EF_CONSTRUCTION, HNSW_CANDIDATES))
            built, nodes = [], [0]

            def build_graphs(stored_rows, partitions, rows_of):
                t = time.perf_counter()
                for p, _, _ in partitions:
                    g = graphs.graph(p, rows_of(p))
                    nodes[0] += sum(len(level[0]) for level in g.levels)
                    built.append(g)
                seconds["graphs"] = time.perf_counter() - t
                return built

            t0 = time.perf_counter()
            add_hnsw_graphs(uri, "merged", index_type=args.index_type, m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION,
                            max_level=HNSW_MAX_LEVEL, build_graphs=build_graphs)
            seconds["graph write"] = time.perf_counter() - t0 - seconds["graphs"]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    per = {"write": (args.rows * row_bytes, "byte"), "concat": (args.rows * row_bytes, "byte"),
           "graphs": (args.rows, "row"), "graph write": (nodes[0], "node")}
    print(f"{args.index_type}, {args.rows:,} x {args.dim}-d, {args.num_partitions} partitions "
          f"({args.rows // args.num_partitions:,} rows each), {args.tasks} tasks; {row_bytes} bytes a stored row, "
          f"{nodes[0]:,} graph nodes over all levels; one thread")
    print(f"{'stage':12s} {'seconds':>8s} {'per unit':>12s}")
    for stage, s in seconds.items():
        units, name = per[stage]
        print(f"{stage:12s} {s:8.2f} {s / units:10.3g} s/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
