"""Opening a Lance dataset and reading its metadata: the vector column, fragments, indexes.

Everything here reads metadata only; the planners take what it returns as
plain data and stay pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import lance
import pyarrow as pa

from ..errors import InvalidInputError

__all__ = [
    "ColumnInfo", "column_info", "field_type", "fragment_rows", "has_values", "index_names", "open_dataset",
    "open_or_fail",
]


def open_dataset(uri, version: int | None = None, storage_options: dict | None = None) -> lance.LanceDataset:
    """Open a Lance dataset (at ``version`` when given). A fresh handle per call:
    one ``LanceDataset`` shared across threads fails in Lance ("Already mutably borrowed")."""
    if not isinstance(uri, (str, os.PathLike)):
        # A LanceDataset object: reopen by its URI so tasks never share the handle.
        uri = uri.uri
    return lance.dataset(str(uri), version=version, storage_options=storage_options)


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    dimension: int
    value_type: str


def column_info(ds, column: str) -> ColumnInfo:
    """The vector column's dimension and element type, or a clear error."""
    names = ds.schema.names
    if column not in names:
        raise InvalidInputError(
            f"column {column!r} is not in the dataset; its columns are {names}. "
            "Fix: pass the name of the vector column."
        )
    t = ds.schema.field(column).type
    if isinstance(t, pa.FixedShapeTensorType) and len(t.shape) == 1:
        dim, value = t.shape[0], t.value_type
    elif pa.types.is_fixed_size_list(t):
        dim, value = t.list_size, t.value_type
    else:
        raise InvalidInputError(
            f"column {column!r} has type {t}; a vector index needs a fixed_size_list of "
            "floats. Fix: store the embeddings as pa.list_(pa.float32(), dimension)."
        )
    if not pa.types.is_floating(value):
        raise InvalidInputError(
            f"column {column!r} holds {value} values; a vector index needs float16, float32 "
            "or float64. Fix: cast the embeddings to float32."
        )
    if dim < 1:
        raise InvalidInputError(f"column {column!r} has dimension {dim}")
    return ColumnInfo(column, int(dim), str(value))


def _leaf_paths(fields, prefix: str = "") -> list[str]:
    out = []
    for f in fields:
        path = f"{prefix}{f.name}"
        out.append(path)
        if pa.types.is_struct(f.type):
            out += _leaf_paths(list(f.type), path + ".")
    return out


def field_type(ds, column: str) -> pa.DataType:
    """The Arrow type of ``column``, a top-level column or a nested field (``"a.b"``),
    or a clear error naming the columns there are."""
    names = ds.schema.names
    if column in names:
        return ds.schema.field(column).type
    parts = column.split(".")
    t = None
    if parts[0] in names:
        t = ds.schema.field(parts[0]).type
        for part in parts[1:]:
            if not pa.types.is_struct(t) or t.get_field_index(part) < 0:
                t = None
                break
            t = t.field(part).type
    if t is None:
        raise InvalidInputError(
            f"column {column!r} is not in the dataset; its columns are {_leaf_paths(ds.schema)}. "
            "Fix: pass one of them (a nested field as 'parent.child')."
        )
    return t


def has_values(ds, column: str) -> bool:
    """Whether ``column`` holds any non-null value: scans until the first one."""
    quoted = ".".join(f"`{p}`" for p in column.split("."))
    t = ds.to_table(columns=[], filter=f"{quoted} IS NOT NULL", limit=1, with_row_id=True)
    return t.num_rows > 0


def fragment_rows(ds) -> list[tuple[int, int]]:
    """(fragment id, live rows) for every fragment, from metadata only."""
    out = []
    for frag in ds.get_fragments():
        meta = frag.metadata
        out.append((int(frag.fragment_id), int(meta.num_rows)))
    return out


def index_names(ds) -> set[str]:
    return {d.name for d in ds.describe_indices()}


def open_or_fail(uri, version: int | None = None, storage_options: dict | None = None) -> lance.LanceDataset:
    """:func:`open_dataset`, or an :class:`InvalidInputError` naming the URI when there is
    no dataset to open (raised before any work)."""
    try:
        return open_dataset(uri, version, storage_options)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(
            f"cannot open a Lance dataset at {str(getattr(uri, 'uri', uri))!r}: {exc}. Fix: pass the path or "
            "URI of an existing dataset (and the storage_options that reach it)."
        ) from None
