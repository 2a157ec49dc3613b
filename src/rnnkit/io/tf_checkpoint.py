"""TensorFlow checkpoints (format V2), read and written in pure Python, without TensorFlow.

A checkpoint with prefix ``P`` is ``P.index`` (a table, see ``_sstable``, mapping the empty key
to a ``BundleHeaderProto`` and each tensor name to a ``BundleEntryProto``: dtype, shape, shard,
offset, size and the masked CRC32C of the tensor's bytes), the shards ``P.data-00000-of-0000N``
(raw little-endian tensor bytes), and in its folder a text file ``checkpoint`` naming the latest
prefix. Names are as TF wrote them: TF1 variable names (``rnn/gru_cell/gates/kernel``) or TF2
object paths (``model/layer/kernel/.ATTRIBUTES/VARIABLE_VALUE``); TF2's serialized object graph
(``_CHECKPOINTABLE_OBJECT_GRAPH``) is metadata and is left out of the results.

Every check happens before data is used: block and tensor checksums, sizes against the file
(a declared size larger than the file fails before anything is allocated), dtypes and shapes.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from rnnkit.io import _proto as pb
from rnnkit.io import _sstable as sst
from rnnkit.io.atomic import atomic_files
from rnnkit.io.errors import FormatError

__all__ = ["read_checkpoint", "list_variables", "load_variable", "write_tf_checkpoint",
           "object_graph_names", "OBJECT_GRAPH_KEY", "VARIABLE_VALUE_SUFFIX"]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

# TF DataType enum -> numpy dtype (little-endian). bfloat16 (14) is widened to float32 on read.
_DTYPES = {1: "f4", 2: "f8", 3: "i4", 4: "u1", 5: "i2", 6: "i1", 9: "i8", 10: "?", 17: "u2",
           19: "f2", 22: "u4", 23: "u8"}
_BFLOAT16, _STRING = 14, 7
_TF_DTYPE = {np.dtype(code): enum for enum, code in _DTYPES.items()}
_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


def _unescape(text: str) -> str:
    """Undo text-proto string escapes (``\\"``, ``\\\\``, octal ``\\ooo`` bytes of UTF-8)."""
    simple = {b"n": b"\n", b"t": b"\t", b"r": b"\r"}

    def one(m: re.Match) -> bytes:
        code = m.group(1)
        return bytes([int(code, 8) & 0xFF]) if code[:1].isdigit() else simple.get(code, code)

    return re.sub(rb"\\([0-7]{1,3}|.)", one, text.encode("utf-8")).decode("utf-8", "replace")


def _checkpoint_file_target(folder: Path) -> Path:
    state = folder / "checkpoint"
    try:
        text = state.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FormatError(folder, f"a checkpoint folder needs a readable 'checkpoint' file ({err})") \
            from None
    match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
    if match is None:
        raise FormatError(state, "no model_checkpoint_path line in the 'checkpoint' file")
    target = Path(_unescape(match.group(1)))
    return target if target.is_absolute() else folder / target


SHARD_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")
"""The end of a data shard's name: ``prefix.data-00000-of-00001``."""


def _prefix(path: str | os.PathLike) -> Path:
    """The checkpoint prefix for a prefix, an ``.index`` file, a data shard, a folder or a
    ``checkpoint`` file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        return _checkpoint_file_target(path)
    if path.name == "checkpoint" and path.is_file():
        return _checkpoint_file_target(path.parent)
    if path.suffix == ".index":
        return path.with_suffix("")
    if SHARD_SUFFIX.search(path.name):
        return path.with_name(SHARD_SUFFIX.sub("", path.name))
    return path


class _Bundle:
    """An open checkpoint: the parsed index and where each tensor lies."""

    def __init__(self, path: str | os.PathLike):
        self.prefix = _prefix(path)
        self.index_path = Path(f"{self.prefix}.index")
        try:
            raw = self.index_path.read_bytes()
        except OSError as err:
            raise FormatError(self.index_path, f"cannot read the checkpoint index ({err.strerror})") \
                from None
        try:
            table = sst.read_table(raw)
            if not table or table[0][0] != b"":
                raise pb.DecodeError("no bundle header (the empty key) in the index")
            self.num_shards, self.big_endian = pb.decode_header(table[0][1])
            self.entries = {key.decode("utf-8"): pb.decode_entry(value) for key, value in table[1:]}
        except (pb.DecodeError, UnicodeDecodeError) as err:
            raise FormatError(self.index_path, f"corrupt checkpoint index: {err}") from None
        for name, e in self.entries.items():
            if e.shard >= self.num_shards:
                raise FormatError(self.index_path, f"tensor {name!r} is in shard {e.shard} but "
                                                   f"the checkpoint has {self.num_shards}")

    def shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def variables(self) -> dict[str, pb.BundleEntry]:
        return {k: e for k, e in self.entries.items() if k != OBJECT_GRAPH_KEY}

    def read(self, name: str) -> np.ndarray:
        e = self.entries[name]
        if e.dtype not in _DTYPES and e.dtype not in (_BFLOAT16, _STRING):
            kind = _NAMES.get(e.dtype, f"enum {e.dtype}")
            raise FormatError(self.index_path, f"tensor {name!r} has unsupported dtype {kind}")
        count = math.prod(e.shape)
        if e.dtype == _STRING:
            # at least one length byte per string, plus the 4-byte checksum of the lengths
            if e.size < count + 4:
                raise FormatError(self.index_path, f"string tensor {name!r} of shape "
                                                   f"{list(e.shape)} cannot fit in {e.size} bytes")
        else:
            code = "u2" if e.dtype == _BFLOAT16 else _DTYPES[e.dtype]
            dtype = np.dtype(code).newbyteorder(">" if self.big_endian else "<")
            if e.size != count * dtype.itemsize:
                raise FormatError(self.index_path, f"tensor {name!r} of shape {list(e.shape)} "
                                                   f"needs {count * dtype.itemsize} bytes, the "
                                                   f"index says {e.size}")
        data = self._read_bytes(name, e)
        if e.dtype == _STRING:
            return self._strings(name, e, data)
        if sst.unmask(e.crc) != sst.crc32c(data):
            raise FormatError(self.shard_path(e.shard), f"checksum mismatch in tensor {name!r}")
        array = np.frombuffer(data, dtype=dtype).reshape(e.shape).astype(dtype.newbyteorder("="))
        if e.dtype == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array

    def _strings(self, name: str, e: pb.BundleEntry, data: bytearray) -> np.ndarray:
        """TF's string layout: varint64 lengths, masked CRC32C of the lengths as uint32, bytes.

        The entry's checksum runs over the lengths as uint32, the 4 checksum bytes and the bytes.
        """
        lengths, pos, crc = [], 0, 0
        try:
            for _ in range(math.prod(e.shape)):
                length, pos = pb.decode_varint(data, pos)
                lengths.append(length)
                crc = sst.crc32c((length & 0xFFFFFFFF).to_bytes(4, "little"), crc)
        except pb.DecodeError as err:
            raise FormatError(self.shard_path(e.shard), f"string tensor {name!r}: {err}") from None
        stored = int.from_bytes(data[pos:pos + 4], "little")
        total = sst.crc32c(data[pos:], crc)
        if (pos + 4 + sum(lengths) != e.size or sst.unmask(stored) != crc
                or sst.unmask(e.crc) != total):
            raise FormatError(self.shard_path(e.shard), f"checksum mismatch in string tensor "
                                                        f"{name!r}")
        out, pos = np.empty(len(lengths), dtype=object), pos + 4
        for k, length in enumerate(lengths):
            out[k] = bytes(data[pos:pos + length])
            pos += length
        return out.reshape(e.shape)

    def _read_bytes(self, name: str, e: pb.BundleEntry) -> bytearray:
        path = self.shard_path(e.shard)
        try:
            with open(path, "rb") as f:
                available = os.fstat(f.fileno()).st_size
                if e.offset + e.size > available:
                    raise FormatError(path, f"tensor {name!r} lies at bytes {e.offset}.."
                                            f"{e.offset + e.size} but the file has {available}")
                f.seek(e.offset)
                data = bytearray(e.size)
                if f.readinto(data) != e.size:
                    raise FormatError(path, f"tensor {name!r} is truncated")
        except OSError as err:
            raise FormatError(path, f"cannot read checkpoint data ({err.strerror})") from None
        return data


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a TensorFlow V2 checkpoint.

    Args:
        path: the checkpoint prefix (``model.ckpt-100``), its ``.index`` file, or a folder with
            a ``checkpoint`` file (its latest checkpoint is read).

    Returns:
        ``{name: array}`` in name order; TF2's object graph entry is left out and bfloat16
        tensors are widened (exactly) to float32.

    Raises:
        FormatError: a file is missing, truncated, corrupt (checksum), or holds a tensor of a
            dtype rnnkit does not load (complex, resources, variants). String tensors come back
            as object arrays of ``bytes``.

    Example:
        >>> weights = read_checkpoint("train/")     # the latest checkpoint in train/
        >>> weights["rnn/gru_cell/gates/kernel"].shape
        (12, 8)
    """
    bundle = _Bundle(path)
    return {name: bundle.read(name) for name in bundle.variables()}


def list_variables(path: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """``(name, shape)`` of every tensor, as ``tf.train.list_variables`` (object graph left out).

    Raises:
        FormatError: the index is missing or corrupt.
    """
    return [(name, list(e.shape)) for name, e in _Bundle(path).variables().items()]


def load_variable(path: str | os.PathLike, name: str) -> np.ndarray:
    """One tensor of a checkpoint, as ``tf.train.load_variable``.

    Args:
        path: see ``read_checkpoint``.
        name: the tensor's name in the checkpoint (a trailing ``:0`` is ignored).

    Raises:
        KeyError: no tensor of that name (the message lists close names).
        FormatError: the checkpoint is missing or corrupt.
    """
    if not isinstance(name, str):
        raise TypeError(f"load_variable: name must be a str, got {type(name).__name__}")
    bundle = _Bundle(path)
    key = name[:-2] if name.endswith(":0") else name
    if key not in bundle.entries:
        close = [k for k in bundle.variables() if key.split("/")[-1] in k][:5]
        raise KeyError(f"load_variable: no tensor {key!r} in {bundle.prefix}; similar: {close}")
    return bundle.read(key)


def object_graph_names(path: str | os.PathLike) -> dict[str, str]:
    """TF2 checkpoint keys mapped to the variables' own names, read from the object graph.

    A TF2 checkpoint stores ``model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE``;
    its ``TrackableObjectGraph`` records each such key's ``full_name`` (the variable's name in
    TF, e.g. ``sequential/gru/gru_cell/kernel``), which is what matches TF1-style names.

    Returns:
        ``{checkpoint key: full name}`` for keys that have one; empty for TF1 checkpoints.

    Raises:
        FormatError: the checkpoint or its object graph is missing parts or corrupt.
    """
    bundle = _Bundle(path)
    entry = bundle.entries.get(OBJECT_GRAPH_KEY)
    if entry is None:
        return {}
    if entry.dtype != _STRING or entry.shape != ():
        raise FormatError(bundle.index_path, "the object graph is not a scalar string")
    graph = bundle.read(OBJECT_GRAPH_KEY).item()
    names: dict[str, str] = {}
    try:
        # TrackableObjectGraph.nodes (1) -> TrackableObject.attributes (2) -> SerializedTensor
        # with name (1), full_name (2), checkpoint_key (3)
        for node in pb.fields(graph, {1: pb.BYTES}).get(1, []):
            for attr in pb.fields(node, {2: pb.BYTES}).get(2, []):
                f = pb.fields(attr, {2: pb.BYTES, 3: pb.BYTES})
                if f.get(2) and f.get(3):
                    names[f[3][-1].decode("utf-8")] = f[2][-1].decode("utf-8")
    except (pb.DecodeError, UnicodeDecodeError) as err:
        raise FormatError(bundle.index_path, f"corrupt object graph: {err}") from None
    return names


def _string_bytes(array: np.ndarray) -> tuple[bytes, int]:
    items = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]
    lengths = b"".join(pb.encode_varint(len(x)) for x in items)
    crc = 0
    for x in items:
        crc = sst.crc32c(len(x).to_bytes(4, "little"), crc)
    rest = sst.mask(crc).to_bytes(4, "little") + b"".join(items)
    return lengths + rest, sst.crc32c(rest, crc)


def _encode(name: str, value) -> tuple[bytes, int, tuple[int, ...], int]:
    """The bytes TF stores for ``value``, its DataType enum, its shape and its CRC32C."""
    if torch.is_tensor(value):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            raw = value.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
            return raw, _BFLOAT16, tuple(value.shape), sst.crc32c(raw)
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":  # ml_dtypes arrays
        raw = array.view("<u2").tobytes()
        return raw, _BFLOAT16, array.shape, sst.crc32c(raw)
    if array.dtype.kind in "SU" or (array.dtype.kind == "O" and all(
            isinstance(x, (bytes, str)) for x in array.reshape(-1))):
        raw, crc = _string_bytes(array)
        return raw, _STRING, array.shape, crc
    native = array.dtype.newbyteorder("=")
    if native not in _TF_DTYPE:
        raise TypeError(f"write_tf_checkpoint: tensor {name!r} has dtype {array.dtype}; "
                        f"supported: {sorted(str(d) for d in _TF_DTYPE)}, bfloat16, strings")
    raw = array.astype(native.newbyteorder("<")).tobytes()
    return raw, _TF_DTYPE[native], array.shape, sst.crc32c(raw)


def write_tf_checkpoint(path: str | os.PathLike, tensors: dict, *,
                        block_size: int = 262144) -> Path:
    """Write ``tensors`` as a TensorFlow V2 checkpoint that ``tf.train.Saver`` and
    ``tf.train.load_checkpoint`` read.

    Writes ``<path>.index``, ``<path>.data-00000-of-00001`` and the folder's ``checkpoint`` file
    (naming this checkpoint as the latest and only one), all atomically: if writing fails,
    earlier files are intact. Each file replaces its predecessor in one rename, the files one
    after another: a process killed between those renames (microseconds) leaves an index that
    does not describe the data, which readers report as a checksum mismatch, never as values.

    Args:
        path: the checkpoint prefix, e.g. ``"train/model.ckpt"`` (folders are created).
        tensors: ``{name: array or tensor}`` of float16/32/64, bfloat16, (u)int8-64, bool or
            strings (bytes/str arrays); names as TF variable names, without ``:0``.
        block_size: target size of the index's data blocks (TF's default).

    Returns:
        The prefix written.

    Raises:
        TypeError: ``tensors`` is not a dict of arrays, or a dtype is not supported.
        ValueError: a name is empty or not a str.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"write_tf_checkpoint: path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    if not isinstance(tensors, dict):
        raise TypeError(f"write_tf_checkpoint: tensors must be a dict of name -> array, got "
                        f"{type(tensors).__name__}")
    for name in tensors:
        if not isinstance(name, str) or not name:
            raise ValueError(f"write_tf_checkpoint: tensor names must be non-empty str, got {name!r}")
    prefix = Path(path)
    encoded = {name: _encode(name, tensors[name]) for name in sorted(tensors, key=str.encode)}
    entries, offset = [(b"", pb.encode_header(1))], 0
    with atomic_files() as files:
        data = files.open(f"{prefix}.data-00000-of-00001")
        for name, (raw, dtype, shape, crc) in encoded.items():
            data.write(raw)
            entry = pb.BundleEntry(dtype, tuple(shape), 0, offset, len(raw), sst.mask(crc))
            entries.append((name.encode("utf-8"), pb.encode_entry(entry)))
            offset += len(raw)
        files.open(f"{prefix}.index").write(sst.write_table(entries, block_size))
        quoted = prefix.name.replace("\\", "\\\\").replace('"', '\\"')
        files.open(prefix.parent / "checkpoint").write(
            f'model_checkpoint_path: "{quoted}"\n'
            f'all_model_checkpoint_paths: "{quoted}"\n'.encode())
    return prefix
