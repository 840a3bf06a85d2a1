"""The soak, short: a few index operations in a row on hosts in network namespaces, the faults of
``tests/soak.py`` that cost seconds once each, and the dataset's invariants after every operation (``benchmarks/soak.py``
runs the long one)."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import _clean_env
from .netns import unavailable
from .soak import soak

WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")

# The faults that cost seconds, each once, on the dataset on the store host's S3 server (so that
# cutting the store's link matters): create, then the library's other operations, with a delete
# and a compaction between them. ``slow_lossy`` is left to the benchmark: on the S3 store every
# request pays the slow links (about a minute for one operation here); ``scheduler_kill`` (20 s
# here) is left to it too, and to tests/test_hosts.py, which kills the scheduler under a CLI build.
SCHEDULE = [
    ("create", None),
    ("update", "store_cut"),
    ("delete", None),
    ("scalar", "client_cut"),
    ("compact", None),
    ("update", "worker_cut"),
]


def test_the_soak_finds_nothing_lost_and_nothing_left(tmp_path):
    t0 = time.time()
    tally = soak(str(tmp_path), SCHEDULE, store="s3", env=_clean_env(), rows=16_000, append=2_000)
    print(f"\n{tally.table()}\n{time.time() - t0:.0f} s")
    assert sum(tally.operations.values()) == len(SCHEDULE)
    assert set(tally.faults) == {f for _, f in SCHEDULE if f}
    assert tally.violations == [] and tally.leftovers == [], tally.table()
