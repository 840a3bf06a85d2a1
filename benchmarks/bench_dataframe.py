"""Time the DataFrame paths on a LocalCluster against their single-process Lance equivalents.

    python benchmarks/bench_dataframe.py [--rows 200000] [--dim 128] [--partitions 8] [--queries 400]

* write: ``to_lance`` (a write task per partition + one commit) vs ``lance.write_dataset`` of the
  same rows from one pandas frame;
* read: ``read_lance`` persisted on the workers vs ``lance.dataset(uri).to_table()``;
* encode: ``map_partitions(add_pq_codes)`` vs ``PQEncoder.encode`` on all rows in one process;
* search: ``batch_search`` vs ``evaluate.search`` (one query at a time) on an IVF_PQ index.
Prints seconds per path; the machine's load makes single runs noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    import dask.dataframe as dd
    import lance
    import numpy as np
    import pandas as pd
    from distributed import Client, LocalCluster, wait

    import dask_lance_index as dli
    from dask_lance_index.datagen import make_vectors
    from dask_lance_index.evaluation import search
    from dask_lance_index.model import (
        IndexModel,
        PQEncoder,
        residuals,
        train_ivf,
        train_pq,
    )

    root = tempfile.mkdtemp(prefix="dli-bench-df-")
    x = make_vectors(args.rows, args.dim, seed=0)
    pdf = pd.DataFrame({"id": np.arange(args.rows), "vector": dli.vector_series(x)})
    ddf = dd.from_pandas(pdf, npartitions=args.partitions)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        ddf = client.persist(ddf)
        wait(ddf)  # the data sits on the workers before any timing starts
        # Warm the workers up (imports of lance, pyarrow.compute, ...), which the first task pays.
        dli.to_lance(dd.from_pandas(pdf.iloc[:100], npartitions=args.workers), os.path.join(root, "w.lance"), client=client)
        uri = os.path.join(root, "a.lance")
        t = time.perf_counter()
        dli.to_lance(ddf, uri, client=client)
        out["to_lance"] = time.perf_counter() - t
        t = time.perf_counter()
        lance.write_dataset(pdf, os.path.join(root, "b.lance"), max_rows_per_file=args.rows // args.partitions)
        out["lance.write_dataset"] = time.perf_counter() - t

        # Timed to the data sitting on the workers (persist + wait): gathering 100 MB to the
        # client costs the same whatever produced it.
        t = time.perf_counter()
        back = client.persist(dli.read_lance(uri))
        wait(back)
        out["read_lance (persist)"] = time.perf_counter() - t
        assert len(back) == args.rows
        t = time.perf_counter()
        lance.dataset(uri).to_table()
        out["lance to_table"] = time.perf_counter() - t

        sample = x[np.random.default_rng(0).choice(args.rows, 65536, replace=False)]
        c, _ = train_ivf(sample, 256, "l2", max_iters=10, seed=0)
        cb = train_pq(residuals(sample, c, "l2"), args.dim // 8, 8, max_iters=10, seed=0)
        model = IndexModel(ivf_centroids=c, pq_codebook=cb)
        t = time.perf_counter()
        wait(client.persist(ddf.map_partitions(dli.add_pq_codes, model, "vector")))
        out["map_partitions(add_pq_codes) (persist)"] = time.perf_counter() - t
        t = time.perf_counter()
        PQEncoder(c, cb, "l2").encode(x)
        out["PQEncoder.encode, one process"] = time.perf_counter() - t

        ds = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=256, num_sub_vectors=args.dim // 8,
                              ivf_centroids=c, pq_codebook=cb, client=client)
        q = x[: args.queries] + 0.01
        qdf = dd.from_pandas(pd.DataFrame({"vector": dli.vector_series(q)}), npartitions=args.workers * 2)
        t = time.perf_counter()
        hits = client.compute(dli.batch_search(qdf, uri, k=10, nprobes=20)).result()
        out["batch_search"] = time.perf_counter() - t
        t = time.perf_counter()
        ids, _ = search(ds, "vector", q, 10, nprobes=20)
        out["search, one query at a time"] = time.perf_counter() - t
        assert np.array_equal(np.stack(hits["ids"].to_numpy()), ids)
    shutil.rmtree(root, ignore_errors=True)
    print(f"{args.rows} x {args.dim}, {args.partitions} partitions, {args.workers} workers, {args.queries} queries")
    for k, v in out.items():
        print(f"  {k:<34s} {v:7.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
