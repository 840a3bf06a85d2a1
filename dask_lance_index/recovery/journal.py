"""The build journal: what a build planned and what it has finished, as JSON files.

A build (or an update) writes its journal before any task runs and keeps it up
to date while it runs, so that

* a retried task (its worker died) or a re-run after a driver crash skips
  work already done: a finished build or merge task finds its record and
  returns it instead of building again;
* :func:`dask_lance_index.cleanup` can remove what a crashed build left on
  storage, and only that: the build segments' uuids follow from the plan, and
  the merged segments (whose uuid Lance picks) are recorded as they are made;
* a failing build can tell its still-running tasks to remove what they write
  (the ``aborted`` marker).

Layout under the journal location (a directory or object-store prefix; by
default ``<dataset uri>/_dli/<build id>``)::

    journal.json            plan, status, driver, what kind of job (a build, or an update's decision)
    model.json              the shared model (IndexModel JSON), once trained
    segments/<slot>.json    one record per finished build task (a SegmentResult)
    merges/<slot>.json      one record per finished merge step (a SegmentResult)
    merges/<slot>.<t>.try   one per merge attempt: its start time and heartbeat (finds
                            Lance's randomly named output of an attempt that died)
    aborted                 written when the build fails: late tasks remove their output
    result.json             the committed job's result, written with status "committed" where the
                            job finished on a worker (its driver may have lost the cluster meanwhile)

Each file is written by one task only, so tasks never contend for a file.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace

from ..errors import BuildAbortedError, InvalidInputError
from ..model import IndexModel
from ..plan import IndexPlan
from ..storage import SegmentResult, Store, referenced_segments, remove_index_dir

__all__ = [
    "JOURNAL_DIR",
    "MODEL",
    "BuildJournal",
    "MergeAttempt",
    "default_journal_location",
    "has_model",
    "is_aborted",
    "read_merge",
    "read_model",
    "read_segment",
    "remove_if_aborted",
    "remove_if_over",
    "stop_if_aborted",
    "write_attempt",
    "write_merge",
    "write_model",
    "write_segment",
]

JOURNAL_DIR = "_dli"
MODEL = "model.json"
RESULT = "result.json"  # the committed result, kept where the driver may not have received it
FORMAT = 2


def default_journal_location(uri: str, build_id: str) -> str:
    """``<dataset uri>/_dli/<build id>``: beside the data, reachable by every worker."""
    return f"{str(uri).rstrip('/')}/{JOURNAL_DIR}/{build_id}"


@dataclass(frozen=True)
class BuildJournal:
    """A snapshot of one build's journal.

    Attributes
    ----------
    location : str
        Where the journal lives (directory or object-store prefix).
    plan : IndexPlan
        The build's plan (its ``build_id`` fixes every build segment's uuid).
    status : str
        ``"running"``, ``"committed"`` or ``"failed"``.
    job : dict
        What kind of job: ``{"kind": "build"}``, or ``{"kind": "update",
        "decision": ...}`` for an update (its :class:`~dask_lance_index.update.UpdateDecision`).
    segments : tuple of SegmentResult
        Finished build tasks.
    merges : tuple of SegmentResult
        Finished merge steps.
    attempts : tuple of (slot, started, last heartbeat)
        Every merge attempt's start time and the last sign of life it gave.
    driver : dict
        Host and process id of the driver that wrote ``journal.json``, and
        ``updated``: when it last did.
    version : int, optional
        The committed dataset version, once committed.
    aborted : bool
        The build failed and told its tasks to remove what they write.
    storage_options : dict, optional
        Lance's storage options that reach ``location`` on an object store. Kept
        out of the repr and of comparisons; never written to the journal.
    """

    location: str
    plan: IndexPlan
    status: str = "running"
    job: dict = field(default_factory=lambda: {"kind": "build"})
    segments: tuple[SegmentResult, ...] = ()
    merges: tuple[SegmentResult, ...] = ()
    attempts: tuple[tuple[int, float, float], ...] = ()
    driver: dict | None = None
    version: int | None = None
    aborted: bool = False
    storage_options: dict | None = field(default=None, repr=False, compare=False)

    def _store(self) -> Store:
        return Store(self.location, self.storage_options)

    @property
    def at_default_location(self) -> bool:
        """Whether the journal lives where the build put it by default (removed after the
        commit), rather than where the caller chose (kept, saying committed)."""
        return self.location.rstrip("/") == default_journal_location(self.plan.uri, self.plan.build_id)

    # -- writing (driver) -------------------------------------------------------------------------
    @classmethod
    def start(cls, location: str, plan: IndexPlan, storage_options: dict | None = None,
              job: dict | None = None) -> BuildJournal:
        """Write a new journal for ``plan``; fails with a clear error if ``location`` is not writable."""
        j = cls(location=str(location), plan=plan, job=dict(job or {"kind": "build"}), driver=_driver(),
                storage_options=storage_options)
        try:
            j._write_head()
        except OSError as exc:
            raise InvalidInputError(
                f"cannot write the build journal at {location!r}: {exc}. Fix: make the location "
                "writable, or pass journal= a writable directory (the dataset itself must be "
                "writable too: the index is written into it)."
            ) from None
        return j

    def _write_head(self) -> None:
        head = {
            "format": FORMAT,
            "build_id": self.plan.build_id,
            "plan": self.plan.to_dict(),
            "status": self.status,
            "job": self.job,
            "driver": {**(self.driver or _driver()), "updated": time.time()},
            "version": self.version,
        }
        self._store().write("journal.json", json.dumps(head, indent=1))

    def with_status(self, status: str, version: int | None = None) -> BuildJournal:
        j = replace(self, status=status, version=version)
        j._write_head()
        return j

    def take_over(self) -> BuildJournal:
        """This process resumes the build: claim the journal and clear an abort."""
        self._store().remove("aborted")
        j = replace(self, driver=_driver(), status="running", aborted=False)
        j._write_head()
        return j

    def save_model(self, model: IndexModel) -> None:
        """Keep the model (a resumed run needs it again)."""
        write_model(self.location, model, self.storage_options)

    def abort(self) -> None:
        self._store().write("aborted", str(time.time()))

    def remove(self) -> None:
        """Remove the journal, and an emptied ``_dli/`` folder above it."""
        store = self._store()
        store.remove_tree()
        parent = os.path.dirname(store.path().rstrip("/"))
        if store.local and os.path.basename(parent) == JOURNAL_DIR:
            Store(parent).remove_empty_dir()

    # -- reading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, location: str, storage_options: dict | None = None) -> BuildJournal | None:
        """The journal at ``location`` (reached with ``storage_options``), or None if there is none."""
        store = Store(str(location), storage_options)
        text = store.read("journal.json")
        if text is None:
            return None
        head = json.loads(text)
        if head.get("format") != FORMAT:
            raise InvalidInputError(
                f"the build journal at {location!r} has format {head.get('format')!r}; this version reads "
                f"{FORMAT}. Fix: remove it with dask_lance_index.cleanup(uri, journal={str(location)!r}) "
                "and build again."
            )
        segments = [_record(store, f"segments/{n}") for n in store.listdir("segments") if n.endswith(".json")]
        merges, attempts = [], []
        for name in store.listdir("merges"):
            if name.endswith(".json"):
                merges.append(_record(store, f"merges/{name}"))
            elif name.endswith(".try"):
                text = store.read(f"merges/{name}")
                if text:
                    a = json.loads(text)
                    attempts.append((int(name.split(".")[0]), float(a["started"]), float(a["beat"])))
        return cls(
            location=str(location),
            plan=IndexPlan.from_dict(head["plan"]),
            status=head.get("status", "running"),
            job=head.get("job") or {"kind": "build"},
            segments=tuple(sorted((s for s in segments if s is not None), key=lambda s: s.slot)),
            merges=tuple(sorted((m for m in merges if m is not None), key=lambda m: m.slot)),
            attempts=tuple(sorted(attempts)),
            driver=head.get("driver"),
            version=head.get("version"),
            aborted=store.exists("aborted"),
            storage_options=storage_options,
        )

    def save_result(self, result) -> None:
        """Keep the committed job's result (an :class:`~dask_lance_index.commit.IndexResult`),
        for a driver that lost the cluster while the commit ran."""
        cls = type(result)
        self._store().write(RESULT, json.dumps({"type": f"{cls.__module__}:{cls.__qualname__}",
                                                "result": result.to_dict()}))

    def load_result(self):
        """The result :meth:`save_result` kept, or None."""
        text = self._store().read(RESULT)
        if text is None:
            return None
        saved = json.loads(text)
        module, _, name = saved["type"].partition(":")
        return getattr(importlib.import_module(module), name).from_dict(saved["result"])

    def load_model(self) -> IndexModel | None:
        """The journaled model (the training task writes it on a worker), or None."""
        return read_model(self.location, self.storage_options)

    def segment_uuids(self) -> set[str]:
        """Every uuid this build writes or wrote: its build tasks' and its finished merges'."""
        return {self.plan.segment_uuid(i) for i in range(self.plan.num_tasks)} | {m.uuid for m in self.merges}

    def driver_alive(self) -> bool:
        """Whether the driver that last wrote the journal still runs (known on its own host only)."""
        d = self.driver or {}
        if d.get("host") != socket.gethostname():
            return True  # cannot tell from here
        try:
            os.kill(int(d.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OSError):
            return True
        return int(d.get("pid", 0)) > 0


def _driver() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _record(store: Store, rel: str) -> SegmentResult | None:
    text = store.read(rel)
    return None if text is None else SegmentResult.from_dict(json.loads(text))


# -- task-side records (run on workers) ---------------------------------------------------------
# Each takes the build's storage_options: a task on a worker reaches an object-store
# journal with the credentials the user gave, not the worker's environment.
def is_aborted(location: str | None, storage_options: dict | None = None) -> bool:
    return location is not None and Store(location, storage_options).exists("aborted")


def stop_if_aborted(location: str | None, build_id: str, storage_options: dict | None = None) -> None:
    """Before a task's work: stop if its build was abandoned (it failed elsewhere)."""
    if is_aborted(location, storage_options):
        raise BuildAbortedError(f"build {build_id} was abandoned; this task stops")


