"""Embedding columns in pandas: Arrow fixed-size lists of float32, and the checks on them.

A vector column of a DataFrame here is a ``pd.ArrowDtype(pa.list_(pa.float32(), d))``
column: the same memory as Lance's ``fixed_size_list<float32>[d]``, so reading
and writing are zero-copy and exact, and Dask keeps its type through
``from_pandas``, ``from_map`` and ``map_partitions``. (An ``object`` column of
NumPy arrays is accepted on write, but Dask's default ``dataframe.convert-string``
turns object columns into strings, so it is not what we hand out.)

:func:`vector_series` makes such a column from an ``(n, d)`` array and
:func:`vectors_to_numpy` turns one back into ``(n, d)`` float32.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInputError

__all__ = ["vector_series", "vectors_to_numpy", "vector_array", "is_vector_type", "check_vector_type"]


def _fix_dtype(column: str, dimension: int | str = "dimension") -> str:
    return (
        "Fix: cast it to float32 vectors first, e.g. "
        f"ddf = ddf.astype({{{column!r}: pd.ArrowDtype(pa.list_(pa.float32(), {dimension}))}})."
    )


def vector_series(x: np.ndarray, index=None, name: str | None = None) -> pd.Series:
    """An ``(n, d)`` float32 array as a pandas Series of Arrow ``fixed_size_list<float32>[d]``.

    Parameters
    ----------
    x : ndarray, shape (n, d), float32
        The vectors; NaN rows stay NaN (Lance will not index them).
    index : pandas Index, optional
        Index of the Series (default ``RangeIndex(n)``).
    name : str, optional
        Name of the Series.

    Returns
    -------
    pandas.Series
        Dtype ``fixed_size_list<item: float>[d][pyarrow]``, sharing ``x``'s memory.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise InvalidInputError(f"vectors must be a 2-D array (rows, dimension); got shape {x.shape}.")
    if x.dtype != np.float32:
        raise InvalidInputError(f"vectors have dtype {x.dtype}; they must be float32. Fix: x.astype(numpy.float32).")
    x = np.ascontiguousarray(x)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    return pd.Series(pd.arrays.ArrowExtensionArray(arr), index=index, name=name)


def is_vector_type(t: pa.DataType) -> bool:
    """Whether an Arrow type is a list or fixed-size list of floats (an embedding column)."""
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.types.is_floating(t.value_type)
    return False


def _check_value_type(value_type: pa.DataType, column: str) -> None:
    if pa.types.is_float32(value_type):
        return
    if pa.types.is_floating(value_type):
        raise InvalidInputError(
            f"column {column!r} holds {np.dtype(value_type.to_pandas_dtype()).name} vectors; Lance's "
            "vector indexes here take float32. "
            + _fix_dtype(column)
        )
    raise InvalidInputError(
        f"column {column!r} holds {value_type} values, not floats: it cannot be an embedding column. "
        "Fix: pass vector_columns=[...] naming only the embedding columns, or cast the values to float32."
    )


def check_vector_type(t: pa.DataType, column: str) -> None:
    """Raise a clear error unless ``t`` is a (fixed-size) list of float32."""
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise InvalidInputError(
            f"column {column!r} has Arrow type {t}; an embedding column must be a list of float32."
        )
    _check_value_type(t.value_type, column)


def _from_arrow(arr: pa.Array, column: str) -> pa.FixedSizeListArray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=arr.type)
    t = arr.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise InvalidInputError(
            f"column {column!r} has Arrow type {t}; an embedding column must be a list of float32. "
            "Fix: pass vector_columns=[...] naming only the embedding columns."
        )
    _check_value_type(t.value_type, column)
    if pa.types.is_fixed_size_list(t):
        return arr
    lengths = pc.list_value_length(arr).drop_null()
    if len(lengths) == 0:
        raise InvalidInputError(f"column {column!r} has no non-null vector to take a dimension from.")
    lo, hi = pc.min_max(lengths).values()
    if lo.as_py() != hi.as_py():
        raise InvalidInputError(
            f"column {column!r} is ragged: its vectors have lengths from {lo.as_py()} to {hi.as_py()}. "
            "Every embedding must have the same dimension. Fix: drop or re-embed the odd rows."
        )
    return arr.cast(pa.list_(pa.float32(), lo.as_py()))


