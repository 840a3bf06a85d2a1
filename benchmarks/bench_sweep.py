"""Lance's create_index against dask_lance_index over the shapes users build, side by side, with a plot.

Two sweeps, each configuration one run of ``bench_build.py`` (its own data set, both
builds in their own subprocesses on the same copy of the data, recall against
NumPy brute force):

* ``partitions``: IVF_PQ on clustered 128-d vectors, 16 sub-vectors, at 256, 1,024,
  4,096 and 16,384 partitions, with Lance's sample rule's rows (256 per partition:
  65,536 to 4M rows), so Lance trains every partition it is asked for up to 4,096 (at
  16,384 it trains 4,096: its sample stops at 2**20 rows);
* ``types``: the seven vector index types at 128, 384 and 768 dimensions, 256
  partitions, ``--rows`` rows (PQ types: 16, 24 and 48 sub-vectors).

    python benchmarks/bench_sweep.py --json sweep.json --plot docs/sweep.png
    python benchmarks/bench_sweep.py --sweeps types --rows 100000 --types IVF_PQ,IVF_SQ
    python benchmarks/bench_sweep.py --replot sweep.json --plot docs/sweep.png   # redraw without building

Prints one line per configuration as it finishes and a table at the end: seconds of each,
the ratio, recall@10 at nprobes 20 and 50 without and with refine_factor 5, and our
build's largest worker memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TYPES = ("IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_FLAT", "IVF_HNSW_SQ", "IVF_HNSW_PQ")
SUB_VECTORS = {128: 16, 384: 24, 768: 48}
PARTITIONS = (256, 1024, 4096, 16384)


def configs(args) -> list[dict]:
    out = []
    if "partitions" in args.sweeps:
        for k in PARTITIONS:
            if k <= args.max_partitions:
                out.append(dict(sweep="partitions", index_type="IVF_PQ", dim=128, num_partitions=k, rows=256 * k,
                                num_sub_vectors=16))
    if "types" in args.sweeps:
        for dim in args.dims:
            for t in args.types:
                out.append(dict(sweep="types", index_type=t, dim=dim, num_partitions=256, rows=args.rows,
                                num_sub_vectors=SUB_VECTORS.get(dim, dim // 16)))
    return out


def run(cfg: dict, args) -> dict | None:
    """One side-by-side run of bench_build.py; its figures, or None when it failed."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.join(HERE, "bench_build.py"), "--rows", str(cfg["rows"]), "--dim", str(cfg["dim"]),
           "--index-type", cfg["index_type"], "--num-partitions", str(cfg["num_partitions"]),
           "--num-sub-vectors", str(cfg["num_sub_vectors"]), "--engines", "lance,dli", "--queries", str(args.queries),
           "--json", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"failed: {cfg}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}", flush=True)
        return None
    with open(out) as f:
        results = json.load(f)["results"]
    os.unlink(out)
    by = {r["engine"]: r for r in results}
    if "lance" not in by or "dli" not in by:
        print(f"incomplete: {cfg}\n{proc.stdout[-1500:]}", flush=True)
        return None
    return {**cfg, "lance": by["lance"], "dli": by["dli"], "ratio": by["dli"]["seconds"] / by["lance"]["seconds"]}


def _recall(r: dict, key: str) -> float:
    return r["recall"][key][0] if key in r.get("recall", {}) else float("nan")


def line(row: dict) -> str:
    lance, dli = row["lance"], row["dli"]
    cells = []
    for key in ("np20", "np50", "np20r", "np50r"):
        cells.append(f"{_recall(dli, key):.3f}/{_recall(lance, key):.3f}")
    return (f"{row['index_type']:>13s} {row['dim']:>4d} {row['num_partitions']:>6d} {row['rows']:>8d} "
            f"{lance['seconds']:8.2f} {dli['seconds']:8.2f} {row['ratio']:6.2f}  " + "  ".join(cells)
            + f"  {dli.get('worker_peak_mb', float('nan')):7.0f}")


HEADER = (f"{'type':>13s} {'dim':>4s} {'parts':>6s} {'rows':>8s} {'lance s':>8s} {'dli s':>8s} {'ratio':>6s}  "
          "recall@10 dli/lance: np20        np50        np20 r5     np50 r5      worker MB")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = sorted((r for r in rows if r["sweep"] == "partitions"), key=lambda r: r["num_partitions"])
    types = [r for r in rows if r["sweep"] == "types"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    ax = axes[0]
    if parts:
        ks = [r["num_partitions"] for r in parts]
        ax.plot(ks, [r["lance"]["seconds"] for r in parts], "o-", label="Lance create_index")
        ax.plot(ks, [r["dli"]["seconds"] for r in parts], "s-", label="dask_lance_index, 2 workers")
        for r in parts:
            ax.annotate(f"{r['ratio']:.2f}x", (r["num_partitions"], r["dli"]["seconds"]), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("num_partitions (rows = 256 per partition)")
        ax.set_ylabel("build seconds")
        ax.set_title("IVF_PQ, 128-d, 16 sub-vectors")
        ax.legend()
    ax = axes[1]
    if types:
        dims = sorted({r["dim"] for r in types})
        names = [t for t in TYPES if any(r["index_type"] == t for r in types)]
        width = 0.8 / max(len(dims), 1)
        for i, dim in enumerate(dims):
            by = {r["index_type"]: r["ratio"] for r in types if r["dim"] == dim}
            xs = [j + i * width for j in range(len(names))]
            ax.bar(xs, [by.get(t, 0.0) for t in names], width, label=f"{dim}-d")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + width * (len(dims) - 1) / 2 for j in range(len(names))])
        ax.set_xticklabels([t.replace("IVF_", "") for t in names], rotation=30)
        ax.set_ylabel("our seconds / Lance's")
        ax.set_title(f"256 partitions, {types[0]['rows']:,} rows")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps", default="partitions,types")
    p.add_argument("--max-partitions", type=int, default=16384)
    p.add_argument("--dims", default="128,384,768")
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--rows", type=int, default=200000, help="rows of the types sweep")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--json", help="write every configuration's figures here")
    p.add_argument("--plot", help="draw the two sweeps to this PNG")
    p.add_argument("--replot", help="draw from an earlier --json instead of building")
    args = p.parse_args()
    args.sweeps = args.sweeps.split(",")
    args.dims = [int(d) for d in args.dims.split(",")]
    args.types = args.types.split(",")
    if args.replot:
        with open(args.replot) as f:
            rows = json.load(f)["rows"]
    else:
        rows = []
        print(HEADER, flush=True)
        for cfg in configs(args):
            row = run(cfg, args)
            if row is not None:
                rows.append(row)
                print(line(row), flush=True)
                if args.json:  # after every run: a long sweep keeps what it has
                    with open(args.json, "w") as f:
                        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print("\n" + HEADER)
    for row in rows:
        print(line(row))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
