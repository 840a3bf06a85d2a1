"""One BLAS thread per task while our tasks share a process.

Dask's nanny starts every worker with ``OPENBLAS_NUM_THREADS=1`` (and the OMP
and MKL equivalents), so on a ``distributed`` cluster each task's NumPy GEMMs
run on one thread. Dask's local threaded scheduler (no client: a notebook, a
script) and a ``LocalCluster(processes=False)`` set nothing: every task's
GEMMs start OpenBLAS's own pool of one thread per core, on top of the
scheduler's one thread per core. The per-row GEMMs here are small (PQ
encoding multiplies by a ``(sub_dim + 1, 256)`` block), where the extra
threads cost more than they give. Measured on the 2-vCPU machine of
``docs/benchmarks.md``, IVF_PQ 256 partitions x 16 sub-vectors, threaded
scheduler: the build stage took 11.49 s for 2M rows with OpenBLAS's default
pool and 6.06 s with one thread per task (1.65 s and 0.87 s at 250k rows);
PQ encoding alone 4.3 s per million rows in one process with two BLAS threads
against 3.4 s with one.

:func:`one_blas_thread` limits every BLAS library loaded in the process to one
thread while any of our tasks runs, and puts the process's own settings back
when the last one finishes, so the caller's NumPy outside the build keeps its
threads. Nested and concurrent uses (threads of one process) share one limit,
as :mod:`.malloc` does. Where BLAS already has one thread (a ``distributed``
worker) it changes nothing. It needs ``threadpoolctl``; setting the environment
variable ``DASK_LANCE_INDEX_NO_BLAS_LIMIT`` (to anything) turns it off.
"""

from __future__ import annotations

import contextlib
import os
import threading

from threadpoolctl import OpenBLASController, ThreadpoolController

__all__ = ["blas_threads", "host_blas_threads", "host_cores", "one_blas_thread"]

_lock = threading.Lock()
_depth = 0
_limiter = None


def _controller():
    """A fresh view of the loaded BLAS libraries (about 0.5 ms)."""
    return ThreadpoolController().select(user_api="blas")


def blas_threads() -> int:
    """The largest thread count of any BLAS library loaded in this process (0: none found)."""
    return max((lib.num_threads for lib in _controller().lib_controllers), default=0)


@contextlib.contextmanager
def one_blas_thread():
    """Run the body with one BLAS thread (see the module docstring); as a
    decorator, ``@one_blas_thread()``, each call of the function."""
    global _depth, _limiter
    if os.environ.get("DASK_LANCE_INDEX_NO_BLAS_LIMIT"):
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            ctl = _controller()
            # Libraries already at one thread (a dask worker) need no limit to undo.
            if any(lib.num_threads > 1 for lib in ctl.lib_controllers):
                _limiter = ctl.limit(limits=1)
                _release_control()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
                _release_control()


def host_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def host_blas_threads():
    """Run the body with one BLAS thread per core of this host: for the model's
    training, the one task every other task waits on, so the host's other
    workers are idle while it runs (dask's nanny gave this worker one thread).
    Measured in a worker of a 2-worker LocalCluster on 2 vCPUs: a 4,000 x 4,000
    GEMM 1.32 s with the worker's one thread, 0.82 s with two. Groups of work
    inside (:func:`one_blas_thread`) still take one thread each."""
    if os.environ.get("DASK_LANCE_INDEX_NO_BLAS_LIMIT"):
        yield
        return
    with _lock:
        limiter = _controller().limit(limits=host_cores())
        _release_control()
    try:
        yield
    finally:
        with _lock:
            limiter.restore_original_limits()
            _release_control()


def _release_control() -> None:
    """Let the next thread set OpenBLAS's pool: threadpoolctl 3.8 lets only the
    first thread to set a process-wide pool change it until that thread gives up
    control, and ignores the others silently. Our first task in and last task out
    are usually different threads."""
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear()  # only when this thread holds control: another library's limit stays
