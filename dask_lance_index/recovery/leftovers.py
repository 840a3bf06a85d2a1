"""Removing what builds leave on storage: after a failure, and after a crashed driver.

Lance keeps uncommitted segments forever (only ``cleanup_old_versions(
delete_unverified=True)`` removes them, in-flight ones of other writers too).
Here a build's segments are found from its journal (:mod:`.journal`): build
segments by their uuid5 names, merged segments by the journal's records, and
the output of a merge attempt (or of a build task whose segment Lance names:
a scalar index's) that died mid-way by its time window. A
segment that any version of the dataset references is never removed.
"""

from __future__ import annotations

import logging
import socket
import time

from ..errors import InvalidInputError
from ..plan import segment_uuid
from ..runtime.client import wait_for_tasks
from ..storage import (
    Store,
    index_dir_times,
    open_dataset,
    referenced_segments,
    remove_index_dir,
)
from .journal import (
    HEARTBEAT_SECONDS,
    JOURNAL_DIR,
    BuildJournal,
    default_journal_location,
)

__all__ = ["abandon_build", "cleanup", "drop_committed_journal", "finish_journal"]

log = logging.getLogger("dask_lance_index")

# A build whose driver runs on another host counts as crashed after this long without a sign of life.
STALE_AFTER_SECONDS = 24 * 3600
# How long a failing run waits for its still-running tasks to stop.
ABANDON_WAIT_SECONDS = 60.0


def _root(uri) -> str:
    return str(getattr(uri, "uri", uri)).rstrip("/")


def _journals(uri: str, storage_options: dict | None = None) -> list[BuildJournal]:
    """Journals at the default location beside the dataset."""
    store = Store(f"{_root(uri)}/{JOURNAL_DIR}", storage_options)
    out = []
    for name in store.listdir(""):
        j = BuildJournal.load(default_journal_location(_root(uri), name), storage_options)
        if j is not None:
            out.append(j)
    return out


def _open_windows(j: BuildJournal, now: float) -> list[tuple[float, float]]:
    """Time windows of ``j``'s merge attempts that recorded no output: from the
    attempt's start to its last heartbeat plus one period (it wrote nothing after)."""
    # Merges, and build tasks whose segment Lance names (the scalar engine), journal attempts.
    finished = {m.slot: m.started for m in (*j.segments, *j.merges)}
    return [
        (started, beat + HEARTBEAT_SECONDS)
        for slot, started, beat in j.attempts
        if finished.get(slot) != started  # this attempt recorded its output
    ]


def _merge_orphans(j: BuildJournal, dirs: dict[str, float], others: list[BuildJournal], now: float) -> set[str]:
    """Directories written by merge attempts of ``j`` that died before recording their output.

    A candidate was modified inside one of those attempts' windows and is known
    to no journal; a directory that might be the unrecorded output of another
    build's running merge (inside one of its open windows) is left alone.
    """
    windows = _open_windows(j, now)
    if not windows:
        return set()
    known = set(j.segment_uuids())
    other_windows = []
    for o in others:
        known |= o.segment_uuids()
        if o.status == "running":
            other_windows += _open_windows(o, now)
    slack = 1.0
    out = set()
    for name, mtime in dirs.items():
        if name in known:
            continue
        if any(lo - slack <= mtime <= hi + slack for lo, hi in windows) and not any(
            lo - slack <= mtime <= hi + slack for lo, hi in other_windows
        ):
            out.add(name)
    return out


def _build_uuids_without_journal(uri: str, build_id: str, dirs: dict[str, float], storage_options) -> set[str]:
    """Build segments of ``build_id`` when no journal is left: uuid5 names, tasks counted up to
    the fragment count (a build never has more tasks than fragments)."""
    ds = open_dataset(uri, None, storage_options)
    n = max(f.fragment_id for f in ds.get_fragments()) + 1 if ds.get_fragments() else 0
    n = max(n, len(dirs)) * 2 + 64
    names = {segment_uuid(build_id, i) for i in range(n)}
    return names & set(dirs)


def last_activity(j: BuildJournal) -> float:
    """When the build last showed life: its driver's last journal write, a task's
    finished record, or a merge attempt's heartbeat."""
    times = [float((j.driver or {}).get("updated", 0.0))]
    times += [s.finished for s in j.segments] + [m.finished for m in j.merges] + [a[2] for a in j.attempts]
    return max(times)


def _crashed(j: BuildJournal, now: float) -> bool:
    if j.status != "running":
        return True  # committed or failed: whatever it left is garbage
    if not j.driver_alive():
        return True
    return now - last_activity(j) > STALE_AFTER_SECONDS and (j.driver or {}).get("host") != socket.gethostname()