def _from_objects(values: np.ndarray, column: str) -> pa.FixedSizeListArray:
    """An object array of per-row arrays (or lists, or None) as a fixed-size list array."""
    null = pd.isna(values) if values.dtype == object else np.zeros(len(values), bool)
    rows = values[~null]
    if len(rows) == 0:
        raise InvalidInputError(f"column {column!r} has no non-null vector to take a dimension from.")
    if isinstance(rows[0], str):
        raise InvalidInputError(
            f"column {column!r} holds strings, not vectors. If it held NumPy arrays, Dask's "
            "'dataframe.convert-string' option turned them into strings. Fix: build the column with "
            "dask_lance_index.vector_series(x) (an Arrow fixed-size list, which Dask keeps), or set "
            "dask.config.set({'dataframe.convert-string': False})."
        )
    try:
        x = np.stack(rows)  # C loop over the rows; mixed dtypes upcast, which the check below catches
    except (ValueError, TypeError):
        lengths = {len(r) if hasattr(r, "__len__") else -1 for r in rows}
        if -1 in lengths:
            raise InvalidInputError(
                f"column {column!r} holds scalars or non-sequence objects, not vectors. Fix: pass "
                "vector_columns=[...] naming only the embedding columns."
            ) from None
        raise InvalidInputError(
            f"column {column!r} is ragged: its vectors have lengths {sorted(lengths)[:5]}. Every "
            "embedding must have the same dimension. Fix: drop or re-embed the odd rows."
        ) from None
    if x.ndim != 2:
        raise InvalidInputError(f"column {column!r} holds arrays of shape {x.shape[1:]}; vectors must be 1-D.")
    if x.dtype != np.float32:
        if x.dtype.kind == "f":
            raise InvalidInputError(
                f"column {column!r} holds {x.dtype} vectors; Lance's vector indexes here take float32. "
                + _fix_dtype(column, x.shape[1])
            )
        raise InvalidInputError(
            f"column {column!r} holds {x.dtype} values, not floats: it cannot be an embedding column. "
            "Fix: convert the vectors to float32."
        )
    d = x.shape[1]
    if not null.any():
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
    full = np.zeros((len(values), d), dtype=np.float32)
    full[~null] = x
    return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), d, mask=pa.array(null))


def vector_array(series: pd.Series, column: str | None = None) -> pa.FixedSizeListArray:
    """A pandas embedding column as Arrow ``fixed_size_list<float32>[d]``, or a clear error.

    Accepts Arrow list / fixed-size-list columns of float32 and ``object``
    columns of float32 NumPy arrays (``None`` for a null vector). Refuses
    ragged rows, float64 and non-numeric values, naming the fix.
    """
    column = column if column is not None else str(series.name)
    if isinstance(series.dtype, pd.ArrowDtype):
        return _from_arrow(pa.array(series.array), column)
    if series.dtype == object:
        return _from_objects(series.to_numpy(), column)
    raise InvalidInputError(
        f"column {column!r} has dtype {series.dtype}; an embedding column holds one vector per row. "
        "Fix: pass vector_columns=[...] naming only the embedding columns, or build the column with "
        "dask_lance_index.vector_series(x)."
    )


def vectors_to_numpy(series: pd.Series) -> np.ndarray:
    """An embedding column as an ``(n, d)`` float32 array (null vectors become NaN rows).

    Parameters
    ----------
    series : pandas.Series
        An Arrow fixed-size-list column (as :func:`read_lance` returns) or an
        ``object`` column of float32 arrays.

    Returns
    -------
    ndarray, shape (n, d), float32
    """
    arr = vector_array(series)
    d = arr.type.list_size
    if arr.null_count:
        arr = arr.fill_null(pa.scalar([np.nan] * d, type=arr.type))
    # .flatten() honours the array's offset. A partition shipped between dask workers may sit at
    # an odd address; Lance's Rust side refuses unaligned buffers, so make sure of alignment.
    x = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(arr), d)
    return np.require(x, np.float32, ["C", "A"])
