"""HNSW graphs of one segment's partitions, built as tasks on every worker of the cluster
(or in a thread per core without one).

The task that writes an IVF_HNSW_FLAT, IVF_HNSW_SQ or IVF_HNSW_PQ segment (the one build
task, :func:`dask_lance_index.storage.write_hnsw_segment`; or the merge that concatenates
several tasks' rows, :func:`dask_lance_index.storage.add_hnsw_graphs`) has its rows, and
its graphs are most of its time (1M x 128 rows, 256 partitions: 70-100 s of graphs against
5 s of the rest). Built one by one in that task, they use one worker whatever the cluster's
size. So when that task is alone (the plan's only build task) or a final merge and
runs on a ``dask.distributed`` worker of a cluster with more than one worker thread, it has
written the rows first, then hands runs of partitions (about :data:`GRAPH_TASK_ROWS` rows
each, fewer where that would leave a worker thread under :data:`RUNS_PER_THREAD` runs) to
graph tasks
(:class:`PartitionGraphs`, keys ``dli-graphs-<segment>-<attempt>-<run>``) on any worker, itself
seceded from its thread meanwhile (``distributed.worker_client``). A graph task reads its
rows back from the written ``auxiliary.idx`` (nothing large travels in the graph) and
returns their graphs; the writing task writes them in partition order as they come, with at
most :data:`RUNS_IN_FLIGHT` runs a worker thread submitted and not finished (any finished run
makes room for the next, so a long run does not hold the others back) and twice that not yet
written, so the graphs held at once stay bounded. Without a cluster (dask's synchronous or threaded
scheduler) that task builds them in a thread per core this process may run on
(:func:`dask_lance_index.runtime.host_cores`: a CPU set that confines the process counts),
the last graphs' pieces also in the threads the others left. Otherwise (a
single worker thread, or several such tasks that would each secede or compete for the
CPUs) they are built in that task, one partition at a time. All give the same graphs:
a partition's seed is its own.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from distributed import get_worker, worker_client

from ..model.hnsw import build_hnsw, in_turn
from ..runtime import SpareThreads, host_cores, in_bulk, one_blas_thread, parallelism, run_each, worker_client_or_none
from ..storage import StoredRows

__all__ = ["GRAPH_TASK_ROWS", "RUNS_IN_FLIGHT", "RUNS_PER_THREAD", "PartitionGraphs", "graph_runs", "graph_threads",
           "run_rows"]

# Rows of one graph task: 16 MB of 128-d rows read back, about a second of graphs at ~1k
# rows a partition; 1M rows make 31 tasks, enough to keep every worker busy to the end.
GRAPH_TASK_ROWS = 32_768
# Graph tasks submitted and not finished, per worker thread of the cluster (twice as many
# may wait to be written).
RUNS_IN_FLIGHT = 2
# Runs a worker thread gets at least, where the partitions allow (a run holds one or more),
# so that the workers' last runs end within about a run of one another: 75,122 sentence
# rows (384-d) in 8 partitions made 3 runs of at most GRAPH_TASK_ROWS, and the last one's
# 6.6 s of graphs ran alone while the other worker waited.
RUNS_PER_THREAD = 4


@dataclass(frozen=True)
class PartitionGraphs:
    """The graphs of partitions' rows (:func:`dask_lance_index.model.build_hnsw`): a
    picklable callable, the graph task's work. ``seed`` and the partition make each
    graph's seed, so a graph is the same wherever it is built."""

    m: int
    max_level: int
    candidates: int
    seed: tuple
    metric: str = "l2"  # "l2" (and cosine's unit rows) or "dot"

    def graph(self, partition: int, rows: np.ndarray, each: Callable = in_turn):
        return build_hnsw(rows, m=self.m, max_level=self.max_level, seed=(*self.seed, partition),
                          candidates=self.candidates, metric=self.metric, each=each)

    @in_bulk  # a graph task's temporaries from the heap, as the build task's (runtime.malloc)
    @one_blas_thread()  # graph tasks run side by side: one BLAS thread each (runtime.blas)
    def __call__(self, stored: StoredRows, run: list) -> list:
        """The graphs of ``run``'s partitions, ``(partition, first stored row, rows)``
        consecutive in ``stored``, read back in one range; in a dask worker, each graph's
        pieces also in the idle worker threads of its host (:class:`~dask_lance_index.runtime.SpareThreads`:
        the last graph task of a build is often alone)."""
        client = worker_client_or_none()
        each = in_turn if client is None else SpareThreads(client, get_worker().address)
        return [self.graph(p, rows, each) for (p, _, _), rows in zip(run, stored.read(run))]

    def builder(self, fan_out: bool) -> Callable:
        """A ``build_graphs`` for :func:`~dask_lance_index.storage.write_hnsw_segment`.

        With ``fan_out``, on :func:`graph_threads` threads when more than one: on a worker
        of a cluster, as graph tasks on the cluster's workers; outside a worker (dask's
        synchronous or threaded scheduler), in threads of this process. Otherwise one by
        one in this thread."""
        def build_graphs(stored: StoredRows, partitions: list, rows_of: Callable) -> Iterator:
            threads = graph_threads(fan_out)
            if threads > 1:
                if worker_client_or_none() is not None:
                    return _on_cluster(self, stored, partitions)
                return _in_threads(self, partitions, rows_of, threads)
            return (self.graph(p, rows_of(p)) for p, _, _ in partitions)
        return build_graphs


def graph_threads(fan_out: bool) -> int:
    """The threads a build's graphs get: with ``fan_out`` (the task writing the segment is
    alone, or a final merge: the build's last tasks), the worker threads of the
    cluster this task runs on, or without one (dask's sync or threaded scheduler) the cores
    this process may use
    (:func:`dask_lance_index.runtime.host_cores`); otherwise one."""
    if not fan_out:
        return 1
    client = worker_client_or_none()
    return parallelism(client) if client is not None else host_cores()


