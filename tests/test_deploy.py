"""Real deployments: a dataset on an S3 server, a cluster started the way cluster scripts start it.

The S3 server is moto's server mode on loopback (the S3 API over HTTP); the
cluster is ``dask scheduler`` and ``dask worker`` processes launched from the
command line. The workers get no AWS credentials in their environment: the
``storage_options`` given once to ``create_index`` must reach every task.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid

import pytest

import dask_lance_index as dli
from dask_lance_index.evaluation import exact_knn, recall_at_k, search
from dask_lance_index.storage import filesystem

from .conftest import BIN, SECRET, _clean_env, dask_processes

pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """``dask scheduler`` + two ``dask worker`` processes, as a cluster script starts them; yields
    a client, the processes and the :class:`DaskProcesses` whose logs (files) the tests read."""
    from distributed import Client

    with dask_processes(tmp_path_factory.mktemp("cli-cluster-logs")) as cluster:
        client = Client(cluster.address, timeout="60s")
        yield client, cluster.procs, cluster
        client.close()


def _write_s3(uri, vectors, storage_options, rows_per_file=3000):
    import lance

    from dask_lance_index.datagen import vector_table

    lance.write_dataset(vector_table(vectors), uri, max_rows_per_file=rows_per_file, storage_options=storage_options)


def _s3_index_dirs(uri, storage_options) -> set[str]:
    import pyarrow.fs as pafs

    from dask_lance_index.storage import filesystem

    fs, path = filesystem(uri + "/_indices", storage_options)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {i.base_name for i in infos if i.type == pafs.FileType.Directory}


# Queries against the S3 server cost about 75 ms each (Lance reads the index and, to refine,
# the rows over HTTP): 50 queries, not the 200 of the fixture, keep these tests short.


# IVF_RQ: the workers write its segment files themselves (segment_write), on the store
@pytest.mark.parametrize("index_type", ["IVF_PQ", "IVF_FLAT", "IVF_RQ"])
def test_build_on_s3_through_a_cli_started_cluster(s3, cli_cluster, vectors, queries, index_type):
    client, _, _ = cli_cluster
    uri = f"s3://vectors/{index_type.lower()}-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors, s3)
    t0 = time.perf_counter()
    extra = {"num_sub_vectors": 8} if "PQ" in index_type else {}
    ds = dli.create_index(uri, "vector", index_type, num_partitions=16, num_tasks=3, client=client, storage_options=s3, **extra)
    seconds = time.perf_counter() - t0
    print(f"\n{index_type} on S3 through a CLI cluster: {seconds:.2f} s")
    segments = {s.uuid for d in ds.describe_indices() for s in d.segments}
    assert segments and _s3_index_dirs(uri, s3) == segments  # no stray segment left on the store
    found, _ = search(ds, "vector", queries[:50], 10, nprobes=8, refine_factor=5)
    assert recall_at_k(found, exact_knn(vectors, queries[:50], 10, "l2")) > 0.8


def test_storage_options_are_not_in_errors(s3, cli_cluster, vectors):
    client, _, _ = cli_cluster
    uri = f"s3://vectors/err-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors, s3)
    with pytest.raises(dli.InvalidInputError) as err:
        dli.create_index(uri, "no_such_column", "IVF_PQ", client=client, storage_options=s3)
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)


def test_a_worker_stopped_mid_build_the_build_still_finishes(s3, cli_cluster, vectors, queries):
    """A third ``dask worker`` joins, takes build tasks, and is killed while it runs one."""
    import signal
    import threading

    client, _, _ = cli_cluster
    uri = f"s3://vectors/kill-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors, s3, rows_per_file=1000)  # 12 fragments: a longer build
    before = set(client.scheduler_info()["workers"])
    extra = subprocess.Popen(
        [os.path.join(BIN, "dask"), "worker", client.scheduler.address, "--nthreads", "1", "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_clean_env(),
        start_new_session=True,  # its own process group: the kill takes nanny and worker together
    )
    try:
        client.wait_for_workers(len(before) + 1, timeout=120)
        (victim,) = set(client.scheduler_info()["workers"]) - before
        build = dli.create_index(
            uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, num_tasks=12, client=client,
            storage_options=s3, compute=False,
        )
        out = {}
        runner = threading.Thread(target=lambda: out.setdefault("result", dli.run(build, client=client)))
        runner.start()
        killed = False
        deadline = time.time() + 120
        while runner.is_alive() and time.time() < deadline and not killed:
            busy = client.processing(workers=[victim]).get(victim, ())
            if any("dli-build" in str(k) for k in busy):
                os.killpg(extra.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        runner.join(300)
        assert killed, "the extra worker never ran a build task: the test proves nothing"
        result = out["result"]
    finally:
        if extra.poll() is None:
            os.killpg(extra.pid, signal.SIGKILL)
    ds = result.dataset(s3)
    segments = {s.uuid for d in ds.describe_indices() for s in d.segments}
    assert _s3_index_dirs(uri, s3) == segments  # the killed task's partial segment is gone
    found, _ = search(ds, "vector", queries[:50], 10, nprobes=8, refine_factor=5)
    assert recall_at_k(found, exact_knn(vectors, queries[:50], 10, "l2")) > 0.8


# -- journals and partition artifacts on the object store ------------------------------------------
# Credentials reach the journal and the artifacts only through storage_options: no AWS_* variable
# in this process (the driver) nor in the workers' environment.
@pytest.fixture(scope="module")
def no_aws_env():
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            mp.delenv(k)
        yield


@pytest.fixture(scope="module")
def s3_cluster(no_aws_env):
    """A LocalCluster with two worker processes, started without any AWS_* variable."""
    import warnings

    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    found = client.run(lambda: sorted(k for k in os.environ if k.startswith("AWS_")))
    assert not any(found.values()), found  # else a bug in passing storage_options could hide
    yield client
    client.close()
    cluster.close()


def _s3_files(prefix, storage_options) -> list[str]:
    """Files (not directory markers) under ``prefix``, relative to it."""
    import pyarrow.fs as pafs

    from dask_lance_index.storage import filesystem

    fs, path = filesystem(prefix, storage_options)
    infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True))
    return sorted(i.path[len(path.rstrip("/")) + 1 :] for i in infos if i.type == pafs.FileType.File)


class _Watch:
    """Lists ``prefix`` on the store in a thread while a build runs; keeps the most files seen."""

    def __init__(self, prefix, storage_options, pattern=""):
        import threading

        self.most: list[str] = []
        self._stop = threading.Event()
        self._args = (prefix, storage_options, pattern)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        prefix, so, pattern = self._args
        while not self._stop.is_set():
            files = [f for f in _s3_files(prefix, so) if pattern in f]
            if len(files) > len(self.most):
                self.most = files
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_default_journal_on_s3_through_worker_processes(s3, s3_cluster, vectors, queries, caplog):
    import logging

    uri = f"s3://vectors/journal-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors, s3)
    build = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, num_tasks=4,
                             client=s3_cluster, storage_options=s3, compute=False)
    journal = f"{uri}/_dli/{build.plan.build_id}"
    assert build.journal == journal  # the default location, on the store beside the data
    assert _s3_files(journal, s3) == ["journal.json"]
    with caplog.at_level(logging.DEBUG, logger="dask_lance_index"), _Watch(journal, s3, "segments/") as seen:
        result = dli.run(build, client=s3_cluster)
    # every build task journaled its segment there (from a worker, with the storage_options)...
    assert len(seen.most) == 4, seen.most
    # ...and a successful build removes its journal
    assert _s3_files(f"{uri}/_dli", s3) == []
    ds = result.dataset(s3)
    assert {s.uuid for d in ds.describe_indices() for s in d.segments} == _s3_index_dirs(uri, s3)
    found, _ = search(ds, "vector", queries[:50], 10, nprobes=8, refine_factor=5)
    assert recall_at_k(found, exact_knn(vectors, queries[:50], 10, "l2")) > 0.8
    assert SECRET not in caplog.text and SECRET not in repr(build)


S3_DRIVER = """
import json, os, sys
import dask_lance_index as dli
uri, options = sys.argv[1], json.loads(os.environ["DLI_TEST_STORAGE_OPTIONS"])
dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=16, num_tasks=12, seed=1, scheduler="sync", replace=True,
                 storage_options=options)