def remove_if_aborted(location: str | None, plan, uuid: str, storage_options: dict | None = None) -> None:
    """After a task's work is recorded: a task that finishes after its build was abandoned
    removes the segment it just wrote. (The driver writes the marker before it removes
    the build's segments, so a segment is removed either by the driver or by the task
    that wrote it.)"""
    if is_aborted(location, storage_options):
        remove_index_dir(plan.uri, uuid, storage_options)
        raise BuildAbortedError(f"build {plan.build_id} was abandoned; removed segment {uuid}")


def remove_if_over(location: str | None, plan, uuid: str, storage_options: dict | None = None) -> None:
    """Before a task journals its segment: a task that ends after its job did (it ran on
    a worker the scheduler dropped, its retry finished the job) writes no record, which
    would bring back a removed journal, and removes the segment it wrote unless a
    version of the dataset references it (its retry's segment, of the same name, may
    have been committed as it is)."""
    if location is None:
        return
    text = Store(location, storage_options).read("journal.json")
    if text is not None and json.loads(text).get("status") == "running":
        return
    if uuid not in referenced_segments(plan.uri, storage_options):
        remove_index_dir(plan.uri, uuid, storage_options)
    raise BuildAbortedError(f"build {plan.build_id} ended while this task ran (its worker was dropped and the "
                            f"task run again elsewhere); segment {uuid} left as the job committed it")


