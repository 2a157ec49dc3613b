"""rnnkit's native format: safetensors weights plus JSON metadata to rebuild the model.

The safetensors header's ``__metadata__`` holds ``"rnnkit"``, a JSON document, and
``"rnnkit_crc32c"``, its checksum. The document records, per variable, its dtype, shape, CRC32C
of its bytes, trainability and provenance (the initializer's config and where the choice came
from), and, when a cell was saved, the cell tree: each cell's class, constructor config (built
here from the cell's public attributes), scope, input depth, dtype and its variables' names. No
code is ever unpickled or imported from a file: functions are stored by registered name only.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from rnnkit import activations, cells
from rnnkit import init as _init
from rnnkit import scope as _scope
from rnnkit._initializer import names_code
from rnnkit.io._sstable import crc32c
from rnnkit.io.atomic import atomic_write
from rnnkit.io.errors import FormatError

__all__ = ["save_native", "read_native", "load", "is_native", "as_path"]

_FORMAT, _VERSION = "rnnkit.native", 1
_HEADER_LIMIT = 100 * 2**20
# class -> public attributes that are its constructor arguments (activation/initializers apart)
_CELL_ARGS = {
    cells.BasicRNNCell: ("num_units",),
    cells.GRUCell: ("num_units", "reset_after"),
    cells.BasicLSTMCell: ("num_units", "forget_bias"),
    cells.LSTMCell: ("num_units", "use_peepholes", "cell_clip", "num_proj", "proj_clip",
                     "forget_bias"),
    cells.LayerNormLSTMCell: ("num_units", "forget_bias", "layer_norm", "norm_gain", "norm_shift"),
}
_INIT_ARGS = {cells.GRUCell: ("kernel_initializer", "bias_initializer"),
              cells.LSTMCell: ("initializer",)}
_CLASSES = {cls.__name__: cls for cls in (*_CELL_ARGS, cells.MultiRNNCell, cells.DropoutWrapper)}


def as_path(path, owner: str) -> Path:
    """``path`` as a ``Path``; TypeError naming ``owner`` unless it is a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{owner}: path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _serialize_init(init) -> dict | None:
    if init is None:
        return None
    try:
        return _init.serialize(init)
    except (TypeError, ValueError):  # a from_callable of a function not importable by name
        return None


def _cell_tree(cell: cells.RNNCell) -> dict[str, Any]:
    """The JSON description of a built cell (raises ValueError for what cannot be described)."""
    cls = type(cell)
    if cls not in _CLASSES.values():
        raise ValueError(f"save_native: cannot describe a {cls.__name__}; supported cells: "
                         f"{sorted(_CLASSES)}")
    cell.require_built("save_native")
    if isinstance(cell, cells.DropoutWrapper):
        config = {f"{k}_keep_prob": v for k, v in cell.keep.items()}
        return {"class": cls.__name__, "config": {**config, "variational_recurrent": cell.variational},
                "cell": _cell_tree(cell.cell)}
    tree: dict[str, Any] = {"class": cls.__name__, "scope": cell.scope_name,
                            "input_depth": cell.input_depth}
    if isinstance(cell, cells.MultiRNNCell):
        return {**tree, "cells": [_cell_tree(c) for c in cell.cells]}
    config = {arg: getattr(cell, arg) for arg in _CELL_ARGS[cls]}
    name = activations.name_of(cell.activation)
    try:
        known = activations.get(name) is cell.activation
    except ValueError:
        known = False
    if not known:
        raise ValueError(f"save_native: activation {cell.activation!r} of {cls.__name__} has no "
                         "registered name, so it cannot be saved")
    config["activation"] = name
    config.update({arg: _serialize_init(getattr(cell, arg)) for arg in _INIT_ARGS.get(cls, ())})
    params = dict(cell.named_parameters(recurse=False))
    return {**tree, "config": config, "dtype": _dtype_name(next(iter(params.values())).dtype),
            "variables": {rel: p.op_name for rel, p in params.items()}}


def _provenance(var: torch.Tensor) -> dict | None:
    prov = getattr(var, "provenance", None)
    if prov is None:
        return None
    return {"initializer": _serialize_init(prov.initializer), "repr": repr(prov.initializer),
            "origin": prov.origin, "scope": prov.scope, "note": prov.note}