print("FINISHED")
"""


def _kill_driver_on_s3(uri, storage_options, after=3) -> int:
    """A driver process builds (default journal, on the store); SIGKILL it once ``after``
    segments are journaled. Returns how many were."""
    import json
    import signal

    env = {**_clean_env(), "DLI_TEST_STORAGE_OPTIONS": json.dumps(storage_options)}  # not on the command line
    proc = subprocess.Popen([sys.executable, "-c", S3_DRIVER, uri], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and proc.poll() is None:
        n = sum(f.endswith(".json") for f in _s3_files(f"{uri}/_dli", storage_options) if "/segments/" in f)
        if n >= after:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, out[-2000:], err[-4000:])
    n = sum(f.endswith(".json") for f in _s3_files(f"{uri}/_dli", storage_options) if "/segments/" in f)
    assert after <= n < 12, f"killed with {n} of 12 segments journaled"
    return n


def test_a_driver_killed_on_s3_resumes_and_cleanup_finds_what_it_left(s3, no_aws_env, vectors, queries, caplog):
    import logging

    from dask_lance_index.recovery import BuildJournal

    from .conftest import count_builds

    uri = f"s3://vectors/crash-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors, s3, rows_per_file=1000)  # 12 fragments, one build task each
    n = _kill_driver_on_s3(uri, s3)
    (build_id,) = {f.split("/")[0] for f in _s3_files(f"{uri}/_dli", s3)}
    journal = f"{uri}/_dli/{build_id}"
    j = BuildJournal.load(journal, s3)
    assert j is not None and not j.driver_alive() and SECRET not in repr(j)
    done = {s.slot for s in j.segments}
    left = {s.uuid for s in j.segments}
    assert len(done) == n and left <= _s3_index_dirs(uri, s3)
    # cleanup finds the crashed build on the store: its segments and its journal
    dry = dli.cleanup(uri, storage_options=s3, dry_run=True)
    assert {p.rsplit("/", 1)[1] for p in dry} >= left | {build_id}

    with count_builds() as seen, caplog.at_level(logging.DEBUG, logger="dask_lance_index"):
        ds = dli.create_index(uri, "vector", "IVF_FLAT", journal=journal, resume=True, scheduler="sync",
                              storage_options=s3)
    assert set(seen) == set(range(12)) - done and all(v == 1 for v in seen.values())
    assert f"{n} of 12 segments journaled" in caplog.text and SECRET not in caplog.text
    segments = {s.uuid for d in ds.describe_indices() for s in d.segments}
    assert _s3_index_dirs(uri, s3) == segments
    found, _ = search(ds, "vector", queries[:50], 10, nprobes=8)
    assert recall_at_k(found, exact_knn(vectors, queries[:50], 10, "l2")) > 0.9
    assert _s3_files(f"{uri}/_dli", s3) == []  # the resumed build removed its journal
    assert dli.cleanup(uri, storage_options=s3) == []

    # A second crash, and this time cleanup removes what it left: segments and journal.
    _kill_driver_on_s3(uri, s3)
    removed = dli.cleanup(uri, storage_options=s3)
    assert removed and _s3_index_dirs(uri, s3) == segments
    assert _s3_files(f"{uri}/_dli", s3) == []


def test_artifact_engine_on_s3_writes_its_scratch_there_and_removes_it(s3, s3_cluster, vectors, queries):
    uri = f"s3://vectors/artifact-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors, s3)
    build = dli.create_index(uri, "vector", "IVF_PQ", num_partitions=16, num_sub_vectors=8, num_tasks=4,
                             engine="artifact", client=s3_cluster, storage_options=s3, compute=False)
    scratch = f"{uri}/_dli_artifacts/{build.plan.build_id}"
    assert f"partition artifact at {scratch}" in build.plan.notes
    with _Watch(f"{uri}/_dli_artifacts", s3) as seen:
        result = dli.run(build, client=s3_cluster)
    # the workers wrote the partition artifact on the store (manifest last)...
    rel = build.plan.build_id + "/"
    assert {rel + "manifest.json", rel + "metadata.lance"} <= set(seen.most), seen.most
    assert any(f.startswith(rel + "partitions/bucket-") for f in seen.most)
    # ...and it is gone after the commit, with the journal
    assert _s3_files(f"{uri}/_dli_artifacts", s3) == [] and _s3_files(f"{uri}/_dli", s3) == []
    ds = result.dataset(s3)
    assert {s.uuid for d in ds.describe_indices() for s in d.segments} == _s3_index_dirs(uri, s3)
    found, _ = search(ds, "vector", queries[:50], 10, nprobes=8, refine_factor=5)
    assert recall_at_k(found, exact_knn(vectors, queries[:50], 10, "l2")) > 0.8


def test_journal_and_artifact_errors_on_s3_never_hold_the_secret(s3, no_aws_env, vectors):
    from dask_lance_index.recovery import BuildJournal
    from dask_lance_index.storage import Store

    uri = f"s3://vectors/errs-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors[:3000], s3)
    errors = []

    def fails(fn, match):
        with pytest.raises(dli.InvalidInputError, match=match) as err:
            fn()
        errors.append(err.value)

    # a journal location that cannot be written (no such bucket)
    fails(lambda: dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=4, scheduler="sync",
                                   storage_options=s3, journal="s3://no-such-bucket/j"), "not writable")
    # resuming with the journal of another build
    plan = dli.plan_index(uri, "vector", "IVF_FLAT", num_partitions=4, storage_options=s3)
    j = BuildJournal.start(f"s3://vectors/journals/{plan.build_id}", plan, s3)
    fails(lambda: dli.create_index(uri, "vector", "IVF_PQ", journal=j.location, resume=True, scheduler="sync",
                                   storage_options=s3), "another build")
    # a journal that exists already, without resume
    fails(lambda: dli.create_index(uri, "vector", "IVF_FLAT", journal=j.location, resume=False, scheduler="sync",
                                   storage_options=s3), "already exists")
    # cleanup of a journal that is not there
    fails(lambda: dli.cleanup(uri, storage_options=s3, journal="s3://vectors/journals/none"), "no build journal")
    # a partition artifact that is not there
    with pytest.raises(dli.DaskLanceIndexError, match="manifest.json is missing") as err:
        dli.PartitionArtifact.open(f"{uri}/_dli_artifacts/none", s3)
    errors.append(err.value)
    for e in errors:
        assert SECRET not in str(e) and SECRET not in repr(e)
    assert SECRET not in repr(j) and SECRET not in repr(Store(j.location, s3))
    assert BuildJournal.load(j.location, s3).plan == j.plan
    assert SECRET not in "".join(Store(j.location, s3).read(f) or "" for f in ("journal.json",))
    j.remove()
    assert _s3_files("s3://vectors/journals", s3) == []


def test_a_task_failing_on_s3_logs_no_secret(s3, s3_cluster, vectors):
    """A worker logs a failing task ("Compute Failed ... Task: <repr>"), and dask's repr of a task
    may show its arguments: the storage_options among them are a StorageOptions, whose repr
    shows the keys, not the secret."""
    from dask._task_spec import convert_legacy_graph

    from dask_lance_index.storage import StorageOptions, filesystem

    uri = f"s3://vectors/fail-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors[:6000], s3)
    build = dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=8, num_tasks=2, client=s3_cluster,
                             storage_options=s3, compute=False)
    tasks = convert_legacy_graph(dict(build.__dask_graph__())).values()
    # the options ride in the tasks' callables (BuildSegment(...), CommitIndex(...)) or their arguments
    settings = [getattr(t.func, f.name) for t in tasks if dataclasses.is_dataclass(getattr(t, "func", None))
                for f in dataclasses.fields(t.func)]
    args = [a for t in tasks for a in getattr(t, "args", ())]
    carried = [a for a in args + settings if isinstance(a, dict) and a]
    assert len(carried) > 4 and all(isinstance(a, StorageOptions) for a in carried)
    assert all(SECRET not in repr(a) and "'aws_secret_access_key': '***'" in repr(a) for a in carried)
    assert all(SECRET not in repr(t) for t in tasks) and SECRET not in repr(build)
    fs, path = filesystem(uri, s3)
    fs.delete_file(f"{path}/data/{_s3_files(uri + '/data', s3)[0]}")  # a fragment's data is gone
    with pytest.raises(OSError, match="Not found: .*/data/") as err:  # the fragment's file, on the store
        dli.run(build, client=s3_cluster, retries=0)
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)
    logs = "\n".join(msg for w, lines in s3_cluster.get_worker_logs().items() for _, msg in lines)
    assert "Compute Failed" in logs and "Not found" in logs  # the failure was logged...
    assert SECRET not in logs  # ...without the secret
    assert _s3_files(f"{uri}/_dli", s3) == [] and not _s3_index_dirs(uri, s3)  # the failed build left nothing


def test_the_scheduler_and_worker_processes_log_no_secret(s3, cli_cluster, vectors):
    """The ``dask scheduler`` and ``dask worker`` processes' own output (files, as a cluster script
    keeps it) holds no secret after a build on S3 and a task failing on S3 through them."""
    client, _, cluster = cli_cluster
    uri = f"s3://vectors/logs-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors[:6000], s3)
    dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=8, num_tasks=2, client=client, storage_options=s3)
    build = dli.create_index(uri, "vector", "IVF_FLAT", num_partitions=8, num_tasks=2, replace=True, client=client,
                             storage_options=s3, compute=False)
    fs, path = filesystem(uri, s3)
    fs.delete_file(f"{path}/data/{_s3_files(uri + '/data', s3)[0]}")  # a fragment's data is gone
    with pytest.raises(OSError, match="Not found: .*/data/"):
        dli.run(build, client=client, retries=0)
    time.sleep(0.5)  # the workers' log lines of the failure reach their files
    names = [p.name for p in cluster.logs]
    assert names == ["scheduler.log", "worker-0.log", "worker-1.log"]
    texts = {p.name: p.read_text(errors="replace") for p in cluster.logs}
    assert "Scheduler at:" in texts["scheduler.log"] and all("Start worker at:" in texts[n] for n in names[1:])
    assert "Compute Failed" in cluster.log_text() and "Not found" in cluster.log_text()  # the failure was logged...
    for name, text in texts.items():
        assert SECRET not in text, f"the secret is in {name}"  # ...by no process with the secret


def test_storage_options_repr_and_which_stores_get_a_default_journal():
    """Pure: what a StorageOptions shows, and where pyarrow is given the user's storage_options."""
    import pickle

    from dask_lance_index.storage import StorageOptions, hide_secrets, options_apply

    opts = {"aws_access_key_id": "AKIA-x", "aws_secret_access_key": SECRET, "aws_session_token": "sess-123",
            "aws_region": "eu-west-1", "aws_endpoint": "http://h:9000", "google_service_account_key": "{...}"}
    hidden = hide_secrets(opts)
    assert hidden == opts and isinstance(hidden, dict) and hide_secrets(None) is None
    shown = repr(hidden) + str(hidden) + repr([hidden])
    assert all(v not in shown for v in (SECRET, "AKIA-x", "sess-123", "{...}"))
    assert "'aws_region': 'eu-west-1'" in shown and "'aws_endpoint': 'http://h:9000'" in shown
    back = pickle.loads(pickle.dumps(hidden))  # as tasks travel to workers
    assert type(back) is StorageOptions and back == opts
    # pyarrow gets the options for local paths and S3; for other schemes only the environment's
    # credentials, so a build there journals only where journal= says.
    assert options_apply("/data/x.lance", opts) and options_apply("s3://b/x.lance", opts)
    assert options_apply("gs://b/x.lance", None) and not options_apply("gs://b/x.lance", opts)
