"""Progress bars (dask's locally, distributed's on a cluster) and the seconds of every stage."""

from __future__ import annotations

import os
import sys

import lance

import dask_lance_index as dli
from dask_lance_index.runtime.progress import show_progress

STAGES = ["plan", "sample", "train", "build", "merge", "commit", "total"]


def test_local_scheduler_draws_dask_progress_bar_on_stderr(dataset_uri, capfd):
    ds = dli.create_index(dataset_uri, "vector", "IVF_FLAT", num_partitions=8, scheduler="threads", progress=True)
    out, err = capfd.readouterr()
    assert "100% Completed" in err and "Completed" not in out
    assert [d.name for d in ds.describe_indices()] == ["vector_idx"]


def test_progress_false_draws_nothing(dataset_uri, capfd):
    dli.create_index(dataset_uri, "vector", "IVF_FLAT", num_partitions=8, scheduler="threads", progress=False)
    out, err = capfd.readouterr()
    assert "Completed" not in out + err


def test_cluster_draws_distributed_progress_and_reports_every_stage(dataset_uri, cluster_client, capfd):
    build = dli.create_index(dataset_uri, "vector", "IVF_PQ", num_partitions=8, num_sub_vectors=8,
                             client=cluster_client, compute=False)
    result = dli.run(build, client=cluster_client, progress=True)
    out, err = capfd.readouterr()
    assert "% Completed" in err and "Completed" not in out
    assert list(result.seconds) == STAGES
    assert result.num_merges == 1  # 2 workers: 2 build segments merged once into the committed one
    ds = lance.dataset(dataset_uri)
    assert ds.version == result.version
    assert [s.uuid for d in ds.describe_indices() for s in d.segments] == list(result.segments)


def test_every_stage_is_reported_when_nothing_is_trained_or_merged(dataset_uri, vectors):
    centroids = vectors[:4]
    result = dli.run(
        dli.create_index(dataset_uri, "vector", "IVF_FLAT", ivf_centroids=centroids, num_tasks=1,
                         scheduler="sync", compute=False),
        scheduler="sync", progress=False,
    )
    assert list(result.seconds) == STAGES
    assert result.seconds["sample"] == result.seconds["train"] == result.seconds["merge"] == 0.0


def test_default_is_on_only_when_someone_is_watching(monkeypatch):
    assert show_progress(True) is True and show_progress(False) is False
    assert show_progress(None) is False  # pytest captures stderr: like a batch job writing to a file
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        assert show_progress(None) is True  # an interactive terminal
    os.close(master)
