"""A cost model of a two-level IVF_PQ build (and an IVF_HNSW_SQ one), fitted to measured stage
costs, and what it predicts for shapes one machine cannot run (1B rows, 1024-d, 65,536
partitions, on 64 and 512 workers).

    python benchmarks/cost_model.py
    python benchmarks/cost_model.py --json a.json --json b.json   # refit from bench_build --json runs

The stage seconds come from ``bench_build.py`` runs on this machine (2 vCPUs that deliver about
one core, so a run's stage time is its core time):

    python benchmarks/bench_build.py --rows 1000000 --num-partitions 4096 --engines lance,dli,dli-flat --queries 300
    python benchmarks/bench_build.py --rows 4000000 --num-partitions 16384 --engines lance,dli --queries 300
    python benchmarks/bench_build.py --rows 1000000 --num-partitions 3906 --ivf-training hierarchical --engines lance,dli --queries 300

The first two fit the model; the third checks it. The model, per stage (W workers of one core,
n rows, d dimensions, k partitions, k1 = sqrt(k) groups, r = the library's REFINE_PROBES groups
searched by a refinement pass, p = 8 probes at build time, S = min(n, s k) sample rows with s the
library's HIERARCHICAL_SAMPLE_RATE, m sub-vectors of 256 codes):

* sample: ``(S + AGREEMENT_ROWS) x c_read x d / 128`` core seconds (reading is by the byte), spread over W;
* train: ``F x d / 128`` in the model task (coarse level, probes check, PQ: fixed in n, serial
  here, an upper bound) plus ``c_train x S x t x d`` spread over W, ``t`` the centroids a
  sample row meets: ``k1 + r k / k1`` for its group's k-means (of that order), as many for the
  first refinement pass, and for each later pass as many again or, where the library searches
  neighbours (16,384 partitions and up), REFINE_NEIGHBOURS; plus per refinement
  pass (at most REFINE_PASSES) the centroids to every worker and a tree of ``(k, d)`` float64 sums
  back;
* build: ``n x (a x d / 128 + b x (k1 + p k / k1 + 256) x d)`` spread over W (read and write per
  row; assignment and PQ encoding per row);
* merge: ``n x c_merge x (8 + m) / 24`` in ONE task (the concatenating merge; 24 bytes a row were measured).

It then predicts an IVF_HNSW_SQ build of the same 1B x 1024-d rows into 65,536 partitions
(``predict_hnsw``): the build tasks' scan and assignment as above (no PQ encoding) and their
storage write, spread over W; the graphs (``c_graph`` a row at 15,600 rows a partition and
that dimension), spread over W; and the merge's concatenation (by the stored byte) and graph
write (by the node), in ONE task per committed segment (``num_segments``). Those stage costs come from ``bench_hnsw_stages.py``
(``HNSW_STAGES``), not from the two fits.

It leaves out what it cannot see here: network and storage contention, stragglers, the scheduler
at a million tasks.
"""

from __future__ import annotations

import argparse
import json
import math

from dask_lance_index.model.coarse import REFINE_PASSES, REFINE_PROBES, default_refine_neighbours
from dask_lance_index.plan import AGREEMENT_ROWS, DEFAULT_ROWS_PER_TASK, HIERARCHICAL_SAMPLE_RATE, plan_merges
from dask_lance_index.plan.index_plan import FLAT_TASK_BYTES, held_row_bytes

# Measured stage seconds (bench_build, one run each; see the module docstring).
FIT = [
    dict(rows=1_000_000, k=4096, d=128, m=16, sample=0.45, train=4.51, build=3.70, merge=0.12),
    dict(rows=4_000_000, k=16384, d=128, m=16, sample=3.06, train=17.42, build=22.11, merge=0.41),
]
CHECK = [dict(rows=1_000_000, k=3906, d=128, m=16, sample=0.52, train=5.18, build=4.20, merge=0.12)]
PROBES = 8  # at build time: choose_probes picked 6-8 on the 128-d sets
LINK_BYTES_PER_S = 1.25e9  # 10 GbE per worker


def coarse(k: int) -> int:
    return max(1, round(math.sqrt(k)))


def searched(k: int, probes: int = PROBES) -> int:
    """Centroids one row's assignment multiplies against: the groups, then ``probes`` groups' partitions."""
    k1 = coarse(k)
    return k1 + probes * math.ceil(k / k1)


