"""Lance's RaBitQ "fast" rotation in NumPy: parsed from the model JSON, applied to batches of rows.

Lance (``rust/lance-index/src/vector/bq/rotation.rs``) rotates each vector with
4 rounds of: flip the signs given by one round's sign bits, then a normalised
fast Walsh-Hadamard transform (FWHT). For a power-of-two dimension ``d`` the
FWHT covers the whole vector. Otherwise, with ``t = 2**floor(log2 d)``, even
rounds transform the head ``[:t]`` and odd rounds the tail ``[d - t:]``, and
each round ends with one Kac's-walk step (``(a, b) -> (a + b, a - b)`` on the
two halves); a final factor 1/4 undoes the four unnormalised Kac steps
(RaBitQ-Library's ``FhtKacRotator``).

Here the same float32 operations run in the same order, vectorised over rows:
each FWHT stage is one butterfly over a reshaped ``(n, blocks, 2, half)`` view,
so a batch costs ``O(n d log d)`` with no per-row Python loop, and the rotated
values equal Lance's bit for bit (only additions, subtractions and the same
per-round float32 scaling, in Lance's order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .errors import InvalidArtifactError, InvalidInputError
from .rabitq import RQ_NUM_BITS, sign_bytes

__all__ = ["RQRotation", "fwht_rows"]

ROUNDS = 4
_CHUNK_ROWS = 8192  # rows per block: keeps a block's working set near the CPU caches


def fwht_rows(x: np.ndarray) -> np.ndarray:
    """Unnormalised FWHT of every row of ``x`` (in place; last axis a power of two).

    Stages run with half-width 1, 2, 4, ... and each butterfly writes
    ``(a + b, a - b)``, as Lance's ``fwht_in_place`` does, so float32 results match.
    """
    n, m = x.shape
    half = 1
    while half < m:
        v = x.reshape(n, m // (2 * half), 2, half)
        a, b = v[:, :, 0, :], v[:, :, 1, :]
        diff = a - b
        a += b
        b[...] = diff
        half *= 2
    return x


def _kacs_walk(x: np.ndarray) -> None:
    """One Kac's-walk step on every row, in place: halves (a, b) -> (a + b, a - b)."""
    half = x.shape[1] // 2
    a, b = x[:, :half], x[:, half : 2 * half]
    diff = a - b
    a += b
    b[...] = diff


