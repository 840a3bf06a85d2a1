"""The model every segment of one index shares: IVF centroids, PQ codebook, RaBitQ rotation.

One :class:`IndexModel` is trained (or given) once per build and enters the
Dask graph as a single key; every build task depends on that key. Segments
built with different models cannot be merged into a correct index (a merged
IVF_RQ index over two rotations is silently corrupt, ``docs/lance.md``). It
round-trips through JSON (arrays as base64 of their float32 bytes, so the round
trip is exact) and through pickle.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InvalidModelError
from .coarse import DEFAULT_PROBES, CoarseIndex
from .rabitq import sign_bytes

__all__ = ["METRICS", "IndexModel", "coerce_array", "validate_model"]

# The metrics Lance takes, by every name it accepts.
METRICS = {"l2": "l2", "euclidean": "l2", "cosine": "cosine", "dot": "dot"}


def _encode_array(a: np.ndarray | None, dtype=np.float32) -> dict | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype=dtype)
    return {
        "dtype": np.dtype(dtype).name,
        "shape": list(a.shape),
        "data": base64.b64encode(a.tobytes()).decode("ascii"),
    }


def _decode_array(d: dict | None) -> np.ndarray | None:
    if d is None:
        return None
    raw = base64.b64decode(d["data"])
    return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


@dataclass(frozen=True, eq=False)
class IndexModel:
    """The trained model shared by every segment of one index.

    Attributes
    ----------
    ivf_centroids : ndarray, shape (num_partitions, dimension), float32
    pq_codebook : ndarray, shape (num_sub_vectors, 2**num_bits, dimension // num_sub_vectors), optional
        Only for ``*_PQ`` index types.
    rabitq_model : str, optional
        The RaBitQ model JSON (``IVF_RQ`` only), as Lance's ``build_rq_model`` makes it.
    ivf_coarse, ivf_groups, ivf_probes : optional
        A two-level IVF (:mod:`.coarse`): the coarse centroids ``(k1, dimension)``,
        the group of each partition ``(num_partitions,)`` int32, and how many of a
        row's nearest groups its partition is searched in. Lance never sees them.
    sq_bounds : (float, float), optional
        IVF_SQ / IVF_HNSW_SQ: the ``(start, end)`` every segment's SQ codes share
        (:mod:`.sq`); Lance never takes them as an argument.
    source : dict
        Where each part came from (``"trained"`` or ``"user"``) and training
        figures (sample rows, seconds, inertia); informational.
    """

    ivf_centroids: np.ndarray | None = None
    pq_codebook: np.ndarray | None = None
    rabitq_model: str | None = None
    source: dict = field(default_factory=dict)
    ivf_coarse: np.ndarray | None = None
    ivf_groups: np.ndarray | None = None
    ivf_probes: int | None = None
    sq_bounds: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ivf_centroids": _encode_array(self.ivf_centroids),
            "pq_codebook": _encode_array(self.pq_codebook),
            "rabitq_model": self.rabitq_model,
            "source": dict(self.source),
            "ivf_coarse": _encode_array(self.ivf_coarse),
            "ivf_groups": _encode_array(self.ivf_groups, np.int32),
            "ivf_probes": self.ivf_probes,
            "sq_bounds": None if self.sq_bounds is None else [float(v) for v in self.sq_bounds],
        }

    @property
    def coarse_index(self) -> CoarseIndex | None:
        """The two-level grouping of the partitions, when the model has one."""
        if self.ivf_coarse is None or self.ivf_groups is None:
            return None
        return CoarseIndex(self.ivf_coarse, self.ivf_groups, self.ivf_probes or DEFAULT_PROBES)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IndexModel":
        return cls(
            ivf_centroids=_decode_array(d.get("ivf_centroids")),
            pq_codebook=_decode_array(d.get("pq_codebook")),
            rabitq_model=d.get("rabitq_model"),
            source=dict(d.get("source") or {}),
            ivf_coarse=_decode_array(d.get("ivf_coarse")),
            ivf_groups=_decode_array(d.get("ivf_groups")),
            ivf_probes=d.get("ivf_probes"),
            sq_bounds=None if d.get("sq_bounds") is None else tuple(float(v) for v in d["sq_bounds"]),
        )

    @classmethod
    def from_json(cls, s: str) -> "IndexModel":
        return cls.from_dict(json.loads(s))

    def lance_kwargs(self) -> dict[str, Any]:
        """The parts present, as ``create_index_uncommitted`` keyword arguments."""
        return {
            key: getattr(self, key)
            for key in ("ivf_centroids", "pq_codebook", "rabitq_model")
            if getattr(self, key) is not None
        }

    def equals(self, other: "IndexModel") -> bool:
        """Same arrays (bit for bit) and the same RaBitQ model."""

        def same(a, b):
            if a is None or b is None:
                return a is None and b is None
            return a.shape == b.shape and np.array_equal(a, b)

        return (
            same(self.ivf_centroids, other.ivf_centroids)
            and same(self.pq_codebook, other.pq_codebook)
            and self.rabitq_model == other.rabitq_model
            and same(self.ivf_coarse, other.ivf_coarse)
            and same(self.ivf_groups, other.ivf_groups)
            and self.ivf_probes == other.ivf_probes
            and self.sq_bounds == other.sq_bounds
        )

    def __repr__(self) -> str:
        parts = []
        if self.ivf_centroids is not None:
            parts.append(f"ivf_centroids={self.ivf_centroids.shape}")
        if self.pq_codebook is not None:
            parts.append(f"pq_codebook={self.pq_codebook.shape}")
        if self.rabitq_model is not None:
            parts.append("rabitq_model=<json>")
        if self.ivf_coarse is not None:
            parts.append(f"ivf_coarse={self.ivf_coarse.shape}, ivf_probes={self.ivf_probes}")
        if self.sq_bounds is not None:
            parts.append(f"sq_bounds=({self.sq_bounds[0]:.6g}, {self.sq_bounds[1]:.6g})")
        return f"IndexModel({', '.join(parts)})"


def coerce_array(value: Any, what: str) -> np.ndarray:
    """A user-given centroid or codebook array as a NumPy array, checked for float dtype.

    Lance panics on a float64 codebook, so float64 is refused here, not cast:
    casting silently would hide a mistake in how the model was made.
    """
    if isinstance(value, (pa.FixedSizeListArray, pa.ChunkedArray)):
        value = np.stack(value.to_numpy(zero_copy_only=False))
    a = np.asarray(value)
    if a.dtype != np.float32:
        raise InvalidModelError(
            f"{what} has dtype {a.dtype}; it must be float32. "
            f"Fix: pass {what}.astype(numpy.float32)."
        )
    if not np.isfinite(a).all():
        raise InvalidModelError(f"{what} contains NaN or infinite values; retrain it.")
    return a


def validate_model(
    model: IndexModel,
    *,
    index_type: str,
    dimension: int,
    num_partitions: int,
    num_sub_vectors: int | None,
    num_bits: int | None,
) -> None:
    """Check the model's shapes against the index it is to build.

    Raises :class:`InvalidModelError` naming the part, the expected and the
    actual shape.
    """
    c = model.ivf_centroids
    if c is not None:
        if c.ndim != 2 or c.shape != (num_partitions, dimension):
            raise InvalidModelError(
                f"ivf_centroids has shape {c.shape}; expected (num_partitions, dimension) = "
                f"({num_partitions}, {dimension}). Fix: train centroids for this column's "
                f"dimension, or set num_partitions to match them."
            )
    if model.ivf_groups is not None:
        k1 = 0 if model.ivf_coarse is None else len(model.ivf_coarse)
        g = np.asarray(model.ivf_groups)
        if g.shape != (num_partitions,) or k1 == 0 or g.min() < 0 or g.max() >= k1:
            raise InvalidModelError(
                f"the model's partition groups (shape {g.shape}) do not fit {num_partitions} partitions under "
                f"{k1} coarse centroids. Fix: train the model again."
            )
    cb = model.pq_codebook
    if cb is not None:
        if "PQ" not in index_type:
            raise InvalidModelError(f"pq_codebook was given but {index_type} has no PQ.")
        assert num_sub_vectors is not None and num_bits is not None
        expected = (num_sub_vectors, 2**num_bits, dimension // num_sub_vectors)
        if cb.shape != expected:
            raise InvalidModelError(
                f"pq_codebook has shape {cb.shape}; expected (num_sub_vectors, 2**num_bits, "
                f"dimension // num_sub_vectors) = {expected}. Fix: train the codebook with "
                f"num_sub_vectors={num_sub_vectors}, num_bits={num_bits} on this column."
            )
        if c is None:
            raise InvalidModelError(
                "pq_codebook was given without ivf_centroids: the codebook is trained on "
                "residuals against the centroids, so pass both or neither."
            )
    rq = model.rabitq_model
    if rq is not None:
        if index_type != "IVF_RQ":
            raise InvalidModelError(f"rabitq_model was given but the index type is {index_type}.")
        try:
            model = json.loads(rq)
        except (TypeError, ValueError) as exc:
            raise InvalidModelError(f"rabitq_model is not valid JSON: {exc}") from None
        code_dim = model.get("code_dim")
        if code_dim != dimension:
            raise InvalidModelError(
                f"rabitq_model rotates {code_dim}-dimensional vectors; the column has "
                f"dimension {dimension}. Fix: make a model with build_rq_model({dimension}, ...)."
            )
        if num_bits is not None and model.get("num_bits") != num_bits:
            raise InvalidModelError(
                f"rabitq_model has num_bits={model.get('num_bits')} but num_bits={num_bits} "
                "was asked for; make them agree."
            )
        signs = model.get("fast_rotation_signs")
        if model.get("rotation_type") == "fast" and signs is not None:
            expected_len = sign_bytes(dimension)
            if len(signs) != expected_len:
                raise InvalidModelError(
                    f"rabitq_model has {len(signs)} rotation sign bytes; a {dimension}-d fast "
                    f"rotation needs {expected_len}."
                )
