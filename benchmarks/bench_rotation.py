"""Rotate N vectors with RQRotation (Lance's fast RaBitQ rotation in NumPy) against the floor
of a plain GEMM of the same shape (``x @ R.T`` with the dense d x d rotation matrix).

    python benchmarks/bench_rotation.py                       # 1M x 128 and 1M x 768
    python benchmarks/bench_rotation.py --rows 200000 --dims 128,256,768 --repeat 3

Prints one line per dimension: best-of-``repeat`` wall seconds (and process CPU seconds,
which count every BLAS thread) for the FWHT rotation, its inverse and the GEMM, the ratio of
rotation to GEMM wall time, and the largest difference between the two results. 1M x 768
float32 is 3 GB per array; the script holds the input, one output at a time and the GEMM
result (about 9 GB at that size): pass fewer ``--rows`` on a smaller machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dask_lance_index as dli


def timed(fn, repeat: int):
    best_wall = best_cpu = float("inf")
    out = None
    for _ in range(repeat):
        out = None  # free the previous result before the next run
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


def gemm_rotate(x: np.ndarray, m: np.ndarray, chunk: int = 262144) -> np.ndarray:
    out = np.empty_like(x)
    mt = np.ascontiguousarray(m.T)
    for s in range(0, len(x), chunk):
        np.matmul(x[s : s + chunk], mt, out=out[s : s + chunk])
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dims", default="128,768", help="comma-separated dimensions (multiples of 8)")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs; best of {args.repeat}; rows={args.rows:,}")
    for d in (int(v) for v in args.dims.split(",")):
        rng = np.random.default_rng(d)
        x = np.empty((args.rows, d), dtype=np.float32)
        for s in range(0, args.rows, 262144):
            x[s : s + 262144] = rng.standard_normal((min(262144, args.rows - s), d), dtype=np.float32)
        rot = dli.RQRotation.from_json(dli.build_rq_rotation(d, num_bits=1, seed=d))
        m = rot.matrix()
        y, fw, fc = timed(lambda rot=rot, x=x: rot.apply(x), args.repeat)
        _, iw, ic = timed(lambda rot=rot, y=y: rot.inverse(y), args.repeat)
        g, gw, gc = timed(lambda x=x, m=m: gemm_rotate(x, m), args.repeat)
        diff = float(np.abs(y - g).max())
        del y, g
        kind = "power of two" if d & (d - 1) == 0 else "head/tail FWHT + Kac's walk"
        print(
            f"rotate {args.rows:,} x {d} ({kind}): fwht {fw:.2f} s (cpu {fc:.2f}), inverse {iw:.2f} s "
            f"(cpu {ic:.2f}), gemm {gw:.2f} s (cpu {gc:.2f}); fwht/gemm {fw / gw:.2f}x; "
            f"max |fwht - gemm| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
