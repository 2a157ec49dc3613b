"""A native file's ``model`` entry: how a saved model is described, and rebuilt from it.

Two kinds of entry:

- a cell tree (TF1 cells, ``MultiRNNCell``, ``DropoutWrapper``, ``ResidualWrapper``,
  ``DeviceWrapper``, whose device is the CPU where the loading machine lacks it): each
  cell's class, constructor config (built here from the cell's public attributes), scope,
  input depth, dtype and its variables' names. Version 1 files hold only this kind, without a
  ``kind`` key.
- ``{"kind": "layer"}``: an rnnkit Keras layer or model (``Sequential``, ``Model``, ``LSTM``,
  ``Bidirectional``, ``RNN([cells])``, ...) as its own ``layers.serialize`` config, the inputs
  that build it, and which saved variable each weight's ``state_dict`` key reads. rnnkit's config
  keeps what a Keras file cannot hold: rnnkit's initializers (``per_gate``, ``chrono``, TF1
  defaults), Keras 2's ``hard_sigmoid`` and ``fast=``.

Nothing from a file is imported: activations are looked up by registered name, layers by
registered class, and an initializer that names code (``from_callable``) is rebuilt as None
(the layer's or cell's default; the weights are the file's either way).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from rnnkit import activations, cells
from rnnkit import init as _init
from rnnkit import layers as L
from rnnkit import scope as _scope
from rnnkit._initializer import names_code
from rnnkit.cells.wrappers import device_present, torch_device
from rnnkit.io._keras_graph import input_spec
from rnnkit.io.keras_files import build_within, require_built

# class -> public attributes that are its constructor arguments (activation/initializers apart)
_CELL_ARGS = {
    cells.BasicRNNCell: ("num_units",),
    cells.GRUCell: ("num_units", "reset_after"),
    cells.BasicLSTMCell: ("num_units", "forget_bias", "state_is_tuple"),
    cells.LSTMCell: ("num_units", "use_peepholes", "cell_clip", "num_proj", "proj_clip",
                     "forget_bias", "state_is_tuple"),
    cells.LayerNormLSTMCell: ("num_units", "forget_bias", "layer_norm", "norm_gain", "norm_shift"),
    cells.LSTMBlockCell: ("num_units", "forget_bias", "cell_clip", "use_peephole"),
    cells.LSTMBlockFusedCell: ("num_units", "forget_bias", "cell_clip", "use_peephole"),
    cells.GRUBlockCell: ("num_units",),
    cells.GRUBlockCellV2: ("num_units",),
}
_FIXED_ACTIVATION = (cells.LSTMBlockCell, cells.GRUBlockCell)  # tanh, no argument for it
_INIT_ARGS = {cells.GRUCell: ("kernel_initializer", "bias_initializer"),
              cells.LSTMCell: ("initializer",)}
# a cell around one ("cell" in a tree)
_WRAPPERS = (cells.DropoutWrapper, cells.ResidualWrapper, cells.DeviceWrapper)
_CLASSES = {cls.__name__: cls for cls in (*_CELL_ARGS, cells.MultiRNNCell, *_WRAPPERS)}
LAYER = "layer"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def serialize_init(init) -> dict | None:
    if init is None:
        return None
    try:
        return _init.serialize(init)
    except (TypeError, ValueError):  # a from_callable of a function not importable by name
        return None


def _safe_init(config: dict | None):
    """An initializer from its config, except ``from_callable``: a file never imports code."""
    if config is None or names_code(config):
        return None
    return _init.deserialize(config)


def _check_activations(module: torch.nn.Module) -> None:
    """ValueError unless every activation in ``module`` is the one its registered name gives."""
    for m in module.modules():
        for attr in ("activation", "recurrent_activation"):
            fn = getattr(m, attr, None)
            if fn is None:
                continue
            try:
                known = activations.get(activations.name_of(fn)) is fn
            except ValueError:
                known = False
            if not known:
                raise ValueError(f"save_native: {attr} {fn!r} of {type(m).__name__} has no "
                                 "registered name, so it cannot be saved")


def describe(module) -> dict[str, Any]:
    """The JSON ``model`` entry of a built cell or layer (ValueError for what it cannot hold)."""
    if isinstance(module, L.Layer):
        return _layer_entry(module)
    return _cell_tree(module)


# -- TF1 cells ----------------------------------------------------------------------------

def _cell_tree(cell: cells.RNNCell) -> dict[str, Any]:
    cls = type(cell)
    if cls not in _CLASSES.values():
        raise ValueError(f"save_native: cannot describe a {cls.__name__}; supported: the Keras "
                         f"layers and models, and the cells {sorted(_CLASSES)}")
    if isinstance(cell, cells.ResidualWrapper):
        if cell.custom:
            raise ValueError("save_native: a ResidualWrapper with a residual_fn of your own "
                             "cannot be saved (a file holds no code)")
        return {"class": cls.__name__, "config": {}, "cell": _cell_tree(cell.cell)}
    if isinstance(cell, cells.DeviceWrapper):
        return {"class": cls.__name__, "config": {"device": str(cell.device)},
                "cell": _cell_tree(cell.cell)}
    if isinstance(cell, cells.DropoutWrapper):
        config = {f"{k}_keep_prob": v for k, v in cell.keep.items()}
        return {"class": cls.__name__, "config": {**config, "variational_recurrent": cell.variational},
                "cell": _cell_tree(cell.cell)}
    cell.require_built("save_native")  # a wrapper's cell says it for the wrapper
    tree: dict[str, Any] = {"class": cls.__name__, "scope": cell.scope_name,
                            "input_depth": cell.input_depth}
    if isinstance(cell, cells.MultiRNNCell):
        return {**tree, "cells": [_cell_tree(c) for c in cell.cells],
                "state_is_tuple": cell.state_is_tuple}
    _check_activations(cell)
    config = {arg: getattr(cell, arg) for arg in _CELL_ARGS[cls]}
    if not isinstance(cell, _FIXED_ACTIVATION):
        config["activation"] = activations.name_of(cell.activation)
    config.update({arg: serialize_init(getattr(cell, arg)) for arg in _INIT_ARGS.get(cls, ())})
    params = dict(cell.named_parameters(recurse=False))
    return {**tree, "config": config, "dtype": dtype_name(next(iter(params.values())).dtype),
            "variables": {rel: p.op_name for rel, p in params.items()}}


def _build_cell(tree: dict) -> cells.RNNCell:
    cls = _CLASSES[tree["class"]]
    if cls is cells.DeviceWrapper:
        return cls(_build_cell(tree["cell"]), _available(tree["config"]["device"]))
    if cls in _WRAPPERS:
        return cls(_build_cell(tree["cell"]), **tree["config"])
    base = tree["scope"].rsplit("/", 1)[-1]
    if cls is cells.MultiRNNCell:
        cell = cls([_build_cell(sub) for sub in tree["cells"]],
                   state_is_tuple=tree.get("state_is_tuple", True))  # version 1 files lack it
        cell._base = base  # MultiRNNCell takes no name; keep the saved scope's name
        return cell
    config = dict(tree["config"])
    for arg in _INIT_ARGS.get(cls, ()):
        config[arg] = _safe_init(config[arg])
    return cls(name=base, **config)


def _available(device: str) -> torch.device:
    """A saved ``DeviceWrapper``'s device, or the CPU (with a warning) where this machine has no
    such CUDA device: a file loads anywhere, as ``torch.load``'s ``map_location`` makes it."""
    wanted = torch_device(device)
    if device_present(wanted):
        return wanted
    warnings.warn(f"rnnkit: the file's DeviceWrapper runs its cell on {device!r}, which this "
                  "machine lacks; it is rebuilt on the CPU", stacklevel=4)
    return torch.device("cpu")


