"""The artifacts of a build, saved beside the index so that later updates reuse them.

A committed build writes one JSON file holding its :class:`IndexArtifacts`
(centroids, codebook, rotation) and its :class:`IndexPlan`. By default it lives
at ``<dataset uri>/_dli_models/<index name>/artifacts.json``; any other URI
may be chosen (``saved_artifacts_uri=``). Every read and write goes through
:func:`dask_lance_index._lance.filesystem`, so the same code reaches a local
disk or an object store with the dataset's ``storage_options``.

:func:`dask_lance_index.update_index` loads the file to build segments for new
fragments without sampling or training anything.
"""

from __future__ import annotations

import json
import uuid as uuidlib
import warnings
from dataclasses import dataclass

from .artifacts import IndexArtifacts
from .errors import InvalidInputError
from .plan import IndexPlan

__all__ = ["SavedIndex", "default_artifacts_uri", "save_artifacts", "load_artifacts"]

FORMAT_VERSION = 1


def default_artifacts_uri(uri: str, name: str) -> str:
    """``<dataset uri>/_dli_models/<name>/artifacts.json``."""
    return f"{str(uri).rstrip('/')}/_dli_models/{name}/artifacts.json"


@dataclass(frozen=True, eq=False)
class SavedIndex:
    """What a build leaves for later updates.

    Attributes
    ----------
    plan : IndexPlan
        The plan the build carried out (params, engine, column, name).
    artifacts : IndexArtifacts
        The shared centroids / codebook / RaBitQ model every segment used.
    version : int
        The dataset version the build committed.
    segments : tuple of str
        The segment uuids it committed (informational: Lance's compaction
        remaps segments under new uuids, so updates do not rely on them).
    """

    plan: IndexPlan
    artifacts: IndexArtifacts
    version: int
    segments: tuple[str, ...] = ()

    @property
    def base_segments(self) -> int:
        """Segments the build committed: the count the delta policy counts from."""
        return max(1, len(self.segments))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "plan": self.plan.to_dict(),
            "artifacts": self.artifacts.to_dict(),
            "version": self.version,
            "segments": list(self.segments),
        }

    def to_json(self) -> str:
        # Training figures in ``artifacts.source`` may be NumPy scalars.
        return json.dumps(self.to_dict(), default=lambda v: v.item() if hasattr(v, "item") else str(v))

    @classmethod
    def from_dict(cls, d: dict) -> "SavedIndex":
        if d.get("format") != FORMAT_VERSION:
            raise InvalidInputError(
                f"saved artifacts have format {d.get('format')!r}; this version reads {FORMAT_VERSION}. "
                "Fix: rebuild the index with dli.create_index(..., replace=True)."
            )
        return cls(
            plan=IndexPlan.from_dict(d["plan"]),
            artifacts=IndexArtifacts.from_dict(d["artifacts"]),
            version=int(d["version"]),
            segments=tuple(d.get("segments", ())),
        )

    @classmethod
    def from_json(cls, s: str) -> "SavedIndex":
        return cls.from_dict(json.loads(s))


def save_artifacts(dest: str, saved: SavedIndex, storage_options: dict | None = None) -> str:
    """Write ``saved`` to ``dest`` (a file URI). Returns ``dest``.

    On a local disk the file is written beside its final name and renamed, so
    a reader never sees half a file; an object store's put is atomic itself.
    """
    from ._lance import filesystem, is_local

    fs, path = filesystem(dest, storage_options)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    data = saved.to_json().encode()
    target = f"{path}.{uuidlib.uuid4().hex[:8]}.tmp" if is_local(dest) else path
    with fs.open_output_stream(target) as out:
        out.write(data)
    if target != path:
        fs.move(target, path)
    return dest


def load_artifacts(
    uri, name: str | None = None, *, saved_artifacts_uri: str | None = None, storage_options: dict | None = None
) -> SavedIndex:
    """Load what a build saved for index ``name`` of dataset ``uri`` (or from ``saved_artifacts_uri``).

    Raises :class:`InvalidInputError` naming the path and the fix when nothing is there.
    """
    import pyarrow.fs as pafs

    from ._lance import filesystem

    if saved_artifacts_uri is None:
        if name is None:
            raise InvalidInputError("load_artifacts needs the index name or saved_artifacts_uri")
        uri = uri if isinstance(uri, str) else getattr(uri, "uri", str(uri))
        saved_artifacts_uri = default_artifacts_uri(uri, name)
    fs, path = filesystem(saved_artifacts_uri, storage_options)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise InvalidInputError(
            f"no saved artifacts at {saved_artifacts_uri}: the index was not built by dask_lance_index "
            "with saved artifacts, or they were saved elsewhere. Fix: pass saved_artifacts_uri= where the "
            "build saved them, or rebuild with dli.create_index(..., replace=True)."
        )
    with fs.open_input_stream(path) as f:
        return SavedIndex.from_json(f.read().decode())


def save_after_build(plan: IndexPlan, artifacts: IndexArtifacts, result, storage_options=None,
                     saved_artifacts_uri: str | None = None) -> None:
    """Save a committed build's artifacts. The index is already committed, so a
    failure here warns (updates will then ask for a rebuild) instead of failing it."""
    dest = saved_artifacts_uri or default_artifacts_uri(plan.uri, plan.name)
    try:
        save_artifacts(dest, SavedIndex(plan, artifacts, result.version, tuple(result.segments)), storage_options)
    except Exception as exc:  # noqa: BLE001 - reported, the commit stands
        warnings.warn(f"the index was committed but its artifacts could not be saved to {dest}: {exc}",
                      UserWarning, stacklevel=2)
