"""Memory of the streaming partition-artifact writer: peak RSS and buffered bytes vs rows.

    python benchmarks/bench_artifact_writer.py                       # 200k, 800k, 3.2M rows
    python benchmarks/bench_artifact_writer.py --rows 200000,800000 --max-buffered-rows 65536

Each size runs in its own subprocess, which generates its encoded rows batch by batch
(row ids, partition ids, 16-byte PQ codes: what an encode task hands the writer) so the
input never sits in memory whole, and reports its peak resident set (VmHWM), the
writer's peak buffered bytes, its flushes and seconds. A bounded writer shows the same
peak at every size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run_one(rows: int, args) -> dict:
    import lance.file  # noqa: F401  (imported before the baseline: the writer needs it)

    from dask_lance_index.partition_artifacts import (
        PartitionArtifactWriter,
        assemble_manifest,
        write_manifest,
    )

    base = vm_hwm_mb()
    rng = np.random.default_rng(rows)
    root = tempfile.mkdtemp(prefix="dli-writer-bench-")
    t0 = time.perf_counter()
    w = PartitionArtifactWriter(root, args.num_partitions, args.m, max_buffered_rows=args.max_buffered_rows)
    for s in range(0, rows, args.batch):
        k = min(args.batch, rows - s)
        w.append(np.arange(s, s + k, dtype=np.uint64), rng.integers(0, args.num_partitions, k).astype(np.uint32),
                 rng.integers(0, 256, (k, args.m)).astype(np.uint8))
    summary = w.finish()
    write_manifest(root, assemble_manifest(args.num_partitions, [summary]))
    secs = time.perf_counter() - t0
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "seconds": secs, "baseline_mb": base, "peak_rss_mb": vm_hwm_mb(),
            "peak_buffered_mb": summary.peak_buffered_bytes / 2**20, "flushes": summary.flushes}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="200000,800000,3200000")
    p.add_argument("--num-partitions", type=int, default=256)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--batch", type=int, default=65536)
    p.add_argument("--max-buffered-rows", type=int, default=1 << 20)
    p.add_argument("--_run", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._run:
        print("RESULT " + json.dumps(run_one(args._run, args)))
        return 0
    print(f"writer: {args.num_partitions} partitions, {args.m}-byte codes, batches of {args.batch}, "
          f"max_buffered_rows={args.max_buffered_rows}")
    print(f"{'rows':>10s} {'seconds':>8s} {'base MB':>8s} {'peak RSS MB':>12s} {'peak buffered MB':>17s} {'flushes':>8s}")
    for rows in (int(r) for r in args.rows.split(",")):
        cmd = [sys.executable, os.path.abspath(__file__), "--_run", str(rows)] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            print(f"{rows}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(line[0][7:])
        print(f"{r['rows']:>10d} {r['seconds']:>8.2f} {r['baseline_mb']:>8.0f} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_buffered_mb']:>17.1f} {r['flushes']:>8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