def has_model(location: str | None, storage_options: dict | None = None) -> bool:
    return location is not None and Store(location, storage_options).exists(MODEL)


def read_model(location: str, storage_options: dict | None = None) -> IndexModel | None:
    text = Store(location, storage_options).read(MODEL)
    return None if text is None else IndexModel.from_json(text)


def write_model(location: str, model: IndexModel, storage_options: dict | None = None) -> None:
    Store(location, storage_options).write(MODEL, model.to_json())


def read_segment(location: str, slot: int, storage_options: dict | None = None) -> SegmentResult | None:
    return _record(Store(location, storage_options), f"segments/{slot:06d}.json")


def write_segment(location: str, result: SegmentResult, storage_options: dict | None = None) -> None:
    Store(location, storage_options).write(f"segments/{result.slot:06d}.json", json.dumps(result.to_dict()))


def read_merge(location: str, slot: int, storage_options: dict | None = None) -> SegmentResult | None:
    return _record(Store(location, storage_options), f"merges/{slot:06d}.json")


def write_merge(location: str, result: SegmentResult, storage_options: dict | None = None) -> None:
    Store(location, storage_options).write(f"merges/{result.slot:06d}.json", json.dumps(result.to_dict()))


# Seconds between a merge attempt's heartbeats: the output of an attempt that died was
# written before its last heartbeat plus this.
HEARTBEAT_SECONDS = 1.0


class MergeAttempt:
    """Journal a merge attempt: its start, then a heartbeat every HEARTBEAT_SECONDS until it ends."""

    def __init__(self, location: str, slot: int, started: float, storage_options: dict | None = None):
        self.store = Store(location, storage_options)
        self.name = f"merges/{slot:06d}.{time.time_ns()}.try"
        self.started = started
        self._done = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _beat(self) -> None:
        self.store.write(self.name, json.dumps({"started": self.started, "beat": time.time()}))

    def _run(self) -> None:
        while not self._done.wait(HEARTBEAT_SECONDS):
            self._beat()

    def __enter__(self) -> MergeAttempt:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def write_attempt(location: str, slot: int, started: float, storage_options: dict | None = None) -> None:
    """Journal an attempt's start (and only that: as an attempt that died at once)."""
    MergeAttempt(location, slot, started, storage_options)
