"""What is in a weights file: its format, each tensor, and where the gates of RNN weights lie.

``detect_format`` reads a file's bytes (magic numbers and structure, not its extension);
``read_file`` parses any supported file into ``{name: np.ndarray}`` plus notes; ``annotate``
finds RNN weights by their names and shapes (TF1 cells, TF's cuDNN-compatible cells, Keras
layers, ``torch.nn`` RNN modules, ONNX RNN operators) and says which rows and columns hold
each gate, in the framework's own gate order and letters; ``inspect_file`` does all three.
Gate orders come from ``rnnkit.io.layouts``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rnnkit.io import tf_checkpoint
from rnnkit.io._gate_blocks import GateInfo, annotate
from rnnkit.io._sstable import MAGIC as _TABLE_MAGIC
from rnnkit.io.errors import DAMAGED_FILE_ERRORS, FormatError

__all__ = ["FORMATS", "detect_format", "read_file", "annotate", "inspect_file", "Inspection",
           "Entry"]

FORMATS = {
    "tf": "TensorFlow checkpoint (V2)",
    "native": "rnnkit native (safetensors + rnnkit metadata)",
    "safetensors": "safetensors",
    "keras": "Keras 3 .keras archive",
    "keras_h5": "Keras HDF5 weights (.weights.h5 or legacy .h5)",
    "torch": "PyTorch file (torch.save, read with weights_only=True)",
    "onnx": "ONNX model",
}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class Entry:
    """One tensor of a file."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    stats: dict | None = None
    gates: GateInfo | None = None
    initializer: str | None = None


@dataclass
class Inspection:
    """The result of ``inspect_file``; ``str()`` is the text report, ``to_json()`` the data."""

    path: str
    format: str
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        def clean(stats):
            return stats and {k: (v if math.isfinite(v) else None) for k, v in stats.items()}

        return {"path": self.path, "format": self.format, "format_name": FORMATS[self.format],
                "notes": self.notes, "num_tensors": len(self.entries),
                "num_values": sum(math.prod(e.shape) for e in self.entries),
                "variables": [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype,
                               "stats": clean(e.stats), "initializer": e.initializer,
                               "rnn": e.gates.to_json() if e.gates else None}
                              for e in self.entries]}

    def __str__(self) -> str:
        total = sum(math.prod(e.shape) for e in self.entries)
        lines = [f"{self.path}: {FORMATS[self.format]}, {len(self.entries)} tensors, {total} values"]
        lines += [f"  {note}" for note in self.notes]
        for e in self.entries:
            line = f"{e.name}  {list(e.shape)}  {e.dtype}"
            if e.stats:
                line += "  " + "  ".join(f"{k}={v:.4g}" for k, v in e.stats.items())
            lines.append(line)
            if e.initializer:
                lines.append(f"    initializer: {e.initializer}")
            if e.gates:
                g = e.gates
                order = f"; gate order {', '.join(g.order)}" if len(g.order) > 1 else ""
                lines.append(f"    {g.framework}: {g.role}{order}")
                lines.append("    " + "  ".join(f"{b.label}={b.text()}" for b in g.blocks))
        return "\n".join(lines)


# -- detection ---------------------------------------------------------------------------

