"""Our HNSW graphs against Lance's, in one process: build seconds, recall and query time.

    python benchmarks/bench_hnsw_graphs.py --rows 250000,500000 --num-partitions 256

For each row count, the same generated data set (128-d, 8 fragments) is copied twice; Lance's
``create_index`` builds one copy, ``create_index(..., engine="precomputed", scheduler="sync")``
the other (our graphs, built in a thread per CPU). Each index then answers
200 queries (data points plus small noise) at nprobes 10 and 20, twice (the second pass warm);
recall@10 is against NumPy brute force. Side by side, so that the ratio shows where exact
candidates stop paying as partitions grow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="250000", help="a comma list of row counts")
    p.add_argument("--num-partitions", type=int, default=256)
    p.add_argument("--index-type", default="IVF_HNSW_FLAT")
    p.add_argument("--dim", type=int, default=128)
    args = p.parse_args()

    import lance

    import dask_lance_index as dli
    from dask_lance_index.datagen import make_vectors, write_vectors
    from dask_lance_index.evaluation import exact_knn, recall_at_k, search

    warnings.simplefilter("ignore")
    root = tempfile.mkdtemp(prefix="dli-hnsw-")
    print(f"{'rows':>9s} {'per part':>9s} {'engine':>7s} {'build s':>8s} {'ratio':>6s} "
          f"{'np10':>6s} {'np20':>6s} {'ms/q':>6s}")
    try:
        for rows in (int(r) for r in args.rows.split(",")):
            x = make_vectors(rows, args.dim, seed=0)
            base = os.path.join(root, "base.lance")
            shutil.rmtree(base, ignore_errors=True)
            write_vectors(base, x, max_rows_per_file=-(-rows // 8))
            rng = np.random.default_rng(5)
            queries = x[rng.choice(rows, 200, replace=False)] + np.float32(0.01)
            truth = exact_knn(x, queries, 10, "l2")
            seconds = {}
            for engine in ("lance", "ours"):
                uri = os.path.join(root, f"{engine}.lance")
                shutil.rmtree(uri, ignore_errors=True)
                shutil.copytree(base, uri)
                t0 = time.perf_counter()
                if engine == "lance":
                    lance.dataset(uri).create_index("vector", args.index_type, num_partitions=args.num_partitions)
                else:
                    dli.create_index(uri, "vector", args.index_type, num_partitions=args.num_partitions,
                                     engine="precomputed", scheduler="sync")
                seconds[engine] = time.perf_counter() - t0
                ds = lance.dataset(uri)
                recall, ms = [], 0.0
                for nprobes in (10, 20):
                    for _ in range(2):  # the second pass warm
                        found, seconds_per_query = search(ds, "vector", queries, 10, nprobes=nprobes)
                    ms = seconds_per_query * 1000
                    recall.append(recall_at_k(found, truth))
                print(f"{rows:>9d} {rows // args.num_partitions:>9d} {engine:>7s} {seconds[engine]:8.2f} "
                      f"{seconds[engine] / seconds['lance']:6.2f} {recall[0]:6.3f} {recall[1]:6.3f} {ms:6.2f}",
                      flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
