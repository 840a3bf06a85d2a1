"""RaBitQ codes in NumPy, and the codes Lance stores in an IVF_RQ segment.

Lance's IVF_RQ encoder (``rust/lance-index/src/vector/bq/builder.rs``) quantises
the *residual* of each row to its IVF centroid (``x - c``), rotated with the
model's fast rotation: bit ``i`` of the binary code is 1 when rotated
coordinate ``i`` has a positive sign bit (``+0.0`` counts as positive,
``-0.0`` as negative), packed least-significant bit first, ``dimension / 8``
bytes per row.

A segment's ``auxiliary.idx`` stores those codes per partition in the
"fast scan" layout: each full batch of 32 rows is transposed into one 32-byte
block per code byte, holding 4-bit nibbles of two rows per byte in Lance's
``PERM0`` lane order; a partition's last ``n % 32`` rows are stored
column-major. :func:`unpack_lance_codes` undoes that, so stored codes can be
compared with :func:`sign_codes` row by row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .rotation import RQRotation

__all__ = [
    "assign_l2",
    "sign_codes",
    "rq_binary_codes",
    "unpack_lance_codes",
    "pack_lance_codes",
    "RQSegment",
    "read_rq_segment",
]

BATCH = 32  # rows per transposed block (Lance's dist_table BATCH_SIZE)
# lane p of a block's first 16 bytes holds row PERM0[p] (low nibble) and row PERM0[p] + 16
PERM0 = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15])


def assign_l2(x: np.ndarray, centroids: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """Nearest centroid (L2) of every row, with one GEMM per chunk of rows."""
    c = np.asarray(centroids, dtype=np.float32)
    half_norms = 0.5 * np.einsum("ij,ij->i", c, c)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), chunk_rows):
        # argmin |x - c|^2 == argmax (x . c - |c|^2 / 2)
        out[s : s + chunk_rows] = np.argmax(x[s : s + chunk_rows] @ c.T - half_norms, axis=1)
    return out


def sign_codes(rotated: np.ndarray) -> np.ndarray:
    """Binary RaBitQ codes of rotated rows: bit i set when coordinate i's sign bit is clear,
    packed LSB first. Shape ``(n, dimension / 8)``, uint8."""
    return np.packbits(~np.signbit(rotated), axis=1, bitorder="little")


def rq_binary_codes(x, centroids, rotation: RQRotation, part_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Lance's binary IVF_RQ codes of rows ``x`` for an L2 index: (codes, partition ids).

    ``part_ids`` defaults to the nearest centroid; pass Lance's own assignment to
    compare encodings without depending on how near-ties between centroids fall.
    """
    x = np.asarray(x, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1] or x.shape[1] != rotation.dimension:
        raise InvalidInputError(
            f"vectors {x.shape}, centroids {c.shape} and a {rotation.dimension}-d rotation do not fit together"
        )
    part_ids = assign_l2(x, c) if part_ids is None else np.asarray(part_ids, dtype=np.int64)
    residual = x - c[part_ids]  # float32, as Lance's residual transform
    return sign_codes(rotation.apply(residual)), part_ids


def unpack_lance_codes(flat: np.ndarray, lengths, code_bytes: int) -> np.ndarray:
    """Row-major codes ``(sum(lengths), code_bytes)`` from a segment's packed code column.

    ``flat`` is the code column's bytes in storage order; ``lengths`` the rows per
    partition, in partition order. Vectorised per partition (no per-row loop).
    """
    flat = np.asarray(flat, dtype=np.uint8).reshape(-1)
    lengths = [int(n) for n in lengths]
    if flat.size != sum(lengths) * code_bytes:
        raise InvalidInputError(f"{flat.size} code bytes do not make {sum(lengths)} rows of {code_bytes} bytes")
    out = np.empty((sum(lengths), code_bytes), dtype=np.uint8)
    start = 0
    for n in lengths:
        part = flat[start * code_bytes : (start + n) * code_bytes]
        full = n // BATCH * BATCH
        # blocks: (batch, code byte, 32 lanes); lanes 0-15 hold low nibbles, 16-31 high nibbles
        blocks = part[: full * code_bytes].reshape(-1, code_bytes, BATCH)
        lo, hi = blocks[:, :, :16], blocks[:, :, 16:]
        rows = np.empty((blocks.shape[0], BATCH, code_bytes), dtype=np.uint8)
        rows[:, PERM0, :] = ((lo & 0x0F) | (hi << 4)).transpose(0, 2, 1)
        rows[:, PERM0 + 16, :] = ((lo >> 4) | (hi & 0xF0)).transpose(0, 2, 1)
        out[start : start + full] = rows.reshape(full, code_bytes)
        rest = n - full
        if rest:
            out[start + full : start + n] = part[full * code_bytes :].reshape(code_bytes, rest).T
        start += n
    return out


