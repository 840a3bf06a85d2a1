"""A build larger than memory would like: tens of millions of rows on local disk, with each
worker's peak memory, and optionally Lance's own build of the same data in the same run.

The data set is generated chunk by chunk (never whole in memory) into ``--data-dir`` once
and reused by later runs with the same shape. dask_lance_index builds on a LocalCluster of
``--workers`` worker processes (one thread each); recall@10 is measured against exact
neighbours computed over the whole data set on the same cluster.

    python benchmarks/bench_large.py --rows 20000000 --num-partitions 8192            # ours
    python benchmarks/bench_large.py --rows 20000000 --num-partitions 8192 --lance    # and Lance's

Prints the stage seconds, every worker's peak resident memory (VmHWM: the largest it
ever was, training and build included), this process's, and recall at nprobes 20 and
50 with and without refine_factor 5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_build import peak_rss_mb  # noqa: E402  (a sibling script, not a package)


def make_dataset(uri: str, rows: int, dim: int, rows_per_fragment: int) -> None:
    """Write ``rows`` clustered vectors to ``uri`` chunk by chunk, unless already there."""
    import lance
    import pyarrow as pa

    from dask_lance_index.datagen import vector_chunks, vector_table

    if os.path.exists(uri):
        ds = lance.dataset(uri)
        if ds.count_rows() == rows:
            return
        raise SystemExit(f"{uri} holds {ds.count_rows()} rows, not {rows}: remove it or pick another --data-dir")
    schema = vector_table(np.zeros((1, dim), np.float32)).schema

    def batches():
        start = 0
        for chunk in vector_chunks(rows, dim, seed=0, chunk_rows=262144):
            yield from vector_table(chunk, start_id=start).to_batches()
            start += len(chunk)

    t = time.time()
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), uri,
                        max_rows_per_file=rows_per_fragment, max_rows_per_group=8192)
    print(f"wrote {rows} x {dim} to {uri} in {time.time() - t:.0f} s", flush=True)


def queries_of(rows: int, dim: int, n: int) -> np.ndarray:
    """``n`` queries near rows of the first chunk (the generator's first rows), with a little noise."""
    from dask_lance_index.datagen import vector_chunks

    first = next(vector_chunks(rows, dim, seed=0, chunk_rows=262144))
    rng = np.random.default_rng(1)
    q = first[rng.choice(len(first), n, replace=False)]
    return q + 0.01 * rng.standard_normal(q.shape).astype(np.float32)


def recall(uri: str, q: np.ndarray, truth: np.ndarray, name: str | None = None) -> dict:
    import lance

    from dask_lance_index.evaluation import recall_at_k, search

    ds = lance.dataset(uri)
    out = {}
    for nprobes in (20, 50):
        for refine in (None, 5):
            found, latency = search(ds, "vector", q, 10, nprobes=nprobes, refine_factor=refine)
            out[f"np{nprobes}{'r' if refine else ''}"] = round(recall_at_k(found, truth), 4)
    return out


def build_ours(args, uri: str) -> dict:
    import warnings

    from distributed import Client, LocalCluster

    import dask_lance_index as dli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit=None)
    with cluster, Client(cluster) as client:
        client.run(lambda: __import__("dask_lance_index.build") and __import__("lance"))
        t0 = time.perf_counter()
        build = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=args.num_partitions,
                                 num_sub_vectors=args.num_sub_vectors, client=client, compute=False, replace=True)
        print(build.plan, flush=True)
        result = client.compute(build).result()
        seconds = time.perf_counter() - t0
        workers = sorted(client.run(peak_rss_mb).values(), reverse=True)
        return {"seconds": seconds, "stages": result.seconds, "worker_peak_mb": workers,
                "segments_built": result.num_segments_built, "merges": result.num_merges,
                "agreement": result.assignment_agreement, "build_agreement": result.build_agreement,
                "coarse_probes": result.coarse_probes}


def build_lance(args, uri: str) -> dict:
    """Lance's create_index in its own process (its peak memory is its own)."""
    code = (f"import time, lance, json, sys; sys.path.insert(0, {HERE!r}); from bench_build import peak_rss_mb; "
            f"ds = lance.dataset({uri!r}); t = time.perf_counter(); "
            f"ds.create_index('vector', 'IVF_PQ', num_partitions={args.num_partitions}, "
            f"num_sub_vectors={args.num_sub_vectors}, replace=True); "
            "print('RESULT ' + json.dumps({'seconds': time.perf_counter() - t, 'peak_mb': peak_rss_mb()}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"Lance's build failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--num-partitions", type=int, default=8192)
    p.add_argument("--num-sub-vectors", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--rows-per-fragment", type=int, default=1_000_000)
    p.add_argument("--data-dir", default="/tmp/dli-large")
    p.add_argument("--lance", action="store_true", help="also time Lance's create_index on the same data")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    from distributed import Client, LocalCluster

    from dask_lance_index.evaluation import exact_knn_dataset

    uri = os.path.join(args.data_dir, f"vectors-{args.rows}x{args.dim}.lance")
    os.makedirs(args.data_dir, exist_ok=True)
    make_dataset(uri, args.rows, args.dim, args.rows_per_fragment)
    q = queries_of(args.rows, args.dim, args.queries)
    t = time.time()
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        truth = exact_knn_dataset(uri, "vector", q, 10, id_column="id", client=client)
    print(f"exact neighbours of {len(q)} queries in {time.time() - t:.0f} s", flush=True)

    out = {"args": vars(args)}
    ours = build_ours(args, uri)
    ours["recall"] = recall(uri, q, truth)
    out["dli"] = ours
    print(f"dask_lance_index: {ours['seconds']:.1f} s; stages "
          + ", ".join(f"{k} {v:.1f}s" for k, v in ours["stages"].items() if k != "total")
          + f"; {ours['segments_built']} segments built, {ours['merges']} merges"
          + f"; worker peak MB {', '.join(f'{m:.0f}' for m in ours['worker_peak_mb'])}"
          + (f"; {ours['coarse_probes']} probes, agreement {ours['agreement']} (sample) "
             f"{ours['build_agreement']} (indexed rows)" if ours["agreement"] is not None else "")
          + f"; recall {ours['recall']}", flush=True)
    if args.lance:
        lance_run = build_lance(args, uri)
        lance_run["recall"] = recall(uri, q, truth)
        out["lance"] = lance_run
        print(f"Lance: {lance_run['seconds']:.1f} s, peak {lance_run['peak_mb']:.0f} MB; recall {lance_run['recall']}; "
              f"ratio {ours['seconds'] / lance_run['seconds']:.2f}", flush=True)
    out["driver_peak_mb"] = peak_rss_mb()
    print(f"this process's peak: {out['driver_peak_mb']:.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
