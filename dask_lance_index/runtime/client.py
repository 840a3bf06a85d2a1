"""Which cluster a build runs on: the client given, one reached by address, the current
one, or none (dask's local scheduler); and what a task can ask of the cluster it runs on.
"""

from __future__ import annotations

import os
import time

from distributed import Client, default_client, get_worker

from ..errors import InvalidInputError

__all__ = ["check_client", "connect", "num_workers", "other_hosts", "parallelism", "resolve_client",
           "wait_for_tasks", "worker_client_or_none"]


def connect(address: str) -> Client:
    """A ``distributed.Client`` for the scheduler at ``address``, or a clear error."""
    try:
        # Waits dask's "distributed.comm.timeouts.connect" (30 s by default).
        return Client(address)
    except (OSError, TimeoutError) as exc:
        raise InvalidInputError(
            f"cannot reach a Dask scheduler at {address!r} ({type(exc).__name__}: {exc}). Fix: start "
            "the scheduler (dask scheduler / LocalCluster) or pass the right address, or pass "
            "client=None to build with the local scheduler."
        ) from None


def check_client(client) -> None:
    """A closed or broken client fails here, before any work, not mid-build."""
    status = getattr(client, "status", "running")
    if status != "running":
        raise InvalidInputError(
            f"the Dask client is {status!r}, not running. Fix: pass a connected Client, or "
            "client=None to build with the local scheduler."
        )


def resolve_client(client=None, scheduler: str | None = None):
    """The ``distributed.Client`` to run on: the one given (or one connected to the
    scheduler address given), else the current one, else None. An explicit local
    ``scheduler`` wins over a current client picked up implicitly."""
    if isinstance(client, str):
        return connect(client)
    if client is not None:
        check_client(client)
        return client
    if scheduler is not None:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def parallelism(client) -> int:
    """Worker threads of ``client``'s cluster, or this machine's CPUs without one."""
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # a client that cannot answer: plan as for one machine
            pass
    return os.cpu_count() or 1


def worker_client_or_none():
    """The client of the dask worker this task runs in, or None outside a worker."""
    try:
        return get_worker().client
    except ValueError:
        return None


def num_workers(client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])


def other_hosts(client) -> bool:
    """Whether any of the cluster's workers runs on another host than this task's
    worker (hosts by the address workers listen on)."""
    here = _host(get_worker().address)
    return any(_host(addr) != here for addr in client.scheduler_info(n_workers=-1)["workers"])


def _host(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


def wait_for_tasks(client, token: str, timeout: float) -> bool:
    """Wait until no worker executes a task whose key holds ``token``; True if none does,
    False at once when ``client`` has closed (it lost the scheduler: nobody can tell)."""

    def executing(dask_worker, token=token):
        return [str(ts.key) for ts in dask_worker.state.executing if token in str(ts.key)]

    deadline = time.time() + timeout
    while time.time() < deadline:
        if getattr(client, "status", "running") in ("closing", "closed", "failed"):
            return False
        try:
            running = [k for keys in client.run(executing).values() for k in keys]
        except Exception:  # workers going away: ask again
            running = ["?"]
        if not running:
            return True
        time.sleep(0.2)
    return False
