"""Shared fixtures: small clustered data sets on disk and a real LocalCluster."""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import pytest

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
