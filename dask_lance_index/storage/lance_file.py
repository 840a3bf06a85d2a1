"""Lance data files of fixed-width columns, written with plain ``write`` calls.

Lance's ``LanceFileWriter`` copies every value through its encoders before it writes: 512 MB
of 128-d float32 rows took it 1.8-2.9 s, the same file through :class:`PlainFileWriter`
1.4-1.6 s, and the bytes in plain 2 MB writes 1.2-1.4 s (``benchmarks/bench_page_cache.py``,
rounds of each; what fresh memory costs sets the floor). A row-major segment's ``auxiliary.idx``
(IVF_FLAT: every row as it is; IVF_SQ: one byte a dimension) is that many bytes of plain
values, so :class:`PlainFileWriter` writes it as Lance's file format 2.0 lays such columns out,
and writes the values themselves with ``writev`` straight from the caller's arrays: no copy
of our own, and none of Lance's. The segment writers write every ``auxiliary.idx`` they can
with it (IVF_PQ's and IVF_RQ's too).

What it writes is what ``LanceFileWriter(version="2.0")`` writes for the same columns
(``tests/test_lance_file.py`` reads both back and compares their metadata field by field):

- each column's values as one run of plain pages (at most :data:`PAGE_BYTES` each, rows
  whole), the run starting on a 64-byte boundary; then each global buffer, each padded to 64
  bytes; then the file descriptor (global buffer 0: the schema, with its metadata, and the
  row count);
- each column's metadata (its pages: where, how many rows, how encoded), the table of where
  each column's metadata is, the table of where each global buffer is, and the 40-byte
  footer (those positions, the counts, the format version 0.3 and ``LANC``).

Only columns with no nulls of ``uint64`` or ``float32``, or fixed-size lists of ``float32`` or
``uint8`` (:func:`plain_columns`); local files only
(:func:`~dask_lance_index.storage.files.is_local`).
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

from . import protobuf as pb

__all__ = ["PAGE_BYTES", "PlainColumn", "PlainFileWriter", "plain_columns"]

# A page's bytes at most: Lance's own writer makes pages of 16,518,144 bytes of 128-d float32
# rows (32,262 rows), so a reader reads ours in pieces of the same size.
PAGE_BYTES = 16 << 20
_ALIGN = 64  # where Lance starts each page and global buffer
_VERSION = (0, 3)  # file format 2.0
_MAGIC = b"LANC"
_MAX_IOV = 1024  # Linux's IOV_MAX: iovecs in one writev
_CALL_BYTES = 2 << 20  # bytes asked of one writev at most: rows handed back (written) as often
# Lance's names for the Any messages in its file metadata
_COLUMN_ENCODING = "/lance.encodings.ColumnEncoding"
_ARRAY_ENCODING = "/lance.encodings.ArrayEncoding"
_LEAF_TYPE = {np.dtype(np.uint64): "uint64", np.dtype(np.float32): "float", np.dtype(np.uint8): "uint8"}


@dataclass(frozen=True)
class PlainColumn:
    """A column :class:`PlainFileWriter` writes: ``width`` values of ``dtype`` a row (a
    fixed-size list of them if ``is_list``)."""

    name: str
    dtype: str
    width: int = 1
    is_list: bool = False
    nullable: bool = True

    @property
    def row_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * self.width

    def logical_type(self) -> str:
        leaf = _LEAF_TYPE[np.dtype(self.dtype)]
        return f"fixed_size_list:{leaf}:{self.width}" if self.is_list else leaf

    def page_encoding(self) -> bytes:
        """The page's ``ArrayEncoding``: plain values, no nulls (in a fixed-size list)."""
        bits = np.dtype(self.dtype).itemsize * 8
        flat = pb.field(1, pb.uint_field(1, bits) + pb.field(2, b""))  # Flat{bits_per_value, Buffer{page, 0}}
        values = _no_nulls(flat)
        if self.is_list:  # FixedSizeList{dimension, items}: has_validity false
            values = _no_nulls(pb.field(3, pb.uint_field(1, self.width) + pb.field(2, values)))
        return values