def trained(k: int) -> int:
    """Centroids one sample row meets in training: its group's k-means (counted as one
    pass of ``REFINE_PROBES`` groups: of that order, measured about 8 s against 4 s for
    the first pass at 16,384 partitions), the first refinement pass, and the later
    passes (their neighbours where the library uses them)."""
    later = default_refine_neighbours(k, coarse(k), REFINE_PROBES) or searched(k, REFINE_PROBES)
    return 2 * searched(k, REFINE_PROBES) + (REFINE_PASSES - 1) * later


def sample_rows(run: dict) -> int:
    return min(run["rows"], HIERARCHICAL_SAMPLE_RATE * run["k"])


def fit(runs: list[dict]) -> dict:
    """Per-unit costs from two runs (two unknowns per stage that has two terms)."""
    a, b = runs[0], runs[1]

    def two(y, x):  # y = f + c x through both points
        c = (y(b) - y(a)) / (x(b) - x(a))
        return y(a) - c * x(a), c

    f_train, c_train = two(lambda r: r["train"], lambda r: sample_rows(r) * trained(r["k"]) * r["d"])
    a_build, b_build = two(lambda r: r["build"] / r["rows"], lambda r: (searched(r["k"]) + 256) * r["d"])
    c_read = sum(r["sample"] for r in runs) / sum(sample_rows(r) + AGREEMENT_ROWS for r in runs)
    c_merge = sum(r["merge"] for r in runs) / sum(r["rows"] for r in runs)
    return dict(f_train=f_train, c_train=c_train, a_build=a_build, b_build=b_build, c_read=c_read, c_merge=c_merge)


def predict(c: dict, rows: int, k: int, d: int, m: int, workers: int) -> dict:
    s, scale = min(rows, HIERARCHICAL_SAMPLE_RATE * k), d / 128
    sample = (s + AGREEMENT_ROWS) * c["c_read"] * scale / workers
    comm = 0.0
    if workers > 1:  # centroids out to every worker, one (k, d) float64 partial per worker back as a tree
        comm = REFINE_PASSES * (k * d * 4 + k * d * 8 * math.ceil(math.log2(workers))) / LINK_BYTES_PER_S
    train = c["f_train"] * scale + c["c_train"] * s * trained(k) * d / workers + comm
    build = rows * (c["a_build"] * scale + c["b_build"] * (searched(k) + 256) * d) / workers
    merge = rows * c["c_merge"] * (8 + m) / 24
    return dict(sample=sample, train=train, build=build, merge=merge, total=sample + train + build + merge)


# An HNSW index of several tasks (IVF_HNSW_SQ, l2): stage costs per unit, one thread, measured by
# bench_hnsw_stages.py at 15,600 rows a partition (the 1B-row shape's 1e9 / 65,536 = 15,259):
#   python benchmarks/bench_hnsw_stages.py --index-type IVF_HNSW_SQ --rows 1000000 --dim 128 --num-partitions 64
#   python benchmarks/bench_hnsw_stages.py --index-type IVF_HNSW_SQ --rows 250000 --dim 1024 --num-partitions 16
# write and concat: seconds a byte of stored row (8 + d for SQ); graphs: a row; graph write: a node.
HNSW_STAGES = {
    128: dict(write=2.36e-9, concat=3.47e-9, graphs=8.36e-5, graph_write=2.41e-7),
    1024: dict(write=1.33e-9, concat=3.73e-9, graphs=3.49e-4, graph_write=2.91e-7),
}
HNSW_NODES_PER_ROW = 1.052  # graph nodes over all levels per row, as measured (1,052,363 for 1M rows)