def cleanup(uri, build_id: str | None = None, *, storage_options: dict | None = None,
            dry_run: bool = False, journal: str | None = None) -> list[str]:
    """Remove what a crashed or failed build left under ``_indices/``, and its journal.

    Parameters
    ----------
    uri : str or LanceDataset
        The dataset.
    build_id : str, optional
        The build to clean up (``BuildResult.build_id``, ``IndexPlan.build_id``,
        or the directory name under ``<uri>/_dli/``). Default: every build whose
        journal says it failed or committed, or whose driver is gone (a dead
        process on this host, or silent for a day on another host).
    storage_options : dict, optional
        Passed to Lance, and used to reach the journals and segment
        directories on an object store (credentials, endpoint).
    dry_run : bool
        List what would be removed, remove nothing.
    journal : str, optional
        The journal's location when the build was given ``journal=`` elsewhere.

    Returns
    -------
    list of str
        The paths removed (or that would be): segment directories, then journals.

    Never removes a segment that any version of the dataset references. Without
    ``build_id`` a build that is still running is left alone (other builds may
    be in flight); with it, that build's segments go even if it still runs.
    """
    uri = _root(uri)
    now = time.time()
    journals = _journals(uri, storage_options)
    if journal is not None:
        j = BuildJournal.load(journal, storage_options)
        if j is None:
            raise InvalidInputError(
                f"no build journal at {journal!r}. Fix: pass the journal= location the build used."
            )
        if all(o.location != j.location for o in journals):
            journals.append(j)
        build_id = build_id or j.plan.build_id
    if build_id is not None:
        targets = [j for j in journals if j.plan.build_id == build_id]
    else:
        targets = [j for j in journals if _crashed(j, now)]
    dirs = index_dir_times(uri, storage_options)
    doomed: set[str] = set()
    for j in targets:
        others = [o for o in journals if o.plan.build_id != j.plan.build_id]
        doomed |= (j.segment_uuids() & set(dirs)) | _merge_orphans(j, dirs, others, now)
    if build_id is not None and not targets:
        doomed |= _build_uuids_without_journal(uri, build_id, dirs, storage_options)
    if doomed:
        doomed -= referenced_segments(uri, storage_options)
    removed = [f"{uri}/_indices/{u}" for u in sorted(doomed)] + [j.location for j in targets]
    if not dry_run:
        for u in sorted(doomed):
            remove_index_dir(uri, u, storage_options)
        for j in targets:
            j.remove()
    for path in removed:
        log.info("cleanup: %s %s", "would remove" if dry_run else "removed", path)
    return removed


def finish_journal(location: str, result, storage_options: dict | None = None, remove: bool = True) -> None:
    """After a successful commit: remove orphans of merge attempts that died, then
    remove the journal (default location, with ``remove``) or mark it committed and keep
    the result in it (a chosen location; or, without ``remove``, until the driver has the
    result: :func:`drop_committed_journal`)."""
    j = BuildJournal.load(location, storage_options)
    if j is None:
        return
    now = time.time()
    if _open_windows(j, now):
        others = [o for o in _journals(j.plan.uri, storage_options) if o.plan.build_id != j.plan.build_id]
        dirs = index_dir_times(j.plan.uri, storage_options)
        orphans = _merge_orphans(j, dirs, others, now) - set(result.committed_segments())
        if orphans:
            orphans -= referenced_segments(j.plan.uri, storage_options)
        for u in orphans:
            remove_index_dir(j.plan.uri, u, storage_options)
    if remove and j.at_default_location:
        j.remove()
    else:
        j.save_result(result)
        j.with_status("committed", result.version)


def drop_committed_journal(location: str, storage_options: dict | None = None) -> None:
    """The driver has the result: remove a committed journal at its default location."""
    j = BuildJournal.load(location, storage_options)
    if j is not None and j.status == "committed" and j.at_default_location:
        j.remove()


def abandon_build(job, client=None, future=None) -> list[str]:
    """A run failed: stop its tasks and remove every uncommitted segment it wrote.

    Writes the journal's ``aborted`` marker first (a task still running removes
    its own output when it ends), cancels the run's tasks on ``client`` and waits
    for them to stop, then removes the job's segments that no version
    references, and the journal when it sits at the default location.
    """
    plan = job.plan
    opts = job.storage_options
    loc = job.journal
    j = BuildJournal.load(loc, opts) if loc else None
    if j is not None:
        j.abort()
    stopped = True
    if client is not None and future is not None:
        try:
            client.cancel(future, force=True)
        except Exception:
            pass
        stopped = wait_for_tasks(client, plan.build_id[:8], ABANDON_WAIT_SECONDS)
    if loc:
        j = BuildJournal.load(loc, opts) or j  # records written since
    uuids = {plan.segment_uuid(i) for i in range(plan.num_tasks)}
    dirs = index_dir_times(plan.uri, opts)
    if j is not None:
        uuids |= j.segment_uuids()
        others = [o for o in _journals(plan.uri, opts) if o.plan.build_id != plan.build_id]
        uuids |= _merge_orphans(j, dirs, others, time.time())
    doomed = uuids & set(dirs)
    if doomed:
        doomed -= referenced_segments(plan.uri, opts)
    for u in doomed:
        remove_index_dir(plan.uri, u, opts)
    if j is not None:
        if stopped and j.at_default_location:
            j.remove()
        else:  # kept: a chosen location, or tasks still running (they see the marker)
            j.with_status("failed")
    return sorted(doomed)