def _no_nulls(encoding: bytes) -> bytes:
    """``ArrayEncoding{Nullable{NoNull{values: encoding}}}``."""
    return pb.field(2, pb.field(1, pb.field(1, encoding)))


def _direct(type_url: str, value: bytes) -> bytes:
    """Lance's ``Encoding{direct: {Any{type_url, value}}}``."""
    return pb.field(2, pb.field(1, pb.field(1, type_url.encode()) + pb.field(2, value)))


def plain_columns(schema: pa.Schema) -> list[PlainColumn] | None:
    """The columns of ``schema`` as :class:`PlainColumn`, or None if one is of a type
    :class:`PlainFileWriter` does not write (Lance's writer then writes the file)."""
    out = []
    for f in schema:
        t = f.type
        if f.metadata:  # field metadata goes into the descriptor, which does not write it
            return None
        if pa.types.is_fixed_size_list(t) and t.value_type in (pa.float32(), pa.uint8()):
            out.append(PlainColumn(f.name, t.value_type.to_pandas_dtype().__name__, t.list_size, True, f.nullable))
        elif t in (pa.uint64(), pa.float32()):
            out.append(PlainColumn(f.name, t.to_pandas_dtype().__name__, 1, False, f.nullable))
        else:
            return None
    return out


def _pad(position: int) -> int:
    return -position % _ALIGN


