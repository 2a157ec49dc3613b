"""rnnkit's native format: safetensors weights plus JSON metadata to rebuild the model.

The safetensors header's ``__metadata__`` holds ``"rnnkit"``, a JSON document, and
``"rnnkit_crc32c"``, its checksum. The document records, per variable, its dtype, shape, CRC32C
of its bytes, trainability and provenance (the initializer's config and where the choice came
from), and, when a cell or a Keras layer or model was saved, how to rebuild it (``model``; see
``_native_model``). No code is ever unpickled or imported from a file: functions are stored by
registered name only.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from rnnkit import cells
from rnnkit import layers as L
from rnnkit import scope as _scope
from rnnkit.io._native_model import LAYER, describe, dtype_name, rebuild, serialize_init
from rnnkit.io._sstable import crc32c
from rnnkit.io.atomic import atomic_write
from rnnkit.io.errors import FormatError

__all__ = ["save_native", "read_native", "load", "is_native", "as_path"]

_FORMAT, _VERSION = "rnnkit.native", 1
_HEADER_LIMIT = 100 * 2**20


def as_path(path, owner: str) -> Path:
    """``path`` as a ``Path``; TypeError naming ``owner`` unless it is a str or os.PathLike."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{owner}: path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _provenance(var: torch.Tensor) -> dict | None:
    prov = getattr(var, "provenance", None)
    if prov is None:
        return None
    return {"initializer": serialize_init(prov.initializer), "repr": repr(prov.initializer),
            "origin": prov.origin, "scope": prov.scope, "note": prov.note}


def save_native(path: str | os.PathLike, variables_or_module=None) -> Path:
    """Write variables (and, for a cell or Keras model, how to rebuild it) as a native file.

    Args:
        path: the file to write (atomically; conventionally ``*.safetensors``).
        variables_or_module: a built rnnkit cell or Keras layer or model (``load`` rebuilds
            it), or anything ``rnnkit.io.saving.named_variables`` accepts (weights and
            provenance only).

    Returns:
        The path written.

    Raises:
        ValueError: a model that cannot be described (an unregistered activation, a cell
            class other than the TF1 cells, ``MultiRNNCell``, ``ResidualWrapper`` (without a
            ``residual_fn`` of your own) and ``DropoutWrapper``, whose seed
            is not kept), or a Keras model that is not built.
        RuntimeError: the cell has no variables yet.
    """
    from rnnkit.io.saving import named_variables

    path = as_path(path, "save_native")
    tensors = named_variables(variables_or_module)
    model = describe(variables_or_module) \
        if isinstance(variables_or_module, (cells.RNNCell, L.Layer)) else None
    flat = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    variables = {name: {"dtype": dtype_name(t.dtype), "shape": list(t.shape),
                        "crc32c": crc32c(_raw(t)),
                        "trainable": bool(getattr(tensors[name], "is_trainable",
                                                  tensors[name].requires_grad)),
                        "requires_grad": tensors[name].requires_grad,
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
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
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
        if (not isinstance(info, dict) or info.get("dtype") != dtype_name(t.dtype)
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


def load(path: str | os.PathLike, scope: str | None = None) -> cells.RNNCell | L.Layer:
    """Rebuild a cell or Keras model saved by ``save_native``, with its weights, trainability
    and provenance.

    A cell is built in the default graph under its saved scope (``rnn/gru_cell``), or under
    ``scope`` + the saved scope; TF's unique numbering applies as when a cell is first built.
    A Keras layer or model comes back in eval mode, as ``load_keras`` gives it, with the saved
    initializers (rnnkit's own too, which Keras files cannot hold) in its config.

    Args:
        path: a native file written for a cell, layer or model.
        scope: an outer variable scope to load a cell under (e.g. ``"pretrained"``); Keras
            layers name their weights by their layers' names and take none.

    Returns:
        The built cell or layer; its outputs equal the saved one's.

    Raises:
        FormatError: the file is bad, holds no model, or its description does not rebuild.
        TypeError / ValueError: ``scope`` is not a str, or is given for a Keras layer.

    Example:
        >>> cell = load("gru.safetensors")
        >>> outputs, state = rk.dynamic_rnn(cell, x, dtype=torch.float32)
    """
    if scope is not None and not isinstance(scope, str):
        raise TypeError(f"load: scope must be a str or None, got {type(scope).__name__}")
    tensors, doc = _parse(path)
    tree = doc.get("model")
    if not isinstance(tree, dict):
        raise FormatError(path, "the file holds variables but no model to rebuild; use "
                                "rnnkit.io.restore or read_native")
    if scope is not None and tree.get("kind") == LAYER:
        raise ValueError("load: scope applies to TF1 cells; a Keras layer's weights are named by "
                         "its layers' names")
    before = {v.op_name for v in _scope.global_variables()}
    try:
        return rebuild(tree, tensors, doc, scope)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as err:
        _forget_new_variables(before)
        what = "layer" if tree.get("kind") == LAYER else "cell"
        raise FormatError(path, f"the saved {what} does not rebuild: {type(err).__name__}: "
                                f"{err}") from None


def _forget_new_variables(before: set[str]) -> None:
    """Drop variables a failed load made, so no partial model stays in the graph."""
    graph = _scope._graph
    with graph.lock:
        for name in [n for n in graph.variables if n not in before]:
            del graph.variables[name]
