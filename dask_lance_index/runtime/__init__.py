"""Runtime: where and how tasks run. The cluster to run on, progress bars, one BLAS
thread per task, the allocator settings of a task's bulk work, and the idle threads a task
left alone may borrow.
"""

from .blas import blas_threads, host_blas_threads, host_cores, one_blas_thread
from .client import (
    check_client,
    check_security,
    connect,
    num_workers,
    other_hosts,
    parallelism,
    resolve_client,
    tls_refused_hint,
    tls_security,
    worker_client_or_none,
)
from .malloc import bulk_allocations, give_back, in_bulk, small_pages, with_small_pages
from .progress import compute_with_progress, show_progress
from .spare import SpareThreads, run_each, run_streamed

__all__ = [
    "blas_threads", "bulk_allocations", "check_client", "check_security", "compute_with_progress", "connect", "give_back", "host_blas_threads",
    "host_cores", "in_bulk", "num_workers", "one_blas_thread", "other_hosts", "parallelism", "resolve_client",
    "show_progress", "small_pages", "SpareThreads", "run_each", "run_streamed", "tls_refused_hint", "tls_security", "with_small_pages",
    "worker_client_or_none",
]
