"""The README's first command: a real build on a local Dask cluster over a generated data set.

    python -m dask_lance_index.demo [--rows 200000] [--dim 128] [--index-type IVF_PQ]

Writes a clustered synthetic data set to a Lance dataset, starts a
``LocalCluster`` with worker processes, builds the index with
:func:`dask_lance_index.create_index`, and prints the plan, the build's seconds
per stage, and recall@10 against NumPy brute force.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings

import numpy as np
from distributed import Client, LocalCluster

from .api import create_index, run
from .datagen import make_vectors, write_vectors
from .evaluation import exact_knn, recall_at_k, search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dask_lance_index.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows to generate (default 200000)")
    parser.add_argument("--dim", type=int, default=128, help="vector dimension (default 128)")
    parser.add_argument("--index-type", default="IVF_PQ", help="Lance index type (default IVF_PQ)")
    parser.add_argument("--metric", default="l2")
    parser.add_argument("--num-partitions", type=int, default=256)
    parser.add_argument("--num-sub-vectors", type=int, default=None, help="PQ sub-vectors (default dim / 8)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--path", default=None, help="where to write the dataset (default: a temp dir)")
    args = parser.parse_args(argv)

    root = args.path or tempfile.mkdtemp(prefix="dli-demo-")
    uri = os.path.join(root, "demo.lance")
    shutil.rmtree(uri, ignore_errors=True)
    print(f"generating {args.rows} x {args.dim} clustered vectors -> {uri}")
    x = make_vectors(args.rows, args.dim, seed=0)
    write_vectors(uri, x, max_rows_per_file=max(args.rows // 8, 1))
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), args.queries, replace=False)] + 0.01 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        print(f"cluster: {client.scheduler_info()['address']} with {args.workers} worker processes")
        opts = {"num_partitions": args.num_partitions}
        if "PQ" in args.index_type.upper():
            opts["num_sub_vectors"] = args.num_sub_vectors or max(args.dim // 8, 1)
        build = create_index(uri, "vector", args.index_type, metric=args.metric, client=client, compute=False, **opts)
        print(build.plan)
        t0 = time.time()
        result = run(build, client=client)
        wall = time.time() - t0
    print(result)
    print(f"build wall time: {wall:.2f} s")
    ds = result.dataset()
    truth = exact_knn(x, q, 10, args.metric)
    print("recall@10 against NumPy brute force:")
    for nprobes in (10, 20, 50):
        for refine in (None, 5):
            found, latency = search(ds, "vector", q, 10, nprobes=nprobes, refine_factor=refine)
            print(
                f"  nprobes={nprobes:<3d} refine_factor={str(refine):<4s} "
                f"recall={recall_at_k(found, truth):.3f}  latency={latency * 1000:.2f} ms"
            )
    if not args.path:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
