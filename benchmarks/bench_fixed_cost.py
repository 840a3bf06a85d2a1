"""Split the build's time into its fixed part (sampling + training) and its per-row part.

    python benchmarks/bench_fixed_cost.py                          # 250k and 2M rows, 2 runs each
    python benchmarks/bench_fixed_cost.py --rows 250000,1000000,4000000 --repeats 1

Builds each synthetic data set (128-d, 8 fragments, IVF_PQ 256 x 16) on a LocalCluster twice per
repeat: end to end, and with ``ivf_centroids`` and ``pq_codebook`` given (trained once beforehand
on a 65,536-row sample, as the build trains), so no sampling and no training run. Prints seconds
and seconds per million rows of both, and how flat each is across the sizes (max/min).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="250000,2000000")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]

    from distributed import Client, LocalCluster

    import dask_lance_index as dli
    from dask_lance_index.datagen import make_vectors, write_vectors
    from dask_lance_index.model import residuals, train_ivf, train_pq

    root = tempfile.mkdtemp(prefix="dli-fixed-")
    try:
        uris = {}
        for n in sizes:
            uris[n] = os.path.join(root, f"{n}.lance")
            write_vectors(uris[n], make_vectors(n, 128, seed=0), max_rows_per_file=-(-n // 8))
        sample = make_vectors(65536, 128, seed=0)  # the same distribution the data sets come from
        centroids, _ = train_ivf(sample, 256, "l2", max_iters=50, seed=1, tol=5e-3)
        codebook = train_pq(residuals(sample, centroids, "l2"), 16, 8, max_iters=50, seed=1, tol=5e-3)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)
        rows = []
        with cluster, Client(cluster) as client:
            client.run(lambda: __import__("dask_lance_index.build") and __import__("lance"))
            for rep in range(args.repeats):
                for n in sizes:
                    for given in (False, True):
                        kw = dict(ivf_centroids=centroids, pq_codebook=codebook) if given else {}
                        t0 = time.perf_counter()
                        build = dli.create_index(uris[n], "vector", "IVF_PQ", num_partitions=256, num_sub_vectors=16,
                                                 replace=True, client=client, compute=False, **kw)
                        result = client.compute(build).result()
                        seconds = time.perf_counter() - t0
                        fixed = result.seconds.get("sample", 0.0) + result.seconds.get("train", 0.0)
                        rows.append((n, given, seconds, fixed))
                        print(f"{n:>9d} rows, {'model given' if given else 'end to end':15s} {seconds:6.2f} s "
                              f"{seconds / n * 1e6:6.2f} s/M (sampling + training {fixed:.2f} s)", flush=True)
        for given in (False, True):
            per = [s / n * 1e6 for n, g, s, _ in rows if g == given]
            label = "model given" if given else "end to end"
            print(f"{label}: seconds per million rows {min(per):.2f}-{max(per):.2f}, max/min {max(per) / min(per):.2f}")
        fixed = [f for _, g, _, f in rows if not g]
        print(f"sampling + training of the end-to-end builds: {min(fixed):.2f}-{max(fixed):.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
