"""The README's first command runs: a real build on a local cluster over generated data."""

import re
import subprocess
import sys


def test_demo_command_builds_and_reports_recall(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dask_lance_index.demo", "--rows", "20000", "--dim", "32",
         "--num-partitions", "16", "--queries", "50", "--path", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "committed at version 2" in out and "build wall time" in out
    refined = [float(r) for r in re.findall(r"refine_factor=5 +recall=([0-9.]+)", out)]
    assert len(refined) == 3 and min(refined) > 0.8, out
