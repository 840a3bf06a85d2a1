"""Seeded RaBitQ rotation models in the JSON form Lance's ``create_index_uncommitted`` takes.

Lance's ``build_rq_model`` mints a random "fast" rotation (4 rounds of sign
flips around a fast Walsh-Hadamard transform) and takes no seed. This makes the
same model from a seed, so the same seed and data give the same IVF_RQ index,
and every worker of a build shares one rotation (without it, merged segments
are silently corrupt: Lance issue 7012).
"""

from __future__ import annotations

import json

import numpy as np

from .errors import InvalidInputError

__all__ = ["build_rq_rotation", "sign_bytes", "RQ_NUM_BITS"]

RQ_NUM_BITS = tuple(range(1, 10))  # what pylance 14.0.2 accepts (1..=9)
_ROUNDS = 4


def sign_bytes(dimension: int) -> int:
    """Bytes of sign bits in a fast rotation: one bit per dimension, per round."""
    return _ROUNDS * -(-int(dimension) // 8)


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
