"""Every ``dask-lance-index`` option a user can pass, in a command that succeeds (or exits with its
documented code), checked by its effect on the committed index, the cluster or the dataset.

The README's default path (``build`` and ``evaluate`` without ``--scheduler``, which start a
LocalCluster) and the interrupt run as subprocesses; the other options run in-process through
:func:`main` (the console script's function) against the session's cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import lance
import numpy as np
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_lance_index.cli import main
from dask_lance_index.datagen import write_vectors
from dask_lance_index.evaluation import exact_knn, recall_at_k, search
from dask_lance_index.plan import IndexPlan
from dask_lance_index.recovery.journal import BuildJournal

from .conftest import committed_segment_uuids, index_dirs
from .test_cli import ROOT, cli


@pytest.fixture(scope="module")
def scheduler(cluster_client) -> str:
    return cluster_client.scheduler.address


def _build(uri, scheduler, *options, capsys):
    """``build URI --scheduler ADDRESS OPTIONS --json`` in-process: (exit code, the JSON output)."""
    code = main(["build", uri, "--scheduler", scheduler, "--json", *options])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else None)


def _stats(uri, name="vector_idx", storage_options=None):
    return lance.dataset(uri, storage_options=storage_options).stats.index_stats(name)


# -- the README's default: a LocalCluster started by the command ---------------------------------


def test_build_and_evaluate_without_scheduler_start_the_local_cluster_asked_for(dataset_uri, vectors, queries):
    proc = cli("build", dataset_uri, "--index-type", "IVF_FLAT", "--num-partitions", "16",
               "--workers", "1", "--threads-per-worker", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["cluster"]["workers"] == 1 and out["cluster"]["threads_per_worker"] == [2]
    # IVF_FLAT: one task, not one per thread (the merge would write every row again)
    assert IndexPlan.from_dict(out["plan"]).num_tasks == 1
    ds = lance.dataset(dataset_uri)
    assert committed_segment_uuids(ds) == set(out["result"]["segments"])
    found, _ = search(ds, "vector", queries, 10, nprobes=16)
    assert recall_at_k(found, exact_knn(vectors, queries, 10)) == 1.0  # every partition of a flat index

    proc = cli("evaluate", dataset_uri, "--nprobes", "1,16", "--refine-factors", "none", "--num-queries", "30",
               "--workers", "2", "--threads-per-worker", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(proc.stdout)
    assert table["cluster"]["workers"] == 2 and table["cluster"]["threads_per_worker"] == [1, 1]
    recall = {r["nprobes"]: r["recall"] for r in table["rows"]}
    assert recall[16] == 1.0 and recall[1] < 1.0 and table["num_queries"] == 30


# -- index options --------------------------------------------------------------------------------


def test_name_names_the_index(dataset_uri, scheduler, capsys):
    code, out = _build(dataset_uri, scheduler, "--index-type", "IVF_FLAT", "--num-partitions", "8",
                       "--name", "by_cli", capsys=capsys)
    assert code == 0 and out["plan"]["name"] == "by_cli"
    assert [d.name for d in lance.dataset(dataset_uri).describe_indices()] == ["by_cli"]
    # evaluate --name finds it by that name
    assert main(["evaluate", dataset_uri, "--name", "by_cli", "--nprobes", "8", "--refine-factors", "none",
                 "--num-queries", "20", "--scheduler", scheduler, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["recall"] == 1.0


def test_metric_cosine_is_the_index_metric_and_its_neighbours(dataset_uri, scheduler, vectors, queries, capsys):
    code, out = _build(dataset_uri, scheduler, "--index-type", "IVF_FLAT", "--num-partitions", "8",
                       "--metric", "cosine", capsys=capsys)
    assert code == 0
    assert [s["metric_type"] for s in _stats(dataset_uri)["indices"]] == ["cosine"]
    found, _ = search(lance.dataset(dataset_uri), "vector", queries, 10, nprobes=8)
    assert recall_at_k(found, exact_knn(vectors, queries, 10, "cosine")) > 0.99
    assert recall_at_k(found, exact_knn(vectors, queries, 10, "l2")) < 0.9  # not the l2 neighbours


def test_num_bits_4_gives_4_bit_pq_codes(dataset_uri, scheduler, capsys):
    code, out = _build(dataset_uri, scheduler, "--index-type", "IVF_PQ", "--num-partitions", "8",
                       "--num-sub-vectors", "8", "--num-bits", "4", capsys=capsys)
    assert code == 0 and out["plan"]["params"]["num_bits"] == 4
    assert [(s["sub_index"]["nbits"], s["sub_index"]["num_sub_vectors"]) for s in _stats(dataset_uri)["indices"]] == [(4, 8)]


def test_num_segments_2_commits_2_segments_from_4_tasks(dataset_uri, scheduler, capsys):
    code, out = _build(dataset_uri, scheduler, "--index-type", "IVF_FLAT", "--num-partitions", "8",
                       "--num-tasks", "4", "--num-segments", "2", capsys=capsys)
    assert code == 0 and IndexPlan.from_dict(out["plan"]).num_tasks == 4
    ds = lance.dataset(dataset_uri)
    segs = [sorted(s.fragment_ids) for d in ds.describe_indices() for s in d.segments]
    assert len(segs) == 2 and sorted(f for s in segs for f in s) == [0, 1, 2, 3]
    assert index_dirs(dataset_uri) == committed_segment_uuids(ds) == set(out["result"]["segments"])


def test_storage_options_reach_a_dataset_on_s3(s3, scheduler, vectors, queries, capsys):
    uri = "s3://vectors/cli-options.lance"
    write_vectors(uri, vectors[:6000], max_rows_per_file=3000, storage_options=s3)
    opts = [a for k, v in s3.items() for a in ("--storage-option", f"{k}={v}")]
    code, out = _build(uri, scheduler, "--index-type", "IVF_FLAT", "--num-partitions", "8", *opts, capsys=capsys)
    assert code == 0, capsys.readouterr().err
    ds = lance.dataset(uri, storage_options=s3)
    assert committed_segment_uuids(ds) == set(out["result"]["segments"])
    found, _ = search(ds, "vector", queries[:20], 10, nprobes=8)
    assert recall_at_k(found, exact_knn(vectors[:6000], queries[:20], 10)) == 1.0
    # without them the store refuses: the options were what opened it
    assert main(["plan", uri, "--index-type", "IVF_FLAT", "--replace"]) != 0


# -- cleanup --------------------------------------------------------------------------------------


def _leave_a_crashed_build(uri, tmp_path, vectors):
    """What a driver that died after two of its four build tasks leaves: their segments and a
    journal (at a location of its own) that says it is running."""
    import dask_lance_index as dli
    from dask_lance_index.build import BuildSegment

    jloc = str(tmp_path / "journal")
    centroids = vectors[:8].copy()
    build = dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=8, num_tasks=4, scheduler="sync",
                             journal=jloc, compute=False, ivf_centroids=centroids)
    task = BuildSegment(build.plan.engine, journal=jloc)
    uuids = {task(build.plan, i, dli.IndexModel(ivf_centroids=centroids)).uuid for i in range(2)}
    assert index_dirs(uri) == uuids
    return build.plan.build_id, jloc, uuids


def test_cleanup_dry_run_build_id_and_journal(dataset_uri, tmp_path, vectors, capsys):
    build_id, jloc, uuids = _leave_a_crashed_build(dataset_uri, tmp_path, vectors)
    # Without --build-id a build whose driver (this process) is alive is left alone.
    assert main(["cleanup", dataset_uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [] and index_dirs(dataset_uri) == uuids
    # --build-id without --journal: the segments by their names; the journal elsewhere is not found.
    assert main(["cleanup", dataset_uri, "--build-id", build_id, "--dry-run", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["dry_run"] is True
    assert {os.path.basename(p.rstrip("/")) for p in listed["removed"]} == uuids
    # --journal adds the journal; --dry-run removes nothing
    assert main(["cleanup", dataset_uri, "--build-id", build_id, "--journal", jloc, "--dry-run", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["removed"]
    assert {os.path.basename(p.rstrip("/")) for p in listed} == uuids | {os.path.basename(jloc)}
    assert index_dirs(dataset_uri) == uuids and BuildJournal.load(jloc) is not None
    # the real run removes exactly what the dry run listed
    assert main(["cleanup", dataset_uri, "--build-id", build_id, "--journal", jloc]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"removed {len(listed)} path(s)")
    assert index_dirs(dataset_uri) == set() and not os.path.exists(jloc)
    assert lance.dataset(dataset_uri).version == 1


# -- exit codes 3 and 130 -------------------------------------------------------------------------


class CompactOnFirstSegment(SchedulerPlugin):
    """On the scheduler: when the first build segment of a build is done, another writer compacts
    the dataset (before the commit task can run, which depends on every segment)."""

    name = "compact-on-first-segment"

    def __init__(self, uri: str):
        self.uri, self.done = uri, False

    def transition(self, key, start, finish, *args, **kwargs):
        if not self.done and finish == "memory" and str(key).startswith("dli-build-"):
            self.done = True
            lance.dataset(self.uri).optimize.compact_files(target_rows_per_fragment=12_000)


def test_dataset_compacted_mid_build_exits_3_and_leaves_no_index(dataset_uri, scheduler, cluster_client, capsys):
    cluster_client.register_plugin(CompactOnFirstSegment(dataset_uri))
    try:
        code = main(["build", dataset_uri, "--index-type", "IVF_FLAT", "--num-partitions", "8", "--num-tasks", "4",
                     "--scheduler", scheduler])
    finally:
        cluster_client.unregister_scheduler_plugin(CompactOnFirstSegment.name)
    err = capsys.readouterr().err
    assert code == 3, err[-3000:]
    assert "DatasetChangedError" in err and "Traceback" not in err
    ds = lance.dataset(dataset_uri)
    assert len(ds.get_fragments()) == 1  # the compaction committed...
    # ...and no version since has an index, nor is any segment left behind
    assert all(lance.dataset(dataset_uri, version=v["version"]).describe_indices() == [] for v in ds.versions())
    assert index_dirs(dataset_uri) == set()


def _release(path):
    while not os.path.exists(path):
        time.sleep(0.05)
    return True


def test_sigint_mid_build_exits_130_and_leaves_the_dataset_as_it_was(dataset_uri, tmp_path):
    # The cluster's only thread is held by a task of ours, so the build is submitted (its journal
    # written) and waiting on its tasks when the interrupt comes: mid-build on any machine.
    gate = str(tmp_path / "gate")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        hold = client.submit(_release, gate, pure=False)
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        # A command a non-interactive shell starts in the background (`(pytest ... &)`) inherits
        # SIGINT ignored, and Python then keeps it so: the CLI, started from such a pytest, would
        # never see the interrupt. So the child takes Python's own handler back first.
        interruptible = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                         "runpy.run_module('dask_lance_index', run_name='__main__', alter_sys=True)")
        proc = subprocess.Popen(
            [sys.executable, "-c", interruptible, "build", dataset_uri, "--index-type", "IVF_FLAT",
             "--num-partitions", "8", "--scheduler", cluster.scheduler_address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )
        journals = os.path.join(dataset_uri, "_dli")
        deadline = time.time() + 120
        while not (os.path.isdir(journals) and os.listdir(journals)) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # seen once in a full run: say where it hung
            proc.send_signal(signal.SIGUSR1)  # the CLI's faulthandler prints every thread's stack
            time.sleep(2)
            proc.kill()
            _, err = proc.communicate()
            open(gate, "w").close()
            pytest.fail("the build did not stop within 120 s of SIGINT; its threads:\n" + err[-6000:])
        open(gate, "w").close()
        assert hold.result(timeout=30)
    assert proc.returncode == 130, err[-3000:]
    assert "dask-lance-index: error: interrupted" in err
    ds = lance.dataset(dataset_uri)
    assert ds.version == 1 and ds.describe_indices() == [] and index_dirs(dataset_uri) == set()
    assert np.array_equal(sorted(f.fragment_id for f in ds.get_fragments()), [0, 1, 2, 3])