def run_rows(total_rows: int, threads: int) -> int:
    """Rows of a graph run: :data:`GRAPH_TASK_ROWS`, or fewer where ``total_rows`` would
    make under :data:`RUNS_PER_THREAD` runs for each of ``threads``. Pure."""
    return max(1, min(GRAPH_TASK_ROWS, -(-total_rows // (RUNS_PER_THREAD * max(1, threads)))))


def graph_runs(partitions: list, max_rows: int) -> list:
    """``partitions`` (``(partition, first row, rows)``, consecutive) in runs of at most
    ``max_rows`` rows, a larger partition alone in its run. Pure."""
    runs, current, held = [], [], 0
    for part in partitions:
        if current and held + part[2] > max_rows:
            runs.append(current)
            current, held = [], 0
        current.append(part)
        held += part[2]
    if current:
        runs.append(current)
    return runs


def _in_order(submit: Callable, items, window: int, size: Callable | None = None) -> Iterator:
    """``submit(item).result()`` for each of ``items``, in order: at most ``window`` submitted
    and not finished, and at most ``2 window`` submitted and not yet taken (a future of a
    thread pool or of a dask client).

    A finished future makes room for the next item whichever it is, not only the oldest:
    waiting on the oldest left a worker idle while a long run ahead of it in the order
    finished (8 sentence partitions: idle gaps of 0.6 and 1.0 s of a 10.9 s build). With
    ``size`` (an item's expected cost), the items left once all of them fit in ``2 window``
    are submitted largest first, so that the threads end together (8 sentence partitions of
    3,495-14,350 rows submitted in order: one worker idle for the last 0.9-1.2 s)."""
    items = iter(items)
    ahead: list = []  # (position, item) read and not submitted, in order
    futures: dict = {}  # position -> future, submitted and not taken
    finished = threading.Condition()
    count = [0]  # futures finished so far

    def on_done(_) -> None:  # a thread of the pool or of the client
        with finished:
            count[0] += 1
            finished.notify_all()

    read = taken = 0  # submitted: read - len(ahead)
    exhausted = False
    while True:
        # read one past the bound (items are small): whether all that is left is read
        while not exhausted and len(ahead) <= 2 * window:
            item = next(items, _END)
            if item is _END:
                exhausted = True
            else:
                ahead.append((read, item))
                read += 1
        with finished:
            seen = count[0]
        while ahead and read - len(ahead) - seen < window and len(futures) < 2 * window:
            # only once everything left is read may the order change, and the last place
            # within the bound is the next to take's: nothing waits on it forever
            reorder = exhausted and size and (taken in futures or len(futures) + 1 < 2 * window)
            pick = max(range(len(ahead)), key=lambda i: size(ahead[i][1])) if reorder else 0
            position, item = ahead[pick]
            del ahead[pick]
            future = submit(item)
            future.add_done_callback(on_done)
            futures[position] = future
        if taken == read and exhausted:
            return
        if taken in futures and futures[taken].done():
            taken += 1
            yield futures.pop(taken - 1).result()  # an error is raised here, in order
        else:  # until any future finishes (count moves past what was seen)
            with finished:
                finished.wait_for(lambda: count[0] != seen)


_END = object()


def _in_threads(graphs: PartitionGraphs, partitions: list, rows_of: Callable, threads: int) -> Iterator:
    """The graphs of ``partitions`` in order, built in ``threads`` threads of this process
    (NumPy's GEMMs, selections and sorts let go of the GIL: 24 partitions of 1M x 128 rows
    took 4.9 s in two threads against 9.1-9.4 s in one), at most :data:`RUNS_IN_FLIGHT`
    partitions a thread ahead of the one written. Where fewer partitions than threads are left
    (the last ones, or a one-partition index), a graph's pieces also run in the idle threads
    (:func:`~dask_lance_index.runtime.run_each`)."""
    lock = threading.Lock()
    building = [0]  # graphs being built

    def spare() -> int:
        with lock:
            return max(0, threads - building[0])

    def each(fn: Callable, items) -> None:
        run_each(fn, items, spare)

    def graph(partition: int, rows: np.ndarray):
        with lock:
            building[0] += 1
        try:
            return graphs.graph(partition, rows, each)
        finally:
            with lock:
                building[0] -= 1

    with ThreadPoolExecutor(threads, thread_name_prefix="dli-graphs") as pool:
        yield from _in_order(lambda part: pool.submit(graph, part[0], rows_of(part[0])), partitions,
                             RUNS_IN_FLIGHT * threads, size=lambda part: part[2])


def _on_cluster(graphs: PartitionGraphs, stored: StoredRows, partitions: list) -> Iterator:
    """The graphs of ``partitions`` in order, built by graph tasks on the cluster's workers.

    The tasks' keys are this call's own: a retried build task writes the same segment
    uuid, and must not be handed the graph tasks (or the errors) of an earlier attempt
    that the scheduler still holds."""
    attempt = uuid.uuid4().hex[:12]
    with worker_client() as client:
        def submit(job):
            i, run = job
            return client.submit(graphs, stored, run, key=f"dli-graphs-{stored.index_uuid}-{attempt}-{i}", pure=False)

        threads = parallelism(client)
        runs = enumerate(graph_runs(partitions, run_rows(sum(p[2] for p in partitions), threads)))
        for done in _in_order(submit, runs, RUNS_IN_FLIGHT * threads, size=lambda job: sum(p[2] for p in job[1])):
            yield from done