def save_native(path: str | os.PathLike, variables_or_module=None) -> Path:
    """Write variables (and, for a cell, how to rebuild it) as an rnnkit native file.

    Args:
        path: the file to write (atomically; conventionally ``*.safetensors``).
        variables_or_module: a built rnnkit cell (``load`` rebuilds it), or anything
            ``rnnkit.io.saving.named_variables`` accepts (weights and provenance only).

    Returns:
        The path written.

    Raises:
        ValueError: a cell that cannot be described (an unregistered activation, a class other
            than the TF1 cells, ``MultiRNNCell`` and ``DropoutWrapper``, whose seed is not kept).
        RuntimeError: the cell has no variables yet.
    """
    from rnnkit.io.saving import named_variables

    path = as_path(path, "save_native")
    tensors = named_variables(variables_or_module)
    model = _cell_tree(variables_or_module) if isinstance(variables_or_module, cells.RNNCell) \
        else None
    flat = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    variables = {name: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape),
                        "crc32c": crc32c(_raw(t)),
                        "trainable": bool(getattr(tensors[name], "is_trainable",
                                                  tensors[name].requires_grad)),
                        "provenance": _provenance(tensors[name])}
                 for name, t in flat.items()}
    doc = json.dumps({"format": _FORMAT, "version": _VERSION, "model": model,
                      "variables": variables}, sort_keys=True)
    blob = safetensors.torch.save(flat, {"rnnkit": doc, "rnnkit_crc32c": str(crc32c(doc.encode()))})
    with atomic_write(path) as f:
        f.write(blob)
    return path


