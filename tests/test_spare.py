"""A task left alone borrows its host's idle worker threads: run_each and SpareThreads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from distributed import get_worker, worker_client

from dask_lance_index.model import build_hnsw
from dask_lance_index.runtime import SpareThreads, run_each, run_streamed


def _squares(n: int, spare) -> tuple[np.ndarray, set]:
    out = np.zeros(n)
    names = set()

    def fn(i):
        names.add(threading.current_thread().name)
        time.sleep(0.002)
        out[i] = i * i

    run_each(fn, range(n), spare)
    return out, names


def test_every_item_is_done_once_in_this_thread_and_in_as_many_helpers_as_are_spare():
    out, names = _squares(200, lambda: 0)
    np.testing.assert_array_equal(out, np.arange(200.0) ** 2)
    assert names == {threading.current_thread().name}
    out, names = _squares(200, lambda: 2)
    np.testing.assert_array_equal(out, np.arange(200.0) ** 2)
    assert threading.current_thread().name in names and "dli-spare" in names
    assert not [t for t in threading.enumerate() if t.name == "dli-spare"]  # all joined


@pytest.mark.parametrize("runner, spare, most", [
    (run_each, 3, 498),  # stopped early
    (run_streamed, 2, 19),  # and nothing read long after the error
])
def test_an_error_in_a_helper_stops_the_others_and_is_raised(runner, spare, most):
    done = []

    def fn(i):
        if i == 7:
            raise ValueError("piece 7")
        time.sleep(0.002)
        done.append(i)

    with pytest.raises(ValueError, match="piece 7"):
        runner(fn, range(500), lambda: spare)
    assert len(done) <= most
    assert not [t for t in threading.enumerate() if t.name == "dli-spare"]


def test_a_graph_is_the_same_built_with_helpers():
    x = np.random.default_rng(0).standard_normal((9000, 24)).astype(np.float32)  # grouped candidates
    alone = build_hnsw(x, m=8, max_level=3, seed=1)
    helped = build_hnsw(x, m=8, max_level=3, seed=1, each=lambda fn, items: run_each(fn, items, lambda: 2))
    for a, b in zip(alone.levels, helped.levels):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_streamed_items_are_read_in_turn_and_run_by_the_reader_and_the_helpers():
    """run_streamed reads one item at a time (the reader never far ahead of the work) and
    runs each once, in the helpers and, when they are all busy, in the reader's thread."""
    read, ran, names = [], {}, set()

    def items():
        for i in range(200):
            read.append(i)
            assert len(read) - len(ran) <= 1 + 2 + 2  # this one, the queue's, the helpers'
            yield i

    def fn(i):
        time.sleep(0.002)
        names.add(threading.current_thread().name)
        ran[i] = i * i

    run_streamed(fn, items(), lambda: 2, ahead=2)
    assert ran == {i: i * i for i in range(200)}
    assert {"MainThread", "dli-spare"} <= names
    assert not [t for t in threading.enumerate() if t.name == "dli-spare"]
    # no spare thread: every item in the reader's thread
    names.clear()
    run_streamed(fn, range(5), lambda: 0)
    assert names == {"MainThread"}


@pytest.mark.parametrize("grouped", [False, True])
def test_a_dot_graph_is_the_same_built_with_helpers(monkeypatch, grouped):
    """Under dot, rows of unequal norms: a level's slices of candidates (or its query groups)
    and of prunings run in helper threads too, the prunings sharing their held rows of
    products, and the graph is the one built in turn."""
    from dask_lance_index.model import hnsw_dot

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6000, 24)).astype(np.float32) * rng.uniform(0.5, 2, (6000, 1)).astype(np.float32)
    if grouped:  # the later nodes' candidates from groups: 6,000 rows past 2 x 1,024
        monkeypatch.setattr(hnsw_dot, "DOT_EXACT_ROWS", 1024)
        monkeypatch.setattr(hnsw_dot, "_GROUP_PROBES", 2)
        monkeypatch.setattr(hnsw_dot, "_GROUPED_FOUND", 0.0)
    pieces = {}

    def each(fn, items):
        def recorded(item):
            pieces.setdefault(fn.__name__, set()).add(threading.current_thread().name)
            time.sleep(0.001)  # long enough for the helper to take pieces too
            fn(item)
        run_each(recorded, items, lambda: 1)

    alone = build_hnsw(x, m=8, max_level=3, seed=1, metric="dot")
    helped = build_hnsw(x, m=8, max_level=3, seed=1, metric="dot", each=each)
    assert "dli-spare" in pieces["query_group" if grouped else "largest"], pieces
    assert "dli-spare" in pieces["prune"], pieces
    for a, b in zip(alone.levels, helped.levels, strict=True):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def _child_spare() -> int:
    worker = get_worker()
    return SpareThreads(worker.client, worker.address).spare()


def _spare_seen_by_children():
    """A parent seceded to wait on its children, as a build task waits on its graph tasks."""
    with worker_client() as client:
        me = get_worker().address
        other = next(a for a in client.scheduler_info(n_workers=-1)["workers"] if a != me)
        beside_parent = client.submit(_child_spare, workers=[me], pure=False).result()
        on_the_other = client.submit(_child_spare, workers=[other], pure=False).result()
        busy = client.submit(time.sleep, 3, workers=[other], pure=False)
        while not client.processing([other])[other]:
            time.sleep(0.05)
        beside_busy = client.submit(_child_spare, workers=[me], pure=False).result()
        busy.result()
        return beside_parent, on_the_other, beside_busy


def test_the_idle_threads_of_the_host_are_spare_a_seceded_task_holding_none(cluster_client):
    """Two workers of one thread on this host: a child alone sees the other worker's thread
    spare, whether it runs beside its seceded parent or on the other worker (where the
    parent's seceded thread is the free one); beside a busy worker it sees none."""
    assert cluster_client.submit(_spare_seen_by_children, pure=False).result() == (1, 1, 0)
