"""The build journal: what a build planned and what it has finished, as JSON files.

A build writes its journal before any task runs and keeps it up to date while
it runs, so that

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

    journal.json            plan, status, driver, artifacts location
    artifacts.json          the shared artifacts (IndexArtifacts JSON)
    segments/<task>.json    one record per finished build task
    merges/<slot>.json      one record per finished merge step
    merges/<slot>.<t>.try   one per merge attempt: its start time and heartbeat (finds
                            Lance's randomly named output of an attempt that died)
    aborted                 written when the build fails: late tasks remove their output

Each file is written by one task only, so tasks never contend for a file.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .errors import InvalidInputError
from .plan import IndexPlan

__all__ = [
    "BuildJournal",
    "MergeRecord",
    "SegmentRecord",
    "default_journal_location",
    "index_from_dict",
    "index_to_dict",
    "journal_store",
]

JOURNAL_DIR = "_dli"
ARTIFACTS = "artifacts.json"
FORMAT = 1


# -- storage ------------------------------------------------------------------------------------
def _is_local(location: str) -> bool:
    from ._lance import is_local

    return is_local(location)


class _Store:
    """Small file operations on a local directory or, through pyarrow, an object store
    reached with Lance's ``storage_options`` (credentials, endpoint), the same on the
    driver and on every worker."""

    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = str(root).rstrip("/")
        self.local = _is_local(self.root)
        if self.local:
            self.root = self.root.removeprefix("file://")
            self.fs = None
        else:
            from ._lance import filesystem

            self.fs, self.base = filesystem(self.root, storage_options)
            self.base = self.base.rstrip("/")

    def __repr__(self) -> str:  # never the storage options: they may hold credentials
        return f"_Store({self.root!r})"

    def _p(self, rel: str) -> str:
        if self.local:
            return os.path.join(self.root, rel) if rel else self.root
        return f"{self.base}/{rel}" if rel else self.base

    def write(self, rel: str, text: str) -> None:
        path = self._p(rel)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)  # readers never see half a file
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(text.encode())

    def read(self, rel: str) -> str | None:
        path = self._p(rel)
        try:
            if self.local:
                with open(path) as f:
                    return f.read()
            with self.fs.open_input_stream(path) as f:
                return f.read().decode()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:  # pyarrow raises OSError for a missing object
            if not self.local and not self.exists(rel):
                return None
            raise

    def exists(self, rel: str) -> bool:
        path = self._p(rel)
        if self.local:
            return os.path.exists(path)
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def listdir(self, rel: str) -> list[str]:
        path = self._p(rel)
        if self.local:
            return sorted(os.listdir(path)) if os.path.isdir(path) else []
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def remove_tree(self, rel: str = "") -> None:
        path = self._p(rel)
        if self.local:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            if rel == "":  # drop an emptied parent `_dli/` too
                parent = os.path.dirname(path)
                if os.path.basename(parent) == JOURNAL_DIR:
                    try:
                        os.rmdir(parent)
                    except OSError:
                        pass
        elif self.exists(rel):
            self.fs.delete_dir(path)

    def remove(self, rel: str) -> None:
        path = self._p(rel)
        if self.local:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        elif self.exists(rel):
            self.fs.delete_file(path)


def journal_store(location: str, storage_options: dict | None = None) -> _Store:
    """File operations under ``location``, on an object store with ``storage_options``."""
    return _Store(location, storage_options)


def default_journal_location(uri: str, build_id: str) -> str:
    """``<dataset uri>/_dli/<build id>``: beside the data, reachable by every worker."""
    return f"{str(uri).rstrip('/')}/{JOURNAL_DIR}/{build_id}"


# -- lance.dataset.Index <-> JSON ------------------------------------------------------------------
def index_to_dict(ix) -> dict[str, Any]:
    """A ``lance.dataset.Index`` as plain JSON (every field: one without ``files`` and
    ``index_details`` fails to merge in Lance)."""
    details = None
    if ix.index_details is not None:
        details = [ix.index_details[0], base64.b64encode(bytes(ix.index_details[1])).decode("ascii")]
    return {
        "uuid": ix.uuid,
        "name": ix.name,
        "fields": list(ix.fields),
        "dataset_version": int(ix.dataset_version),
        "fragment_ids": sorted(int(f) for f in ix.fragment_ids),
        "index_version": int(ix.index_version),
        "created_at": ix.created_at.isoformat() if ix.created_at is not None else None,
        "base_id": ix.base_id,
        "files": None if ix.files is None else [[f.path, int(f.size_bytes)] for f in ix.files],
        "index_details": details,
        "covering_fields": list(getattr(ix, "covering_fields", []) or []),
    }


def index_from_dict(d: dict[str, Any]):
    from lance.bitmap import Bitmap
    from lance.dataset import Index, IndexFile

    details = d.get("index_details")
    return Index(
        uuid=d["uuid"],
        name=d["name"],
        fields=list(d["fields"]),
        dataset_version=int(d["dataset_version"]),
        fragment_ids=Bitmap(set(d["fragment_ids"])),
        index_version=int(d["index_version"]),
        created_at=datetime.fromisoformat(d["created_at"]) if d.get("created_at") else None,
        base_id=d.get("base_id"),
        files=None if d.get("files") is None else [IndexFile(p, s) for p, s in d["files"]],
        index_details=None if details is None else (details[0], base64.b64decode(details[1])),
        covering_fields=list(d.get("covering_fields") or []),
    )


# -- records ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentRecord:
    """A finished build task, as journaled."""

    task: int
    uuid: str
    index: dict  # index_to_dict form
    fragment_ids: tuple[int, ...]
    num_rows: int
    null_rows: int
    nan_rows: int
    started: float
    finished: float

    @classmethod
    def of(cls, r) -> SegmentRecord:
        return cls(r.task, r.uuid, index_to_dict(r.index), tuple(r.fragment_ids), r.num_rows,
                   r.null_rows, r.nan_rows, r.started, r.finished)

    def result(self):
        from .build import SegmentResult

        return SegmentResult(self.task, self.uuid, index_from_dict(self.index), tuple(self.fragment_ids),
                             self.num_rows, self.null_rows, self.nan_rows, self.started, self.finished)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["fragment_ids"] = list(self.fragment_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SegmentRecord:
        return cls(**{**d, "fragment_ids": tuple(d["fragment_ids"])})


@dataclass(frozen=True)
class MergeRecord:
    """A finished merge step: its output segment (uuid picked by Lance) and its inputs."""

    slot: int
    uuid: str
    inputs: tuple[str, ...]
    index: dict
    started: float
    finished: float

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["inputs"] = list(self.inputs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MergeRecord:
        return cls(**{**d, "inputs": tuple(d["inputs"])})


# -- the journal ------------------------------------------------------------------------------------
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
    artifacts : str, optional
        Location of the saved artifacts relative to ``location`` (default ``artifacts.json``).
    segments : tuple of SegmentRecord
        Finished build tasks.
    merges : tuple of MergeRecord
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
    artifacts: str | None = None
    segments: tuple[SegmentRecord, ...] = ()
    merges: tuple[MergeRecord, ...] = ()
    attempts: tuple[tuple[int, float, float], ...] = ()
    driver: dict | None = None
    version: int | None = None
    aborted: bool = False
    storage_options: dict | None = field(default=None, repr=False, compare=False)

    def _store(self) -> _Store:
        return _Store(self.location, self.storage_options)

    # -- writing (driver) -------------------------------------------------------------------------
    @classmethod
    def start(cls, location: str, plan: IndexPlan, storage_options: dict | None = None) -> BuildJournal:
        """Write a new journal for ``plan``; fails with a clear error if ``location`` is not writable."""
        j = cls(location=str(location), plan=plan, driver=_driver(), storage_options=storage_options)
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
            "artifacts": self.artifacts,
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

    def save_artifacts(self, artifacts) -> BuildJournal:
        self._store().write("artifacts.json", artifacts.to_json())
        j = replace(self, artifacts="artifacts.json")
        j._write_head()
        return j

    def abort(self) -> None:
        self._store().write("aborted", str(time.time()))

    def remove(self) -> None:
        self._store().remove_tree()

    # -- reading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, location: str, storage_options: dict | None = None) -> BuildJournal | None:
        """The journal at ``location`` (reached with ``storage_options``), or None if there is none."""
        store = _Store(str(location), storage_options)
        text = store.read("journal.json")
        if text is None:
            return None
        head = json.loads(text)
        segments = []
        for name in store.listdir("segments"):
            if name.endswith(".json"):
                segments.append(SegmentRecord.from_dict(json.loads(store.read(f"segments/{name}"))))
        merges, attempts = [], []
        for name in store.listdir("merges"):
            if name.endswith(".json"):
                merges.append(MergeRecord.from_dict(json.loads(store.read(f"merges/{name}"))))
            elif name.endswith(".try"):
                text = store.read(f"merges/{name}")
                if text:
                    a = json.loads(text)
                    attempts.append((int(name.split(".")[0]), float(a["started"]), float(a["beat"])))
        return cls(
            location=str(location),
            plan=IndexPlan.from_dict(head["plan"]),
            status=head.get("status", "running"),
            artifacts=head.get("artifacts"),
            segments=tuple(sorted(segments, key=lambda s: s.task)),
            merges=tuple(sorted(merges, key=lambda m: m.slot)),
            attempts=tuple(sorted(attempts)),
            driver=head.get("driver"),
            version=head.get("version"),
            aborted=store.exists("aborted"),
            storage_options=storage_options,
        )

    def load_artifacts(self):
        from .artifacts import IndexArtifacts

        # The training task writes them (on a worker) without touching journal.json.
        text = self._store().read(self.artifacts or ARTIFACTS)
        return None if text is None else IndexArtifacts.from_json(text)

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


# -- task-side records (run on workers) ---------------------------------------------------------
# Each takes the build's storage_options: a task on a worker reaches an object-store
# journal with the credentials the user gave, not the worker's environment.
def is_aborted(location: str | None, storage_options: dict | None = None) -> bool:
    return location is not None and _Store(location, storage_options).exists("aborted")


def read_segment(location: str, task: int, storage_options: dict | None = None) -> SegmentRecord | None:
    text = _Store(location, storage_options).read(f"segments/{task:06d}.json")
    return None if text is None else SegmentRecord.from_dict(json.loads(text))


def write_segment(location: str, result, storage_options: dict | None = None) -> None:
    _Store(location, storage_options).write(
        f"segments/{result.task:06d}.json", json.dumps(SegmentRecord.of(result).to_dict())
    )


def read_merge(location: str, slot: int, storage_options: dict | None = None) -> MergeRecord | None:
    text = _Store(location, storage_options).read(f"merges/{slot:06d}.json")
    return None if text is None else MergeRecord.from_dict(json.loads(text))


def write_merge(location: str, record: MergeRecord, storage_options: dict | None = None) -> None:
    _Store(location, storage_options).write(f"merges/{record.slot:06d}.json", json.dumps(record.to_dict()))


# Seconds between a merge attempt's heartbeats: the output of an attempt that died was
# written before its last heartbeat plus this.
HEARTBEAT_SECONDS = 1.0


class MergeAttempt:
    """Journal a merge attempt: its start, then a heartbeat every HEARTBEAT_SECONDS until it ends."""

    def __init__(self, location: str, slot: int, started: float, storage_options: dict | None = None):
        import threading

        self.store = _Store(location, storage_options)
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
