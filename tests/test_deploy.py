"""Real deployments: a dataset on an S3 server, a cluster started the way cluster scripts start it.

The S3 server is moto's server mode on loopback (the S3 API over HTTP); the
cluster is ``dask scheduler`` and ``dask worker`` processes launched from the
command line. The workers get no AWS credentials in their environment: the
``storage_options`` given once to ``create_index`` must reach every task.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import dask_lance_index as dli
from dask_lance_index.evaluate import exact_knn, recall_at_k, search

pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

BIN = os.path.dirname(sys.executable)
SECRET = "not-a-real-secret-" + uuid.uuid4().hex[:8]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["LANCE_INCLUDE_VECTOR_CENTROIDS"] = "false"
    return env


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server on loopback; yields Lance storage_options for it."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_clean_env(),
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key=SECRET, region_name="us-east-1"
        )
        client.create_bucket(Bucket="vectors")
        yield {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": SECRET,
            "aws_region": "us-east-1",
            "aws_endpoint": endpoint,
            "allow_http": "true",
        }
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def cli_cluster():
    """``dask scheduler`` + two ``dask worker`` processes, as a cluster script starts them."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = os.path.join(BIN, "dask")
    env = _clean_env()
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    ]
    from distributed import Client

    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--memory-limit", "4GB"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )
        client = Client(address, timeout="60s")
        client.wait_for_workers(2, timeout=120)
        yield client, procs
        client.close()
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _write_s3(uri, vectors, storage_options, rows_per_file=3000):
    import lance

    from dask_lance_index.datagen import vector_table

    lance.write_dataset(vector_table(vectors), uri, max_rows_per_file=rows_per_file, storage_options=storage_options)


def _s3_index_dirs(uri, storage_options) -> set[str]:
    import pyarrow.fs as pafs

    from dask_lance_index._lance import filesystem

    fs, path = filesystem(uri + "/_indices", storage_options)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {i.base_name for i in infos if i.type == pafs.FileType.Directory}


@pytest.mark.parametrize("index_type", ["IVF_PQ", "IVF_FLAT"])
def test_build_on_s3_through_a_cli_started_cluster(s3, cli_cluster, vectors, queries, index_type):
    client, _ = cli_cluster
    uri = f"s3://vectors/{index_type.lower()}-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors, s3)
    t0 = time.perf_counter()
    extra = {"num_sub_vectors": 8} if "PQ" in index_type else {}
    ds = dli.create_index(uri, "vector", index_type, num_partitions=16, num_tasks=3, client=client, storage_options=s3, **extra)
    seconds = time.perf_counter() - t0
    print(f"\n{index_type} on S3 through a CLI cluster: {seconds:.2f} s")
    segments = {s.uuid for d in ds.describe_indices() for s in d.segments}
    assert segments and _s3_index_dirs(uri, s3) == segments  # no stray segment left on the store
    found, _ = search(ds, "vector", queries, 10, nprobes=8, refine_factor=5)
    assert recall_at_k(found, exact_knn(vectors, queries, 10, "l2")) > 0.8


def test_storage_options_are_not_in_errors(s3, cli_cluster, vectors):
    client, _ = cli_cluster
    uri = f"s3://vectors/err-{uuid.uuid4().hex[:6]}.lance"
    _write_s3(uri, vectors, s3)
    with pytest.raises(dli.InvalidInputError) as err:
        dli.create_index(uri, "no_such_column", "IVF_PQ", client=client, storage_options=s3)
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)


def test_a_worker_stopped_mid_build_the_build_still_finishes(s3, cli_cluster, vectors, queries):
    """A third ``dask worker`` joins, takes build tasks, and is killed while it runs one."""
    import signal
    import threading

    client, _ = cli_cluster
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
    found, _ = search(ds, "vector", queries, 10, nprobes=8, refine_factor=5)
    assert recall_at_k(found, exact_knn(vectors, queries, 10, "l2")) > 0.8