class PlainFileWriter:
    """A Lance file (format 2.0) of :class:`PlainColumn` columns at the local ``path``,
    written a whole column at a time (:meth:`write_column`, in any order), as
    ``LanceFileWriter`` would write the same values (module docstring).

    Used as a context manager, a file not closed (:meth:`close`) when the block ends, as when
    a write fails, is removed.

    Parameters
    ----------
    path
        A local file path; a file there is replaced.
    columns
        The file's columns, in schema order.
    num_rows
        Rows of every column.
    """

    def __init__(self, path: str, columns: list[PlainColumn], num_rows: int):
        self.columns = list(columns)
        self.num_rows = int(num_rows)
        self._pages: dict[int, list[tuple[int, int, int]]] = {}  # column -> (position, bytes, rows) a page
        self._buffers: list[tuple[int, int]] = []  # global buffers after the descriptor: (position, bytes)
        self._metadata: dict[str, str] = {}
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._position = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self._fd is not None:  # not closed: the file is not whole, and is removed
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):
                os.remove(self.path)

    def _write(self, views: list) -> None:
        """Every byte of ``views`` at the end of the file (``writev``; a short write goes on
        from where it stopped)."""
        left = sum(memoryview(v).nbytes for v in views)
        while left:
            done = os.writev(self._fd, views)
            self._position += done
            left -= done
            if left:  # skip the views written whole, and the written part of the next
                i = 0
                while done >= (size := memoryview(views[i]).nbytes):
                    done, i = done - size, i + 1
                views = [memoryview(views[i]).cast("B")[done:], *views[i + 1 :]]

    def _align(self) -> None:
        if pad := _pad(self._position):
            self._write([bytes(pad)])

    def write_column(self, index: int, pieces: Iterable[np.ndarray],
                     written: Callable[[int], object] | None = None) -> None:
        """Column ``index``'s rows, all of them: ``pieces`` (arrays of whole rows of the
        column's type, C-contiguous) one after another. ``written(k)`` is told, after each
        system call, that the first ``k`` pieces are written (their memory free to reuse)."""
        column = self.columns[index]
        if index in self._pages:
            raise ValueError(f"column {column.name!r} is written already")
        dtype = np.dtype(column.dtype)
        self._align()
        start, rows = self._position, 0
        views, held, count = [], 0, 0
        for piece in pieces:
            piece = np.asarray(piece)
            if piece.dtype != dtype or piece.size % column.width or not piece.flags.c_contiguous:
                raise ValueError(f"column {column.name!r} takes C-contiguous {dtype} rows of {column.width} values, "
                                 f"not {piece.dtype} of shape {piece.shape}")
            rows += piece.size // column.width
            count += 1
            if piece.nbytes:
                views.append(piece)
                held += piece.nbytes
            if len(views) == _MAX_IOV or held >= _CALL_BYTES:
                self._write(views)
                views, held = [], 0
                if written is not None:
                    written(count)
        if views:
            self._write(views)
            if written is not None:
                written(count)
        if rows != self.num_rows:
            raise ValueError(f"column {column.name!r} got {rows} rows, the file has {self.num_rows}")
        # pages of whole rows, a multiple of 64 of them: each page starts 64-byte aligned
        page_rows = max(_ALIGN, PAGE_BYTES // column.row_bytes // _ALIGN * _ALIGN)
        self._pages[index] = [(start + lo * column.row_bytes, min(page_rows, rows - lo) * column.row_bytes,
                               min(page_rows, rows - lo)) for lo in range(0, rows, page_rows)]

    def add_global_buffer(self, data: bytes) -> int:
        """Write ``data`` as a global buffer; returns its index (the first is 1: 0 is the
        file descriptor)."""
        self._align()
        self._buffers.append((self._position, len(data)))
        self._write([bytes(data)])
        return len(self._buffers)

    def add_schema_metadata(self, key: str, value: str) -> None:
        self._metadata[key] = value

    def _descriptor(self) -> bytes:
        """``FileDescriptor{schema: Schema{fields, metadata}, length}``, Lance's field ids
        in column order, each a top-level leaf (parent -1) written plain."""
        fields = b""
        for i, c in enumerate(self.columns):
            f = pb.field(2, c.name.encode())
            if i:
                f += pb.uint_field(3, i)
            f += pb.uint_field(4, -1) + pb.field(5, c.logical_type().encode())
            if c.nullable:
                f += pb.uint_field(6, 1)
            fields += pb.field(1, f + pb.uint_field(7, 1))
        for key, value in self._metadata.items():
            fields += pb.field(5, pb.field(1, key.encode()) + pb.field(2, value.encode()))
        return pb.field(1, fields) + (pb.uint_field(2, self.num_rows) if self.num_rows else b"")

    def _column_metadata(self, index: int) -> bytes:
        encoding = _direct(_ARRAY_ENCODING, self.columns[index].page_encoding())
        pages = b"".join(pb.field(2, pb.field(1, pb.packed([pos])) + pb.field(2, pb.packed([size]))
                                  + pb.uint_field(3, rows) + pb.field(4, encoding))
                         for pos, size, rows in self._pages[index])
        return pb.field(1, _direct(_COLUMN_ENCODING, pb.field(1, b""))) + pages

    def close(self) -> None:
        """Write the descriptor, the metadata and the footer, and close the file."""
        missing = [c.name for i, c in enumerate(self.columns) if i not in self._pages]
        if missing:
            raise ValueError(f"columns {missing} were not written: write every column before closing")
        self._align()
        buffers = [(self._position, len(descriptor := self._descriptor())), *self._buffers]
        self._write([descriptor])
        metas = [self._column_metadata(i) for i in range(len(self.columns))]
        meta_start = self._position
        positions, at = [], meta_start
        for m in metas:
            positions.append((at, len(m)))
            at += len(m)
        cmo = at
        gbo = cmo + 16 * len(metas)
        tail = b"".join(metas) + b"".join(struct.pack("<QQ", *p) for p in positions)
        tail += b"".join(struct.pack("<QQ", *b) for b in buffers)
        tail += struct.pack("<QQQII2H", meta_start, cmo, gbo, len(buffers), len(metas), *_VERSION) + _MAGIC
        self._write([tail])
        os.close(self._fd)
        self._fd = None