def pack_lance_codes(codes: np.ndarray, lengths) -> np.ndarray:
    """Inverse of :func:`unpack_lance_codes`: row-major codes -> Lance's stored byte order."""
    codes = np.asarray(codes, dtype=np.uint8)
    code_bytes = codes.shape[1]
    out = np.empty(codes.size, dtype=np.uint8)
    start = 0
    for n in (int(n) for n in lengths):
        full = n // BATCH * BATCH
        rows = codes[start : start + full].reshape(-1, BATCH, code_bytes).transpose(0, 2, 1)
        a, b = rows[:, :, PERM0], rows[:, :, PERM0 + 16]  # (batch, code byte, 16)
        blocks = np.concatenate([(a & 0x0F) | (b << 4), (a >> 4) | (b & 0xF0)], axis=2)
        out[start * code_bytes : (start + full) * code_bytes] = blocks.reshape(-1)
        out[(start + full) * code_bytes : (start + n) * code_bytes] = codes[start + full : start + n].T.reshape(-1)
        start += n
    return out


@dataclass(frozen=True)
class RQSegment:
    """What one IVF_RQ segment stores, read back with Lance's file reader.

    ``codes`` are the binary codes in row-major form (unpacked), aligned with
    ``row_ids`` and ``part_ids``; ``lengths`` are the rows per partition.
    """

    model: str
    row_ids: np.ndarray
    part_ids: np.ndarray
    lengths: np.ndarray
    codes: np.ndarray
    stored_codes: np.ndarray  # the code column's bytes exactly as stored
    columns: dict  # the other stored columns (factors, ex-codes) as NumPy arrays


def _varints(buf: bytes, pos: int, end: int) -> tuple[list[int], int]:
    out = []
    while pos < end:
        v = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out.append(v)
    return out, pos


def _ivf_lengths(buf: bytes) -> list[int]:
    """Partition lengths (field 3, packed uint32) from Lance's IVF protobuf message."""
    pos = 0
    while pos < len(buf):
        (key,), pos = _varints_one(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            (size,), pos = _varints_one(buf, pos)
            if field == 3:
                return _varints(buf, pos, pos + size)[0]
            pos += size
        elif wire == 0:
            _, pos = _varints_one(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    raise ValueError("no partition lengths in the IVF metadata")


def _varints_one(buf: bytes, pos: int) -> tuple[list[int], int]:
    v = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return [v], pos


def read_rq_segment(dataset_uri: str, index_uuid: str) -> RQSegment:
    """Read the codes an IVF_RQ segment stored in ``_indices/<index_uuid>/auxiliary.idx``."""
    import json

    import pyarrow as pa
    from lance.file import LanceFileReader

    path = os.path.join(str(dataset_uri), "_indices", str(index_uuid), "auxiliary.idx")
    if not os.path.exists(path):
        raise InvalidInputError(f"no IVF_RQ segment file at {path}")
    reader = LanceFileReader(path)
    meta = reader.metadata().schema.metadata or {}
    ivf_buffer = int(meta[b"lance:ivf"])
    lengths = np.array(_ivf_lengths(bytes(reader.read_global_buffer(ivf_buffer))), dtype=np.int64)
    model = json.loads(meta[b"storage_metadata"])[0]
    table = reader.read_all().to_table()
    codes_col = table.column("_rabit_codes").combine_chunks()
    code_bytes = codes_col.type.list_size
    stored = codes_col.values.to_numpy(zero_copy_only=False).astype(np.uint8, copy=False)
    columns = {}
    for name in table.column_names:
        if name in ("_rowid", "_rabit_codes"):
            continue
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            columns[name] = col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
        else:
            columns[name] = col.to_numpy(zero_copy_only=False)
    return RQSegment(
        model=model,
        row_ids=table.column("_rowid").to_numpy(),
        part_ids=np.repeat(np.arange(len(lengths)), lengths),
        lengths=lengths,
        codes=unpack_lance_codes(stored, lengths, code_bytes),
        stored_codes=stored,
        columns=columns,
    )
