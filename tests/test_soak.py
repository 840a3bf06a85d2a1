"""The soak, short: the library's index operations in a row on hosts in network namespaces, one
fault of ``tests/soak.py`` among them, and the dataset's invariants after every operation
(``benchmarks/soak.py`` runs the long one)."""

from __future__ import annotations

import time

import pytest

from .conftest import _clean_env
from .netns import unavailable
from .soak import soak

WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")

# One fault that costs seconds, on the dataset on the store host's S3 server (so that cutting the
# store's link matters): create, then the library's other operations, with a delete and a
# compaction between them. The other faults are left to the benchmark and to tests/test_hosts.py,
# which cuts a worker's link under a build, an update and a BTREE build, the client's link during a
# commit, and kills the scheduler under a CLI build; ``slow_lossy`` on the S3 store costs about a
# minute for one operation here.
SCHEDULE = [
    ("create", None),
    ("update", "store_cut"),
    ("delete", None),
    ("scalar", None),
    ("compact", None),
    ("update", None),
]


def test_the_soak_finds_nothing_lost_and_nothing_left(tmp_path):
    t0 = time.time()
    tally = soak(str(tmp_path), SCHEDULE, store="s3", env=_clean_env(), rows=16_000, append=2_000)
    print(f"\n{tally.table()}\n{time.time() - t0:.0f} s")
    assert sum(tally.operations.values()) == len(SCHEDULE)
    assert set(tally.faults) == {f for _, f in SCHEDULE if f}
    assert tally.violations == [] and tally.leftovers == [], tally.table()
