"""Two-level training's later refinement passes searching each row's partition's neighbours,
against every pass searching its coarse groups: the same IVF_PQ build on one LocalCluster,
interleaved.

    python benchmarks/bench_refine_neighbours.py --rows 4000000 --num-partitions 16384 --repeats 2

Prints each build's wall seconds and stages. The data (``datagen.make_vectors``, 8 fragments) is
written once to ``--uri``. The workers' ``model.coarse.REFINE_NEIGHBOURS`` is set before each
build (0: every pass searches its groups); the library uses neighbours only from about 12,000
partitions (``coarse.default_refine_neighbours``), so below that both builds are the same.
"""

from __future__ import annotations

import argparse
import os
import time


def _set_neighbours(n: int) -> None:
    import dask_lance_index.model.coarse as coarse

    coarse.REFINE_NEIGHBOURS = n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--num-partitions", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--uri", default="/tmp/dli-refine-neighbours.lance")
    args = p.parse_args()

    from distributed import Client, LocalCluster

    import dask_lance_index as dli
    from dask_lance_index.datagen import make_vectors, write_vectors
    from dask_lance_index.model.coarse import REFINE_NEIGHBOURS

    if not os.path.exists(args.uri):
        write_vectors(args.uri, make_vectors(args.rows, 128, seed=0), max_rows_per_file=-(-args.rows // 8))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("dask_lance_index"))  # imports warmed, as on a long-lived cluster
        for rep in range(args.repeats):
            for n in (REFINE_NEIGHBOURS, 0):
                client.run(_set_neighbours, n)
                t = time.perf_counter()
                r = dli.create_index(args.uri, "vector", "IVF_PQ", num_partitions=args.num_partitions,
                                     num_sub_vectors=16, seed=rep + 1, replace=True, client=client,
                                     compute=False).compute()
                print(f"repeat {rep} neighbours {n:3d}: {time.perf_counter() - t:6.1f} s; "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r.seconds.items() if k != "total"), flush=True)
        client.run(_set_neighbours, REFINE_NEIGHBOURS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
