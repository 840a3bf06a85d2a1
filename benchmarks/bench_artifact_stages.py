"""Seconds per stage of the artifact engine beside the precomputed engine, in one process.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_artifact_stages.py --rows 1000000

Both engines get the same plan (same fragment groups) and the same trained model, and their
tasks run one after another in this process (no cluster, no scheduler), so the figures are
the work each stage does, not the machine's parallelism: precomputed = build tasks (encode,
scratch buffer, Lance segment); artifact = encode tasks, bucket writers, manifest, finalize
tasks (read by range, scratch buffer, Lance segment). Merge and commit are the same for both
and not timed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--num-partitions", type=int, default=256)
    p.add_argument("--num-sub-vectors", type=int, default=16)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--fragments", type=int, default=8)
    args = p.parse_args()

    import dask_lance_index as dli
    from dask_lance_index.build import ENGINES
    from dask_lance_index.datagen import make_vectors, write_vectors
    from dask_lance_index.model import IndexModel, residuals, train_ivf, train_pq
    from dask_lance_index.partition_artifacts import (
        EncodeGroup,
        WriteArtifact,
        WriteBuckets,
        num_reducers_for,
    )
    from dask_lance_index.storage import remove_index_dir

    root = tempfile.mkdtemp(prefix="dli-stages-")
    uri = f"{root}/data.lance"
    x = make_vectors(args.rows, args.dim, seed=0)
    write_vectors(uri, x, max_rows_per_file=-(-args.rows // args.fragments))
    s = x[np.random.default_rng(0).choice(args.rows, min(args.rows, 32768), replace=False)]
    c, _ = train_ivf(s, args.num_partitions, "l2", max_iters=10, seed=0)
    cb = train_pq(residuals(s, c, "l2"), args.num_sub_vectors, 8, max_iters=10, seed=0)
    del x, s
    model = IndexModel(c, cb)
    kw = dict(ivf_centroids=c, pq_codebook=cb, num_sub_vectors=args.num_sub_vectors, num_tasks=args.tasks)
    times: dict[str, float] = {}

    def timed(name, f):
        t = time.perf_counter()
        out = f()
        times[name] = time.perf_counter() - t
        return out

    plan = dli.plan_index(uri, "vector", "IVF_PQ", engine="precomputed", **kw)
    precomputed = ENGINES["precomputed"]
    segs = timed("precomputed: build tasks",
                 lambda: [precomputed.build_segment(plan, i, model) for i in range(plan.num_tasks)])
    for sgm in segs:
        remove_index_dir(uri, sgm.uuid)

    plan = dli.plan_index(uri, "vector", "IVF_PQ", engine="artifact", **kw)
    art = f"{root}/artifact"
    R = num_reducers_for(plan)
    encode, write = EncodeGroup(R), WriteBuckets(art, R, args.num_partitions, args.num_sub_vectors)
    enc = timed("artifact: encode tasks", lambda: [encode(plan, i, model) for i in range(plan.num_tasks)])
    buckets = timed("artifact: bucket writers", lambda: [write(r, [e[r] for e in enc]) for r in range(R)])
    summary = timed("artifact: manifest", lambda: WriteArtifact(art)(plan, model, buckets, [e[R] for e in enc]))
    enc = None  # the encoded rows are on disk now
    finalize, options = ENGINES["artifact"], {"artifact_uri": art}
    timed("artifact: finalize tasks",
          lambda: [finalize.build_segment(plan, i, model, None, options, summary) for i in range(plan.num_tasks)])
    times["artifact: all"] = sum(v for k, v in times.items() if k.startswith("artifact:"))

    print(f"{args.rows} x {args.dim}, {args.num_partitions} partitions, {args.num_sub_vectors} sub-vectors, "
          f"{plan.num_tasks} tasks, {R} bucket writers; one process, tasks run one after another")
    for k, v in times.items():
        print(f"  {k:28s} {v:7.2f} s")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
