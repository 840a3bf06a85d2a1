"""The same build on a local directory and on an S3 server, with and without the build journal.

    python benchmarks/bench_s3.py                          # 200k x 64 IVF_PQ, LocalCluster of 2 workers
    python benchmarks/bench_s3.py --rows 50000 --repeat 3
    python benchmarks/bench_s3.py --endpoint http://127.0.0.1:9000 --bucket vectors   # your own S3 server

The S3 server is moto's server mode on loopback (``pip install "moto[server]"``) unless
--endpoint names another one. Credentials reach Lance, the journal and the workers only through
``storage_options``: the benchmark removes every AWS_* variable before it starts the cluster.

Prints, per (store, journal) pair, the build's seconds (each repeat on a fresh copy of the
dataset; the journal settings swap order every round, so that neither always runs first), the
recall@10 at nprobes 20, refine_factor 5, against NumPy brute force, and the journal's overhead
on each store: median seconds with the default journal (``<uri>/_dli/<build id>``) minus median
seconds with ``journal=False``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rows-per-file", type=int, default=25_000)
    p.add_argument("--num-partitions", type=int, default=64)
    p.add_argument("--num-sub-vectors", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--endpoint", help="an S3 server's URL; default: start moto on loopback")
    p.add_argument("--bucket", default="vectors")
    p.add_argument("--stores", default="local,s3", help="comma-separated: local, s3")
    args = p.parse_args(argv)

    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]  # credentials only through storage_options
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
    import lance
    from distributed import Client, LocalCluster

    import dask_lance_index as dli
    from dask_lance_index.datagen import make_vectors, vector_table
    from dask_lance_index.evaluation import exact_knn, recall_at_k, search

    moto = None
    endpoint = args.endpoint
    if endpoint is None:
        moto, endpoint = start_moto()
    so = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "aws_region": "us-east-1",
          "aws_endpoint": endpoint, "allow_http": "true"}
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                      region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=args.bucket)
    except Exception:  # already there
        pass
    x = make_vectors(args.rows, args.dim, seed=0)
    rng = __import__("numpy").random.default_rng(1)
    q = x[rng.choice(len(x), 100, replace=False)]
    truth = exact_knn(x, q, 10, "l2")
    table = vector_table(x)
    tmp = tempfile.mkdtemp(prefix="bench_s3_")
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    times: dict[tuple[str, str], list[float]] = {}
    recalls: dict[tuple[str, str], float] = {}
    try:
        warm = os.path.join(tmp, "warmup.lance")  # workers import Lance and friends once, untimed
        lance.write_dataset(table.slice(0, 20_000), warm, max_rows_per_file=5_000)
        dli.create_index(warm, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=args.num_sub_vectors,
                         client=client, progress=False)
        for r in range(args.repeat):
            for store in args.stores.split(","):
                # alternate the order each round: neither setting always runs first
                for journal in ("default", "off") if r % 2 == 0 else ("off", "default"):
                    name = f"b{r}-{journal}-{uuid.uuid4().hex[:6]}.lance"
                    uri = os.path.join(tmp, name) if store == "local" else f"s3://{args.bucket}/{name}"
                    opts = None if store == "local" else so
                    lance.write_dataset(table, uri, max_rows_per_file=args.rows_per_file, storage_options=opts)
                    t0 = time.perf_counter()
                    ds = dli.create_index(
                        uri, "vector", "IVF_PQ", num_partitions=args.num_partitions,
                        num_sub_vectors=args.num_sub_vectors, client=client, storage_options=opts,
                        journal=None if journal == "default" else False, progress=False,
                    )
                    seconds = time.perf_counter() - t0
                    times.setdefault((store, journal), []).append(seconds)
                    found, _ = search(ds, "vector", q, 10, nprobes=20, refine_factor=5)
                    recalls[(store, journal)] = recall_at_k(found, truth)
                    print(f"round {r}: {store:5s} journal={journal:7s} {seconds:7.2f} s", flush=True)
    finally:
        client.close()
        cluster.close()
        if moto is not None:
            moto.terminate()
    print(f"\n{args.rows} x {args.dim} IVF_PQ ({args.num_partitions} partitions, {args.num_sub_vectors} "
          f"sub-vectors), {len(x) // args.rows_per_file} fragments, LocalCluster of {args.workers} workers, "
          f"S3 at {endpoint}")
    print(f"{'store':6s} {'journal':8s} {'median s':>9s} {'all runs':>24s} {'recall@10':>10s}")
    for (store, journal), ts in times.items():
        runs = " ".join(f"{t:.1f}" for t in ts)
        print(f"{store:6s} {journal:8s} {statistics.median(ts):9.2f} {runs:>24s} {recalls[(store, journal)]:10.3f}")
    for store in args.stores.split(","):
        on, off = statistics.median(times[(store, "default")]), statistics.median(times[(store, "off")])
        print(f"journal overhead on {store}: {on - off:+.2f} s ({(on - off) / off:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
