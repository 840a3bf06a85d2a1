"""The documentation builds with Sphinx, warnings as errors, into a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         "-d", str(tmp_path / "doctrees"), os.path.join(ROOT, "docs"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The pages exist, and the API reference was generated from the docstrings.
    for page in ("index", "user-guide", "scalar", "architecture", "api", "lance", "benchmarks"):
        assert (out / f"{page}.html").is_file(), page
    api = (out / "api.html").read_text()
    for name in ("create_index", "read_lance", "to_lance", "batch_search", "add_pq_codes", "IndexModel"):
        assert 'id="dask_lance_index.' in api and name in api, name
    for qualified in ("dataframe.io.to_lance", "dataframe.encode.add_pq_codes", "dataframe.search.batch_search",
                      "api.create_index", "api.create_scalar_index", "plan.scalar.make_scalar_plan",
                      "update.api.update_index", "model.index_model.IndexModel"):
        assert f"dask_lance_index.{qualified}" in api, qualified
    # The architecture page carries the task-graph drawing.
    assert "dli-model" in (out / "architecture.html").read_text()


def test_the_drawn_task_graph_is_the_real_one(dataset_uri):
    """docs/architecture.md draws create_index(..., num_tasks=3) on four equal fragments: check
    that drawing against the graph dask actually holds, so the figure cannot go stale silently."""
    import re

    from dask.core import get_dependencies

    import dask_lance_index as dli

    build = dli.create_index(dataset_uri, "vector", "IVF_PQ", num_partitions=8, num_sub_vectors=4,
                             num_tasks=3, compute=False, scheduler="sync")
    graph = dict(build.__dask_graph__())

    def name(key):
        key = key[0] if isinstance(key, tuple) else key
        return re.sub(r"-[0-9a-f]{8,}(?=-|$)", "", str(key))

    edges = {name(k): sorted(name(d) for d in get_dependencies(graph, k)) for k in graph}
    drawn = open(os.path.join(ROOT, "docs", "architecture.md")).read()
    assert [tuple(g) for g in build.plan.groups] == [(0, 3), (1,), (2,)]
    assert "frags 0, 3     frag 1       frag 2" in drawn
    assert edges["dli-model"] == [f"dli-sample-{i}" for i in range(4)]
    for i in range(3):
        assert edges[f"dli-build-{i}"] == ["dli-model", "dli-plan"]
    assert edges["dli-merge-3"] == ["dli-build-0", "dli-build-1", "dli-build-2", "dli-plan"]
    assert edges["dli-commit"] == sorted(
        ["dli-model", "dli-build-0", "dli-build-1", "dli-build-2", "dli-merge-3", "dli-plan"]
    )
    assert set(edges) == {"dli-plan", "dli-model", "dli-merge-3", "dli-commit"} | {
        f"dli-sample-{i}" for i in range(4)} | {f"dli-build-{i}" for i in range(3)}


def test_the_column_kinds_table_matches_what_the_planner_accepts():
    """docs/user-guide.md lists, per index type, what each column kind takes: it must say what
    ``plan.columns`` accepts (binary: hamming on BINARY_INDEX_TYPES only; multivector: cosine)."""
    from dask_lance_index.plan import BINARY_INDEX_TYPES, INDEX_TYPES

    guide = open(os.path.join(ROOT, "docs", "user-guide.md")).read()
    rows = {}
    for line in guide.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in INDEX_TYPES:
            rows[cells[0]] = cells[1:]
    assert sorted(rows) == sorted(INDEX_TYPES)
    for index_type, (floats, binary, multi) in rows.items():
        assert floats == "l2, cosine, dot" and multi == "cosine", index_type
        assert (binary == "hamming") == (index_type in BINARY_INDEX_TYPES), index_type
