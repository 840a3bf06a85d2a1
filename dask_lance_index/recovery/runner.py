"""The one runner: every job on an index (a build, an update, a finalize) runs through :func:`run`.

A job is an :class:`IndexJob`: a lazy dask collection whose result is the
job's result (:class:`~dask_lance_index.BuildResult`,
:class:`~dask_lance_index.UpdateResult`), carrying the plan it carries out and
the location of its journal. :func:`run` computes it on a cluster or on dask's
local scheduler, with

* retries: a failing task is retried (the graph's annotations), and the whole
  run is resubmitted when tasks were lost with dying workers, the journal
  keeping what finished;
* a progress bar, when someone is watching (:mod:`dask_lance_index.runtime.progress`);
* on failure, the job abandoned: its tasks stopped and every uncommitted segment
  it wrote removed (:func:`.leftovers.abandon_build`);
* on success, the journal finished (:func:`.leftovers.finish_journal`) and the
  result's warnings raised in the calling process;
* when the connection to the scheduler is lost (the scheduler died, or this
  process's link to it was cut long enough for either side to give up), the job
  is not abandoned: the journal keeps what finished. If the commit went through
  meanwhile (the journal says so and holds the result), that result is returned;
  otherwise :class:`~dask_lance_index.errors.ClusterLostError` says how to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings

from dask.delayed import Delayed
from distributed import KilledWorker
from distributed.client import FutureCancelledError
from distributed.comm import CommClosedError

from ..errors import ClusterLostError, CommittedDespiteError
from ..runtime import compute_with_progress, resolve_client, show_progress
from ..runtime.client import num_workers, wait_for_tasks, worker_client_or_none
from ..runtime.progress import distributed_bar
from ..storage import open_dataset
from .journal import BuildJournal
from .leftovers import abandon_build, drop_committed_journal, finish_journal

__all__ = ["IndexJob", "report", "run"]

log = logging.getLogger("dask_lance_index")

# After losing the scheduler: how long to wait for the client to reconnect (a cut link that
# heals), then for tasks of the job still running on the cluster to end (one may be the commit).
RECONNECT_SECONDS = 120.0  # the client itself gives up after its connect timeout
SETTLE_SECONDS = 30.0


def report(result):
    """Raise the result's warnings (rows left out, retraining advised) and log it, in the
    calling process."""
    for message in result.warnings():
        warnings.warn(message, UserWarning, stacklevel=3)
    log.info("%s", result)
    return result


def _finish(results, journal: str | None = None, storage_options: dict | None = None):
    if journal is not None:
        # On a worker the driver may never hear of this commit (its link to the scheduler
        # cut, the scheduler dead): keep the result in the journal until it has it.
        finish_journal(journal, results[0], storage_options, remove=worker_client_or_none() is None)
    return report(results[0])


class IndexJob(Delayed):
    """A lazy job on an index: a dask collection whose result says what the job did.

    ``job.compute()`` (or ``dask.compute(job)``, or ``client.compute(job)``) runs
    it; :func:`run` runs it with retries, a progress bar and cleanup on failure.
    ``job.plan`` is the :class:`~dask_lance_index.plan.IndexPlan` it carries out
    (None for a job with nothing to build) and ``job.journal`` its journal's
    location, if any. Warnings are raised where dask finalises the result: on a
    distributed cluster that is a worker, so use :func:`run` to have them raised
    in your process.
    """

    __slots__ = ("plan", "storage_options", "journal")

    def __init__(self, key, dsk, plan=None, storage_options: dict | None = None, journal: str | None = None):
        super().__init__(key, dsk)
        self.plan = plan
        self.storage_options = storage_options
        self.journal = journal

    def __dask_postcompute__(self):
        return _finish, (self.journal, self.storage_options)


def run(job: IndexJob, client=None, scheduler: str | None = None, retries: int = 2,
        progress: bool | None = None):
    """Run a lazy job on ``client`` (or the local ``scheduler``) and return its result.

    On a cluster a failing task is retried ``retries`` times, and the run is
    resubmitted up to ``retries`` times when tasks were lost with dying workers,
    or when the connection to the scheduler was lost and came back (journaled work
    is not redone). A connection that does not come back raises
    :class:`~dask_lance_index.errors.ClusterLostError`, the journal kept: the same
    call with ``journal=`` its location resumes the job. If the job fails, its tasks are stopped and
    every uncommitted segment it wrote is removed (:func:`.leftovers.abandon_build`).

    ``progress``: draw a progress bar (``None``: when someone is watching). The
    result's ``seconds`` gains ``"total"``: planning plus the wall time of this run.
    """
    client = resolve_client(client, scheduler)
    t0 = time.time()
    future = None
    try:
        if client is None:
            result = compute_with_progress(job, scheduler=scheduler, progress=progress)
        else:
            for attempt in range(retries + 1):
                future = client.compute(job)
                if show_progress(progress):
                    distributed_bar(future)
                try:
                    # distributed finalises on a worker: repeat the report here, where the caller is.
                    result = report(future.result())
                    break
                except KilledWorker as exc:
                    if attempt == retries or job.journal is None:
                        raise
                    # Workers died under some task too often. The journal keeps what
                    # finished, so a resubmitted run only does the rest.
                    log.warning("%s: %s; resubmitting (%d of %d)", job, exc, attempt + 1, retries)
                    client.cancel(future, force=True)
                    wait_for_tasks(client, job.plan.build_id[:8], 30.0)
                except BaseException as exc:
                    if not (job.plan is not None and job.journal is not None and _cluster_lost(exc, client)):
                        raise
                    # The scheduler died or our link to it was cut: nothing to abandon, the
                    # journal keeps what finished. Find a commit that went through, or go on
                    # once reconnected, or say how to resume.
                    result = _after_cluster_lost(job, client, exc, last=attempt == retries)
                    if result is not None:
                        break
                    continue
    except (ClusterLostError, CommittedDespiteError):
        raise  # the journal is kept: for the rerun that resumes, or marked committed
    except BaseException as exc:
        if job.plan is None:
            raise
        version = _committed_version(job) if isinstance(exc, Exception) else None
        if version is None:
            abandon_build(job, client, future)
            raise
        raise _committed_despite(job, version, exc) from exc
    if job.journal is not None and client is not None:
        drop_committed_journal(job.journal, job.storage_options)
    total = result.seconds.get("plan", 0.0) + time.time() - t0
    return dataclasses.replace(result, seconds={**result.seconds, "total": round(total, 4)})


def _cluster_lost(exc: BaseException, client) -> bool:
    """Whether ``exc`` means this process lost the scheduler (not that a task failed)."""
    if isinstance(exc, FutureCancelledError):
        return exc.reason == "scheduler-connection-lost"
    return isinstance(exc, (CommClosedError, ConnectionError, TimeoutError)) and client.status != "running"


def _after_cluster_lost(job: IndexJob, client, exc: BaseException, last: bool):
    """After losing the scheduler: the job's result if it committed all the same; None
    when the client is connected again and the run may be resubmitted (journaled work
    is not redone, and a commit that went through is found by the commit task);
    otherwise :class:`ClusterLostError`, the journal kept for a rerun to resume."""
    plan, loc, opts = job.plan, job.journal, job.storage_options
    deadline = time.time() + RECONNECT_SECONDS
    while client.status == "connecting" and time.time() < deadline:  # the client retries on its own
        time.sleep(0.5)
    back = client.status == "running"
    if back:  # let tasks of the lost run end (one may be the commit) before looking
        wait_for_tasks(client, plan.build_id[:8], SETTLE_SECONDS)
    j = BuildJournal.load(loc, opts)
    if j is not None and j.status == "committed" and (result := j.load_result()) is not None:
        log.warning("%s: lost the scheduler (%s) while the commit ran; it went through: version %d",
                    job, exc, result.version)
        return report(result)
    if back and not last:  # a restarted scheduler: its workers join again in a while
        with contextlib.suppress(Exception):
            client.wait_for_workers(1, timeout=SETTLE_SECONDS)
    if back and not last and num_workers(client) > 0:
        log.warning("%s: lost the scheduler (%s), connected again; resubmitting", job, exc)
        return None
    committed = _committed_version(job)
    if committed is not None:  # the commit landed, its result lost with the connection
        raise _committed_despite(job, committed, exc) from exc
    version = open_dataset(plan.uri, None, opts).version
    done = f"{len(j.segments)} of {plan.num_tasks} segments" if j is not None else "nothing"
    raise ClusterLostError(
        f"lost the connection to the Dask scheduler while {job} ran ({type(exc).__name__}: {exc}). "
        f"{plan.uri} is at version {version} (the job read version {plan.version}); the journal at {loc!r} "
        f"keeps what finished ({done}). Fix: once the scheduler and its workers are up, run the same call "
        f"again with journal={loc!r} (CLI: --journal {loc}): it resumes where this run stopped, and finds a "
        f"commit that went through; or remove what it left with dask_lance_index.cleanup({plan.uri!r}, "
        f"{plan.build_id!r}).", journal=loc,
    ) from None


def _committed_version(job: IndexJob) -> int | None:
    """The version the job committed, when its commit landed though the run failed (the
    client lost the scheduler while the commit task ran on a worker), else None. Its journal
    is then finished as a successful run's is: marked committed, or removed (the default location).

    A journal that says ``committed`` tells; one that is gone does too (the default location is
    removed by the task finalising a commit; a failed job's, by this process, later); otherwise
    the commit landed when the index holds a segment of the job (a build task's, or a journaled
    merge's)."""
    plan = job.plan
    try:
        j = BuildJournal.load(job.journal, job.storage_options) if job.journal else None
        if j is not None and j.status == "committed":
            if j.at_default_location:  # the driver will not get the result: as drop_committed_journal
                j.remove()
            return j.version
        ds = open_dataset(plan.uri, None, job.storage_options)
        if j is None and job.journal:
            named = any(d.name == plan.name for d in ds.describe_indices())
            return ds.version if ds.version > plan.version and named else None
        ours = {plan.segment_uuid(i) for i in range(plan.num_tasks)} | (j.segment_uuids() if j else set())
        if not any(d.name == plan.name and ours & {s.uuid for s in d.segments} for d in ds.describe_indices()):
            return None
        if j is not None:
            if j.at_default_location:
                j.remove()
            else:
                j.with_status("committed", ds.version)
        return ds.version
    except Exception:  # noqa: BLE001 - cannot tell (e.g. the store unreachable): the run's own error stands
        return None


def _committed_despite(job: IndexJob, version: int, exc: BaseException) -> CommittedDespiteError:
    return CommittedDespiteError(
        f"the job failed after its commit landed: the index {job.plan.name!r} is committed at version "
        f"{version} of {job.plan.uri}. Do not run it again. The run ended with {type(exc).__name__}: {exc}",
        version)
