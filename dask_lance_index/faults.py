"""The driver's side of faults: start or resume a journaled build, run it with
retries, abandon it cleanly, and reach a scheduler or fail clearly.

The task side (skip journaled work, remove output of an abandoned build) is in
:mod:`.tasks`; finding and removing leftovers is in :mod:`.cleanup`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid as uuidlib

from .errors import InvalidInputError
from .journal import BuildJournal, default_journal_location, journal_store
from .plan import IndexPlan

__all__ = ["connect", "probe_writable", "resume_build", "run_with_retries", "start_build"]

log = logging.getLogger("dask_lance_index")



def probe_writable(location: str, what: str, storage_options: dict | None = None) -> None:
    """Write and remove a small file under ``location``; a clear error if that fails."""
    store = journal_store(location, storage_options)
    made = store.local and not os.path.isdir(store.root)
    probe = f".dli-probe-{uuidlib.uuid4().hex}"
    try:
        store.write(probe, "probe")
        store.remove(probe)
    except OSError as exc:
        raise InvalidInputError(
            f"{what} at {location!r} is not writable ({exc}). Fix: build on a writable copy of "
            "the dataset, or check the storage's permissions and storage_options."
        ) from None
    finally:
        if made:  # leave no directory behind that was not there
            try:
                os.rmdir(store.root)
            except OSError:
                pass


def start_build(plan: IndexPlan, journal, client=None, given=None,
                storage_options: dict | None = None) -> str | None:
    """Check the dataset (and the journal location) can be written, and write the
    journal of a new build. Returns the journal location, or None without one.

    The journal goes to ``journal`` or, by default, ``<uri>/_dli/<build id>``:
    on an object store too, reached with the build's ``storage_options``."""
    from ._lance import options_apply

    if not journal and not options_apply(plan.uri, storage_options):
        # pyarrow cannot be given these storage_options for this scheme (only S3's are
        # mapped): no default journal rather than one written with other credentials.
        log.info("build %s: no journal (storage_options for %s reach Lance only)", plan.build_id,
                 plan.uri.partition("://")[0])
        return None
    # The dataset itself: the segments go to <uri>/_indices.
    probe_writable(f"{plan.uri.rstrip('/')}/_dli", "the dataset", storage_options)
    if journal is False:
        return None
    location = str(journal) if journal else default_journal_location(plan.uri, plan.build_id)
    if journal and BuildJournal.load(location, storage_options) is not None:
        raise InvalidInputError(
            f"a build journal already exists at {location!r}. Fix: pass resume=True to carry "
            "that build on, or remove what it left with dask_lance_index.cleanup(uri, "
            f"journal={location!r}), or choose another journal location."
        )
    if journal:
        probe_writable(location, "the journal location", storage_options)
    j = BuildJournal.start(location, plan, storage_options)
    if not plan.train and given is not None:
        j = j.save_artifacts(given)  # a resumed run needs them again
    return j.location


def resume_build(journal, uri, column: str, index_type: str, name: str | None, given,
                 storage_options: dict | None = None):
    """``(plan, artifacts)`` of the journaled build at ``journal`` to carry on, or
    None when there is no journal there yet."""
    from ._lance import open_dataset

    location = str(journal)
    j = BuildJournal.load(location, storage_options)
    if j is None:
        return None
    plan = j.plan
    try:
        here = open_dataset(uri, None, storage_options).uri
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"cannot open a Lance dataset at {uri!r}: {exc}") from None
    asked = (here, column, str(index_type).upper(), name or f"{column}_idx")
    had = (plan.uri, plan.column, plan.params.index_type, plan.name)
    if asked != had:
        raise InvalidInputError(
            f"the journal at {location!r} is of another build ({had[2]} index {had[3]!r} on column "
            f"{had[1]!r} of {had[0]}), not of {asked[2]} index {asked[3]!r} on column {asked[1]!r} "
            f"of {asked[0]}. Fix: pass the journal location of this build, or another location."
        )
    if j.status == "committed":
        raise InvalidInputError(
            f"the journal at {location!r} records build {plan.build_id} as committed at version "
            f"{j.version}; there is nothing to resume. Fix: choose a new journal location to build again."
        )
    artifacts = j.load_artifacts()
    if artifacts is not None:
        plan = dataclasses.replace(plan, train=(), samples=tuple(0 for _ in plan.samples))
    else:
        artifacts = given
    j.take_over()
    log.info("resuming build %s from %s: %d of %d segments journaled", plan.build_id, location,
             len(j.segments), plan.num_tasks)
    return plan, artifacts


def run_with_retries(build, client, scheduler: str | None, retries: int, progress: bool | None = None):
    """Run ``build``; resubmit it after tasks were lost with dying workers; on
    failure abandon it (:func:`.cleanup.abandon_build`) and re-raise. A
    progress bar is drawn as :mod:`.progress` decides."""
    from .cleanup import abandon_build
    from .graph import report
    from .progress import _distributed_bar, compute_with_progress, show_progress

    future = None
    try:
        if client is None:
            return compute_with_progress(build, scheduler=scheduler, progress=progress)
        from distributed import KilledWorker

        for attempt in range(retries + 1):
            future = client.compute(build)
            if show_progress(progress):
                _distributed_bar(future)
            try:
                # distributed finalises on a worker: repeat the report here, where the caller is.
                return report(future.result())
            except KilledWorker as exc:
                if attempt == retries or build.journal is None:
                    raise
                # Workers died under some task too often. The journal keeps what
                # finished, so a resubmitted run only does the rest.
                log.warning("build %s: %s; resubmitting (%d of %d)", build.plan.build_id, exc, attempt + 1, retries)
                client.cancel(future, force=True)
                from .cleanup import _wait_for_tasks

                _wait_for_tasks(client, build.plan.build_id[:8], 30.0)
    except BaseException:
        abandon_build(build, client, future)
        raise


def connect(address: str):
    """A ``distributed.Client`` for the scheduler at ``address``, or a clear error."""
    from distributed import Client

    try:
        # Waits dask's "distributed.comm.timeouts.connect" (30 s by default).
        return Client(address)
    except (OSError, TimeoutError) as exc:
        raise InvalidInputError(
            f"cannot reach a Dask scheduler at {address!r} ({type(exc).__name__}: {exc}). Fix: start "
            "the scheduler (dask scheduler / LocalCluster) or pass the right address, or pass "
            "client=None to build with the local scheduler."
        ) from None


def check_client(client) -> None:
    """A closed or broken client fails here, before any work, not mid-build."""
    status = getattr(client, "status", "running")
    if status != "running":
        raise InvalidInputError(
            f"the Dask client is {status!r}, not running. Fix: pass a connected Client, or "
            "client=None to build with the local scheduler."
        )
