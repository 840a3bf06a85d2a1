"""Starting a journaled job, and carrying on one whose driver died.

:func:`start_journal` checks that the dataset (and the journal location) can be
written and writes the journal before any task runs; :func:`resume_journal`
takes over the journal a dead driver left, so that the same command carries the
job on where it stopped (finished segments and merges are not redone, and a
journaled model is not trained again).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid as uuidlib

from ..errors import InvalidInputError
from ..model import IndexModel
from ..plan import IndexPlan
from ..storage import Store, open_or_fail, options_apply
from .journal import BuildJournal, default_journal_location

__all__ = ["probe_writable", "resume_build", "resume_journal", "start_journal"]

log = logging.getLogger("dask_lance_index")

_A = {"build": "a build", "update": "an update"}


def probe_writable(location: str, what: str, storage_options: dict | None = None) -> None:
    """Write and remove a small file under ``location``; a clear error if that fails."""
    store = Store(location, storage_options)
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
            store.remove_empty_dir()


def start_journal(plan: IndexPlan, journal, model: IndexModel | None = None, storage_options: dict | None = None,
                  job: dict | None = None) -> str | None:
    """Check the dataset (and the journal location) can be written, and write the
    journal of a new job. Returns the journal location, or None without one.

    The journal goes to ``journal`` or, by default, ``<uri>/_dli/<build id>``:
    on an object store too, reached with the build's ``storage_options``.
    ``journal=False``: no journal. ``model``: a model given whole (nothing to
    train), kept for a resumed run.
    """
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
    j = BuildJournal.start(location, plan, storage_options, job=job)
    if not plan.train and model is not None:
        j.save_model(model)
    return j.location


def resume_journal(journal, storage_options: dict | None = None, kind: str = "build") -> BuildJournal | None:
    """The journal at ``journal``, taken over by this process to carry its job on, or
    None when there is none yet. A committed job, or one of another kind, is refused."""
    location = str(journal)
    j = BuildJournal.load(location, storage_options)
    if j is None:
        return None
    had = j.job.get("kind", "build")
    if had != kind:
        raise InvalidInputError(
            f"the journal at {location!r} records {_A.get(had, had)}, not {_A.get(kind, kind)}. Fix: pass the "
            "journal location of this job, or another location."
        )
    if j.status == "committed":
        raise InvalidInputError(
            f"the journal at {location!r} records build {j.plan.build_id} as committed at version "
            f"{j.version}; there is nothing to resume. Fix: choose a new journal location to build again."
        )
    log.info("resuming %s %s from %s: %d of %d segments journaled", kind, j.plan.build_id, location,
             len(j.segments), j.plan.num_tasks)
    return j.take_over()


def resume_build(journal, uri, column: str, index_type: str, name: str | None, given: IndexModel,
                 storage_options: dict | None = None) -> tuple[IndexPlan, IndexModel] | None:
    """``(plan, model)`` of the journaled build at ``journal`` to carry on, or None
    when there is no journal there yet."""
    location = str(journal)
    j = BuildJournal.load(location, storage_options)
    if j is None:
        return None
    plan = j.plan
    here = open_or_fail(uri, None, storage_options).uri
    asked = (here, column, str(index_type).upper(), name or f"{column}_idx")
    had = (plan.uri, plan.column, plan.params.index_type, plan.name)
    if asked != had:
        raise InvalidInputError(
            f"the journal at {location!r} is of another build ({had[2]} index {had[3]!r} on column "
            f"{had[1]!r} of {had[0]}), not of {asked[2]} index {asked[3]!r} on column {asked[1]!r} "
            f"of {asked[0]}. Fix: pass the journal location of this build, or another location."
        )
    j = resume_journal(location, storage_options)
    model = j.load_model()
    if model is not None:  # trained before the driver died: nothing to sample or train
        plan = dataclasses.replace(plan, train=(), samples=tuple(0 for _ in plan.samples))
    else:
        model = given
    return plan, model