def _assign_cell(tree: dict, cell: cells.RNNCell, tensors: dict[str, torch.Tensor],
                 doc: dict) -> None:
    if isinstance(cell, _WRAPPERS):
        return _assign_cell(tree["cell"], cell.cell, tensors, doc)
    if isinstance(cell, cells.MultiRNNCell):
        for sub_tree, sub in zip(tree["cells"], cell.cells, strict=True):
            _assign_cell(sub_tree, sub, tensors, doc)
        return None
    params = dict(cell.named_parameters(recurse=False))
    if any(tree["dtype"] != dtype_name(p.dtype) for p in params.values()):
        raise ValueError(f"{tree['class']} is described as {tree['dtype']!r}")
    _assign(params, tree["variables"], tensors, doc, tree["class"])
    return None


def _cell_leaf(tree: dict) -> dict:
    while "cells" in tree or "cell" in tree:
        tree = tree["cells"][0] if "cells" in tree else tree["cell"]
    return tree


def _rebuild_cell(tree: dict, tensors: dict, doc: dict, scope: str | None) -> cells.RNNCell:
    cell = _build_cell(tree)
    top = tree
    while _CLASSES[top["class"]] in _WRAPPERS:
        top = top["cell"]
    outer = "/".join(filter(None, [scope, top["scope"].rpartition("/")[0]]))
    dtype = getattr(torch, _cell_leaf(top)["dtype"])
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {_cell_leaf(top)['dtype']!r}")
    if outer:
        with _scope.variable_scope(outer):
            cell.ensure_built(top["input_depth"], dtype)
    else:
        cell.ensure_built(top["input_depth"], dtype)
    _assign_cell(tree, cell, tensors, doc)
    return cell


