"""Incremental indexing against a full rebuild, on a local cluster.

    python benchmarks/bench_update.py --rows 200000 --append 20000 --rounds 3

Builds IVF_PQ over ``--rows`` synthetic vectors, then appends ``--append`` rows ``--rounds``
times and runs ``update_index`` after each; prints per round the action, the build tasks run,
seconds, and recall@10 (nprobes 20, refine_factor 5) against NumPy brute force. At the end it
builds the same rows from scratch twice: once with the saved artifacts (the model the updates
used) and once retrained, and prints their seconds and recall beside the updates'.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings

os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--append", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--num-partitions", type=int, default=256)
    p.add_argument("--num-sub-vectors", type=int, default=16)
    p.add_argument("--max-deltas", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    from distributed import Client, LocalCluster

    import dask_lance_index as dli
    from dask_lance_index.datagen import make_vectors, write_vectors
    from dask_lance_index.evaluation import exact_knn, recall_at_k, search

    total = args.rows + args.rounds * args.append
    x = make_vectors(total, args.dim, seed=0)
    rng = __import__("numpy").random.default_rng(1)
    q = x[rng.choice(total, 200, replace=False)] + 0.01
    kw = dict(num_partitions=args.num_partitions, num_sub_vectors=args.num_sub_vectors)
    tmp = tempfile.mkdtemp(prefix="bench-update-")
    uri = os.path.join(tmp, "grow.lance")

    def recall(ds, n):
        truth = exact_knn(x[:n], q, 10)
        return recall_at_k(search(ds, "vector", q, 10, nprobes=20, refine_factor=5)[0], truth)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    try:
        write_vectors(uri, x[: args.rows], max_rows_per_file=args.append)
        t = time.time()
        ds = dli.create_index(uri, "vector", "IVF_PQ", client=client, seed=0, **kw)
        print(f"base build: {args.rows} rows in {time.time() - t:.1f} s, recall {recall(ds, args.rows):.3f}")
        n = args.rows
        for r in range(args.rounds):
            write_vectors(uri, x[n : n + args.append], max_rows_per_file=args.append, mode="append", start_id=n)
            n += args.append
            upd = dli.update_index(uri, "vector", client=client, max_deltas=args.max_deltas, compute=False)
            tasks = sum(1 for k in dict(upd.__dask_graph__()) if str(k).startswith("dli-build-"))
            t = time.time()
            res = dli.run(upd, client=client)
            print(
                f"round {r + 1}: +{args.append} rows, {res.action}, {tasks} build tasks, "
                f"{time.time() - t:.1f} s, {res.num_segments} segments, drift {res.drift['ratio']:.2f}, "
                f"recall {recall(res.dataset(), n):.3f}"
            )
        saved = dli.load_model(uri, "vector_idx")
        for label, extra in (
            ("full build, saved model", dict(ivf_centroids=saved.model.ivf_centroids,
                                                 pq_codebook=saved.model.pq_codebook)),
            ("full build, retrained", dict(seed=0)),
        ):
            fresh = os.path.join(tmp, "fresh.lance")
            shutil.rmtree(fresh, ignore_errors=True)
            write_vectors(fresh, x[:n], max_rows_per_file=args.append)
            t = time.time()
            ds = dli.create_index(fresh, "vector", "IVF_PQ", client=client, **kw, **extra)
            print(f"{label}: {n} rows in {time.time() - t:.1f} s, recall {recall(ds, n):.3f}")
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
