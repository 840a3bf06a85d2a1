"""Allocator settings scoped to a task's bulk work: glibc's thresholds and NumPy's huge pages.

Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` so that
freed memory goes back to the OS. Setting it also pins glibc's mmap threshold
at 128 KB: every larger allocation (a NumPy temporary, a batch Lance decodes
or writes, which goes through the same malloc) becomes an mmap, page faults
and a munmap. Measured on one 1M-row build task in a plain process
(``benchmarks``-style, one BLAS thread): 5.4 s, and 7.9 s with that variable
set; Lance's scan of the rows went from 0.48 s to 1.23 s. The 2M-row benchmark
build on a LocalCluster, three runs each, interleaved: 14.99/15.34/16.96 s
without this module, 13.99/14.31/15.30 s with it (training 2.55-2.70 s against
2.95-3.31 s), at a peak of 498-525 MB per worker against 376-379 MB.

:func:`bulk_allocations` lifts both thresholds while a sampling, training,
build or merge task runs and, when the last such task in the process finishes,
puts the process's own settings back and trims the heap, so memory still
goes back to the OS between tasks as the nanny intends. It acts only on
glibc and only when ``MALLOC_TRIM_THRESHOLD_`` (or ``MALLOC_MMAP_THRESHOLD_``)
is set; otherwise glibc's own dynamic thresholds are left alone.

:func:`small_pages` stops NumPy from asking the kernel for transparent huge
pages for its arrays (NumPy does by default on Linux: ``madvise``) while the
sampling and model tasks run, whose work is large fresh arrays (the gathered
sample, its normalised copy, the residuals). On a host whose memory is full of
page cache, as a worker's is after reading a data set, each fresh huge page can
mean direct compaction: measured here, with 11 GB of page cache, a fresh 100 MB
array took 0.14-0.52 s to touch with huge pages and 0.05 s without; the
training task of a 384-d build (65,536 rows) 5.1-6.0 s with them and 2.9-3.1 s
without. Tasks that loop over reused buffers keep them: with huge pages off in
every task, a two-level 128-d build at 4,096 partitions took 29.3-29.8 s
against 27.8-28.8 s. The setting is put back when the last such task finishes.

:func:`give_back` hands the pages of rows a task has written out back to the kernel
at once (``madvise(MADV_DONTNEED)``), so that the page cache of the file being written
reuses them. On a virtual machine whose host takes freed memory back, a page the guest has
not touched lately costs a fault on the host too, and what that costs depends on the
page's size (``benchmarks/bench_page_cache.py``, 512 MB after 12 s pauses): a new file
written in 2 MB pieces (as Lance's file writer writes) took 1.55-1.62 s, fresh memory in
huge pages 1.54-1.57 s to fill, in small pages 0.51-1.53 s; the same file written at once
after filling and freeing 512 MB of huge pages 0.16-0.17 s. Small pages freed the same way
did not help (1.61-1.64 s against 1.59-1.67 s). So the rows a build task gives back as
it writes are held in huge pages (``build/engines/precomputed.py``).

Setting the environment variable ``DASK_LANCE_INDEX_NO_MALLOC_TUNING`` (to
anything) turns all of this off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
import os
import sys
import threading
from typing import Callable

try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # NumPy 1.x, or none of this switch
    try:
        from numpy.core.multiarray import _set_madvise_hugepage
    except ImportError:
        _set_madvise_hugepage = None

__all__ = ["bulk_allocations", "give_back", "in_bulk", "small_pages", "with_small_pages"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_MMAP_DEFAULT = 128 * 1024
# While a task runs: allocations up to 32 MB come from the heap, and up to 64 MB of
# freed memory at its top stays there for the next batch; the rest goes back when the
# last task ends. Lance's scan reads a data file's pages into buffers of 16-34 MB and
# frees them: as mmaps (a 16 MB threshold) every read faulted in fresh pages, 195k of them
# for 1M x 128 rows, and the scan took 0.54-0.60 s; from the heap (32 MB, glibc's own
# ceiling for its dynamic threshold) 0.24-0.39 s with 3k-72k faults (one process, three
# scans each). A 1M x 128 IVF_FLAT build task in a worker took 1.87-2.10 s against
# 2.04-2.19 s (two clusters of two builds each, alternated). It costs memory: the 4M-row
# IVF_PQ benchmark's workers peaked at 777 MB against 578 MB (in 11.38 s and 10.78 s; where
# in the heaps that memory sits is not examined). Fresh pages cost more than
# they seem to on a virtual machine whose host takes freed memory back within seconds:
# there 4 GB took 0.5 s to touch again at once and 2.9-9.3 s after a pause. Keeping 64 MB
# rather than 16 MB made Lance's scan 0.13-0.22 s against 0.41-0.62 s (12 runs, alternated),
# and kept more of a 4M-row IVF_PQ benchmark's memory: 593 MB per worker at its peak against
# 479 MB, at the same build time, 21.11 s and 20.91 s.
_BULK_MMAP_THRESHOLD = 32 << 20
_BULK_TRIM_THRESHOLD = 64 << 20

_MADV_DONTNEED = 4  # Linux
_PAGE = mmap.PAGESIZE

_lock = threading.Lock()


def _set_numpy_hugepages(enabled: bool) -> bool | None:
    """Set NumPy's ``madvise`` of huge pages for new arrays; the previous setting
    (None where this NumPy has no such switch)."""
    if _set_madvise_hugepage is None:
        return None
    return bool(_set_madvise_hugepage(enabled))


@functools.lru_cache(maxsize=1)
def _glibc():
    try:
        lib = ctypes.CDLL("libc.so.6")
        lib.gnu_get_libc_version  # glibc only (musl has no such symbol)
        return lib
    except (OSError, AttributeError):
        return None


def _pinned() -> tuple[int, int] | None:
    """The (trim, mmap) thresholds the environment pinned, or None if it pinned none."""
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if trim is None and mmap is None:
        return None
    try:
        return (int(trim) if trim is not None else 128 * 1024, int(mmap) if mmap is not None else _GLIBC_MMAP_DEFAULT)
    except ValueError:
        return None


class _Shared:
    """A process-wide setting that our tasks share while any of them runs (threads
    of one worker, nested calls): the first in applies it, the last out undoes it.
    ``apply()`` returns what ``undo`` needs to put the process's own setting back."""

    def __init__(self, apply: Callable[[], object], undo: Callable[[object], None]):
        self._apply, self._undo = apply, undo
        self._depth = 0
        self._saved = None

    @contextlib.contextmanager
    def held(self):
        with _lock:
            self._depth += 1
            if self._depth == 1:
                self._saved = self._apply()
        try:
            yield
        finally:
            with _lock:
                self._depth -= 1
                if self._depth == 0:
                    self._undo(self._saved)


