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
each) to graph tasks
(:class:`PartitionGraphs`, keys ``dli-graphs-<segment>-<attempt>-<run>``) on any worker, itself
seceded from its thread meanwhile (``distributed.worker_client``). A graph task reads its
rows back from the written ``auxiliary.idx`` (nothing large travels in the graph) and
returns their graphs; the writing task writes them in partition order as they come, with at
most :data:`RUNS_IN_FLIGHT` runs a worker thread submitted and not yet written, so the
graphs held at once stay bounded. Without a cluster (dask's synchronous or threaded
scheduler) that task builds them in a thread per core this process may run on
(:func:`dask_lance_index.runtime.host_cores`: a CPU set that confines the process counts). Otherwise (a
single worker thread, or several such tasks that would each secede or compete for the
CPUs) they are built in that task, one partition at a time. All give the same graphs:
a partition's seed is its own.
"""

from __future__ import annotations

import collections
import itertools
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from distributed import worker_client

from ..model.hnsw import build_hnsw
from ..runtime import host_cores, in_bulk, one_blas_thread, parallelism, worker_client_or_none
from ..storage import StoredRows

__all__ = ["GRAPH_TASK_ROWS", "RUNS_IN_FLIGHT", "PartitionGraphs", "graph_runs", "graph_threads"]

# Rows of one graph task: 16 MB of 128-d rows read back, about a second of graphs at ~1k
# rows a partition; 1M rows make 31 tasks, enough to keep every worker busy to the end.
GRAPH_TASK_ROWS = 32_768
# Graph tasks submitted and not yet written, per worker thread of the cluster.
RUNS_IN_FLIGHT = 2


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

    def graph(self, partition: int, rows: np.ndarray):
        return build_hnsw(rows, m=self.m, max_level=self.max_level, seed=(*self.seed, partition),
                          candidates=self.candidates, metric=self.metric)

    @in_bulk  # a graph task's temporaries from the heap, as the build task's (runtime.malloc)
    @one_blas_thread()  # graph tasks run side by side: one BLAS thread each (runtime.blas)
    def __call__(self, stored: StoredRows, run: list) -> list:
        """The graphs of ``run``'s partitions, ``(partition, first stored row, rows)``
        consecutive in ``stored``, read back in one range."""
        return [self.graph(p, rows) for (p, _, _), rows in zip(run, stored.read(run))]

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


def _in_order(submit: Callable, items, window: int) -> Iterator:
    """``submit(item).result()`` for each of ``items``, in order, with at most ``window``
    submitted and not yet taken (a future of a thread pool or of a dask client)."""
    items = iter(items)
    pending = collections.deque(submit(item) for item in itertools.islice(items, window))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(submit(item))
        yield result


def _in_threads(graphs: PartitionGraphs, partitions: list, rows_of: Callable, threads: int) -> Iterator:
    """The graphs of ``partitions`` in order, built in ``threads`` threads of this process
    (NumPy's GEMMs, selections and sorts let go of the GIL: 24 partitions of 1M x 128 rows
    took 4.9 s in two threads against 9.1-9.4 s in one), at most :data:`RUNS_IN_FLIGHT`
    partitions a thread ahead of the one written."""
    with ThreadPoolExecutor(threads, thread_name_prefix="dli-graphs") as pool:
        yield from _in_order(lambda part: pool.submit(graphs.graph, part[0], rows_of(part[0])), partitions,
                             RUNS_IN_FLIGHT * threads)


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

        runs = enumerate(graph_runs(partitions, GRAPH_TASK_ROWS))
        for done in _in_order(submit, runs, RUNS_IN_FLIGHT * parallelism(client)):
            yield from done
