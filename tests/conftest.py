"""Shared fixtures: small clustered data sets on disk and a real LocalCluster."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings

import numpy as np
import pytest

import dask_lance_index as dli
from dask_lance_index.datagen import make_vectors, write_vectors

# Lance's statistics call warns about centroids on every use; it is noise here.
os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")


@pytest.fixture(scope="session")
def vectors() -> np.ndarray:
    """12,000 clustered 32-d vectors (low intrinsic dimension, as real embeddings)."""
    return make_vectors(12_000, 32, num_clusters=200, seed=7)


@pytest.fixture(scope="session")
def queries(vectors) -> np.ndarray:
    rng = np.random.default_rng(11)
    picks = rng.choice(len(vectors), 200, replace=False)
    return vectors[picks] + 0.05 * rng.standard_normal((200, vectors.shape[1])).astype(np.float32)


@pytest.fixture(scope="session")
def big_vectors() -> np.ndarray:
    """40,000 clustered 32-d vectors: builds long enough to hit with a fault."""
    return make_vectors(40_000, 32, num_clusters=200, seed=3)


@pytest.fixture(scope="session")
def big_queries(big_vectors) -> np.ndarray:
    rng = np.random.default_rng(5)
    picks = rng.choice(len(big_vectors), 100, replace=False)
    return big_vectors[picks] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)


@pytest.fixture
def dataset_uri(tmp_path, vectors) -> str:
    """A fresh Lance dataset of ``vectors`` in 4 fragments of 3,000 rows."""
    uri = str(tmp_path / "vectors.lance")
    write_vectors(uri, vectors, max_rows_per_file=3000)
    return uri


@pytest.fixture(scope="session")
def cluster_client():
    """A real dask.distributed cluster with two worker processes."""
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


# -- an S3 server on loopback (moto), for every module that needs one ------------------------------

SECRET = "not-a-real-secret-" + uuid.uuid4().hex[:8]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["LANCE_INCLUDE_VECTOR_CENTROIDS"] = "false"
    # The processes started here import the package under test (this checkout), not another install.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(dli.__file__)),
                                                      env.get("PYTHONPATH")]))
    return env


# -- a cluster started the way a cluster script starts it, each process logging to a file -----------

BIN = os.path.dirname(sys.executable)


@dataclasses.dataclass
class DaskProcesses:
    """``dask scheduler`` and ``dask worker`` processes started by :func:`dask_processes`."""

    address: str
    procs: list
    logs: list  # one file per process (stdout and stderr): scheduler.log, worker-0.log, ...

    def log_text(self) -> str:
        """Everything every process has logged so far."""
        return "\n".join(p.read_text(errors="replace") for p in self.logs)


def _tls_args(tls: dict | None) -> list[str]:
    if not tls:
        return []
    return ["--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]


@contextlib.contextmanager
def dask_processes(log_dir, workers: int = 2, tls: dict | None = None, host: str = "127.0.0.1",
                   worker_args: tuple = ("--memory-limit", "4GB")):
    """Start ``dask scheduler`` and ``workers`` ``dask worker`` processes (one thread each, no
    dashboard) with their output in files under ``log_dir``; wait until every worker has joined;
    stop them all on exit.

    Parameters
    ----------
    log_dir : path
        Where the logs go: ``scheduler.log``, ``worker-0.log``, ...
    workers : int
        Worker processes.
    tls : dict, optional
        ``{"ca": path, "cert": path, "key": path}``: the scheduler listens on ``tls://`` with them
        and every worker connects with them (the options of ``dask scheduler`` / ``dask worker``).
    host : str
        The address the scheduler listens on.
    worker_args : tuple
        More options of ``dask worker``.

    Yields
    ------
    DaskProcesses
    """
    from distributed import Client
    from distributed.security import Security

    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    address = f"{'tls' if tls else 'tcp'}://{host}:{port}"
    dask = os.path.join(BIN, "dask")
    env = _clean_env()
    procs, logs = [], []

    def start(name, cmd):
        logs.append(log_dir / f"{name}.log")
        with open(logs[-1], "wb") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))

    protocol = ["--protocol", "tls"] if tls else []
    start("scheduler", [dask, "scheduler", *protocol, *_tls_args(tls), "--host", host, "--port", str(port),
                        "--no-dashboard"])
    try:
        for i in range(workers):
            start(f"worker-{i}", [dask, "worker", address, *_tls_args(tls), "--nthreads", "1", "--no-dashboard",
                                  *worker_args])
        security = Security(tls_ca_file=str(tls["ca"]), tls_client_cert=str(tls["cert"]),
                            tls_client_key=str(tls["key"]), require_encryption=True) if tls else None
        with Client(address, security=security, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)
        yield DaskProcesses(address, procs, logs)
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def s3():
    """An S3-compatible server on loopback; yields Lance storage_options for it. Skips the
    tests that use it (only those) when moto or boto3 is not installed."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
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


def in_thread(fn) -> dict:
    """Start ``fn`` in a thread; returns a box that gets ``result`` (or the exception) and ``t``,
    when it ended, and holds the ``thread``: a test injects its fault meanwhile."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["result"] = exc
        box["t"] = time.time()

    box["thread"] = threading.Thread(target=target, daemon=True)
    box["thread"].start()
    return box


def index_dirs(uri: str) -> set[str]:
    path = os.path.join(uri, "_indices")
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def committed_segment_uuids(ds) -> set[str]:
    return {s.uuid for d in ds.describe_indices() for s in d.segments}


@contextlib.contextmanager
def count_builds():
    """Count, per build task, the segments every engine builds in this process while the
    block runs (the real builds run): ``{task: times}``."""
    from dask_lance_index.build import ENGINES

    seen: dict[int, int] = {}
    for engine in ENGINES.values():
        def counting(plan, task, *a, _real=engine.build_segment, **k):
            seen[task] = seen.get(task, 0) + 1
            return _real(plan, task, *a, **k)

        engine.build_segment = counting  # an instance attribute shadows the method
    try:
        yield seen
    finally:
        for engine in ENGINES.values():
            del engine.build_segment
