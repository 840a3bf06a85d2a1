"""SQ bounds: the smallest and largest value of a sample's prepared rows, and of its parts.

Apart from :mod:`.sq` (the codes), so that the pieces of a sample that are never gathered
(:mod:`.sample_rows`) and the sampling tasks each reduce their own rows to two floats, and
the bounds of the parts combine into the whole sample's, with no import of the encoders.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["combine_sq_bounds", "train_sq_bounds"]


def train_sq_bounds(x: np.ndarray) -> tuple[float, float]:
    """``(start, end)``: the smallest and largest value of prepared rows ``x``."""
    if not len(x):
        raise ValueError("no rows to take SQ bounds from")
    return float(np.min(x)), float(np.max(x))


def combine_sq_bounds(parts: Iterable) -> tuple[float, float]:
    """The bounds of the rows of several parts, from each part's ``(start, end, ...)``."""
    parts = list(parts)
    if not parts:
        raise ValueError("no rows to take SQ bounds from")
    return min(p[0] for p in parts), max(p[1] for p in parts)
