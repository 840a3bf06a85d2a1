"""A build's model, saved beside the index when it commits, so that later updates reuse it.

A committed build writes one JSON file holding its :class:`IndexModel`
(centroids, codebook, rotation) and its :class:`IndexPlan`. By default it lives
at ``<dataset uri>/_dli_models/<index name>/model.json``; any other URI may be
chosen (``model_uri=``). It is read and written through
:class:`dask_lance_index.storage.Store`, so the same code reaches a local disk
or an object store with the dataset's ``storage_options``.

:func:`dask_lance_index.update_index` loads the file to build segments for new
fragments without sampling or training anything.
"""

from __future__ import annotations

import json
import posixpath
import warnings
from dataclasses import dataclass

from ..errors import InvalidInputError
from ..model import IndexModel
from ..plan import IndexPlan
from ..storage import Store

__all__ = ["SavedModel", "default_model_uri", "load_model", "save_after_build", "save_model"]

FORMAT_VERSION = 2
MODELS_DIR = "_dli_models"


def default_model_uri(uri: str, name: str) -> str:
    """``<dataset uri>/_dli_models/<name>/model.json``."""
    return f"{str(uri).rstrip('/')}/{MODELS_DIR}/{name}/model.json"


@dataclass(frozen=True, eq=False)
class SavedModel:
    """What a build leaves for later updates.

    Attributes
    ----------
    plan : IndexPlan
        The plan the build carried out (params, engine, column, name).
    model : IndexModel
        The shared centroids / codebook / RaBitQ rotation every segment used.
    version : int
        The dataset version the build committed.
    segments : tuple of str
        The segment uuids it committed (informational: Lance's compaction
        remaps segments under new uuids, so updates do not rely on them).
    """

    plan: IndexPlan
    model: IndexModel
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
            "model": self.model.to_dict(),
            "version": self.version,
            "segments": list(self.segments),
        }

    def to_json(self) -> str:
        # Training figures in ``model.source`` may be NumPy scalars.
        return json.dumps(self.to_dict(), default=lambda v: v.item() if hasattr(v, "item") else str(v))

    @classmethod
    def from_dict(cls, d: dict) -> "SavedModel":
        if d.get("format") != FORMAT_VERSION:
            raise InvalidInputError(
                f"the saved model has format {d.get('format')!r}; this version reads {FORMAT_VERSION}. "
                "Fix: rebuild the index with dli.create_index(..., replace=True)."
            )
        return cls(
            plan=IndexPlan.from_dict(d["plan"]),
            model=IndexModel.from_dict(d["model"]),
            version=int(d["version"]),
            segments=tuple(d.get("segments", ())),
        )

    @classmethod
    def from_json(cls, s: str) -> "SavedModel":
        return cls.from_dict(json.loads(s))


def _split(dest: str) -> tuple[str, str]:
    """``dest``'s folder and file name."""
    folder, name = posixpath.split(str(dest).rstrip("/"))
    return folder, name


def save_model(dest: str, saved: SavedModel, storage_options: dict | None = None) -> str:
    """Write ``saved`` to ``dest`` (a file URI); a reader never sees half a file. Returns ``dest``."""
    folder, name = _split(dest)
    Store(folder, storage_options).write(name, saved.to_json())
    return dest


def load_model(uri, name: str | None = None, *, model_uri: str | None = None,
               storage_options: dict | None = None) -> SavedModel:
    """Load what a build saved for index ``name`` of dataset ``uri`` (or from ``model_uri``).

    Raises :class:`InvalidInputError` naming the path and the fix when nothing is there.
    """
    if model_uri is None:
        if name is None:
            raise InvalidInputError("load_model needs the index name or model_uri")
        model_uri = default_model_uri(str(getattr(uri, "uri", uri)), name)
    folder, file = _split(model_uri)
    text = Store(folder, storage_options).read(file)
    if text is None:
        raise InvalidInputError(
            f"no saved model at {model_uri}: the index was not built by dask_lance_index, or its model "
            "was saved elsewhere. Fix: pass model_uri= where the build saved it, or rebuild with "
            "dli.create_index(..., replace=True)."
        )
    return SavedModel.from_json(text)


def save_after_build(plan: IndexPlan, model: IndexModel, result, storage_options=None,
                     model_uri: str | None = None) -> None:
    """Save a committed build's model. The index is already committed, so a failure
    here warns (updates will then ask for a rebuild) instead of failing it."""
    dest = model_uri or default_model_uri(plan.uri, plan.name)
    try:
        save_model(dest, SavedModel(plan, model, result.version, tuple(result.segments)), storage_options)
    except Exception as exc:  # noqa: BLE001 - reported, the commit stands
        warnings.warn(f"the index was committed but its model could not be saved to {dest}: {exc}",
                      UserWarning, stacklevel=2)
