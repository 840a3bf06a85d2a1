"""Index segments on storage: where Lance keeps them, what a task made of one, and removal.

Lance writes each segment of an index under ``<dataset>/_indices/<uuid>/`` and
keeps an uncommitted one forever (only ``cleanup_old_versions(
delete_unverified=True)`` removes them, in-flight ones of other writers too), so
every segment a failed build wrote is removed here, by its uuid.

:class:`SegmentResult` is what every build task and merge step returns: the
``lance.dataset.Index`` that Lance's merge and commit take, with the fragments
and rows it covers. It round-trips through JSON for the build journal
(``lance.dataset.Index`` itself does not).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pyarrow.fs as pafs
from lance.bitmap import Bitmap
from lance.dataset import Index, IndexFile

from .datasets import open_dataset
from .files import Store, join

__all__ = [
    "SegmentResult",
    "as_lance_index",
    "committed_index",
    "index_dir",
    "index_dir_times",
    "index_from_dict",
    "index_to_dict",
    "referenced_segments",
    "remove_index_dir",
    "segment_exists",
]


def index_dir(uri, uuid: str) -> str:
    """``<uri>/_indices/<uuid>``: where Lance keeps one index segment's files."""
    return join(str(getattr(uri, "uri", uri)), f"_indices/{uuid}")


def _indices(uri, storage_options: dict | None = None) -> Store:
    return Store(join(str(getattr(uri, "uri", uri)), "_indices"), storage_options)


def remove_index_dir(uri, uuid: str, storage_options: dict | None = None) -> bool:
    """Delete ``_indices/<uuid>`` if it exists. Returns whether anything was removed."""
    return _indices(uri, storage_options).remove_tree(uuid)


def segment_exists(uri, uuid: str, storage_options: dict | None = None) -> bool:
    return _indices(uri, storage_options).exists(uuid)


def index_dir_times(uri, storage_options: dict | None = None) -> dict[str, float]:
    """``{segment uuid: last modification time}`` for every directory under ``_indices/``."""
    store = _indices(uri, storage_options)
    out = {}
    for name in store.listdir():
        if store.local:
            if os.path.isdir(store.path(name)):
                out[name] = os.stat(store.path(name)).st_mtime
        else:
            infos = store.fs.get_file_info(pafs.FileSelector(store.path(name), recursive=True))
            times = [i.mtime.timestamp() for i in infos if i.mtime is not None]
            out[name] = max(times) if times else 0.0
    return out


def referenced_segments(uri, storage_options: dict | None = None) -> set[str]:
    """Uuids of segments that any version of the dataset references."""
    ds = open_dataset(uri, None, storage_options)
    out: set[str] = set()
    for v in ds.versions():
        dv = ds if v["version"] == ds.version else open_dataset(uri, v["version"], storage_options)
        for desc in dv.describe_indices():
            out.update(seg.uuid for seg in desc.segments)
    return out


# -- lance.dataset.Index -----------------------------------------------------------------------------
def index_to_dict(ix: Index) -> dict[str, Any]:
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


def index_from_dict(d: dict[str, Any]) -> Index:
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


def as_lance_index(desc, seg, files=None) -> Index:
    """A ``lance.dataset.Index`` for committed segment ``seg`` of index ``desc``
    (``files``: its file list, which Lance's merge reads)."""
    extra = {} if files is None else {"files": files}
    return Index(
        uuid=seg.uuid,
        name=desc.name,
        fields=list(desc.fields),
        dataset_version=seg.dataset_version_at_last_update,
        fragment_ids=set(seg.fragment_ids),
        index_version=seg.index_version,
        **extra,
    )


def committed_index(uri: str, desc, seg, storage_options: dict | None = None) -> Index:
    """A committed segment as Lance's merge takes it: with its files listed (its
    ``index_details`` are not recorded by the commit; the merge task fills them in)."""
    store = Store(index_dir(uri, seg.uuid), storage_options)
    root = store.path()
    infos = store.fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = [IndexFile(i.path[len(root):].lstrip("/"), int(i.size)) for i in infos if i.type == pafs.FileType.File]
    return as_lance_index(desc, seg, files=sorted(files, key=lambda f: f.path))


# -- what a task made ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentResult:
    """One segment: what a build task or a merge step wrote, or one the index holds.

    Attributes
    ----------
    slot : int
        Its place in the plan: build task ``i`` fills slot ``i``, each merge step
        a later one (:class:`~dask_lance_index.plan.MergePlan`); -1 for a segment
        already committed.
    index : lance.dataset.Index
        What Lance's merge and commit take (pickles in about 1 KB).
    fragment_ids : tuple of int
    num_rows : int
        Rows of its fragments, indexable or not.
    null_rows, nan_rows : int
        Rows Lance left out: null vectors, and vectors with NaN or infinity.
    started, finished : float
        Wall-clock start and end of the task that wrote it (0 for a committed one).
    inputs : tuple of str
        The uuids a merge step merged into it (empty for a build task's segment).
    checked_rows, agreeing_rows : int
        A two-level model's audit (:data:`~dask_lance_index.model.ivf.AUDIT_STRIDE`):
        rows the task also assigned exactly, and how many of them the restricted
        search gave their exact nearest partition (0 and 0: no audit).
    """

    slot: int
    index: Any
    fragment_ids: tuple[int, ...]
    num_rows: int
    null_rows: int = 0
    nan_rows: int = 0
    started: float = 0.0
    finished: float = 0.0
    inputs: tuple[str, ...] = field(default=())
    checked_rows: int = 0
    agreeing_rows: int = 0

    @property
    def uuid(self) -> str:
        return self.index.uuid

    @property
    def num_rows_indexed(self) -> int:
        return self.num_rows - self.null_rows - self.nan_rows

    def with_details(self, details) -> SegmentResult:
        """This segment with ``index_details`` filled in where it has none (a committed
        segment: Lance's merge refuses one without them)."""
        if getattr(self.index, "index_details", None) is not None:
            return self
        return replace(self, index=replace(self.index, index_details=details))

    def to_dict(self) -> dict:
        return {
            "slot": self.slot, "index": index_to_dict(self.index), "fragment_ids": list(self.fragment_ids),
            "num_rows": self.num_rows, "null_rows": self.null_rows, "nan_rows": self.nan_rows,
            "started": self.started, "finished": self.finished, "inputs": list(self.inputs),
            "checked_rows": self.checked_rows, "agreeing_rows": self.agreeing_rows,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SegmentResult:
        return cls(
            slot=int(d["slot"]), index=index_from_dict(d["index"]), fragment_ids=tuple(d["fragment_ids"]),
            num_rows=int(d["num_rows"]), null_rows=int(d["null_rows"]), nan_rows=int(d["nan_rows"]),
            started=float(d["started"]), finished=float(d["finished"]), inputs=tuple(d.get("inputs", ())),
            checked_rows=int(d.get("checked_rows", 0)), agreeing_rows=int(d.get("agreeing_rows", 0)),
        )
