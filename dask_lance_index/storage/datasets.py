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
    "COLUMN_KINDS", "ColumnInfo", "column_info", "field_of", "field_paths", "field_type", "fragment_rows",
    "has_values", "index_names", "join_field_path", "open_dataset", "open_or_fail", "resolve_field",
    "split_field_path",
]


def open_dataset(uri, version: int | None = None, storage_options: dict | None = None) -> lance.LanceDataset:
    """Open a Lance dataset (at ``version`` when given). A fresh handle per call:
    one ``LanceDataset`` shared across threads fails in Lance ("Already mutably borrowed")."""
    if not isinstance(uri, (str, os.PathLike)):
        # A LanceDataset object: reopen by its URI so tasks never share the handle.
        uri = uri.uri
    return lance.dataset(str(uri), version=version, storage_options=storage_options)


# The kinds of vector column Lance 14.0.2 indexes (measured, docs/lance.md):
# "vector": fixed_size_list<float16/32/64>[d] (or a 1-d fixed-shape tensor), every type and metric;
# "binary": fixed_size_list<uint8>[d], metric "hamming", IVF_FLAT and IVF_HNSW_FLAT;
# "multivector": list<fixed_size_list<float>[d]>, every type, metric "cosine" only.
COLUMN_KINDS = ("vector", "binary", "multivector")


@dataclass(frozen=True)
class ColumnInfo:
    """A vector column as Lance sees it.

    ``name`` is the field path in Lance's spelling (``emb.v``, a segment holding a
    dot or a backtick quoted: ``s.`v.w```), the name Lance records in the index;
    ``parts`` the field names along it.
    """

    name: str
    dimension: int
    value_type: str
    kind: str = "vector"
    parts: tuple[str, ...] = ()


def split_field_path(column: str) -> tuple[str, ...]:
    """The field names along a Lance field path. Pure.

    As Lance 14.0.2 parses them (measured): dots separate the fields of nested
    structs; a segment in backticks is taken literally, dots included
    (``s.`v.w```), a doubled backtick inside standing for one. Raises
    ``ValueError`` on an unbalanced backtick or an empty segment.
    """
    parts, cur, i, quoted = [], [], 0, False
    while i < len(column):
        ch = column[i]
        if quoted:
            if ch == "`" and column[i + 1 : i + 2] == "`":
                cur.append("`")
                i += 1
            elif ch == "`":
                quoted = False
            else:
                cur.append(ch)
        elif ch == "`":
            quoted = True
        elif ch == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    if quoted or any(p == "" for p in parts):
        raise ValueError(f"{column!r} is not a field path")
    return tuple(parts)


def join_field_path(parts) -> str:
    """Lance's spelling of a field path: segments joined by dots, a segment that holds a
    dot or a backtick in backticks (as Lance records it in an index's field names). Pure."""
    return ".".join(
        "`" + p.replace("`", "``") + "`" if ("." in p or "`" in p) else p for p in parts
    )


def resolve_field(schema: pa.Schema, column: str) -> tuple[tuple[str, ...], pa.Field] | None:
    """``(parts, field)`` of a top-level column or a field path; None when there is none. Pure."""
    if column in schema.names:  # a real top-level name wins, whatever it holds
        return (column,), schema.field(column)
    try:
        parts = split_field_path(column)
    except ValueError:
        return None
    if parts[0] not in schema.names:
        return None
    field = schema.field(parts[0])
    for p in parts[1:]:
        if not pa.types.is_struct(field.type) or field.type.get_field_index(p) < 0:
            return None
        field = field.type.field(p)
    return parts, field


def field_paths(schema: pa.Schema) -> list[str]:
    """Every field path of the schema (struct children spelled out)."""
    out = []

    def walk(prefix, field):
        out.append(join_field_path(prefix + (field.name,)))
        if pa.types.is_struct(field.type):
            for child in field.type:
                walk(prefix + (field.name,), child)

    for f in schema:
        walk((), f)
    return out


def column_info(ds, column: str) -> ColumnInfo:
    """The vector column (a top-level name or a field path such as ``emb.v``): its
    kind, dimension and element type, or a clear error saying what Lance does with it."""
    if not isinstance(column, str) or not column:
        raise InvalidInputError(f"column must be a non-empty string, got {column!r}. Fix: pass the vector column.")
    found = resolve_field(ds.schema, column)
    if found is None:
        raise InvalidInputError(
            f"column {column!r} is not in the dataset; its columns and fields are {field_paths(ds.schema)}. "
            "Fix: pass the name of the vector column, or its field path (emb.v for field v of struct emb; "
            "a name holding a dot in backticks: s.`v.w`)."
        )
    parts, field = found
    name = parts[0] if len(parts) == 1 else join_field_path(parts)
    t, kind = field.type, "vector"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_fixed_size_list(t.value_type):
        t, kind = t.value_type, "multivector"
    if isinstance(t, pa.FixedShapeTensorType) and len(t.shape) == 1 and kind == "vector":
        dim, value = t.shape[0], t.value_type
    elif pa.types.is_fixed_size_list(t):
        dim, value = t.list_size, t.value_type
    else:
        raise InvalidInputError(
            f"column {column!r} has type {t}; Lance indexes fixed_size_list<float>[d] vectors, "
            "fixed_size_list<uint8>[d] binary vectors (hamming) and list<fixed_size_list<float>[d]> multivectors, "
            "and refuses this type. Fix: store the embeddings as pa.list_(pa.float32(), dimension)."
        )
    if pa.types.is_uint8(value) and kind == "vector":
        kind = "binary"
    elif not pa.types.is_floating(value):
        raise InvalidInputError(
            f"column {column!r} holds {value} values; Lance indexes float16, float32 and float64 vectors, "
            "and uint8 ones (bit-packed binary vectors, metric='hamming'), not single vectors of "
            f"{value}. Fix: cast the embeddings to float32, or pack binary codes into uint8 for hamming."
        )
    if dim < 1:
        raise InvalidInputError(f"column {column!r} has dimension {dim}")
    return ColumnInfo(name, int(dim), str(value), kind, tuple(parts))


def field_of(table, column: str):
    """The vector column of a table read with ``columns=[column]``: Lance's scanner
    names it by the path, its ``take`` nests it in its structs."""
    if column in table.column_names:
        return table.column(column)
    parts = split_field_path(column)
    arr = table.column(parts[0])

    def child(a, p):  # flatten(): a null struct row makes its fields null, as Lance reads them
        return a.flatten()[a.type.get_field_index(p)]

    for p in parts[1:]:
        arr = pa.chunked_array([child(c, p) for c in arr.chunks], type=arr.type.field(p).type) \
            if isinstance(arr, pa.ChunkedArray) else child(arr, p)
    return arr


def field_type(ds, column: str) -> pa.DataType:
    """The Arrow type of ``column``, a top-level column or a field path (``"a.b"``),
    or a clear error naming the columns and fields there are."""
    found = resolve_field(ds.schema, column)
    if found is None:
        raise InvalidInputError(
            f"column {column!r} is not in the dataset; its columns are {field_paths(ds.schema)}. "
            "Fix: pass one of them (a nested field as 'parent.child')."
        )
    return found[1].type


def has_values(ds, column: str) -> bool:
    """Whether ``column`` holds any non-null value: scans until the first one."""
    parts = resolve_field(ds.schema, column)[0]
    quoted = ".".join("`" + p.replace("`", "``") + "`" for p in parts)
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
