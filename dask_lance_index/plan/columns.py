"""What each kind of vector column takes: index types, metrics, engines. Pure.

Lance 14.0.2 indexes three kinds of vector column (measured, ``docs/lance.md``):

- ``vector``, ``fixed_size_list<float16|float32|float64>[d]``: every index type, l2, cosine, dot;
- ``binary``, ``fixed_size_list<uint8>[d]`` (``8 * d`` bits): IVF_FLAT and IVF_HNSW_FLAT with
  ``metric="hamming"`` only (its PQ and SQ builders refuse uint8, IVF_RQ refuses hamming, and
  any other metric fails "Unsupported training sample type UInt8");
- ``multivector``, ``list<fixed_size_list<float>[d]>`` (a bag of vectors per row): every index
  type, ``metric="cosine"`` only ("multivector type supports only cosine distance").

:func:`check_column` refuses anything else before any work, saying what Lance does
with the column and the fix; :func:`column_engine` picks the engine.
"""

from __future__ import annotations

from ..errors import InvalidInputError

__all__ = ["BINARY_INDEX_TYPES", "check_column", "column_engine"]

BINARY_INDEX_TYPES = ("IVF_FLAT", "IVF_HNSW_FLAT")
# Engines that read and assign rows themselves: they handle single float vectors only.
_OWN_ROW_ENGINES = ("precomputed", "partitions", "artifact")


def check_column(kind: str, column: str, index_type: str, metric: str, ivf_training: str) -> str:
    """Refuse an index Lance would refuse on a column of this ``kind``; returns the
    ``ivf_training`` to use (binary columns train flat k-modes, as Lance). Pure."""
    it = str(index_type).upper()
    m = str(metric).lower()
    if kind == "binary":
        if m != "hamming":
            raise InvalidInputError(
                f"column {column!r} holds uint8 (binary) vectors; Lance indexes those only with "
                f"metric='hamming' and refuses {metric!r} (\"Unsupported training sample type UInt8\"). "
                "Fix: metric='hamming', or cast the vectors to float32 for l2, cosine or dot."
            )
        if it not in BINARY_INDEX_TYPES:
            raise InvalidInputError(
                f"{it} cannot index the binary column {column!r}: Lance 14.0.2 has no PQ, SQ or RQ quantizer for "
                f"uint8 vectors (its builders refuse them) and indexes them only as {' or '.join(BINARY_INDEX_TYPES)}. "
                "Fix: index_type='IVF_FLAT' (or 'IVF_HNSW_FLAT')."
            )
        if ivf_training == "hierarchical":
            raise InvalidInputError(
                "ivf_training='hierarchical' trains float centroids; a binary column's centroids are trained as "
                "Lance trains them, by k-modes in hamming space. Fix: ivf_training='auto' or 'flat'."
            )
        return "flat"
    if m == "hamming":
        raise InvalidInputError(
            f"metric='hamming' applies to binary columns (fixed_size_list<uint8>); {column!r} holds "
            f"{'multivectors' if kind == 'multivector' else 'float vectors'}, which Lance indexes with "
            f"{'cosine' if kind == 'multivector' else 'l2, cosine or dot'}. "
            "Fix: metric='cosine', or store bit-packed binary codes as uint8 for hamming."
        )
    if kind == "multivector" and m != "cosine":
        raise InvalidInputError(
            f"column {column!r} holds multivectors (a list of vectors per row); Lance builds their index with "
            f"metric='cosine' only and refuses {metric!r} (\"multivector type supports only cosine distance\"). "
            "Fix: metric='cosine'."
        )
    if kind == "multivector" and ivf_training == "hierarchical":
        raise InvalidInputError(
            "ivf_training='hierarchical' is not offered for multivector columns (their inner vectors are "
            "trained flat, as Lance trains them). Fix: ivf_training='auto' or 'flat'."
        )
    return "flat" if kind == "multivector" else ivf_training


def column_engine(kind: str, column: str, engine: str) -> str | None:
    """The engine for a column of this ``kind`` (None: the usual choice, any engine). Pure.

    Binary and multivector columns are built by Lance from our trained model
    (``"lance"``): a multivector row's vectors fall in several partitions, which
    Lance's row -> partition map cannot say, and our segment writers write float
    vectors only.
    """
    if kind == "vector":
        return None
    if engine in _OWN_ROW_ENGINES:
        raise InvalidInputError(
            f"engine={engine!r} reads and assigns single float vectors; the {kind} column {column!r} is "
            "assigned and encoded by Lance from the model trained here. Fix: engine='auto' or 'lance'."
        )
    return "lance"