def merge_path_rows(rows: int, d: int, segments: int) -> int:
    """Rows concatenated on the longest path of an IVF_HNSW_SQ build's staged merges, as the
    library plans them: tasks of its held-bytes bound, merges of at most 16 segments a step
    (each stage one after the other; the steps of a stage side by side)."""
    per_task = min(DEFAULT_ROWS_PER_TASK, FLAT_TASK_BYTES // held_row_bytes("IVF_HNSW_SQ", d))
    sizes = [per_task] * math.ceil(rows / per_task)
    plan = plan_merges("IVF_HNSW_SQ", sizes, num_segments=segments, concatenated=True)
    weight = dict(enumerate(sizes))
    path = 0
    for stage in plan.stages:
        for step in stage:
            weight[step.output] = sum(weight[i] for i in step.inputs)
        path += max(weight[step.output] for step in stage)
    return path


def predict_hnsw(c: dict, rows: int, k: int, d: int, workers: int, segments: int = 1) -> dict:
    """An IVF_HNSW_SQ build of ``rows`` x ``d`` into ``k`` partitions on ``workers`` one-core
    workers, committed as ``segments`` segments: the build tasks (scan and assignment as
    IVF_PQ's fit ``c``, without its PQ encoding, and the storage write) and the graph tasks
    divide by the workers; the staged merges' concatenations (their longest path:
    :func:`merge_path_rows`) and each final merge's graph write, of ``1 / segments`` of the
    rows, are one task each. ``one_task`` is the one-segment build as it was with one
    build task (scan, assignment and write in it alone)."""
    stages = HNSW_STAGES[d]
    stored = rows * (8 + d)
    build = rows * (c["a_build"] * d / 128 + c["b_build"] * searched(k) * d) + stored * stages["write"]
    concat = merge_path_rows(rows, d, segments) * (8 + d) * stages["concat"]
    graphs = rows * stages["graphs"] / workers
    graph_write = rows * HNSW_NODES_PER_ROW * stages["graph_write"] / segments
    return dict(build=build / workers, concat=concat, graphs=graphs, graph_write=graph_write,
                total=build / workers + concat + graphs + graph_write,
                one_task=build + graphs + graph_write * segments)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="append", help="bench_build --json output of a two-level run (two or more)")
    args = p.parse_args()
    runs = FIT
    if args.json:
        runs = []
        for path in args.json:
            with open(path) as f:
                doc = json.load(f)
            a = doc["args"]
            for r in doc["results"]:
                if r.get("engine") == "dli" and "stages" in r:
                    runs.append(dict(rows=r["rows"], k=a["num_partitions"], d=a["dim"], m=a["num_sub_vectors"],
                                     **{s: r["stages"][s] for s in ("sample", "train", "build", "merge")}))
    if len({(r["rows"], r["k"]) for r in runs}) < 2:
        p.error("the fit needs two-level runs of at least two shapes (rows, num_partitions)")
    c = fit(runs[:2])
    print("fitted: " + ", ".join(f"{k} {v:.3g}" for k, v in c.items()))
    print(f"\n{'shape':40s} {'W':>4s} {'sample':>8s} {'train':>8s} {'build':>8s} {'merge':>8s} {'total':>8s} {'measured':>9s}")
    for r in runs + CHECK:
        got = predict(c, r["rows"], r["k"], r["d"], r["m"], 1)
        meas = r["sample"] + r["train"] + r["build"] + r["merge"]
        tag = "fit" if r in runs else "check"
        print(f"{r['rows']:>11,} x {r['d']}-d, k={r['k']:>6,} ({tag:5s})   {1:4d} "
              + " ".join(f"{got[s]:8.1f}" for s in ("sample", "train", "build", "merge", "total")) + f" {meas:9.1f}")
    for workers in (64, 512):
        got = predict(c, 10**9, 65536, 1024, 64, workers)
        print(f"{'1,000,000,000 x 1024-d, k=65,536, m=64':40s} {workers:4d} "
              + " ".join(f"{got[s]:8.0f}" for s in ("sample", "train", "build", "merge", "total"))
              + f"   merge {100 * got['merge'] / got['total']:.0f}% of it")
    print(f"\n{'IVF_HNSW_SQ, 1,000,000,000 x 1024-d, k=65,536':46s} {'W':>4s} {'segs':>4s} {'build':>8s} "
          f"{'concat':>8s} {'graphs':>8s} {'g.write':>8s} {'total':>8s}")
    for workers in (64, 512):
        for segments in (1, 16):
            got = predict_hnsw(c, 10**9, 65536, 1024, workers, segments)
            serial = got["concat"] + got["graph_write"]
            print(f"{'':46s} {workers:4d} {segments:4d} "
                  + " ".join(f"{got[s]:8.0f}" for s in ("build", "concat", "graphs", "graph_write", "total"))
                  + f"   in merge tasks: {100 * serial / got['total']:.0f}%"
                  + (f"; with one build task: {got['one_task']:.0f}" if segments == 1 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
