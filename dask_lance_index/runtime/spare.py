"""Spare threads: a task left at work alone borrows the idle worker threads of its host.

A graph task builds its partitions' graphs on one worker thread. With fewer large partitions
than worker threads, the last graph runs alone while the other workers of its host wait
(2 partitions of 75,122 sentence rows: graph tasks of 6.3 s and 10.6 s, one worker idle for
4.3 s). A graph's pieces of work are independent (groups of candidates, slices of nodes to
prune: ``model.build_hnsw``'s ``each``), so they can run in threads of the task's own process
on the CPU those idle workers would use. :class:`SpareThreads` asks the scheduler, at most every
:data:`POLL_SECONDS`, how many worker threads on the task's host have nothing to run (a task
seceded to wait on others does not count as running), and runs the pieces in that many helper
threads besides the task's own, all taking pieces from one queue.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable

from distributed.comm.addressing import get_address_host

__all__ = ["POLL_SECONDS", "SpareThreads", "idle_threads", "run_each", "run_streamed"]

# Seconds between two questions to the scheduler: a graph of a few thousand rows asks for
# its pieces' threads several times in a tenth of a second, and 256 of them a task.
POLL_SECONDS = 0.5


def idle_threads(host: str, dask_scheduler=None) -> dict:
    """On the scheduler (``client.run_on_scheduler``): the threads with no task to run of each
    worker on ``host``, by address; a seceded task (``worker_client``) waits and holds none.
    Only that host's workers are looked at (the scheduler's ``host_info``): every graph task
    of a large cluster asks."""
    addresses = dask_scheduler.host_info.get(host, {}).get("addresses", ())
    return {addr: max(0, ws.nthreads - len(ws.processing) + len(ws.long_running))
            for addr in addresses if (ws := dask_scheduler.workers.get(addr)) is not None}


def run_each(fn: Callable, items: Iterable, spare: Callable[[], int]) -> None:
    """``fn(item)`` for each of ``items``, in this thread and in as many helper threads as
    ``spare()`` says are free, asked again each time this thread takes an item (it may
    cache its answer); the first error is raised once every thread has stopped."""
    items = list(items)
    lock = threading.Lock()
    position = iter(range(len(items)))
    errors: list = []
    stop = threading.Event()

    def take():
        with lock:
            return None if stop.is_set() else next(position, None)

    def helper() -> None:
        try:
            while (i := take()) is not None:
                fn(items[i])
        except BaseException as error:  # raised in the calling thread
            errors.append(error)
            stop.set()

    helpers: list = []
    try:
        while (i := take()) is not None:
            if len(items) - i > 1:  # pieces left for a helper
                for _ in range(spare() - len(helpers)):
                    helpers.append(threading.Thread(target=helper, name="dli-spare", daemon=True))
                    helpers[-1].start()
            fn(items[i])
    except BaseException:
        stop.set()
        raise
    finally:
        for t in helpers:
            t.join()
    if errors:
        raise errors[0]


def run_streamed(fn: Callable, items: Iterable, spare: Callable[[], int], ahead: int = 2) -> None:
    """``fn(item)`` for each of ``items``, read one at a time in this thread (a scan's
    batches, never all held at once): while ``spare()`` says threads are free, as many
    helper threads run the items read, up to ``ahead`` of them waiting; an item that finds
    them all waiting runs in this thread, so the reader also works. The first error is
    raised once every thread has stopped; no item is run after it."""
    waiting: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    errors: list = []
    stop = threading.Event()

    def run(item) -> None:
        try:
            fn(item)
        except BaseException as error:  # raised in the calling thread
            errors.append(error)
            stop.set()

    def helper() -> None:
        while (item := waiting.get()) is not _END:
            if not stop.is_set():  # after an error the queue is only drained
                run(item)

    helpers: list = []
    try:
        for item in items:
            if stop.is_set():
                break
            for _ in range(spare() - len(helpers)):
                helpers.append(threading.Thread(target=helper, name="dli-spare", daemon=True))
                helpers[-1].start()
            if helpers:
                try:
                    waiting.put_nowait(item)
                    continue
                except queue.Full:
                    pass
            run(item)
    except BaseException:
        stop.set()
        raise
    finally:
        for _ in helpers:
            waiting.put(_END)  # the helpers drain the queue whatever happened
        for t in helpers:
            t.join()
    if errors:
        raise errors[0]


_END = object()


class SpareThreads:
    """``each(fn, items)`` (:func:`run_each`) for a task in the dask worker at ``address``:
    as many helper threads as the other workers of its host have idle threads, asked of the
    scheduler through ``client`` at most every ``poll`` seconds. A scheduler that cannot
    answer lends none."""

    def __init__(self, client, address: str, poll: float = POLL_SECONDS):
        self.client = client
        self.address = address
        self.poll = poll
        self._asked = -float("inf")
        self._spare = 0

    def spare(self) -> int:
        now = time.monotonic()
        if now - self._asked >= self.poll:
            self._asked = now
            try:
                idle = self.client.run_on_scheduler(idle_threads, get_address_host(self.address))
            except Exception:  # a scheduler that runs no functions sent to it
                idle = {}
            self._spare = sum(n for addr, n in idle.items() if addr != self.address)
        return self._spare

    def __call__(self, fn: Callable, items: Iterable) -> None:
        run_each(fn, items, self.spare)
