"""Keras model configs <-> rnnkit ``Sequential`` and functional ``Model``.

Keras 3 writes a functional model's layers in its own graph order (deepest first, ties in
traversal order) and names the weights of the ``.weights.h5`` after that order, so
``keras_order`` reproduces it for models built in rnnkit. Keras 3 also records the mask of an
``Embedding(mask_zero=True)`` or ``Masking`` as explicit ops (``not_equal``, ``any``) passed as
``mask=``; ``KerasNotEqual`` and ``KerasAny`` are those ops.
"""

from __future__ import annotations

from typing import Any

import torch

from rnnkit import layers as L
from rnnkit.io._keras_config import ConfigError, check_entry, layer_from_keras, layer_to_keras
from rnnkit.layers.cells import state_count
from rnnkit.layers.model import SymbolicTensor, _flatten, _map, _Node

InputSpec = tuple[list, torch.dtype]  # (batch shape with None for free axes, dtype)
_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "bool")
_MODELS = {"Sequential": L.Sequential, "Functional": L.Model, "Model": L.Model}
_OPS_MODULE = ("keras.src.ops.numpy",)


class KerasNotEqual(L.Layer):
    """``inputs != other`` (``keras.ops.not_equal``): how Keras 3 spells an Embedding's mask."""

    def forward(self, inputs: torch.Tensor, other: float = 0, mask=None, training=None):
        return inputs != other


class KerasAny(L.Layer):
    """``inputs.any(axis)`` (``keras.ops.any``): with ``KerasNotEqual``, a Masking layer's mask."""

    def __init__(self, axis: int = -1, keepdims: bool = False, name: str | None = None,
                 trainable: bool = True):
        if not isinstance(axis, int) or isinstance(axis, bool) or not isinstance(keepdims, bool):
            raise ConfigError(f"Any: axis must be an int and keepdims a bool, got {axis!r}, "
                              f"{keepdims!r}")
        super().__init__(name=name, trainable=trainable)
        self.axis, self.keepdims = axis, keepdims

    def forward(self, inputs: torch.Tensor, mask=None, training=None):
        return inputs.bool().any(dim=self.axis, keepdim=self.keepdims)

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis, "keepdims": self.keepdims}


_OPS = {"NotEqual": KerasNotEqual, "Any": KerasAny}


def _op_from_keras(item: dict, where: str, name: str) -> L.Layer:
    cls_name, config = check_entry(item, where, _OPS, _OPS_MODULE)
    extra = {k: v for k, v in config.items() if k != "name"}
    if cls_name == "NotEqual" and extra:
        raise ConfigError(f"{where}: NotEqual options {sorted(extra)} are not supported")
    return _OPS[cls_name](name=name, **extra)


def _op_to_keras(op: L.Layer) -> dict:
    config = {k: v for k, v in op.get_config().items() if k != "trainable"}
    cls_name = next(k for k, c in _OPS.items() if isinstance(op, c))
    return {"module": _OPS_MODULE[0], "class_name": cls_name, "config": config,
            "registered_name": cls_name}


def _spec(config: dict, where: str) -> InputSpec:
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    if not isinstance(shape, list) or not shape or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and d > 0) for d in shape):
        raise ConfigError(f"{where}: batch_shape must be a list of positive sizes or null, "
                          f"got {shape!r:.80}")
    dtype = config.get("dtype", "float32")
    if isinstance(dtype, dict):  # a Keras 3 DTypePolicy
        dtype = (dtype.get("config") or {}).get("name")
    if dtype not in _DTYPES:
        raise ConfigError(f"{where}: dtype must be one of {list(_DTYPES)}, got {dtype!r:.80}")
    return shape, getattr(torch, dtype)


