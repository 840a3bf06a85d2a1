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
    for page in ("index", "user-guide", "architecture", "api"):
        assert (out / f"{page}.html").is_file(), page
    api = (out / "api.html").read_text()
    for name in ("create_index", "read_lance", "to_lance", "batch_search", "add_pq_codes", "IndexArtifacts"):
        assert f'id="dask_lance_index.' in api and name in api, name
    assert "dask_lance_index.dataframe.to_lance" in api
    # The architecture page carries the task-graph drawing.
    assert "dli-artifacts" in (out / "architecture.html").read_text()