# -- Keras layers and models ---------------------------------------------------------------

def _layer_entry(layer: L.Layer) -> dict[str, Any]:
    require_built(layer, "save_native")
    _check_activations(layer)
    if isinstance(layer, L.Model):
        specs = [(list(t.shape), dtype_name(t.dtype)) for t in layer._inputs]
    else:
        spec = input_spec(layer.model_layers if isinstance(layer, L.Sequential) else [layer])
        specs = [] if spec is None else [([None, *spec[0]], spec[1])]
    config = _without_code(L.serialize(layer))
    L.deserialize(config)  # what load will do: fails here, not in the reader, if it cannot
    variables = {key: t.op_name if isinstance(t, _scope.Variable) else key
                 for key, t in layer.state_dict(keep_vars=True).items()}
    return {"kind": LAYER, "config": config, "variables": variables,
            "inputs": [{"shape": shape, "dtype": dtype} for shape, dtype in specs]}


def _without_code(obj: Any) -> Any:
    """``obj`` with each ``*_initializer`` that names code set to None."""
    if isinstance(obj, dict):
        return {k: None if k.endswith("_initializer") and names_code(v) else _without_code(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_without_code(v) for v in obj]
    return obj


def _rebuild_layer(entry: dict, tensors: dict[str, torch.Tensor], doc: dict) -> L.Layer:
    config = _without_code(entry["config"])
    if names_code(config):  # only a crafted file puts one outside an initializer's key
        raise ValueError("the config names code (from_callable) outside an initializer")
    layer = L.deserialize(config)
    specs = []
    for spec in entry["inputs"]:
        shape, dtype = spec["shape"], getattr(torch, spec["dtype"])
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {spec['dtype']!r}")
        specs.append((shape, torch.int64 if not dtype.is_floating_point else dtype))
    build_within(layer, specs, sum(t.numel() for t in tensors.values()))
    floats = {tensors[name].dtype for name in entry["variables"].values()
              if tensors[name].dtype.is_floating_point}
    if len(floats) == 1 and floats != {torch.float32}:
        layer.to(floats.pop())
    params = dict(layer.state_dict(keep_vars=True))
    _assign(params, entry["variables"], tensors, doc, type(layer).__name__)
    return layer.eval()


# -- both ------------------------------------------------------------------------------------

def _assign(params: dict[str, torch.Tensor], saved: dict[str, str], tensors: dict, doc: dict,
            owner: str) -> None:
    """Copy each saved variable into ``params[key]``, with its trainability and provenance."""
    if set(params) != set(saved):
        raise ValueError(f"{owner} has variables {sorted(params)}, the file {sorted(saved)}")
    with torch.no_grad():
        for key, var in params.items():
            value, info = tensors[saved[key]], doc["variables"][saved[key]]
            if value.shape != var.shape or value.dtype != var.dtype:
                raise ValueError(f"{saved[key]}: the file has {list(value.shape)} {value.dtype}, "
                                 f"the rebuilt model {list(var.shape)} {var.dtype}")
            var.copy_(value)
            if not isinstance(var, torch.nn.Parameter):
                continue
            # files before requires_grad was recorded: a variable took gradients if trainable
            frozen = not info.get("requires_grad", info["trainable"])
            var.requires_grad_(not frozen and var.dtype.is_floating_point)
            var.is_trainable = bool(info["trainable"])
            prov = info["provenance"]
            if prov is not None:
                init, note = _safe_init(prov["initializer"]), prov["note"]
                if init is None and prov["initializer"] is not None:
                    note = f"{note}; {prov['repr']} is not re-imported from a file".lstrip("; ")
                var.provenance = _scope.Provenance(init, prov["origin"], prov["scope"], note)


def rebuild(tree: dict, tensors: dict[str, torch.Tensor], doc: dict, scope: str | None):
    """The model a ``describe`` entry stands for, with the file's weights (TypeError,
    ValueError, KeyError or AttributeError where the entry does not rebuild); ``scope`` is a
    cell's (the caller refuses it for a layer)."""
    if tree.get("kind") == LAYER:
        return _rebuild_layer(tree, tensors, doc)
    return _rebuild_cell(tree, tensors, doc, scope)
