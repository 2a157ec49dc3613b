"""Keras model files: ``load_keras`` and ``save_keras``.

A Keras 3 ``.keras`` file is a zip archive of ``config.json`` (the architecture), ``metadata.json``
and ``model.weights.h5`` (the weights, by object path). A ``.weights.h5`` holds the weights
alone; a legacy ``.h5`` (Keras 2 / tf.keras) holds per-layer weights and, for a whole model, its
config in the ``model_config`` attribute.

Safety: only Keras's built-in layers are rebuilt, from fixed tables; ``Lambda`` and custom classes
are refused, archive members with absolute paths or ``..`` are refused, nothing from a file is
imported or evaluated, and the sizes a config declares are checked against the weights the file
holds before any memory is allocated for them. Every problem with a file raises ``FormatError``;
no partially loaded model is returned and a given ``model`` is left as it was.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch

from rnnkit import layers as L
from rnnkit.io import _keras_h5 as H
from rnnkit.io._keras_config import ConfigError
from rnnkit.io._keras_graph import (
    functional_to_keras,
    keras_order,
    model_from_keras,
    sequential_to_keras,
)
from rnnkit.io.atomic import atomic_write
from rnnkit.io.errors import DAMAGED_FILE_ERRORS, FormatError

__all__ = ["load_keras", "save_keras"]

_ZIP_MAGIC = b"PK\x03\x04"
_H5_MAGIC = b"\x89HDF\r\n\x1a\n"
_CONFIG, _METADATA, _WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
_MAX_JSON = 64 << 20
_MAX_STEP = 1 << 24  # numbers in one step of the zeros that build a model (a ConvLSTM's frame)
_MAX_RATIO = 64  # weights are float data, which deflate barely shrinks; Keras stores them as is


def load_keras(path: str | os.PathLike, model: L.Sequential | L.Model | None = None):
    """Load a Keras file as an rnnkit model, or load its weights into ``model``.

    Args:
        path: a Keras 3 ``.keras`` archive, a Keras 3 ``.weights.h5``, or a legacy Keras 2 /
            tf.keras ``.h5`` (whole model or weights). The kind is read from the file's bytes.
        model: None to rebuild the model from the file's config (``.keras``, legacy whole-model
            ``.h5``); else an rnnkit ``Sequential`` or ``Model``, already built (called once),
            whose weights are replaced by the file's (Keras 3 files match weights by layer
            position and class, legacy files by the order of the layers that have weights).

    Returns:
        The rnnkit model (in eval mode when rebuilt from a config), giving Keras's outputs.
        Legacy configs keep Keras 2's ``hard_sigmoid`` (``clip(0.2 x + 0.5, 0, 1)``); their
        ``CuDNNLSTM``/``CuDNNGRU`` come back as ``LSTM``/``GRU(reset_after=True)``, the
        weights converted from cuDNN's layout as Keras converts them. Weights
        are loaded in float32 whatever the file's dtype policy; a ``training=`` pinned in a
        Keras 3 functional graph is dropped (the layer's mode decides, as for any rnnkit layer).

    Raises:
        FormatError: the file is missing, not a Keras file, truncated or corrupt, unsafe (path
            traversal, ``Lambda`` or custom classes), names unsupported layers or options, or its
            weights do not match the model (missing, unexpected or of another shape).
        TypeError / ValueError: ``model`` is not an rnnkit model, or is not built.

    Example:
        >>> model = load_keras("model.keras"); y = model(x)  # doctest: +SKIP
    """
    path = _check_path(path, "path")
    order = None
    if model is not None:
        if not isinstance(model, (L.Sequential, L.Model)):
            raise TypeError(f"model must be an rnnkit Sequential or Model, got {type(model).__name__}")
        require_built(model, "load_keras")
        order = list(model.model_layers) if isinstance(model, L.Sequential) else keras_order(model)
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
        if magic[:4] == _ZIP_MAGIC:
            return _load_archive(path, model, order)
        if magic == _H5_MAGIC:
            with h5py.File(path, "r") as h5:
                return _load_h5(path, h5, model, order)
        raise FormatError(path, f"not a Keras file: starts with {magic!r}, neither a .keras zip "
                                "archive nor an HDF5 .h5 file")
    except FormatError:
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise FormatError(path, f"cannot open the file: {err.strerror}") from None
    except (ConfigError, LookupError) as err:
        raise FormatError(path, str(err)) from None
    except DAMAGED_FILE_ERRORS as err:
        raise FormatError(path, f"truncated or corrupt ({type(err).__name__}: {err})") from None


def _check_path(path, argname: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argname} must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _load_archive(path: Path, model, order):
    with zipfile.ZipFile(path) as zf:
        names = [info.filename for info in zf.infolist()]
        for name in names:
            if (name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or "\0" in name
                    or ".." in re.split(r"[/\\]", name)):
                raise FormatError(path, f"archive member {name!r} has an absolute path or '..' "
                                        "(path traversal); refused")
        if len(set(names)) != len(names):
            raise FormatError(path, "the archive lists a member twice")
        if _WEIGHTS not in names:
            other = " (npz weights are not supported)" if "model.weights.npz" in names else ""
            raise FormatError(path, f"the archive has no {_WEIGHTS}{other}; members: {names[:10]}")
        info = zf.getinfo(_WEIGHTS)
        if info.file_size > _MAX_RATIO * max(info.compress_size, 1 << 20):
            raise FormatError(path, f"{_WEIGHTS} declares {info.file_size} bytes from "
                                    f"{info.compress_size} compressed; refused (a zip bomb?)")
        config = None
        if model is None:
            if _CONFIG not in names:
                raise FormatError(path, f"the archive has no {_CONFIG}")
            config = _read_json(path, zf, _CONFIG)
            metadata = _read_json(path, zf, _METADATA) if _METADATA in names else {}
            version = metadata.get("keras_version") if isinstance(metadata, dict) else None
            # tf.keras 2.13+ writes .keras archives too; there hard_sigmoid is Keras 2's
            legacy = isinstance(version, str) and version.split(".")[0] in ("1", "2")
        with tempfile.TemporaryFile() as tmp:
            with zf.open(_WEIGHTS) as src:  # zipfile checks the CRC at the end
                shutil.copyfileobj(src, tmp)
            size = tmp.tell()
            tmp.seek(0)
            with h5py.File(tmp, "r") as h5:
                if model is not None:
                    _assign(H.keras3_pairs(h5, model, order))
                    return model
                built, specs, order = model_from_keras(config, legacy=legacy)
                build_within(built, specs, min(_declared_size(h5), size))
                _assign(H.keras3_pairs(h5, built, order))
                return built.eval()


def _read_json(path: Path, zf: zipfile.ZipFile, name: str):
    size = zf.getinfo(name).file_size
    if size > _MAX_JSON:
        raise FormatError(path, f"{name} declares {size} bytes (more than {_MAX_JSON})")
    return json.loads(zf.read(name).decode("utf-8"))


def _load_h5(path: Path, h5, model, order):
    legacy = "layer_names" in h5.attrs or "model_weights" in h5
    if model is not None:
        _assign((H.legacy_pairs if legacy else H.keras3_pairs)(h5, model, order))
        return model
    if not legacy:
        raise FormatError(path, "a Keras 3 .weights.h5 holds no architecture; build the model in "
                                "rnnkit and pass it as model=")
    config = h5.attrs.get("model_config")
    if config is None:
        raise FormatError(path, "this .h5 holds weights only (no model_config); build the model "
                                "in rnnkit and pass it as model=")
    if isinstance(config, bytes):
        config = config.decode("utf-8")
    version = h5.attrs.get("keras_version", b"2")
    version = version.decode("utf-8") if isinstance(version, bytes) else str(version)
    built, specs, order = model_from_keras(json.loads(config), legacy=not version.startswith("3"))
    build_within(built, specs, min(_declared_size(h5), path.stat().st_size))
    _assign(H.legacy_pairs(h5, built, order))
    return built.eval()


def _declared_size(h5) -> int:
    """How many numbers the file's datasets declare (read from metadata, nothing allocated).

    The caller also caps this by the file's size in bytes, so a dataset declared far larger
    than the bytes behind it cannot license a large allocation either."""
    total = 0

    def add(_, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += int(np.prod(obj.shape, dtype=np.float64)) if obj.shape else 1

    h5.visititems(add)
    return total


def _new_weights(module, x: torch.Tensor) -> int:
    """How many numbers building ``module`` on input ``x`` allocates (0 once built)."""
    if isinstance(module, L.RNN) and module.cell.input_depth is None:
        cells, total = getattr(module.cell, "cells", [module.cell]), 0
        depth = module.cell.read_inputs(x.transpose(0, 1) if module.time_major else x)
        for cell in cells:
            total, depth = total + cell.weight_count(depth), cell.units
        return total
    if isinstance(module, L.Dense) and module.input_depth is None:
        return module.units * (x.shape[-1] + int(module.use_bias))
    if isinstance(module, L.Embedding) and not module.built:
        return module.input_dim * module.output_dim
    return 0


def build_within(model, specs: list, budget: int) -> None:
    """Make the weights with one call on zeros, refusing to allocate more than ``budget``
    numbers (what the weights file holds): a config cannot make rnnkit allocate what the file
    does not back."""
    if not specs:
        return
    xs = []
    for shape, dtype in specs:
        last = shape[-1] if dtype.is_floating_point else 1
        # a ConvLSTM's inputs [batch, time, *spatial, channels]: one step at the stated size
        step = [d or 1 for d in shape[2:-1]] if len(shape) > 3 else []
        if (last is None or last > max(budget, 1) or len(shape) > 8
                or math.prod(step) * last > _MAX_STEP):
            raise ConfigError(f"input shape {shape} cannot be built (unknown or too large feature "
                              f"size for a file of {budget} weights)")
        xs.append(torch.zeros([1] * (len(shape) - 1 - len(step)) + step + [last], dtype=dtype))
    used = 0

    def check(module, args):
        nonlocal used
        used += _new_weights(module, args[0])
        if used > budget:
            raise ConfigError(f"the config declares more weights than the file holds ({budget} "
                              f"numbers); refused before allocating them (at {module.name!r})")

    hooks = [m.register_forward_pre_hook(check) for m in model.modules()
             if isinstance(m, (L.RNN, L.Dense, L.Embedding))]
    try:
        with torch.no_grad():
            model.eval()(xs if len(xs) > 1 else xs[0])
    finally:
        for h in hooks:
            h.remove()
    for m in model.modules():
        if isinstance(m, L.RNN):
            m.reset_states()


def _assign(pairs: list) -> None:
    """Read every array, then copy them all: a read failure leaves the weights untouched."""
    arrays = [np.asarray(ds[()]) for _, _, ds in pairs]
    with torch.no_grad():
        for (w, _, _), a in zip(pairs, arrays, strict=True):
            w.copy_(torch.as_tensor(a).to(w.dtype))


def _unbuilt(model) -> list[str]:
    out = []
    for m in model.modules():
        if ((isinstance(m, L.RNN) and m.cell.input_depth is None)
                or (isinstance(m, L.Dense) and m.input_depth is None)
                or (isinstance(m, L.Embedding) and not m.built)):
            out.append(m.name)
    return out


def require_built(model, who: str) -> None:
    missing = _unbuilt(model)
    if missing:
        raise ValueError(f"{who}: model {model.name!r} is not built (layers {missing} have no "
                         "weights yet); call it once on an input first")


def save_keras(model: L.Sequential | L.Model, path: str | os.PathLike,
               input_shape=None) -> None:
    """Write ``model`` as a Keras 3 ``.keras`` file (or only its weights, as ``.weights.h5``).

    ``keras.saving.load_model`` loads the ``.keras`` file with the same outputs; a Keras model of
    the same architecture loads the ``.weights.h5`` with ``load_weights``. The write is atomic:
    a failed save leaves any previous file at ``path`` as it was.

    Args:
        model: a built rnnkit ``Sequential`` or ``Model`` of Keras layers (SimpleRNN, GRU, LSTM,
            ConvLSTM1D/2D/3D, RNN, Bidirectional, TimeDistributed, Embedding, Masking, Dense,
            Dropout).
        path: ends with ``.keras`` or ``.weights.h5``.
        input_shape: a ``Sequential``'s input shape without the batch axis, as for
            ``keras.Input``; by default ``(None, features)`` (``(None,)`` after an Embedding).

    Raises:
        TypeError: ``model`` is not an rnnkit ``Sequential`` or ``Model``.
        ValueError: ``path`` has another suffix, the model is not built, or holds something
            Keras 3 cannot express (another layer, Keras 2's ``hard_sigmoid``, an rnnkit-only
            initializer).
    """
    path = _check_path(path, "path")
    if not isinstance(model, (L.Sequential, L.Model)):
        raise TypeError(f"model must be an rnnkit Sequential or Model, got {type(model).__name__}")
    if not path.name.endswith((".keras", ".weights.h5")):
        raise ValueError(f"path must end with '.keras' or '.weights.h5', got {str(path)!r}")
    if input_shape is not None and not isinstance(input_shape, (list, tuple)):
        raise TypeError(f"input_shape must be a tuple of sizes (no batch axis), got {input_shape!r}")
    require_built(model, "save_keras")
    if isinstance(model, L.Sequential):
        config, order = sequential_to_keras(model, None if input_shape is None else list(input_shape))
    else:
        config, order = functional_to_keras(model)
    weights = io.BytesIO()
    with h5py.File(weights, "w") as h5:
        H.write_keras3(h5, model, order)
    if path.name.endswith(".weights.h5"):
        with atomic_write(path) as f:
            f.write(weights.getvalue())
        return
    metadata = {"keras_version": "3.0.0", "saved_by": "rnnkit",
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    with atomic_write(path) as f, zipfile.ZipFile(f, "w") as zf:
        zf.writestr(_METADATA, json.dumps(metadata))
        zf.writestr(_CONFIG, json.dumps(config))
        zf.writestr(_WEIGHTS, weights.getvalue())
