"""One IVF_FLAT build task, repeated on long-lived LocalClusters: with and without the allocator settings, or the file writers.

    python benchmarks/bench_flat_task.py --rows 1000000 --repeats 3
    python benchmarks/bench_flat_task.py --rows 1000000 --repeats 3 --compare writer

The default IVF_FLAT build of up to 1 GiB of rows is one task that holds its rows until it
writes them grouped by partition: a large, fresh array touched once. This prints the stage
seconds of ``--repeats`` builds on one 2-worker cluster with the library's allocator settings
(``runtime/malloc.py``: glibc's thresholds lifted, the task's arrays without transparent huge
pages) and on another with ``DASK_LANCE_INDEX_NO_MALLOC_TUNING`` set, interleaved, on copies of one
data set (each copy written back to disk before the clock starts). ``--compare writer``: one
cluster writes ``auxiliary.idx`` with ``storage.lance_file.PlainFileWriter`` (the default),
the other through Lance's ``LanceFileWriter`` (``DASK_LANCE_INDEX_LANCE_FILE_WRITER`` set).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import warnings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--num-partitions", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compare", choices=["malloc", "writer"], default="malloc")
    args = p.parse_args()

    from distributed import Client, LocalCluster

    import dask_lance_index as dli
    from dask_lance_index.datagen import make_vectors, write_vectors

    root = tempfile.mkdtemp(prefix="dli-flat-")
    base = os.path.join(root, "base.lance")
    write_vectors(base, make_vectors(args.rows, args.dim, seed=0), max_rows_per_file=-(-args.rows // 8))
    warnings.simplefilter("ignore")  # distributed's notes on ports in use and cluster start-up
    if args.compare == "writer":
        settings = {"plain": {}, "lance": {"DASK_LANCE_INDEX_LANCE_FILE_WRITER": "1"}}
    else:
        settings = {"tuned": {}, "untuned": {"DASK_LANCE_INDEX_NO_MALLOC_TUNING": "1"}}
    clusters = {name: LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                   env=env) for name, env in settings.items()}
    clients = {name: Client(c) for name, c in clusters.items()}
    for client in clients.values():
        client.run(lambda: __import__("dask_lance_index.build") and __import__("lance"))
    print(f"IVF_FLAT {args.rows} x {args.dim}, {args.num_partitions} partitions, 2-worker LocalCluster each")
    print(f"{'cluster':>8s} {'run':>4s} {'total s':>8s} {'build s':>8s} {'tasks':>6s}")
    try:
        for run in range(args.repeats):
            for name, client in clients.items():
                uri = os.path.join(root, "run.lance")
                shutil.rmtree(uri, ignore_errors=True)
                shutil.copytree(base, uri)
                os.sync()
                t0 = time.perf_counter()
                result = client.compute(dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=args.num_partitions,
                                                         client=client, compute=False)).result()
                total = time.perf_counter() - t0
                print(f"{name:>8s} {run + 1:>4d} {total:8.2f} {result.seconds['build']:8.2f} "
                      f"{len(result.segments):>6d}", flush=True)
    finally:
        logging.getLogger("distributed").setLevel(logging.ERROR)  # no shutdown chatter
        for name in clients:
            clients[name].close()
            clusters[name].close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
