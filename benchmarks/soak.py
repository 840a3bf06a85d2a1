"""The soak: index operations in a row on a multi-host cluster with network faults.

    python benchmarks/soak.py                       # 30 operations, dataset on the shared disk
    python benchmarks/soak.py --operations 10 --seed 3 --store s3

Starts the hosts of ``tests/netns.py`` (a scheduler, two workers, an object-store host, each a
network namespace on a user-space switch; needs root), then runs ``--operations`` operations drawn
at random: create (or replace) the vector index, append rows and ``update_index``, delete rows,
compact, create the scalar index on ``id``; about half the library's operations meet a fault: a
worker's link cut for longer than the scheduler's timeouts, a slow lossy network (100 ms, 2%), the
object store's link cut for seconds (``--store s3`` only), the scheduler killed (then restarted and
the call repeated with the same journal), the client's link cut during the merge and commit. After
every operation it checks the invariants (``tests/soak.py``) and at the end prints the table.
Exits 1 when an invariant was violated or a file was left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.conftest import _clean_env  # noqa: E402
from tests.netns import unavailable  # noqa: E402
from tests.soak import soak  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--operations", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", choices=["local", "s3"], default="local")
    p.add_argument("--rows", type=int, default=120_000)
    p.add_argument("--append", type=int, default=10_000)
    p.add_argument("--keep", action="store_true", help="keep the data and the host logs")
    args = p.parse_args()
    why = unavailable()
    if why:
        print(f"cannot make hosts here: {why}")
        return 2
    workdir = tempfile.mkdtemp(prefix="dli-soak-")
    warnings.simplefilter("ignore")
    t0 = time.time()
    try:
        tally = soak(workdir, operations=args.operations, seed=args.seed, store=args.store, env=_clean_env(),
                     rows=args.rows, append=args.append, log=lambda line: print(line, flush=True))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"soak: {args.operations} operations, seed {args.seed}, store {args.store}, "
          f"{time.time() - t0:.0f} s in all")
    print(tally.table())
    for op, fault, text in tally.errors:
        print(f"  failure: {op} under {fault}: {text[:200]}")
    return 1 if tally.violations or tally.leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