def _lift_thresholds() -> tuple[int, int]:
    pinned = _pinned()
    _glibc().mallopt(_M_MMAP_THRESHOLD, _BULK_MMAP_THRESHOLD)
    _glibc().mallopt(_M_TRIM_THRESHOLD, _BULK_TRIM_THRESHOLD)
    return pinned


def _restore_thresholds(pinned: tuple[int, int]) -> None:
    lib = _glibc()
    lib.mallopt(_M_TRIM_THRESHOLD, pinned[0])
    lib.mallopt(_M_MMAP_THRESHOLD, pinned[1])
    lib.malloc_trim(0)


def _restore_hugepages(before: bool | None) -> None:
    if before is not None:
        _set_numpy_hugepages(before)


_thresholds = _Shared(_lift_thresholds, _restore_thresholds)
_small = _Shared(lambda: _set_numpy_hugepages(False), _restore_hugepages)


@contextlib.contextmanager
def bulk_allocations():
    """Run the body with the heap kept for large temporaries (see the module docstring).

    Nested and concurrent uses (threads of one worker) share one setting: the
    first to enter lifts the thresholds, the last to leave restores and trims.
    """
    if _glibc() is None or _pinned() is None or os.environ.get("DASK_LANCE_INDEX_NO_MALLOC_TUNING"):
        yield
        return
    with _thresholds.held():
        yield


@contextlib.contextmanager
def small_pages():
    """Run the body with NumPy making its arrays without transparent huge pages
    (see the module docstring); nested and concurrent uses share one setting, as
    :func:`bulk_allocations`."""
    if os.environ.get("DASK_LANCE_INDEX_NO_MALLOC_TUNING"):
        yield
        return
    with _small.held():
        yield


@functools.lru_cache(maxsize=1)
def _madvise():
    """libc's ``madvise`` on Linux, else None."""
    if not sys.platform.startswith("linux") or _glibc() is None:
        return None
    fn = _glibc().madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def give_back(array, start: int, stop: int) -> int:
    """Give the kernel back the whole pages of rows ``[start, stop)`` of ``array`` (a
    C-contiguous NumPy array its caller owns and will not read there again: those rows
    read as zeros afterwards). Returns the bytes given back: 0 off Linux, with the
    tuning turned off, or where the rows hold no whole page."""
    if array.ndim == 0 or not array.flags.c_contiguous:
        raise ValueError("give_back needs a C-contiguous array of rows: pass the array the rows were written into")
    madvise = _madvise()
    if madvise is None or os.environ.get("DASK_LANCE_INDEX_NO_MALLOC_TUNING") or stop <= start:
        return 0
    start, stop = max(start, 0), min(stop, len(array))  # never a page past the array's rows
    row = array.strides[0]
    lo = array.ctypes.data + start * row
    hi = array.ctypes.data + stop * row
    lo, hi = -(-lo // _PAGE) * _PAGE, hi // _PAGE * _PAGE  # only pages the rows hold whole
    if hi <= lo or madvise(lo, hi - lo, _MADV_DONTNEED) != 0:
        return 0
    return hi - lo


def _inside(context):
    """A decorator that runs each call of a function inside ``context()``."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with context():
                return func(*args, **kwargs)

        return wrapper

    return decorate


in_bulk = _inside(bulk_allocations)  # decorator: each call inside bulk_allocations()
with_small_pages = _inside(small_pages)  # decorator: each call inside small_pages()
