"""Protobuf wire format, as much as Lance's file and index metadata need.

Lance keeps its index metadata (the IVF message, index details) and its file metadata
(column pages, the schema) as protobuf messages; the few this package writes or reads are
built and taken apart here, field by field, so the package needs no protobuf dependency.
"""

from __future__ import annotations

__all__ = ["field", "fields", "packed", "packed_varints", "read_varint", "uint_field", "varint"]


def varint(value: int) -> bytes:
    """``value`` as a base-128 varint (a negative int32 as its 64-bit two's complement, as
    protobuf writes one)."""
    out = bytearray()
    value = int(value) & 0xFFFFFFFFFFFFFFFF
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (a message, string, bytes or packed values)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def uint_field(number: int, value: int) -> bytes:
    """One varint field (an unsigned or signed integer, a bool or an enum)."""
    return varint(number << 3 | 0) + varint(value)


def packed(values) -> bytes:
    """Packed repeated varints (wrap in :func:`field`)."""
    return b"".join(varint(v) for v in values)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` and the position after it."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def fields(buf: bytes) -> dict[int, list]:
    """A message's fields: number -> values (ints, or bytes when length-delimited)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            value, pos = bytes(buf[pos : pos + size]), pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = bytes(buf[pos : pos + size]), pos + size
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def packed_varints(buf: bytes) -> list[int]:
    """The values of a packed repeated varint field."""
    out, pos = [], 0
    while pos < len(buf):
        value, pos = read_varint(buf, pos)
        out.append(value)
    return out
