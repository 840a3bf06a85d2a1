"""How Lance lays out RaBitQ codes in an IVF_RQ segment, packed and unpacked with NumPy.

A segment's ``auxiliary.idx`` holds, per partition in partition order, each row's
binary RaBitQ code ``_rabit_codes`` and, for ``num_bits > 1``,
``__blocked_ex_codes`` (:mod:`.segment_files` writes and reads the files).

Binary codes are stored per partition in the "fast scan" layout: each full
batch of 32 rows is transposed into one 32-byte block per code byte, holding
4-bit nibbles of two rows per byte in Lance's ``PERM0`` lane order; a
partition's last ``n % 32`` rows are stored column-major.
:func:`unpack_lance_codes` undoes that (and :func:`pack_lance_codes` redoes it).
Ex-codes are row-major, bit-interleaved per 64 dimensions
(:func:`pack_blocked_ex_codes`). The codes themselves come from
:mod:`dask_lance_index.model.rabitq_encoder`.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

__all__ = [
    "EX_BLOCK_DIMS",
    "pack_blocked_ex_codes",
    "pack_lance_codes",
    "unpack_blocked_ex_codes",
    "unpack_lance_codes",
]

BATCH = 32  # rows per transposed block (Lance's dist_table BATCH_SIZE)
# lane p of a block's first 16 bytes holds row PERM0[p] (low nibble) and row PERM0[p] + 16
PERM0 = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15])


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


EX_BLOCK_DIMS = 64  # Lance's EX_DOT_BLOCK_DIMS: ex-codes are packed per 64 dimensions
# the top bit of dim 16k + b goes to bit 8 * (b % 8) + 2k + b // 8 of a block's little-endian u64
_TOP_BIT_POS = (8 * (np.arange(16) % 8) + np.arange(16) // 8)[None, :] + 2 * np.arange(4)[:, None]


def _top_plane(v: np.ndarray, bit: int) -> np.ndarray:
    """(n, blocks, 64) values -> (n, blocks, 8) bytes of their bit ``bit``, Lance's top-bit plane."""
    bits = ((v >> bit) & 1).astype(np.uint64).reshape(v.shape[0], v.shape[1], 4, 16)
    plane = (bits << _TOP_BIT_POS.astype(np.uint64)).sum(axis=(2, 3), dtype=np.uint64)
    return plane.astype("<u8").view(np.uint8).reshape(v.shape[0], v.shape[1], 8)


def pack_blocked_ex_codes(values: np.ndarray, ex_bits: int) -> np.ndarray:
    """Ex-code values ``(n, dimension)`` -> Lance's ``__blocked_ex_codes`` rows.

    Dimensions are padded with zeros to whole 64-dim blocks; each block holds
    ``8 * ex_bits`` bytes, bit-interleaved so Lance's SIMD kernels unpack codes
    in dimension order (``rust/lance-index/src/vector/bq/ex_dot.rs``).
    """
    values = np.asarray(values, dtype=np.uint8)
    n, d = values.shape
    blocks = -(-d // EX_BLOCK_DIMS)
    v = np.zeros((n, blocks * EX_BLOCK_DIMS), dtype=np.uint8)
    v[:, :d] = values
    v = v.reshape(n, blocks, EX_BLOCK_DIMS)
    runs = [v[:, :, 16 * k : 16 * k + 16] for k in range(4)]  # run k = dims 16k..16k+16
    if ex_bits == 1:
        parts = [np.packbits(v & 1, axis=2, bitorder="little")]
    elif ex_bits in (2, 3):
        parts = [(runs[0] & 3) | ((runs[1] & 3) << 2) | ((runs[2] & 3) << 4) | ((runs[3] & 3) << 6)]
        if ex_bits == 3:
            parts.append(_top_plane(v, 2))
    elif ex_bits == 4:
        u = v.reshape(n, blocks, 4, 2, 8)
        parts = [((u[:, :, :, 0] & 0x0F) | ((u[:, :, :, 1] & 0x0F) << 4)).reshape(n, blocks, 32)]
    elif ex_bits == 5:
        parts = [
            (runs[0] & 0x0F) | ((runs[1] & 0x0F) << 4),
            (runs[2] & 0x0F) | ((runs[3] & 0x0F) << 4),
            _top_plane(v, 4),
        ]
    elif ex_bits in (6, 7):
        parts = [(runs[k] & 0x3F) | (((runs[3] >> (2 * k)) & 3) << 6) for k in range(3)]
        if ex_bits == 7:
            parts.append(_top_plane(v, 6))
    elif ex_bits == 8:
        parts = [v]
    else:
        raise InvalidInputError(f"ex_bits must be 1 to 8, got {ex_bits}")
    return np.concatenate(parts, axis=2).astype(np.uint8).reshape(n, blocks * 8 * ex_bits)


def unpack_blocked_ex_codes(blocked: np.ndarray, ex_bits: int, dimension: int) -> np.ndarray:
    """Inverse of :func:`pack_blocked_ex_codes`: Lance's ``__blocked_ex_codes`` rows ->
    ex-code values ``(n, dimension)``.

    The packing moves bits without mixing them, so each (dimension, bit) lands on
    one (byte, bit) of a packed row; that map is read off by packing single bits.
    """
    blocked = np.asarray(blocked, dtype=np.uint8)
    probe = np.zeros((dimension * ex_bits, dimension), dtype=np.uint8)
    dims = np.repeat(np.arange(dimension), ex_bits)
    bits = np.tile(np.arange(ex_bits), dimension)
    probe[np.arange(dimension * ex_bits), dims] = (1 << bits).astype(np.uint8)
    where = np.unpackbits(pack_blocked_ex_codes(probe, ex_bits), axis=1, bitorder="little").argmax(axis=1)
    flat = np.unpackbits(blocked, axis=1, bitorder="little")[:, where]  # (n, dimension * ex_bits)
    return (flat.reshape(len(blocked), dimension, ex_bits).astype(np.uint16) << np.arange(ex_bits)).sum(axis=2).astype(np.uint8)
