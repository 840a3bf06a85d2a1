"""Scalar and full-text index builds: Lance single-process against ours on a local cluster.

    python benchmarks/bench_scalar.py --synthetic-rows 2000000 --workers 2

Two corpora:

* **real**: the Debian package records of ``apt-cache dumpavail`` (the description, first line
  and long text, as ``text``; the installed size as ``size``) and, when the ``fortunes`` package
  is installed, every fortune under ``/usr/share/games/fortunes`` (``size``: its length);
* **synthetic**: ``--synthetic-rows`` documents made from the real corpus: each document's
  length in words is drawn from the real documents' lengths, and its words are drawn
  independently with the real corpus' word frequencies (lower-cased ``\\w+`` tokens), so the
  vocabulary and its Zipf tail are real while the rows are many. ``size`` is a random integer.

For each corpus, INVERTED on ``text`` and BTREE on ``size`` are built by Lance's own
``create_scalar_index`` in this process, and by ``dli.create_scalar_index`` on a
``LocalCluster`` of ``--workers`` single-threaded processes with ``--tasks`` build tasks (each
list entry one run); with ``--lance-ray PYTHON`` also by ``lance_ray.create_scalar_index`` run
by that interpreter (Ray started before the clock). Each run starts from its own copy of the
dataset. Every build's answers are checked against Lance's (row counts of full-text queries and
filters). Printed: a table of seconds, ours split into its stages (plan, build: the wall time
from the first build task's start to the last one's end, merge, commit, and other: the rest of
the wall time, graph submission, scheduling and journal writes) and the ratio to Lance. The
workers are warmed on a small build first (imports), not timed.
Datasets are cached under ``--cache`` (default a temporary directory), never committed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections import Counter

import numpy as np
import pyarrow as pa

os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")

FORTUNES = "/usr/share/games/fortunes"
WORD = re.compile(r"\w+")
TEXT_QUERIES = ("package", "library", "python", "love", "server", "the")
SIZE_FILTERS = ("size < 100", "size BETWEEN 1000 AND 2000", "size = 512")


def debian_records() -> list[tuple[str, int]]:
    """(description, installed size) of every package record ``apt-cache dumpavail`` prints."""
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    rows = []
    for record in out.split("\n\n"):
        desc, size, in_desc = [], 0, False
        for line in record.splitlines():
            if line.startswith("Installed-Size:"):
                size = int(line.split(":", 1)[1].strip() or 0)
                in_desc = False
            elif line.startswith("Description:"):
                desc.append(line.split(":", 1)[1].strip())
                in_desc = True
            elif in_desc and line.startswith(" "):
                desc.append(line.strip(" ."))
            else:
                in_desc = False
        if desc:
            rows.append((" ".join(desc), size))
    return rows


def fortunes() -> list[str]:
    """Every fortune (entries separated by a line ``%``) of the installed fortune files."""
    out = []
    for path in sorted(glob.glob(os.path.join(FORTUNES, "*"))):
        if path.endswith((".dat", ".u8")) or os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            out += [e.strip() for e in f.read().split("\n%\n") if e.strip()]
    return out


def real_table() -> pa.Table:
    deb = debian_records()
    fort = fortunes()
    text = [d for d, _ in deb] + fort
    size = [s for _, s in deb] + [len(t) for t in fort]
    print(f"real corpus: {len(deb)} Debian package descriptions + {len(fort)} fortunes = {len(text)} rows")
    return pa.table({"text": pa.array(text, pa.string()), "size": pa.array(size, pa.int64())})


def synthetic_table(real: pa.Table, rows: int, seed: int = 0) -> pa.Table:
    """``rows`` documents: real document lengths, words drawn with the real word frequencies."""
    docs = [WORD.findall(t.lower()) for t in real["text"].to_pylist()]
    counts = Counter(w for d in docs for w in d)
    vocab = np.array(list(counts), dtype=object)
    p = np.array([counts[w] for w in vocab], dtype=np.float64)
    p /= p.sum()
    lengths = np.array([max(1, len(d)) for d in docs])
    rng = np.random.default_rng(seed)
    n_words = rng.choice(lengths, rows)
    words = vocab[rng.choice(len(vocab), int(n_words.sum()), p=p)]
    ends = np.cumsum(n_words)
    starts = ends - n_words
    text = [" ".join(words[a:b]) for a, b in zip(starts, ends)]
    print(f"synthetic corpus: {rows} rows, {int(n_words.sum())} words from a vocabulary of {len(vocab)}")
    return pa.table({"text": pa.array(text, pa.large_string()),
                     "size": pa.array(rng.integers(0, 100_000, rows), pa.int64())})


def answers(ds, index_type: str) -> list[int]:
    if index_type == "INVERTED":
        return [ds.to_table(columns=[], full_text_query=q, with_row_id=True).num_rows for q in TEXT_QUERIES]
    return [ds.count_rows(filter=f) for f in SIZE_FILTERS]


LANCE_RAY = """
import json, sys, time, ray, lance, lance_ray
uri, column, index_type, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
t = time.time()
lance_ray.create_scalar_index(uri, column=column, index_type=index_type, num_workers=workers)
print(json.dumps({"seconds": time.time() - t}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synthetic-rows", type=int, default=2_000_000)
    p.add_argument("--real-rows-per-fragment", type=int, default=10_000)
    p.add_argument("--synthetic-rows-per-fragment", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4],
                   help="build tasks of our runs, comma-separated (one run each)")
    p.add_argument("--types", default="INVERTED,BTREE")
    p.add_argument("--lance-ray", metavar="PYTHON", help="an interpreter with lance_ray installed")
    p.add_argument("--cache", help="where the corpora's datasets are kept between runs")
    args = p.parse_args()

    import lance
    from distributed import Client, LocalCluster

    import dask_lance_index as dli

    cache = args.cache or tempfile.mkdtemp(prefix="bench-scalar-")
    work = tempfile.mkdtemp(prefix="bench-scalar-runs-")
    real = real_table()
    corpora = {"real": (real, args.real_rows_per_fragment)}
    if args.synthetic_rows:
        corpora["synthetic"] = (None, args.synthetic_rows_per_fragment)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    # Warm the workers (imports, Lance's thread pools) on a small build: not timed.
    warm = os.path.join(work, "warm.lance")
    lance.write_dataset(real.slice(0, 4000), warm, max_rows_per_file=1000)
    dli.create_scalar_index(warm, "text", "INVERTED", client=client, progress=False)
    lines = []
    try:
        for corpus, (table, per_fragment) in corpora.items():
            base = os.path.join(cache, f"{corpus}-{args.synthetic_rows if corpus == 'synthetic' else 0}.lance")
            if not os.path.isdir(base):
                if table is None:
                    table = synthetic_table(real, args.synthetic_rows)
                lance.write_dataset(table, base, max_rows_per_file=per_fragment)
            rows = lance.dataset(base).count_rows()
            frags = len(lance.dataset(base).get_fragments())
            for index_type in args.types.split(","):
                column = "text" if index_type == "INVERTED" else "size"
                uri = os.path.join(work, "lance.lance")
                shutil.copytree(base, uri)
                ds = lance.dataset(uri)
                t = time.time()
                ds.create_scalar_index(column, index_type)
                lance_s = time.time() - t
                want = answers(lance.dataset(uri), index_type)
                shutil.rmtree(uri)
                lines.append((corpus, rows, frags, index_type, "Lance, one process", None, lance_s, {}, True))
                for tasks in args.tasks:
                    uri = os.path.join(work, f"ours-{tasks}.lance")
                    shutil.copytree(base, uri)
                    t = time.time()
                    build = dli.create_scalar_index(uri, column, index_type, num_tasks=tasks, client=client,
                                                    compute=False)
                    result = dli.run(build, client=client, progress=False)
                    total = time.time() - t
                    ok = answers(lance.dataset(uri), index_type) == want
                    shutil.rmtree(uri)
                    lines.append((corpus, rows, frags, index_type, f"ours, {args.workers} workers", build.plan.num_tasks,
                                  total, result.seconds, ok))
                if args.lance_ray:
                    uri = os.path.join(work, "lance-ray.lance")
                    shutil.copytree(base, uri)
                    out = subprocess.run([args.lance_ray, "-c", LANCE_RAY, uri, column, index_type, str(args.workers)],
                                         capture_output=True, text=True)
                    if out.returncode == 0:
                        secs = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
                        ok = answers(lance.dataset(uri), index_type) == want
                        lines.append((corpus, rows, frags, index_type, f"lance-ray, {args.workers} workers", None, secs,
                                      {}, ok))
                    else:
                        print(f"lance-ray failed on {corpus} {index_type}: {out.stderr.strip()[-300:]}")
                    shutil.rmtree(uri)
                print(f"done: {corpus} {index_type}", flush=True)
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)

    lance_s = {(c, t): s for c, _, _, t, who, _, s, _, _ in lines if who.startswith("Lance")}
    print()
    print("| corpus | rows | fragments | index | builder | tasks | seconds | x Lance | plan | build | merge | commit |"
          " other | same answers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for corpus, rows, frags, index_type, who, tasks, secs, stages, ok in lines:
        keys = ("plan", "build", "merge", "commit")
        st = [f"{stages.get(k, 0.0):.2f}" if stages else "" for k in keys]
        # other: the run's wall time outside the stages (graph submission, scheduling, journal writes)
        st.append(f"{secs - sum(stages.get(k, 0.0) for k in keys):.2f}" if stages else "")
        print(f"| {corpus} | {rows:,} | {frags} | {index_type} | {who} | {tasks or ''} | {secs:.2f} | "
              f"{secs / lance_s[corpus, index_type]:.2f} | {' | '.join(st)} | {'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