@dataclass(frozen=True)
class RQRotation:
    """A RaBitQ fast rotation, as in a Lance ``rabitq_model`` JSON.

    Build one with :meth:`from_json` (from :func:`~dask_lance_index.build_rq_rotation`
    or Lance's ``build_rq_model``); rotate rows with :meth:`apply` and undo it with
    :meth:`inverse`. Frozen, hashable, and pickles small (the signs are bytes).

    Attributes
    ----------
    dimension : int
        Vector dimension (Lance's ``code_dim``), a positive multiple of 8.
    signs : bytes
        ``4 * ceil(dimension / 8)`` sign bytes, one round after another; bit ``i % 8``
        of byte ``i // 8`` of a round flips coordinate ``i``.
    num_bits : int
        Bits per dimension of the RaBitQ code, 1 to 9.
    """

    dimension: int
    signs: bytes
    num_bits: int = 1

    def __post_init__(self):
        d = self.dimension
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 8 or d % 8:
            raise InvalidArtifactError(
                f"a RaBitQ rotation needs a dimension that is a positive multiple of 8, got {d!r}. "
                "Fix: IVF_RQ needs vectors whose dimension is divisible by 8."
            )
        if self.num_bits not in RQ_NUM_BITS:
            raise InvalidArtifactError(
                f"num_bits={self.num_bits!r} is out of range for RaBitQ; Lance takes 1 to 9."
            )
        if not isinstance(self.signs, bytes) or len(self.signs) != sign_bytes(d):
            got = len(self.signs) if isinstance(self.signs, (bytes, bytearray, list, tuple)) else type(self.signs)
            raise InvalidArtifactError(
                f"a {d}-d fast rotation needs {sign_bytes(d)} sign bytes (4 rounds x ceil({d}/8)), "
                f"got {got}. Fix: make the model with build_rq_rotation({d}, ...)."
            )
        object.__setattr__(self, "dimension", int(d))
        object.__setattr__(self, "num_bits", int(self.num_bits))

    # -- JSON ----------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, model: str | dict) -> "RQRotation":
        """Parse a RaBitQ model JSON (ours or Lance's ``build_rq_model``), validating it."""
        if isinstance(model, (str, bytes)):
            try:
                model = json.loads(model)
            except ValueError as exc:
                raise InvalidArtifactError(f"rabitq_model is not valid JSON: {exc}") from None
        if not isinstance(model, dict):
            raise InvalidArtifactError("rabitq_model must be a JSON object (as build_rq_model returns)")
        kind = model.get("rotation_type")
        if kind != "fast":
            raise InvalidArtifactError(
                f"rabitq_model has rotation_type={kind!r}; only 'fast' rotations can be applied here "
                "(a 'matrix' model keeps its matrix inside the index file). "
                "Fix: make the model with build_rq_rotation(...)."
            )
        signs = model.get("fast_rotation_signs")
        if not isinstance(signs, list) or not all(isinstance(s, int) and 0 <= s <= 255 for s in signs):
            raise InvalidArtifactError("rabitq_model's fast_rotation_signs must be a list of bytes (0-255)")
        dim = model.get("code_dim")
        if not isinstance(dim, int):
            raise InvalidArtifactError(f"rabitq_model has code_dim={dim!r}; it must be the vector dimension")
        return cls(dimension=dim, signs=bytes(signs), num_bits=model.get("num_bits"))

    def to_json(self) -> str:
        """The model JSON Lance takes as ``rabitq_model`` (the fields of ``build_rq_model``)."""
        return json.dumps(
            {
                "rotate_mat_position": None,
                "fast_rotation_signs": list(self.signs),
                "rotation_type": "fast",
                "code_dim": self.dimension,
                "num_bits": self.num_bits,
                "packed": False,
                "query_estimator": "raw_query",
            },
            separators=(",", ":"),
        )

    # -- the rotation --------------------------------------------------------------------------
    @property
    def power_of_two(self) -> bool:
        return self.dimension & (self.dimension - 1) == 0

    def _flips(self) -> np.ndarray:
        """(4, dimension) float32 of +1/-1: the sign flips of each round."""
        per_round = sign_bytes(self.dimension) // ROUNDS
        bits = np.unpackbits(np.frombuffer(self.signs, np.uint8).reshape(ROUNDS, per_round), axis=1, bitorder="little")
        return np.where(bits[:, : self.dimension] == 1, np.float32(-1), np.float32(1))

    def apply(self, x) -> np.ndarray:
        """Rotate the rows of ``x`` (shape ``(n, dimension)`` or ``(dimension,)``) as Lance does.

        Returns a new float32 array of the same shape; ``x`` is not modified.
        """
        return self._run(x, inverse=False)

    def inverse(self, y) -> np.ndarray:
        """Undo :meth:`apply`: ``inverse(apply(x)) == x`` up to float32 rounding."""
        return self._run(y, inverse=True)

    def matrix(self) -> np.ndarray:
        """The rotation as a dense ``(dimension, dimension)`` float32 matrix ``R`` with
        ``apply(x) == x @ R.T`` (up to rounding). For tests and GEMM baselines."""
        return self.apply(np.eye(self.dimension, dtype=np.float32)).T.copy()

    def _run(self, x, inverse: bool) -> np.ndarray:
        arr = np.asarray(x)
        single = arr.ndim == 1
        if single:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dimension:
            raise InvalidInputError(
                f"expected vectors of shape (n, {self.dimension}), got {np.shape(x)}. "
                "Fix: pass a 2-D array with one vector per row."
            )
        out = np.array(arr, dtype=np.float32, order="C", copy=True)
        flips = self._flips()
        for start in range(0, out.shape[0], _CHUNK_ROWS):
            block = out[start : start + _CHUNK_ROWS]
            (self._inverse_block if inverse else self._forward_block)(block, flips)
        return out[0] if single else out

    def _forward_block(self, x: np.ndarray, flips: np.ndarray) -> None:
        d = self.dimension
        t = 1 << (d.bit_length() - 1)
        scale = np.float32(1.0) / np.sqrt(np.float32(t))  # f32 as Lance: 1 / sqrt(t as f32)
        if t == d:
            for r in range(ROUNDS):
                x *= flips[r]
                fwht_rows(x)
                x *= scale
            return
        for r in range(ROUNDS):
            x *= flips[r]
            part = x[:, :t] if r % 2 == 0 else x[:, d - t :]
            # FWHT on a strided column slice: work on a contiguous copy, write back
            work = np.ascontiguousarray(part)
            fwht_rows(work)
            work *= scale
            part[...] = work
            _kacs_walk(x)
        x *= np.float32(0.25)

    def _inverse_block(self, y: np.ndarray, flips: np.ndarray) -> None:
        # every step is orthogonal and symmetric (sign flips, H / sqrt(t)) or, for
        # Kac's walk K, satisfies K @ K = 2 I: run the rounds backwards with the same steps
        d = self.dimension
        t = 1 << (d.bit_length() - 1)
        scale = np.float32(1.0) / np.sqrt(np.float32(t))
        if t == d:
            for r in reversed(range(ROUNDS)):
                fwht_rows(y)
                y *= scale
                y *= flips[r]
            return
        for r in reversed(range(ROUNDS)):
            _kacs_walk(y)
            part = y[:, :t] if r % 2 == 0 else y[:, d - t :]
            work = np.ascontiguousarray(part)
            fwht_rows(work)
            work *= scale
            part[...] = work
            y *= flips[r]
        y *= np.float32(0.25)
