"""LevelDB-style sorted string tables, the container of TensorFlow's ``.index`` files.

Layout (TF's ``tensorflow/core/lib/io/table`` keeps LevelDB's): data blocks, a metaindex block,
an index block, then a 48-byte footer (two block handles ``varint64 offset, varint64 size``
zero-padded to 40 bytes, then the magic number as a little-endian uint64). Every block is
followed by a 5-byte trailer: the compression type (0 = none) and the masked CRC32C of the
block plus that type byte. A block is a run of prefix-compressed entries ``varint32 shared,
varint32 unshared, varint32 value length, key suffix, value`` then the uint32 restart offsets
and their count. The index block maps, per data block, a key >= the block's last key to the
block's handle.
"""

from __future__ import annotations

import struct

import google_crc32c

from rnnkit.io._proto import DecodeError, decode_varint, encode_varint

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing ``crc``."""
    return google_crc32c.extend(crc, bytes(data))


def mask(crc: int) -> int:
    """LevelDB's masked CRC: rotate right by 15 and add a constant, so CRCs of CRCs differ."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Inverse of ``mask``."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _handle(offset: int, size: int) -> bytes:
    return encode_varint(offset) + encode_varint(size)


def _build_block(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, last = bytearray(), [], b""
    for k, (key, value) in enumerate(entries):
        shared = 0
        if k % restart_interval == 0:
            restarts.append(len(out))
        else:
            limit = min(len(last), len(key))
            while shared < limit and last[shared] == key[shared]:
                shared += 1
        out += encode_varint(shared) + encode_varint(len(key) - shared) + encode_varint(len(value))
        out += key[shared:] + value
        last = key
    restarts = restarts or [0]
    out += struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def write_table(entries: list[tuple[bytes, bytes]], block_size: int = 262144,
                restart_interval: int = 16) -> bytes:
    """Serialize sorted, unique ``(key, value)`` pairs as an uncompressed table.

    Args:
        entries: pairs sorted by key (bytewise), keys unique.
        block_size: a data block is closed once its entries reach this many bytes.
        restart_interval: keys between restart points (full keys) within a data block.

    Returns:
        The table file's bytes.
    """
    out = bytearray()
    index: list[tuple[bytes, bytes]] = []

    def emit(block: bytes) -> bytes:
        handle = _handle(len(out), len(block))
        out.extend(block + b"\0" + struct.pack("<I", mask(crc32c(block + b"\0"))))
        return handle

    pending: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in entries:
        pending.append((key, value))
        size += len(key) + len(value) + 8
        if size >= block_size:
            index.append((key, emit(_build_block(pending, restart_interval))))
            pending, size = [], 0
    if pending:
        index.append((pending[-1][0], emit(_build_block(pending, restart_interval))))
    meta = emit(_build_block([], 1))
    idx = emit(_build_block(index, 1))
    out += (meta + idx).ljust(FOOTER_SIZE - 8, b"\0") + struct.pack("<Q", MAGIC)
    return bytes(out)


def _read_block(data: bytes, handle: bytes) -> bytes:
    offset, pos = decode_varint(handle, 0)
    size, pos = decode_varint(handle, pos)
    if pos != len(handle):
        raise DecodeError("block handle has trailing bytes")
    end = offset + size + TRAILER_SIZE
    if end > len(data) - FOOTER_SIZE:
        raise DecodeError(f"block at offset {offset} of {size} bytes runs past the end of the "
                          f"table ({len(data)} bytes)")
    block, kind = data[offset:offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if unmask(stored) != crc32c(data[offset:offset + size + 1]):
        raise DecodeError(f"checksum mismatch in the block at offset {offset}")
    if kind != 0:
        raise DecodeError(f"block at offset {offset} is compressed (type {kind}); only "
                          "uncompressed tables are supported")
    return block


def _parse_block(block: bytes) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise DecodeError("block shorter than its restart count")
    (count,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * count
    if count == 0 or limit < 0:
        raise DecodeError(f"block declares {count} restart points, which do not fit")
    entries, pos, last = [], 0, b""
    while pos < limit:
        shared, pos = decode_varint(block, pos, limit)
        unshared, pos = decode_varint(block, pos, limit)
        length, pos = decode_varint(block, pos, limit)
        if shared > len(last) or pos + unshared + length > limit:
            raise DecodeError("block entry runs past its block")
        key = last[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + length]))
        pos += length
        last = key
    return entries


def read_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse a table, verifying the footer, every block checksum and the key order.

    Returns:
        All ``(key, value)`` pairs in key order.

    Raises:
        DecodeError: the bytes are not a well-formed, uncompressed table.
    """
    if len(data) < FOOTER_SIZE:
        raise DecodeError(f"{len(data)} bytes is shorter than a table footer ({FOOTER_SIZE})")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != MAGIC:
        raise DecodeError("bad magic number (not a TensorFlow/LevelDB table)")
    handles, pos = [], 0
    for _ in range(2):
        start = pos
        offset, pos = decode_varint(footer, pos, 40)
        size, pos = decode_varint(footer, pos, 40)
        handles.append(footer[start:pos])
        if handles[-1] != _handle(offset, size):  # an overlong varint hides a flipped bit
            raise DecodeError("footer block handle is not canonically encoded")
    if any(footer[pos:40]):
        raise DecodeError("footer padding is not zero")
    _parse_block(_read_block(data, handles[0]))
    entries: list[tuple[bytes, bytes]] = []
    for index_key, handle in _parse_block(_read_block(data, handles[1])):
        block = _parse_block(_read_block(data, handle))
        if block and block[-1][0] > index_key:
            raise DecodeError("index key is smaller than the last key of its block")
        for key, value in block:
            if entries and key <= entries[-1][0]:
                raise DecodeError(f"keys out of order: {key!r} after {entries[-1][0]!r}")
            entries.append((key, value))
    return entries
