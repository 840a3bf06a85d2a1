"""BLAS threads while our tasks share a process (dask_lance_index.runtime.blas), probed in
fresh processes whose OpenBLAS starts with two threads, as under dask's local
threaded scheduler on a 2-core machine."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("threadpoolctl")

PROBE = textwrap.dedent(
    """
    import json, threading
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    from dask_lance_index.runtime.blas import blas_threads, one_blas_thread

    a = np.ones((300, 300), np.float32)
    both_in = threading.Barrier(2)

    def task(i):
        with one_blas_thread():
            both_in.wait(timeout=30)  # the two tasks overlap: shared, counted limit
            seen = blas_threads()
            a @ a
            both_in.wait(timeout=30)
            return seen, blas_threads()

    out = {"start": blas_threads(), "rounds": []}
    for _ in range(3):  # first in and last out are different threads from round to round
        with ThreadPoolExecutor(2) as pool:
            out["rounds"].append(list(pool.map(task, range(2))))
        out["rounds"].append(blas_threads())
    with one_blas_thread():
        out["main_inside"] = blas_threads()
    out["end"] = blas_threads()
    print(json.dumps(out))
    """
)

BUILD_PROBE = textwrap.dedent(
    """
    import json, sys
    import dask
    import dask_lance_index as dli
    import dask_lance_index.model.pq as pq
    from dask_lance_index.build import ENGINES
    from dask_lance_index.runtime.blas import blas_threads
    from dask_lance_index.datagen import make_vectors, write_vectors

    seen = {"build": [], "pq": []}
    engine = ENGINES["precomputed"]
    build_segment, kmeans_batched = engine.build_segment, pq.kmeans_batched

    def spy_build(*a, **k):
        seen["build"].append(blas_threads())
        return build_segment(*a, **k)

    def spy_pq(*a, **k):
        seen["pq"].append(blas_threads())
        return kmeans_batched(*a, **k)

    engine.build_segment, pq.kmeans_batched = spy_build, spy_pq
    uri = sys.argv[1]
    write_vectors(uri, make_vectors(12000, 32, seed=5), max_rows_per_file=3000)
    start = blas_threads()
    with dask.config.set(scheduler="threads"):
        result = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=8, num_sub_vectors=8, num_tasks=4)
    print(json.dumps({"start": start, "end": blas_threads(), "rows": result.count_rows(), **seen}))
    """
)


def _run(code: str, *args, **env) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and k != "DASK_LANCE_INDEX_NO_BLAS_LIMIT"}
    full.update(OPENBLAS_NUM_THREADS="2", **env)
    out = subprocess.run([sys.executable, "-c", code, *args], env=full, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_overlapping_tasks_run_on_one_blas_thread_and_the_caller_gets_its_threads_back():
    out = _run(PROBE)
    assert out["start"] == 2
    for pool_round, after in zip(out["rounds"][::2], out["rounds"][1::2]):
        assert pool_round == [[1, 1], [1, 1]]
        assert after == 2
    assert out["main_inside"] == 1 and out["end"] == 2


def test_the_opt_out_leaves_blas_alone():
    out = _run(PROBE, DASK_LANCE_INDEX_NO_BLAS_LIMIT="1")
    assert out["rounds"][0] == [[2, 2], [2, 2]] and out["end"] == 2


def test_a_threaded_scheduler_build_encodes_and_trains_pq_on_one_blas_thread(tmp_path):
    out = _run(BUILD_PROBE, str(tmp_path / "t.lance"))
    assert out["rows"] == 12000
    assert out["start"] == 2 and out["end"] == 2
    assert len(out["build"]) == 4 and set(out["build"]) == {1}
    assert len(out["pq"]) == 2 and set(out["pq"]) == {1}  # 8 sub-spaces: two groups of 4


def test_pq_groups_in_threads_give_the_codebook_of_groups_one_after_another(monkeypatch):
    from dask_lance_index.datagen import make_vectors
    from dask_lance_index.model import train_pq
    from dask_lance_index.train import map_groups

    r = make_vectors(4096, 64, seed=3)
    in_turn = train_pq(r, 16, 6, max_iters=10, seed=7)  # no map_groups: one group after another
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # two cores, so two threads, on any machine
    threads = []
    real = map_groups.__globals__["ThreadPoolExecutor"]
    monkeypatch.setitem(map_groups.__globals__, "ThreadPoolExecutor",
                        lambda n: threads.append(n) or real(n))
    threaded = train_pq(r, 16, 6, max_iters=10, seed=7, map_groups=map_groups)
    assert threads == [2]
    np.testing.assert_array_equal(threaded, in_turn)
    assert threaded.shape == (16, 64, 4)
