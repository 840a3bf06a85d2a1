"""The ``dask-lance-index`` command line, run as a subprocess against a real local scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lance
import numpy as np
import pytest

from dask_lance_index.cli import EXIT_CODES, main
from dask_lance_index.evaluation import exact_knn, recall_at_k, search
from dask_lance_index.plan import IndexPlan

from .conftest import index_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dask_lance_index ARGS`` with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "dask_lance_index", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def scheduler(cluster_client) -> str:
    return cluster_client.scheduler.address


def test_build_on_a_scheduler_commits_an_index_that_searches_correctly(dataset_uri, scheduler, vectors, queries):
    proc = cli(
        "build", dataset_uri, "--index-type", "IVF_FLAT", "--num-partitions", "16",
        "--seed", "1", "--scheduler", scheduler, "--json", "--progress",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # stdout is pure JSON: the bar went to stderr
    assert "% Completed" in proc.stderr
    plan, result = IndexPlan.from_dict(out["plan"]), out["result"]
    # one task although the scheduler has 2 worker threads: an IVF_FLAT task is not split to give
    # each a task (the merge would write every row again); test_tls sees an IVF_PQ plan split in 2
    assert plan.num_tasks == 1
    assert result["version"] == 2 and result["num_rows_indexed"] == len(vectors)
    assert list(result["seconds"]) == ["plan", "sample", "train", "build", "merge", "commit", "total"]
    ds = lance.dataset(dataset_uri)
    assert [d.name for d in ds.describe_indices()] == ["vector_idx"]
    assert {s.uuid for d in ds.describe_indices() for s in d.segments} == set(result["segments"])
    truth = exact_knn(vectors, queries, 10)
    found, _ = search(ds, "vector", queries, 10, nprobes=16)  # every partition: exact
    assert recall_at_k(found, truth) > 0.99
    found, _ = search(ds, "vector", queries, 10, nprobes=4)
    assert recall_at_k(found, truth) > 0.8


def test_build_text_output_prints_plan_result_and_seconds(dataset_uri, scheduler, capfd):
    # In-process: the same main() the console script calls.
    assert main(["build", dataset_uri, "--index-type", "IVF_FLAT", "--num-partitions", "8", "--scheduler", scheduler]) == 0
    out, err = capfd.readouterr()
    assert out.startswith("IndexPlan ") and "committed at version 2" in out
    assert f"cluster: 2 worker(s), threads per worker [1, 1], scheduler {scheduler}" in out
    table = out[out.index("seconds per stage:"):].splitlines()[1:]
    assert [line.split()[0] for line in table] == ["plan", "sample", "train", "build", "merge", "commit", "total"]
    assert "% Completed" not in err  # no terminal: no bar by default
    assert [d.name for d in lance.dataset(dataset_uri).describe_indices()] == ["vector_idx"]


def test_plan_writes_nothing(dataset_uri, capsys):
    assert main(["plan", dataset_uri, "--index-type", "IVF_RQ", "--num-partitions", "8", "--num-tasks", "3", "--json"]) == 0
    plan = IndexPlan.from_json(capsys.readouterr().out)
    assert plan.params.index_type == "IVF_RQ" and plan.num_tasks == 3 and plan.version == 1
    assert lance.dataset(dataset_uri).version == 1 and not index_dirs(dataset_uri)


def test_evaluate_against_the_scheduler(dataset_uri, scheduler, tmp_path, capsys):
    lance.dataset(dataset_uri).create_index("vector", "IVF_FLAT", num_partitions=16)
    png = tmp_path / "recall.png"
    # In-process (the console script's main()); the build test above covers the subprocess path.
    argv = ["evaluate", dataset_uri, "--nprobes", "1,16", "--refine-factors", "none,5", "--num-queries", "50",
            "--scheduler", scheduler, "--plot", str(png), "--json"]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)
    assert [(r["nprobes"], r["refine_factor"]) for r in table["rows"]] == [(1, None), (1, 5), (16, None), (16, 5)]
    assert table["num_queries"] == 50 and table["index_type"] == "IVF_FLAT"
    recall = {(r["nprobes"], r["refine_factor"]): r["recall"] for r in table["rows"]}
    assert recall[16, None] == recall[16, 5] == 1.0  # every partition of a flat index: exact
    assert 0 < recall[1, None] < 1.0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_bad_input_exits_2_and_leaves_the_dataset_unchanged(dataset_uri):
    proc = cli("build", dataset_uri, "--column", "embedding", "--scheduler", "tcp://127.0.0.1:1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "column 'embedding' is not in the dataset" in proc.stderr and "Traceback" not in proc.stderr
    assert lance.dataset(dataset_uri).version == 1 and not index_dirs(dataset_uri)


def test_help_reads_well_and_documents_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("build", "plan", "evaluate", "--scheduler", "exit codes:"):
        assert sub in out
    for code in EXIT_CODES:
        assert f"\n  {code} " in out



def test_subcommand_help(capsys):
    for sub in ("build", "plan", "evaluate"):
        assert main([sub, "--help"]) == 0
        out = capsys.readouterr().out
        assert "examples:" in out and "exit codes: 0 ok" in out and "--scheduler" in out


# In-process (same code path as the console script) for the cheap exit-code cases.


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["build"], 2, "required: uri"),
        (["frobnicate", "x"], 2, "invalid choice"),
        (["plan", "{uri}", "--index-type", "IVF_XX"], 2, "invalid choice"),
        (["plan", "{uri}", "--num-partitions", "0"], 2, "expected a number >= 1"),
        (["plan", "{uri}", "--storage-option", "novalue"], 2, "expected KEY=VALUE"),
        (["plan", "{missing}"], 2, "cannot open a Lance dataset"),
        (["plan", "{uri}", "--index-type", "IVF_PQ", "--num-sub-vectors", "5"], 2, "num_sub_vectors"),
        (["evaluate", "{uri}"], 2, "has no index on column 'vector'"),
    ],
)
def test_exit_codes_for_bad_input(dataset_uri, tmp_path, capsys, argv, code, message):
    argv = [a.format(uri=dataset_uri, missing=str(tmp_path / "missing")) for a in argv]
    assert main(argv) == code
    assert message in capsys.readouterr().err
    assert lance.dataset(dataset_uri).version == 1


def test_existing_index_exits_3_and_replace_succeeds(dataset_uri, capsys):
    lance.dataset(dataset_uri).create_index("vector", "IVF_FLAT", num_partitions=4)
    assert main(["plan", dataset_uri, "--index-type", "IVF_FLAT"]) == 3
    assert "already has an index named 'vector_idx'" in capsys.readouterr().err
    assert main(["plan", dataset_uri, "--index-type", "IVF_FLAT", "--num-partitions", "4", "--replace", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replace"] is True


def test_wrong_queries_file_exits_2(dataset_uri, tmp_path, capsys):
    lance.dataset(dataset_uri).create_index("vector", "IVF_FLAT", num_partitions=4)
    path = tmp_path / "q.npy"
    np.save(path, np.zeros((5, 7), np.float32))
    assert main(["evaluate", dataset_uri, "--queries", str(path)]) == 2
    assert "shape (num_queries, 32)" in capsys.readouterr().err


@pytest.mark.parametrize("queries", ["missing.npy", "not_npy.npy"])
def test_unreadable_queries_file_exits_2_naming_it(dataset_uri, tmp_path, capsys, queries):
    # The dataset has an index: the command gets as far as reading the queries file.
    lance.dataset(dataset_uri).create_index("vector", "IVF_FLAT", num_partitions=4)
    path = tmp_path / queries
    if queries == "not_npy.npy":
        path.write_text("id,vector\n1,[0.5]\n")
    assert main(["evaluate", dataset_uri, "--queries", str(path), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"UsageError: cannot read queries from {str(path)!r}" in err and "Traceback" not in err
    assert lance.dataset(dataset_uri).version == 2  # the index build's commit, nothing more


def test_unreachable_scheduler_exits_1_with_the_address(dataset_uri, capsys):
    argv = ["build", dataset_uri, "--num-partitions", "4", "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no dask scheduler answered at tcp://127.0.0.1:1" in err and "Traceback" not in err
    assert lance.dataset(dataset_uri).version == 1 and not index_dirs(dataset_uri)
