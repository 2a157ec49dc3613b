"""The protobuf wire format, by hand, and the two TensorFlow messages checkpoints are made of.

A message is a sequence of fields ``(tag << 3 | wire_type, value)``: wire type 0 is a varint,
1 a little-endian 64-bit word, 2 a length-prefixed byte string (strings, bytes, sub-messages,
packed repeated fields) and 5 a 32-bit word. Unknown fields are skipped, as protobuf does.
Decoders raise ``DecodeError`` with a short reason; the format modules turn it into
``FormatError`` with the file's path.

``BundleHeaderProto``: ``num_shards`` (1), ``endianness`` (2, 0 little / 1 big), ``version`` (3,
a ``VersionDef``: ``producer`` 1, ``min_consumer`` 2, ``bad_consumers`` 3).
``BundleEntryProto``: ``dtype`` (1), ``shape`` (2, a ``TensorShapeProto``: ``dim`` 2 with
``size`` 1, ``unknown_rank`` 3), ``shard_id`` (3), ``offset`` (4), ``size`` (5), ``crc32c``
(6, fixed32, masked), ``slices`` (7, partitioned variables).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5


class DecodeError(ValueError):
    """Bytes that are not a well-formed message (or block, or table)."""


def encode_varint(value: int) -> bytes:
    """Base-128 varint of ``value``; negative numbers are written as 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """Read a varint at ``pos``; return ``(value, position after it)``."""
    end = len(buf) if end is None else end
    value, shift = 0, 0
    while True:
        if pos >= end:
            raise DecodeError("varint runs past the end of its buffer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def as_int64(value: int) -> int:
    """Reinterpret a decoded varint as a signed 64-bit integer (int32/int64 fields)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)``: an int for scalars, bytes for wire type 2."""
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = decode_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire == VARINT:
            value, pos = decode_varint(buf, pos, end)
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            if pos + width > end:
                raise DecodeError("fixed-width field runs past the end of its message")
            value = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire == BYTES:
            length, pos = decode_varint(buf, pos, end)
            if pos + length > end:
                raise DecodeError(f"field {number} declares {length} bytes but only "
                                  f"{end - pos} remain")
            value = bytes(buf[pos:pos + length])
            pos += length
        else:
            raise DecodeError(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value


def fields(buf: bytes, expected: dict[int, int]) -> dict[int, list]:
    """Decode ``buf`` into ``{field number: [values...]}``, checking the wire types of known fields.

    Args:
        expected: field number -> wire type; other fields are skipped (forward compatibility),
            packed repeated varints are accepted where a varint is expected.
    """
    out: dict[int, list] = {}
    for number, wire, value in iter_fields(buf):
        want = expected.get(number)
        if want is None:
            continue
        if wire == want:
            out.setdefault(number, []).append(value)
        elif want == VARINT and wire == BYTES:
            pos, values = 0, out.setdefault(number, [])
            while pos < len(value):
                item, pos = decode_varint(value, pos)
                values.append(item)
        else:
            raise DecodeError(f"field {number} has wire type {wire}, expected {want}")
    return out


def field_varint(number: int, value: int) -> bytes:
    """An int/enum/bool field; proto3 omits the default 0."""
    return encode_varint(number << 3 | VARINT) + encode_varint(int(value)) if value else b""


def field_bytes(number: int, data: bytes, *, always: bool = False) -> bytes:
    """A string, bytes or sub-message field (written even when empty if ``always``)."""
    if not data and not always:
        return b""
    return encode_varint(number << 3 | BYTES) + encode_varint(len(data)) + data


def field_fixed32(number: int, value: int) -> bytes:
    """A fixed32 field; proto3 omits the default 0."""
    return encode_varint(number << 3 | FIXED32) + struct.pack("<I", value) if value else b""


BUNDLE_VERSION = 1  # the bundle format version this module reads and writes


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lies: dtype enum, shape, shard, byte offset and size, masked CRC32C."""

    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int


def decode_header(value: bytes) -> tuple[int, bool]:
    """``(num_shards, big_endian)`` of a ``BundleHeaderProto``; refuses newer bundle versions."""
    f = fields(value, {1: VARINT, 2: VARINT, 3: BYTES})
    num_shards = as_int64(f.get(1, [0])[-1])
    if num_shards <= 0:
        raise DecodeError(f"bundle header says {num_shards} shards")
    version = fields(f.get(3, [b""])[-1], {1: VARINT, 2: VARINT, 3: VARINT})
    min_consumer = as_int64(version.get(2, [0])[-1])
    if min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in version.get(3, []):
        raise DecodeError(f"written for bundle readers of version >= {min_consumer}; this "
                          f"reader is version {BUNDLE_VERSION}")
    return num_shards, f.get(2, [0])[-1] == 1


def encode_header(num_shards: int) -> bytes:
    """A little-endian ``BundleHeaderProto`` of version 1."""
    return field_varint(1, num_shards) + field_bytes(3, field_varint(1, BUNDLE_VERSION), always=True)


def decode_entry(value: bytes) -> BundleEntry:
    """Parse a ``BundleEntryProto``; refuses sliced tensors, unknown ranks and negative numbers."""
    f = fields(value, {1: VARINT, 2: BYTES, 3: VARINT, 4: VARINT, 5: VARINT, 6: FIXED32,
                       7: BYTES})
    if 7 in f:
        raise DecodeError("partitioned (sliced) variables are not supported")
    shape = fields(f.get(2, [b""])[-1], {2: BYTES, 3: VARINT})
    if shape.get(3, [0])[-1]:
        raise DecodeError("tensor of unknown rank")
    dims = tuple(as_int64(fields(d, {1: VARINT}).get(1, [0])[-1]) for d in shape.get(2, []))
    if any(d < 0 for d in dims):
        raise DecodeError(f"negative dimension in shape {list(dims)}")

    def last(n: int) -> int:
        return as_int64(f.get(n, [0])[-1])

    entry = BundleEntry(last(1), dims, last(3), last(4), last(5), f.get(6, [0])[-1])
    if entry.shard < 0 or entry.offset < 0 or entry.size < 0:
        raise DecodeError("negative shard, offset or size")
    return entry


def encode_entry(e: BundleEntry) -> bytes:
    """Serialize a ``BundleEntryProto`` (the shape is written even for scalars, as TF does)."""
    shape = b"".join(field_bytes(2, field_varint(1, d), always=True) for d in e.shape)
    return (field_varint(1, e.dtype) + field_bytes(2, shape, always=True)
            + field_varint(3, e.shard) + field_varint(4, e.offset)
            + field_varint(5, e.size) + field_fixed32(6, e.crc))
