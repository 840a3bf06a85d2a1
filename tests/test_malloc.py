"""The allocator settings a task runs under (dask_lance_index._malloc), in a fresh
process started as dask's nanny starts workers (MALLOC_TRIM_THRESHOLD_ set)."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

PROBE = textwrap.dedent(
    """
    import json, os
    import numpy as np
    from dask_lance_index.runtime.malloc import _set_numpy_hugepages, bulk_allocations, small_pages

    def hugepages():  # NumPy's madvise of huge pages for new arrays, left as it was
        before = _set_numpy_hugepages(True)
        _set_numpy_hugepages(before)
        return before

    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def kept_after_free():  # resident MB an 8 MB array leaves behind once freed
        before = rss_mb()
        a = np.ones(1 << 20)  # 8 MB, every page touched
        del a
        return rss_mb() - before

    out = {"outside": kept_after_free(), "huge_outside": hugepages()}
    with bulk_allocations():
        out["inside"] = kept_after_free()
        out["huge_in_bulk"] = hugepages()
        inner = rss_mb()
    out["released_at_exit"] = inner - rss_mb()
    with small_pages():
        out["huge_inside"] = hugepages()
    out["after"] = kept_after_free()
    out["huge_after"] = hugepages()
    print(json.dumps(out))
    """
)


def _probe(**env):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("DASK_LANCE_INDEX_NO_MALLOC_TUNING", "NUMPY_MADVISE_HUGEPAGE")}
    full.update(env)
    res = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, check=True)
    import json

    return json.loads(res.stdout)


def test_a_task_keeps_freed_memory_for_the_next_batch_and_returns_it_at_the_end():
    got = _probe(MALLOC_TRIM_THRESHOLD_="65536")  # as dask's nanny sets it
    assert got["outside"] < 2  # pinned 128 KB mmap threshold: an 8 MB array is unmapped on free
    assert got["inside"] > 6  # inside a task: it stays in the heap for the next batch
    assert got["released_at_exit"] > 6  # the last task out trims the heap
    assert got["after"] < 2  # and the nanny's settings are back


@pytest.mark.parametrize("numpy_setting", ["1", "0"])
def test_sampling_and_training_make_numpy_arrays_without_huge_pages_and_put_the_setting_back(numpy_setting):
    got = _probe(NUMPY_MADVISE_HUGEPAGE=numpy_setting)  # no MALLOC_ variable: any process, not only a worker
    assert got["huge_outside"] is (numpy_setting == "1")
    assert got["huge_inside"] is False
    assert got["huge_after"] is got["huge_outside"]
    assert got["huge_in_bulk"] is got["huge_outside"]  # the build's own tasks keep NumPy's setting


def test_the_opt_out_leaves_the_allocator_alone():
    got = _probe(MALLOC_TRIM_THRESHOLD_="65536", DASK_LANCE_INDEX_NO_MALLOC_TUNING="1", NUMPY_MADVISE_HUGEPAGE="1")
    assert got["inside"] < 2 and got["released_at_exit"] < 2
    assert got["huge_inside"] is True


def test_give_back_zeroes_only_the_whole_pages_of_the_rows_asked():
    """runtime.give_back: the kernel takes back whole pages inside the rows given (they read
    as zeros), never a page a row outside them shares; an array that is not C-contiguous is
    refused with what to pass instead."""
    import sys

    import numpy as np

    from dask_lance_index.runtime import give_back

    a = np.ones((10_000, 100), np.float32)  # 400 bytes a row: rows straddle pages
    with pytest.raises(ValueError, match="C-contiguous"):
        give_back(a[:, :50], 0, 100)
    freed = give_back(a, 1_000, 3_000)
    if not sys.platform.startswith("linux") or os.environ.get("DASK_LANCE_INDEX_NO_MALLOC_TUNING"):
        assert freed == 0
        return
    assert 0 < freed <= 2_000 * 400 and freed % 4096 == 0
    zero = np.flatnonzero((a == 0).all(axis=1))
    assert len(zero) >= freed // 400 - 1 and zero.min() >= 1_000 and zero.max() < 3_000
    assert (a[:1_000] == 1).all() and (a[3_000:] == 1).all()
    assert ((a[1_000:3_000] == 0) | (a[1_000:3_000] == 1)).all()
    assert give_back(a, 5, 6) == 0  # one row holds no whole page
    b = np.ones((200_000, 100), np.float32)
    tail = b[190_000:]  # a view: rows past its end are another array's to keep
    assert 0 < give_back(tail, 5_000, 1_000_000) <= 5_000 * 400
    assert (b[:195_000] == 1).all()