def _name(entry: dict, where: str) -> str:
    config = entry.get("config")
    name = entry.get("name", config.get("name") if isinstance(config, dict) else None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: a layer has no name")
    return name


def model_from_keras(entry: Any, legacy: bool) -> tuple[L.Layer, list[InputSpec], list]:
    """An rnnkit model from a Keras model config.

    Returns:
        ``(model, input specs, layers in the file's order)``; the order names the weights.

    Raises:
        ConfigError: an unsafe, unknown or malformed config.
    """
    cls_name, config = check_entry(entry, "model config", _MODELS)
    layers = config.get("layers")
    if not isinstance(layers, list):
        raise ConfigError(f"model config: 'layers' must be a list, got {layers!r:.80}")
    name = config.get("name")
    if cls_name == "Sequential":
        return _sequential(entry, config, layers, legacy)
    inputs, made, order, specs = {}, {}, [], {}
    for i, item in enumerate(layers):
        where = f"layer {i}"
        name_i = _name(item if isinstance(item, dict) else {}, where)
        if any(o.name == name_i for o in order) or name_i in inputs:
            raise ConfigError(f"{where}: layer name {name_i!r} is used twice")
        if isinstance(item, dict) and item.get("class_name") == "InputLayer":
            _, cfg = check_entry(item, where, ("InputLayer",))
            specs[name_i] = _spec(cfg, f"{where} (InputLayer {name_i!r})")
            inputs[name_i] = L.Input(specs[name_i][0][1:], specs[name_i][1], name_i)
            made[(name_i, 0)] = [inputs[name_i]]
            continue
        if isinstance(item, dict) and item.get("module") in _OPS_MODULE:
            layer = _op_from_keras(item, where, name_i)
        else:
            layer = layer_from_keras(item, where, legacy)
        order.append(layer)
        nodes = item.get("inbound_nodes")
        if not isinstance(nodes, list):
            raise ConfigError(f"{where}: inbound_nodes must be a list, got {nodes!r:.80}")
        for k, node in enumerate(nodes):
            args, kwargs = _node_call(node, made, f"{where} node {k}")
            if kwargs.get("initial_state") is not None:
                kwargs["initial_state"] = _initial_state(layer, kwargs["initial_state"], legacy,
                                                         f"{where} node {k}")
            out = layer(*args, **kwargs)
            made[(name_i, k)] = _flatten(out)  # a reference's tensor index: the outputs flattened
    ins = _endpoints(config.get("input_layers"), made, "input_layers")
    outs = _endpoints(config.get("output_layers"), made, "output_layers")
    if not all(t.node is None for t in _flat(ins)):
        raise ConfigError("input_layers must name InputLayers")
    model = L.Model(ins, outs, name=name if isinstance(name, str) and name else None)
    return model, [(list(t.shape), t.dtype) for t in _flat(ins)], order


def _flat(x) -> list:
    return list(x) if isinstance(x, list) else [x]


def _sequential(entry: dict, config: dict, layers: list, legacy: bool):
    spec, made = None, []
    for i, item in enumerate(layers):
        where = f"layer {i}"
        if isinstance(item, dict) and item.get("class_name") == "InputLayer":
            _, cfg = check_entry(item, where, ("InputLayer",))
            if i:
                raise ConfigError(f"{where}: an InputLayer may only come first")
            spec = _spec(cfg, f"{where} (InputLayer)")
            continue
        layer = layer_from_keras(item, where, legacy)
        cfg = item["config"]
        if not made and spec is None and ("batch_input_shape" in cfg or "batch_shape" in cfg):
            spec = (_spec({**cfg, "dtype": "float32"}, where)[0],
                    torch.int64 if isinstance(layer, L.Embedding) else torch.float32)
        made.append(layer)
    if spec is None:
        shape = (entry.get("build_config") or {}).get("input_shape", config.get("build_input_shape"))
        if shape is not None:
            dtype = "int64" if made and isinstance(made[0], L.Embedding) else "float32"
            spec = _spec({"batch_shape": shape, "dtype": dtype}, "build_config")
    name = config.get("name")
    model = L.Sequential(made, name=name if isinstance(name, str) and name else None)
    return model, [spec] if spec else [], made


def _ref(value: Any) -> tuple | None:
    """``(layer, node, tensor)`` of a Keras 3 ``__keras_tensor__`` or a Keras 2 triple."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        config = value.get("config")
        value = config.get("keras_history") if isinstance(config, dict) else None
    elif not (isinstance(value, list) and value and isinstance(value[0], str)):
        return None
    if (not isinstance(value, list) or len(value) not in (3, 4) or not isinstance(value[0], str)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:3])):
        raise ConfigError(f"bad tensor reference {value!r:.80}")
    return tuple(value[:3])


def _resolve(value: Any, made: dict, where: str) -> Any:
    ref = _ref(value)
    if ref is None:
        if isinstance(value, list):
            return [_resolve(v, made, where) for v in value]
        if value is None or isinstance(value, (int, float, str)):
            return value
        raise ConfigError(f"{where}: unsupported argument {value!r:.80}")
    outs = made.get(ref[:2])
    if outs is None or not 0 <= ref[2] < len(outs):
        raise ConfigError(f"{where}: refers to {ref!r}, which is not defined before it")
    return outs[ref[2]]


def _state_refs(value: Any, where: str) -> Any:
    """A tf.keras node's state inputs: a reference, or a list of them (nesting), without the
    per-reference kwargs."""
    if _ref(value) is not None:
        return value[:3]
    if isinstance(value, list) and value:
        return [_state_refs(v, where) for v in value]
    raise ConfigError(f"{where}: bad state input {value!r:.80}")


def _node_call(node: Any, made: dict, where: str) -> tuple[list, dict]:
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        args, kwargs = node.get("args"), node.get("kwargs", {})
    elif isinstance(node, list) and node and _ref(node[0]) is not None:  # Keras 2
        args, kwargs = [node[0][:3]], (node[0][3] if len(node[0]) > 3 else {})
        if len(node) > 1 and isinstance(kwargs, dict):
            # tf.keras records an RNN's initial states as inputs after its sequence (a stack's
            # nested one list per cell)
            kwargs = {**kwargs, "initial_state": [_state_refs(n, where) for n in node[1:]]}
    else:
        raise ConfigError(f"{where}: unsupported inbound node {node!r:.100} (one input expected)")
    if not isinstance(args, list) or not args or not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: a node needs a list of args and a dict of kwargs")
    # ``training`` pinned at trace time only matters in training mode; the layer's mode decides.
    # tf.keras's Bidirectional records ``constants: None``.
    kwargs = {k: v for k, v in kwargs.items() if not (k == "constants" and v is None)}
    unknown = set(kwargs) - {"mask", "initial_state", "training"}
    if unknown:
        raise ConfigError(f"{where}: call arguments {sorted(unknown)} are not supported")
    args = [_resolve(a, made, where) for a in args]
    if not isinstance(args[0], SymbolicTensor):
        raise ConfigError(f"{where}: the first argument must be a tensor, got {args[0]!r:.80}")
    return args, {k: _resolve(v, made, where) for k, v in kwargs.items() if k != "training"}


def _initial_state(layer: L.Layer, states: Any, legacy: bool, where: str) -> list:
    """A call's ``initial_state``, checked, with a stack's flat states (tf.keras lists them
    flat) nested one list per cell. A tf.keras layer called with states keeps tf.keras's mask
    rule (``mask_with_initial_state``)."""
    if not isinstance(layer, (L.RNN, L.Bidirectional)):
        raise ConfigError(f"{where}: a {type(layer).__name__} layer takes no initial_state")
    if not isinstance(states, list) or not all(isinstance(t, SymbolicTensor) for t in _flatten(states)):
        raise ConfigError(f"{where}: initial_state must be a list of tensors, got {states!r:.80}")
    if legacy:
        layer.mask_with_initial_state = True
    cells = getattr(getattr(layer, "cell", None), "cells", None)
    if cells is None or not all(isinstance(t, SymbolicTensor) for t in states):
        return states
    counts = [state_count(c) for c in cells]
    if len(states) != sum(counts):
        raise ConfigError(f"{where}: a stack of {len(cells)} cells takes {sum(counts)} initial "
                          f"states, got {len(states)}")
    flat = iter(states)
    return [[next(flat) for _ in range(n)] for n in counts]


def _endpoints(value: Any, made: dict, where: str):
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list, got {value!r:.80}")
    single = isinstance(value[0], str)
    out = [_resolve(v, made, where) for v in ([value] if single else value)]
    if not all(isinstance(t, SymbolicTensor) for t in _flatten(out)):
        raise ConfigError(f"{where} must name tensors, got {value!r:.80}")
    return out[0] if single else out


def keras_order(model: L.Model) -> list:
    """The Keras order of a functional model's operations (``Input`` tensors and layers):
    deepest first (depth = longest path to an output), ties in traversal order."""
    index: dict[int, int] = {}
    ops: dict[int, Any] = {}
    post: list = []
    done: set[int] = set()

    def op_of(node):
        return node.layer if isinstance(node, _Node) else node

    def visit(t: SymbolicTensor) -> None:
        node = t.node or t
        if id(node) in done:
            return
        index.setdefault(id(op_of(node)), len(index))
        ops[id(op_of(node))] = op_of(node)
        for parent in (t.node.parents() if t.node else ()):
            visit(parent)
        done.add(id(node))
        post.append(node)

    for out in model._outputs:
        visit(out)
    node_depth: dict[int, int] = {}
    op_depth: dict[int, int] = {}
    for node in reversed(post):
        depth = max(node_depth.setdefault(id(node), 0), op_depth.get(id(op_of(node)), 0))
        op_depth[id(op_of(node))] = node_depth[id(node)] = depth
        for parent in (node.parents() if isinstance(node, _Node) else ()):
            key = id(parent.node or parent)
            node_depth[key] = max(depth + 1, node_depth.get(key, 0))
    return sorted(ops.values(), key=lambda op: (-op_depth[id(op)], index[id(op)]))


def _step_shape(layer) -> list[int] | None:
    """One step's input shape without batch (``[depth]``; a ConvLSTM's ``[*spatial, channels]``),
    None for a layer not built or that does not tell."""
    if isinstance(layer, L.RNN):
        return layer.cell.step_shape
    if isinstance(layer, L.Bidirectional):
        return layer.forward_layer.cell.step_shape
    if isinstance(layer, L.TimeDistributed):
        return _step_shape(layer.layer)
    depth = getattr(layer, "input_depth", None) if isinstance(layer, L.Dense) else None
    return None if depth is None else [depth]


def _input_entry(name: str, shape: list, dtype: str) -> dict:
    return {"module": "keras.layers", "class_name": "InputLayer",
            "config": {"batch_shape": shape, "dtype": dtype, "sparse": False, "name": name},
            "registered_name": None}


def input_spec(layers) -> tuple[list, str] | None:
    """``(shape without batch, dtype)`` of what the first of ``layers`` to tell reads, as a Keras
    ``InputLayer`` states it: token ids for an Embedding, ``[time, depth]`` floats for a built
    layer (``[time, *spatial, channels]`` for a ConvLSTM); None when no layer tells (none
    built)."""
    for layer in layers:
        if isinstance(layer, L.Embedding):
            return [None], "int32"
        step = _step_shape(layer)
        if step is not None:
            return [None, *step], "float32"
    return None


def sequential_to_keras(model: L.Sequential, input_shape) -> tuple[dict, list]:
    """Keras 3 config of a ``Sequential``; ``input_shape`` (without batch) or inferred."""
    dtype = "float32"
    if input_shape is None:
        spec = input_spec(model.model_layers)
        if spec is None:
            raise ValueError("save_keras: cannot tell the model's input shape (is it built?); "
                             "pass input_shape=(time, features)")
        input_shape, dtype = spec
    elif model.model_layers and isinstance(model.model_layers[0], L.Embedding):
        dtype = "int32"
    shape = [None, *input_shape]
    layers = [_input_entry(f"{model.name}_input", shape, dtype)]
    layers += [layer_to_keras(layer) for layer in model.model_layers]
    config = {"name": model.name, "trainable": model.trainable, "layers": layers}
    return ({"module": "keras", "class_name": "Sequential", "config": config,
             "registered_name": None, "build_config": {"input_shape": shape}},
            list(model.model_layers))


def functional_to_keras(model: L.Model) -> tuple[dict, list]:
    """Keras 3 config of a functional ``Model`` and its operations (inputs too) in Keras order."""
    order = keras_order(model)
    names = {id(op): op.name for op in order if not isinstance(op, SymbolicTensor)}
    for k, op in enumerate(o for o in order if isinstance(o, SymbolicTensor)):
        base = op.name or "input_layer"
        names[id(op)] = base if base not in names.values() else f"{base}_{k}"
    node_index: dict[int, int] = {}
    per_layer: dict[int, list[_Node]] = {}
    for node in model._nodes:
        per_layer.setdefault(id(node.layer), []).append(node)
        node_index[id(node)] = len(per_layer[id(node.layer)]) - 1

    def ref(v):
        if not isinstance(v, SymbolicTensor):
            return [ref(x) for x in v] if isinstance(v, (list, tuple)) else v
        history = ([names[id(v)], 0, 0] if v.node is None else
                   [names[id(v.node.layer)], node_index[id(v.node)], v.index])
        shape = list(v.shape) if v.node is None else [None]  # Keras reads the history, not this
        return {"class_name": "__keras_tensor__",
                "config": {"shape": shape, "dtype": str(v.dtype).removeprefix("torch."),
                           "keras_history": history}}

    layers = []
    for op in order:
        if isinstance(op, SymbolicTensor):
            entry = _input_entry(names[id(op)], list(op.shape), str(op.dtype).removeprefix("torch."))
            layers.append({**entry, "name": names[id(op)], "inbound_nodes": []})
            continue
        entry = _op_to_keras(op) if isinstance(op, tuple(_OPS.values())) else layer_to_keras(op)
        nodes = [{"args": [ref(n.inputs), *ref(list(n.args))],
                  "kwargs": {k: ref(v) for k, v in n.kwargs.items()}}
                 for n in per_layer.get(id(op), [])]
        layers.append({**entry, "name": op.name, "inbound_nodes": nodes})

    def endpoints(items, single):
        refs = _map(lambda t: ref(t)["config"]["keras_history"], items)
        return refs[0] if single else refs

    config = {"name": model.name, "trainable": model.trainable, "layers": layers,
              "input_layers": endpoints(model._inputs, model._single_in),
              "output_layers": endpoints(model._output_nest, model._single_out)}
    return ({"module": "keras.src.models.functional", "class_name": "Functional",
             "config": config, "registered_name": "Functional", "build_config": {"input_shape": None}},
            order)