def _raw(t: torch.Tensor) -> bytes:
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def is_native(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts like a safetensors file (a TF prefix is not)."""
    try:
        with open(as_path(path, "is_native"), "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def _fail(path, reason: str) -> FormatError:
    return FormatError(path, f"not a valid rnnkit native file: {reason}")


def _parse(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        data = as_path(path, "read_native").read_bytes()
    except OSError as err:
        raise FormatError(path, f"cannot read the file ({err.strerror})") from None
    if len(data) < 8:
        raise _fail(path, "shorter than a safetensors header")
    (size,) = struct.unpack_from("<Q", data)
    if size > min(len(data) - 8, _HEADER_LIMIT):
        raise _fail(path, f"header of {size} bytes does not fit in {len(data)} bytes")
    try:
        header = json.loads(data[8:8 + size])
        meta = header["__metadata__"]
        doc_text = meta["rnnkit"]
        if int(meta["rnnkit_crc32c"]) != crc32c(doc_text.encode()):
            raise _fail(path, "metadata checksum mismatch")
        doc = json.loads(doc_text)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, FormatError):
            raise
        raise _fail(path, f"no readable rnnkit metadata ({type(err).__name__}: {err})") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        raise _fail(path, f"metadata is not {_FORMAT} version {_VERSION}")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as err:  # safetensors raises its own SafetensorError and others
        raise _fail(path, f"bad tensor data ({err})") from None
    variables = doc.get("variables")
    if not isinstance(variables, dict) or set(variables) != set(tensors):
        raise _fail(path, "the tensors do not match the variables in the metadata")
    for name, t in tensors.items():
        info = variables[name]
        if (not isinstance(info, dict) or info.get("dtype") != _dtype_name(t.dtype)
                or info.get("shape") != list(t.shape) or info.get("crc32c") != crc32c(_raw(t))):
            raise _fail(path, f"tensor {name!r} does not match its metadata (dtype, shape or "
                              "checksum)")
    return tensors, doc


def read_native(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a native file's tensors and metadata, every checksum verified.

    Returns:
        ``({name: array}, metadata)``; bfloat16 tensors are widened (exactly) to float32.

    Raises:
        FormatError: the file is missing, truncated, corrupt or not an rnnkit native file.
    """
    tensors, doc = _parse(path)
    return {k: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for k, t in tensors.items()}, doc


def _build(tree: dict) -> cells.RNNCell:
    cls = _CLASSES[tree["class"]]
    if cls is cells.DropoutWrapper:
        return cls(_build(tree["cell"]), **tree["config"])
    base = tree["scope"].rsplit("/", 1)[-1]
    if cls is cells.MultiRNNCell:
        cell = cls([_build(sub) for sub in tree["cells"]])
        cell._base = base  # MultiRNNCell takes no name; keep the saved scope's name
        return cell
    config = dict(tree["config"])
    for arg in _INIT_ARGS.get(cls, ()):
        config[arg] = _safe_init(config[arg])
    return cls(name=base, **config)


def _safe_init(config: dict | None):
    """An initializer from its config, except ``from_callable``: a file never imports code."""
    if config is None or names_code(config):
        return None
    return _init.deserialize(config)


def _assign(tree: dict, cell: cells.RNNCell, tensors: dict[str, torch.Tensor], doc: dict) -> None:
    if isinstance(cell, cells.DropoutWrapper):
        return _assign(tree["cell"], cell.cell, tensors, doc)
    if isinstance(cell, cells.MultiRNNCell):
        for sub_tree, sub in zip(tree["cells"], cell.cells, strict=True):
            _assign(sub_tree, sub, tensors, doc)
        return None
    params = dict(cell.named_parameters(recurse=False))
    if any(tree["dtype"] != _dtype_name(p.dtype) for p in params.values()):
        raise ValueError(f"{tree['class']} is described as {tree['dtype']!r}")
    if set(params) != set(tree["variables"]):
        raise ValueError(f"{tree['class']} has variables {sorted(params)}, the file "
                         f"{sorted(tree['variables'])}")
    with torch.no_grad():
        for rel, var in params.items():
            saved = tree["variables"][rel]
            value, info = tensors[saved], doc["variables"][saved]
            if value.shape != var.shape or value.dtype != var.dtype:
                raise ValueError(f"{saved}: the file has {list(value.shape)} {value.dtype}, the "
                                 f"rebuilt cell {list(var.shape)} {var.dtype}")
            var.copy_(value)
            var.requires_grad_(bool(info["trainable"]) and var.dtype.is_floating_point)
            var.is_trainable = bool(info["trainable"])
            prov = info["provenance"]
            if prov is not None:
                init, note = _safe_init(prov["initializer"]), prov["note"]
                if init is None and prov["initializer"] is not None:
                    note = f"{note}; {prov['repr']} is not re-imported from a file".lstrip("; ")
                var.provenance = _scope.Provenance(init, prov["origin"], prov["scope"], note)
    return None


def load(path: str | os.PathLike, scope: str | None = None) -> cells.RNNCell:
    """Rebuild a cell saved by ``save_native`` with its weights, trainability and provenance.

    The cell is built in the default graph under its saved scope (``rnn/gru_cell``), or under
    ``scope`` + the saved scope; TF's unique numbering applies as when a cell is first built.

    Args:
        path: a native file written for a cell.
        scope: an outer variable scope to load under (e.g. ``"pretrained"``).

    Returns:
        The built cell; its outputs equal the saved cell's.

    Raises:
        FormatError: the file is bad, holds no cell, or its description does not rebuild.

    Example:
        >>> cell = load("gru.safetensors")
        >>> outputs, state = rk.dynamic_rnn(cell, x, dtype=torch.float32)
    """
    if scope is not None and not isinstance(scope, str):
        raise TypeError(f"load: scope must be a str or None, got {type(scope).__name__}")
    tensors, doc = _parse(path)
    tree = doc.get("model")
    if tree is None:
        raise FormatError(path, "the file holds variables but no cell to rebuild; use "
                                "rnnkit.io.restore or read_native")
    before = {v.op_name for v in _scope.global_variables()}
    try:
        cell = _build(tree)
        top = tree
        while top["class"] == "DropoutWrapper":
            top = top["cell"]
        outer = "/".join(filter(None, [scope, top["scope"].rpartition("/")[0]]))
        dtype = getattr(torch, _leaf(top)["dtype"])
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {_leaf(top)['dtype']!r}")
        if outer:
            with _scope.variable_scope(outer):
                cell.ensure_built(top["input_depth"], dtype)
        else:
            cell.ensure_built(top["input_depth"], dtype)
        _assign(tree, cell, tensors, doc)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        _forget_new_variables(before)
        raise FormatError(path, f"the saved cell does not rebuild: {type(err).__name__}: {err}") \
            from None
    return cell


def _leaf(tree: dict) -> dict:
    while "cells" in tree or "cell" in tree:
        tree = tree["cells"][0] if "cells" in tree else tree["cell"]
    return tree


def _forget_new_variables(before: set[str]) -> None:
    """Drop variables a failed load made, so no partial model stays in the graph."""
    graph = _scope._graph
    with graph.lock:
        for name in [n for n in graph.variables if n not in before]:
            del graph.variables[name]
