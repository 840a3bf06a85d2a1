"""Progress bars for long-running graphs: distributed's on a cluster, dask's locally.

``progress=None`` (the default everywhere) means *on when someone is watching*:
in a Jupyter/IPython kernel, or when standard error is a terminal. A batch job
whose output goes to a file or a pipe (cron, CI, ``sbatch``) gets no bar and so
no log full of carriage returns; pass ``progress=True`` to force it on, or
``progress=False`` to turn it off.

Bars are written to standard error, as ``tqdm`` does, so that standard output
stays machine-readable (the command line's ``--json``).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import dask
from dask.diagnostics import ProgressBar
from distributed import progress as distributed_progress

__all__ = ["compute_with_progress", "distributed_bar", "show_progress"]


def _in_kernel() -> bool:
    """True inside a Jupyter/IPython kernel (a notebook), without importing IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half-imported: assume no kernel
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a bar: ``progress`` when given, else whether someone is watching."""
    if progress is not None:
        return bool(progress)
    if _in_kernel():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced or closed
        return False


def compute_with_progress(collection, *, client=None, scheduler: str | None = None, progress: bool | None = None) -> Any:
    """Compute one dask collection and return its result, with a bar when asked.

    On a ``distributed.Client`` the bar is ``distributed.progress`` over the
    collection's future: it follows every task the result depends on. Without
    a client the collection runs on dask's local ``scheduler`` under
    ``dask.diagnostics.ProgressBar``.
    """
    if client is not None:
        future = client.compute(collection)
        if show_progress(progress):
            distributed_bar(future)
        return future.result()

    if not show_progress(progress):
        (result,) = dask.compute(collection, scheduler=scheduler)
        return result
    with ProgressBar(out=sys.stderr):
        (result,) = dask.compute(collection, scheduler=scheduler)
    return result


def distributed_bar(future) -> None:
    """Draw distributed's text bar until ``future`` finishes (or fails).

    The text bar (not the notebook widget) is used everywhere: the widget only
    updates once the cell returns, and here the cell blocks on the result.
    distributed's text bar writes to ``sys.stdout``; it is sent to standard
    error instead so that standard output stays clean.
    """
    with contextlib.redirect_stdout(sys.stderr):
        distributed_progress(future, notebook=False)
