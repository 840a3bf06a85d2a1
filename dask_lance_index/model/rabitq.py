"""RaBitQ in NumPy: the rotation model (seeded, in Lance's JSON form) and the rotation itself.

**The model.** Lance's ``build_rq_model`` mints a random "fast" rotation (4
rounds of sign flips around a fast Walsh-Hadamard transform) and takes no seed.
:func:`build_rq_rotation` makes the same JSON from a seed, so the same seed and
data give the same IVF_RQ index, and every worker of a build shares one
rotation (segments with different rotations merge into a silently corrupt
index, ``docs/lance.md``).

**The rotation.** Lance rotates each vector with 4 rounds of: flip the signs
given by one round's sign bits, then a normalised fast Walsh-Hadamard transform
(FWHT). For a power-of-two dimension ``d`` the FWHT covers the whole vector.
Otherwise, with ``t = 2**floor(log2 d)``, even rounds transform the head
``[:t]`` and odd rounds the tail ``[d - t:]``, and each round ends with one
Kac's-walk step (``(a, b) -> (a + b, a - b)`` on the two halves); a final
factor 1/4 undoes the four unnormalised Kac steps (RaBitQ-Library's
``FhtKacRotator``).

:class:`RQRotation` runs the same float32 operations in the same order,
vectorised over rows: rows are taken in blocks of about 2 MB and transposed to
coordinate-major form, so each FWHT stage is two long streaming ufunc calls
(``a + b`` and ``a - b`` over a ``(blocks, 2, half, rows)`` view) whichever the
stage's stride. A batch costs ``O(n d log d)`` with no per-row Python loop, and
the rotated values equal Lance's bit for bit (only additions, subtractions,
sign flips and the same per-round float32 scaling, in Lance's order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError, InvalidModelError

__all__ = ["RQ_NUM_BITS", "RQRotation", "build_rq_rotation", "fwht_rows", "sign_bytes"]

ROUNDS = 4
RQ_NUM_BITS = tuple(range(1, 10))  # what pylance 14.0.2 accepts (1..=9)


def sign_bytes(dimension: int) -> int:
    """Bytes of sign bits in a fast rotation: one bit per dimension, per round."""
    return ROUNDS * -(-int(dimension) // 8)


def build_rq_rotation(dimension: int, num_bits: int = 5, seed=None) -> str:
    """A RaBitQ model JSON for ``dimension``-d vectors, drawn from ``seed``.

    Parameters
    ----------
    dimension : int
        Vector dimension; a positive multiple of 8, as IVF_RQ requires.
    num_bits : int
        Bits per dimension of the RaBitQ code, 1 to 9.
    seed : int or numpy.random.SeedSequence, optional
        Same seed, same JSON. ``None`` draws fresh entropy.

    Returns
    -------
    str
        ``{"rotate_mat_position": null, "fast_rotation_signs": [...], "rotation_type": "fast",
        "code_dim": dimension, "num_bits": num_bits, "packed": false,
        "query_estimator": "raw_query"}``: the fields of Lance's ``build_rq_model``,
        with ``4 * ceil(dimension / 8)`` sign bytes.
    """
    if not isinstance(dimension, (int, np.integer)) or dimension < 8 or dimension % 8:
        raise InvalidInputError(
            f"a RaBitQ rotation needs a dimension that is a positive multiple of 8, got {dimension!r}"
        )
    if num_bits not in RQ_NUM_BITS:
        raise InvalidInputError(f"num_bits={num_bits!r} is out of range for RaBitQ; Lance takes 1 to 9")
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 256, size=sign_bytes(dimension), dtype=np.uint8)
    return json.dumps(
        {
            "rotate_mat_position": None,
            "fast_rotation_signs": signs.tolist(),
            "rotation_type": "fast",
            "code_dim": int(dimension),
            "num_bits": int(num_bits),
            "packed": False,
            "query_estimator": "raw_query",
        },
        separators=(",", ":"),
    )


_BLOCK_ELEMENTS = 1 << 19  # floats per block (2 MB); measured best of 2^17..2^21 for 128 and 768 dims


def fwht_rows(x: np.ndarray) -> np.ndarray:
    """Unnormalised FWHT of every row of ``x`` (in place; last axis a power of two).

    Stages run with half-width 1, 2, 4, ... and each butterfly writes
    ``(a + b, a - b)``, as Lance's ``fwht_in_place`` does, so float32 results match.
    """
    m = x.shape[1]
    w = np.ascontiguousarray(x.T)
    w = _fwht_coords(w, np.empty_like(w), 0, m, None)
    x[...] = w.T
    return x


def _fwht_coords(w: np.ndarray, s: np.ndarray, lo: int, t: int, scale) -> np.ndarray:
    """FWHT over coordinates ``lo:lo + t`` of a coordinate-major block ``w`` (d, rows).

    The rows of the batch are the contiguous inner axis, so every butterfly stage is two
    long streaming ufunc calls, ping-ponging between ``w`` and the scratch ``s``. The
    result (times ``scale``, if given, in float32 as Lance's ``rescale``) ends in ``w``.
    """
    c = w.shape[1]
    src, dst = w, s
    half = 1
    while half < t:
        a = src[lo : lo + t].reshape(t // (2 * half), 2, half, c)
        o = dst[lo : lo + t].reshape(t // (2 * half), 2, half, c)
        np.add(a[:, 0], a[:, 1], out=o[:, 0])
        np.subtract(a[:, 0], a[:, 1], out=o[:, 1])
        src, dst = dst, src
        half *= 2
    if scale is not None:  # a float32 scalar, or one factor per coordinate, shape (d, 1)
        np.multiply(src[lo : lo + t], scale[lo : lo + t] if np.ndim(scale) else scale, out=w[lo : lo + t])
    elif src is not w:
        w[lo : lo + t] = src[lo : lo + t]
    return w


def _kacs_walk(w: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Kac's-walk step of a coordinate-major block: halves (a, b) -> (a + b, a - b).
    Writes into ``s``; returns the buffers swapped (result first)."""
    half = w.shape[0] // 2
    np.add(w[:half], w[half:], out=s[:half])
    np.subtract(w[:half], w[half:], out=s[half:])
    return s, w


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
            raise InvalidModelError(
                f"a RaBitQ rotation needs a dimension that is a positive multiple of 8, got {d!r}. "
                "Fix: IVF_RQ needs vectors whose dimension is divisible by 8."
            )
        if self.num_bits not in RQ_NUM_BITS:
            raise InvalidModelError(
                f"num_bits={self.num_bits!r} is out of range for RaBitQ; Lance takes 1 to 9."
            )
        if isinstance(self.signs, (bytearray, memoryview, np.ndarray)) and np.asarray(self.signs).dtype == np.uint8:
            object.__setattr__(self, "signs", bytes(self.signs))
        if not isinstance(self.signs, bytes):
            raise InvalidModelError(
                f"signs must be bytes, got {type(self.signs).__name__}. "
                "Fix: build the rotation with RQRotation.from_json(model)."
            )
        if len(self.signs) != sign_bytes(d):
            raise InvalidModelError(
                f"a {d}-d fast rotation needs {sign_bytes(d)} sign bytes (4 rounds x ceil({d}/8)), "
                f"got {len(self.signs)}. Fix: make the model with build_rq_rotation({d}, ...)."
            )
        object.__setattr__(self, "dimension", int(d))
        object.__setattr__(self, "num_bits", int(self.num_bits))

    # -- JSON ----------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, model: str | dict, dimension: int | None = None) -> RQRotation:
        """Parse a RaBitQ model JSON (ours or Lance's ``build_rq_model``), validating it;
        with ``dimension``, also that it rotates vectors of that dimension."""
        if isinstance(model, (str, bytes)):
            try:
                model = json.loads(model)
            except ValueError as exc:
                raise InvalidModelError(f"rabitq_model is not valid JSON: {exc}") from None
        if not isinstance(model, dict):
            raise InvalidModelError("rabitq_model must be a JSON object (as build_rq_model returns)")
        kind = model.get("rotation_type")
        if kind != "fast":
            raise InvalidModelError(
                f"rabitq_model has rotation_type={kind!r}; only 'fast' rotations can be applied here "
                "(a 'matrix' model keeps its matrix inside the index file). "
                "Fix: make the model with build_rq_rotation(...)."
            )
        signs = model.get("fast_rotation_signs")
        if not isinstance(signs, list) or not all(isinstance(s, int) and 0 <= s <= 255 for s in signs):
            raise InvalidModelError("rabitq_model's fast_rotation_signs must be a list of bytes (0-255)")
        dim = model.get("code_dim")
        if not isinstance(dim, int):
            raise InvalidModelError(f"rabitq_model has code_dim={dim!r}; it must be the vector dimension")
        if dimension is not None and dim != dimension:
            raise InvalidModelError(
                f"rabitq_model rotates {dim}-dimensional vectors (code_dim); the vectors have "
                f"dimension {dimension}. Fix: make a model with build_rq_rotation({dimension}, ...)."
            )
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
        d = self.dimension
        out = np.empty(arr.shape, dtype=np.float32)
        flips = self._flips()[:, :, None]
        rows = max(16, _BLOCK_ELEMENTS // d)
        w = np.empty((d, rows), dtype=np.float32)
        s = np.empty_like(w)
        for start in range(0, len(arr), rows):
            block = arr[start : start + rows]
            c = len(block)
            # work coordinate-major: the batch is the contiguous axis of every operation
            wc, sc = w[:, :c], s[:, :c]
            if c < rows:
                wc, sc = np.empty((d, c), np.float32), np.empty((d, c), np.float32)
            result, scale_out = self._rotate_coords(block, wc, sc, flips, inverse)
            if scale_out is None:
                out[start : start + c] = result.T
            else:
                np.multiply(result.T, scale_out, out=out[start : start + c])
        return out[0] if single else out

    def _rotate_coords(self, block, w: np.ndarray, s: np.ndarray, flips: np.ndarray, inverse: bool):
        """Rotate ``block`` (rows, d) into the coordinate-major buffers ``w``/``s``; returns
        (result buffer, final factor or None).

        Forward, per round: flip signs, FWHT (whole vector, or head/tail on alternate
        rounds) scaled by 1/sqrt(t), then Kac's walk if d is not a power of two; a final
        factor 1/4 undoes the four Kac steps. Each step is orthogonal and symmetric (sign
        flips, H/sqrt(t)) or, for Kac's walk K, K @ K = 2 I, so the inverse runs the rounds
        backwards with the same steps and the same final 1/4.

        A sign flip that directly follows a scaling is folded into it (``x * (s * -1)`` is
        ``-(x * s)`` exactly in IEEE arithmetic), saving a pass over the block.
        """
        d = self.dimension
        t = 1 << (d.bit_length() - 1)
        scale = np.float32(1.0) / np.sqrt(np.float32(t))  # f32 as Lance: 1 / sqrt(t as f32)
        if t == d:  # power of two: flip, FWHT, scale per round; fold flips into the scalings
            if inverse:
                w[...] = block.T
                for r in reversed(range(ROUNDS)):
                    _fwht_coords(w, s, 0, t, scale * flips[r])
            else:
                np.multiply(block.T, flips[0], out=w)
                for r in range(ROUNDS):
                    _fwht_coords(w, s, 0, t, scale * flips[r + 1] if r + 1 < ROUNDS else scale)
            return w, None
        w[...] = block.T
        for r in reversed(range(ROUNDS)) if inverse else range(ROUNDS):
            lo = 0 if r % 2 == 0 else d - t
            if inverse:
                w, s = _kacs_walk(w, s)
                _fwht_coords(w, s, lo, t, scale)
                w *= flips[r]
            else:
                w *= flips[r]
                _fwht_coords(w, s, lo, t, scale)
                w, s = _kacs_walk(w, s)
        return w, np.float32(0.25)
