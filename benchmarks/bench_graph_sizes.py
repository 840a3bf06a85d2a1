"""One partition's HNSW graph on one thread, by the partition's rows: best of ``--repeats``.

    python benchmarks/bench_graph_sizes.py --rows 400,1000,4000,8000,16000,31000 --metrics dot,l2

The rows are the first ``R`` of the generated set's rows nearest one centroid (128-d by
default, 1M rows, 32 centroids drawn from them, as a 1M x 32 build's partitions): each
size is one partition's rows as a build would hand them to ``build_hnsw`` (m 20, Lance's
defaults). Under dot a node is compared with every node before it, so the time grows with
the square of the rows, until past 32,768 rows (where the rows group well) each later node is
compared with the nodes of the groups it is near; under l2, past ``HNSW_BLOCK_ROWS`` nodes,
with the rows.
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="400,1000,4000,8000,16000,31000", help="a comma list of partition sizes")
    p.add_argument("--metrics", default="dot,l2", help="a comma list of dot and l2")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import numpy as np

    from dask_lance_index.datagen import make_vectors
    from dask_lance_index.model import PartitionAssigner
    from dask_lance_index.model.hnsw import HNSW_M, HNSW_MAX_LEVEL, build_hnsw
    from dask_lance_index.runtime import one_blas_thread

    sizes = [int(r) for r in args.rows.split(",")]
    metrics = args.metrics.split(",")
    x = make_vectors(1_000_000, args.dim, seed=0)
    centroids = x[np.random.default_rng(1).choice(len(x), 32, replace=False)]
    rows = {}
    for metric in metrics:
        parts = PartitionAssigner(centroids, metric).assign(x)
        largest = int(np.bincount(parts).argmax())
        rows[metric] = x[parts == largest]
        if len(rows[metric]) < max(sizes):
            raise SystemExit(f"the largest partition under {metric} holds {len(rows[metric])} rows; "
                             f"pass --rows of at most that many")
    print(f"{'rows':>8s} " + " ".join(f"{m + ' s':>10s}" for m in metrics))
    with one_blas_thread():
        for n in sizes:
            best = []
            for metric in metrics:
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    build_hnsw(rows[metric][:n], m=HNSW_M, max_level=HNSW_MAX_LEVEL, seed=0, metric=metric)
                    times.append(time.perf_counter() - t)
                best.append(min(times))
            print(f"{n:8d} " + " ".join(f"{b:10.3f}" for b in best), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