def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` (a key of ``FORMATS``), read from its bytes and structure.

    A TensorFlow checkpoint may be named by its prefix, ``.index`` or data file, its folder,
    or its ``checkpoint`` file.

    Raises:
        FormatError: the path does not exist, is empty, or is of no supported format.
        TypeError: ``path`` is not a str or os.PathLike.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"detect_format: path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        if (p / "checkpoint").is_file():
            return "tf"
        raise FormatError(p, "a folder without a TensorFlow 'checkpoint' file")
    if not p.exists():
        if Path(f"{p}.index").is_file():
            return "tf"
        raise FormatError(p, "no such file or directory")
    if p.name == "checkpoint" or tf_checkpoint.SHARD_SUFFIX.search(p.name):
        return "tf"
    try:
        with open(p, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(size - 8, 0))
            tail = f.read(8)
    except OSError as err:
        raise FormatError(p, f"cannot read the file ({err.strerror})") from None
    if not head:
        raise FormatError(p, "the file is empty")
    if head.startswith(_HDF5_MAGIC):
        return "keras_h5"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(p)
    if len(head) >= 9 and head[8:9] == b"{":
        return "native" if "rnnkit" in _safetensors_metadata(p) else "safetensors"
    if len(tail) == 8 and struct.unpack("<Q", tail)[0] == _TABLE_MAGIC:
        return "tf"
    if head[:1] == b"\x80":  # a pickle: torch's legacy (non-zip) format
        return "torch"
    if (head[:1] == b"\x08" or p.suffix == ".onnx") and _is_onnx(p):
        return "onnx"
    if p.suffix == ".onnx":
        raise FormatError(p, "corrupt or truncated ONNX model (its protobuf does not parse)")
    raise FormatError(p, "unrecognized file format (not a TensorFlow checkpoint, safetensors, "
                         "Keras, HDF5, PyTorch or ONNX file)")


def _zip_kind(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except DAMAGED_FILE_ERRORS as err:
        raise FormatError(p, f"corrupt zip archive ({err})") from None
    if "model.weights.h5" in names or "config.json" in names:
        return "keras"
    if any(n.endswith("data.pkl") for n in names):
        return "torch"
    raise FormatError(p, "a zip archive that is neither a .keras file nor a torch.save file")


def _safetensors_metadata(p: Path) -> dict:
    try:
        with open(p, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(size, 100 * 2**20)))
        meta = header.get("__metadata__") or {}
    except (OSError, ValueError, struct.error, AttributeError, RecursionError) as err:
        raise FormatError(p, f"corrupt safetensors header ({err})") from None
    return meta if isinstance(meta, dict) else {}


def _is_onnx(p: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(p), load_external_data=False)
    except Exception:  # protobuf raises DecodeError and others: not an ONNX file then
        return False
    return model.ir_version > 0 and model.HasField("graph")


# -- reading -----------------------------------------------------------------------------

def read_file(path: str | os.PathLike, fmt: str | None = None
              ) -> tuple[str, dict[str, np.ndarray], dict]:
    """Read every tensor of a supported file.

    Args:
        path: the file (or TF checkpoint prefix/folder).
        fmt: its format if known (else ``detect_format``).

    Returns:
        ``(format, {name: array}, extra)``; ``extra`` may hold ``notes`` (list of str),
        ``aliases`` ({name: name to recognize it by}), ``onnx`` (roles of initializers) and
        ``initializers`` ({name: text}) for native files.

    Raises:
        FormatError: the file is missing, corrupt, or not loadable safely.
    """
    fmt = fmt or detect_format(path)
    reader = {"tf": _read_tf, "native": _read_native, "safetensors": _read_safetensors,
              "keras": _read_keras, "keras_h5": _read_h5, "torch": _read_torch,
              "onnx": _read_onnx}[fmt]
    tensors, extra = reader(Path(path))
    return fmt, tensors, extra


def _read_tf(p: Path):
    suffix = tf_checkpoint.VARIABLE_VALUE_SUFFIX
    raw = tf_checkpoint.read_checkpoint(p)
    full = tf_checkpoint.object_graph_names(p)
    tensors = {k.removesuffix(suffix): v for k, v in raw.items()}
    aliases = {k.removesuffix(suffix): name for k, name in full.items()}
    return tensors, {"aliases": aliases}


def _read_native(p: Path):
    from rnnkit.io.native import read_native

    tensors, doc = read_native(p)
    inits = {}
    for name, info in doc["variables"].items():
        prov = info.get("provenance") or {}
        if prov.get("repr"):
            inits[name] = f"{prov['repr']} ({prov.get('origin') or 'no origin recorded'})"
    notes = []
    if doc.get("model"):
        notes.append(f"model: {_tree_text(doc['model'])}")
    return tensors, {"initializers": inits, "notes": notes}


def _tree_text(tree: dict) -> str:
    from rnnkit.io._native_model import LAYER

    if tree.get("kind") == LAYER:
        return _layer_text(tree.get("config"))
    inner = tree.get("cells") or ([tree["cell"]] if "cell" in tree else [])
    body = ", ".join(_tree_text(t) for t in inner)
    return f"{tree.get('class')}({body})" if inner else f"{tree.get('class')} '{tree.get('scope')}'"


def _layer_text(entry) -> str:
    """``Sequential 'model'(LSTM 'lstm', Dense 'dense')`` for a saved layer's config."""
    config = entry.get("config") if isinstance(entry, dict) else None
    if not isinstance(config, dict):
        return "?"
    inner = config.get("layers") or config.get("cells") or [
        config[k] for k in ("layer", "backward_layer", "cell") if isinstance(config.get(k), dict)]
    body = ", ".join(map(_layer_text, inner)) if isinstance(inner, list) else ""
    text = f"{entry.get('class_name')} '{config.get('name')}'"
    return f"{text}({body})" if body else text


def _read_safetensors(p: Path):
    import safetensors.torch
    import torch

    try:
        loaded = safetensors.torch.load(p.read_bytes())
    except Exception as err:  # SafetensorError and others
        raise FormatError(p, f"corrupt safetensors file ({err})") from None
    return {k: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for k, t in loaded.items()}, {}


def _h5_tensors(p: Path, source) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(source, "r") as h5:
            h5.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj[()]))
                          if isinstance(obj, h5py.Dataset) else None)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FormatError(p, f"corrupt HDF5 file ({err})") from None
    return out


def _read_h5(p: Path):
    return _h5_tensors(p, p), {}


def _read_keras(p: Path):
    try:
        with zipfile.ZipFile(p) as zf:
            weights = zf.read("model.weights.h5") if "model.weights.h5" in zf.namelist() else None
            config = json.loads(zf.read("config.json")) if "config.json" in zf.namelist() else {}
    except DAMAGED_FILE_ERRORS as err:
        raise FormatError(p, f"corrupt .keras archive ({err})") from None
    notes = []
    if isinstance(config, dict) and config.get("class_name"):
        layers = (config.get("config") or {}).get("layers") or []
        classes = [ly.get("class_name") for ly in layers if isinstance(ly, dict)]
        notes.append(f"model: {config['class_name']} with layers {', '.join(map(str, classes))}")
    return (_h5_tensors(p, io.BytesIO(weights)) if weights is not None else {}), {"notes": notes}


def _read_torch(p: Path):
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors of every kind
        raise FormatError(p, f"torch.load(weights_only=True) cannot read it: {_torch_reason(err)}") \
            from None
    tensors: dict[str, np.ndarray] = {}
    skipped: list[str] = []

    def walk(value, prefix: str) -> None:
        if torch.is_tensor(value):
            t = value.detach().cpu()
            tensors[prefix or "tensor"] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            skipped.append(prefix or type(value).__name__)

    walk(obj, "")
    if not tensors:
        raise FormatError(p, "the torch file holds no tensors")
    return tensors, {"notes": [f"non-tensor entries skipped: {', '.join(skipped)}"] if skipped else []}


def _torch_reason(err: Exception) -> str:
    """The useful part of torch.load's error (not its advice to load with weights_only=False:
    rnnkit never unpickles code)."""
    text = str(err)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.DOTALL)
    if m:
        return "not plain tensors (a pickle that needs code, or corrupt): " + \
            " ".join(m[1].split()).split(". ")[0]
    return " ".join(text.split())[:300] or type(err).__name__


def _read_onnx(p: Path):
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(p), load_external_data=False)
        tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    except Exception as err:  # protobuf DecodeError and others
        raise FormatError(p, f"corrupt ONNX model ({err})") from None
    roles = {}
    for node in model.graph.node:
        if node.op_type in ("RNN", "GRU", "LSTM"):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            for k, name in enumerate(node.input):
                if name in tensors and k in (1, 2, 3, 7):
                    roles[name] = (node.op_type.lower(), ".WRB...P"[k], attrs)
    notes = [f"ONNX opset {', '.join(str(o.version) for o in model.opset_import)}, producer "
             f"{model.producer_name or 'unknown'}"]
    return tensors, {"onnx": roles, "notes": notes}


def _stats(array: np.ndarray) -> dict | None:
    if array.dtype.kind not in "fiu" or array.size == 0:
        return None
    a = array.astype(np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def inspect_file(path: str | os.PathLike, stats: bool = True) -> Inspection:
    """Format, tensors, statistics and gate blocks of a file.

    Args:
        path: any file ``detect_format`` recognizes.
        stats: compute mean, std, min and max of each numeric tensor.

    Returns:
        An ``Inspection``.

    Raises:
        FormatError: the file is missing, corrupt or of no supported format.
    """
    fmt, tensors, extra = read_file(path)
    gates = annotate(tensors, extra)
    inits = extra.get("initializers", {})
    entries = [Entry(name, tuple(np.shape(a)), str(np.asarray(a).dtype), _stats(a) if stats else None,
                     gates.get(name), inits.get(name)) for name, a in tensors.items()]
    return Inspection(str(path), fmt, entries, list(extra.get("notes", [])))
