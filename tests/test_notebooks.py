"""Every notebook in notebooks/ runs top to bottom, and is committed without outputs."""

from __future__ import annotations

import glob
import os
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    assert any(p.endswith("quickstart.ipynb") for p in NOTEBOOKS)


def _kernel_manager():
    """A kernel of THIS interpreter: ``python3`` from ipykernel itself (which uses
    ``sys.executable``), ignoring any ``python3`` kernelspec installed elsewhere
    on the machine, which may point at another Python."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # Last cell: report which Python ran the notebook.
    nb.cells.append(nbformat.v4.new_code_cell("import sys, dask_lance_index\nprint(sys.executable)\nprint(dask_lance_index.__file__)"))
    client = NotebookClient(
        nb,
        km=_kernel_manager(),
        timeout=600,
        allow_errors=False,  # any cell error fails the test (CellExecutionError names the cell)
        resources={"metadata": {"path": os.path.dirname(path)}},  # run where Jupyter would: the notebook's folder
    )
    # This checkout first on the kernel's path, so the notebook tests this code, not an installed copy.
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    client.execute(env=env)
    exe, pkg = nb.cells[-1].outputs[0]["text"].split()
    assert os.path.realpath(exe) == os.path.realpath(sys.executable)
    assert os.path.realpath(pkg).startswith(os.path.realpath(ROOT) + os.sep)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_committed_with_outputs_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{os.path.basename(path)} cell {i} holds outputs: clear them before committing "
                "(jupyter nbconvert --clear-output --inplace)"
            )
