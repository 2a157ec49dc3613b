"""Composing layers: ``Sequential`` and a small functional API (``Input`` + calling layers +
``Model(inputs, outputs)``). Masks ride on the tensors between layers, as in Keras 3, so an
``Embedding(mask_zero=True)`` or ``Masking`` masks every RNN downstream of it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rnnkit.layers.base import Layer, deserialize, get_mask, serialize, set_mask


class SymbolicTensor:
    """A placeholder in a functional graph: an ``Input`` or the ``index``-th output of a node."""

    def __init__(self, shape: tuple, dtype: torch.dtype, node: _Node | None = None,
                 index: int = 0, name: str | None = None):
        self.shape, self.dtype, self.node, self.index, self.name = shape, dtype, node, index, name

    def __repr__(self) -> str:
        where = self.name if self.node is None else f"{self.node.layer.name}[{self.index}]"
        return f"SymbolicTensor({where})"


class _Node:
    """One call of a layer in a functional graph."""

    def __init__(self, layer: Layer, inputs: SymbolicTensor, args: tuple, kwargs: dict):
        self.layer, self.inputs, self.args, self.kwargs = layer, inputs, args, kwargs
        self.outputs: list[SymbolicTensor] = []

    def parents(self) -> list[SymbolicTensor]:
        return [t for t in _flatten((self.inputs, self.args, self.kwargs))
                if isinstance(t, SymbolicTensor)]


def _flatten(obj) -> list:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _flatten(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _flatten(v)]
    return [obj]


def _map(fn, obj):
    if isinstance(obj, dict):
        return {k: _map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(fn, v) for v in obj)
    return fn(obj)


def Input(shape: Sequence[int | None] | None = None, dtype: torch.dtype | str = torch.float32,
          name: str | None = None, *, batch_size: int | None = None,
          batch_shape: Sequence[int | None] | None = None) -> SymbolicTensor:
    """A functional-graph input of shape ``[batch, *shape]``, as ``keras.Input``.

    Args:
        shape: the sizes after the batch axis (None for any size).
        dtype: a torch dtype or its name (``"float32"``, ``"int32"``, as Keras writes it).
        name: the input's name.
        batch_size: a fixed batch size (a stateful RNN's), or None.
        batch_shape: the whole shape, batch axis first, in place of ``shape`` and
            ``batch_size``.

    Raises:
        TypeError / ValueError: neither or both of ``shape`` and ``batch_shape``, a shape that
            is not a sequence of sizes, or an unknown dtype name.

    Example:
        >>> x = Input((None, 3)); y = LSTM(8)(Masking()(x)); model = Model(x, y)  # doctest: +SKIP
    """
    if (shape is None) == (batch_shape is None):
        raise ValueError("give one of shape (without the batch axis) and batch_shape (with it), "
                         f"got shape={shape!r}, batch_shape={batch_shape!r}")
    given = shape if shape is not None else batch_shape
    full = ((batch_size, *shape) if shape is not None else batch_shape
            ) if isinstance(given, (list, tuple)) else None
    if full is None or not all(d is None or (isinstance(d, int) and d >= 0) for d in full):
        raise TypeError(f"shape must be a tuple of sizes (without the batch axis) and batch_shape "
                        f"one with it, got shape={shape!r}, batch_shape={batch_shape!r}")
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype):
            raise ValueError(f"dtype must be a torch dtype or its name ('float32', 'int32', ...), "
                             f"got {dtype!r}")
        dtype = named
    return SymbolicTensor(tuple(full), dtype, name=name or "input")


def symbolic_call(layer: Layer, inputs: SymbolicTensor, args: tuple, kwargs: dict):
    """Record ``layer(inputs, *args, **kwargs)`` as a graph node; return its symbolic outputs,
    nested as the call's (``Layer.output_structure``), each indexed by its place in the
    flattened outputs (Keras's tensor index)."""
    node = _Node(layer, inputs, args, kwargs)

    def make(template):
        if isinstance(template, list):
            return [make(t) for t in template]
        node.outputs.append(SymbolicTensor((None,), inputs.dtype, node, len(node.outputs)))
        return node.outputs[-1]

    return make(layer.output_structure())


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class Model(Layer):
    """A functional model: the layers between ``inputs`` and ``outputs``, run in graph order.

    Args:
        inputs: an ``Input`` or a list of them.
        outputs: a symbolic output or a list of them, which may nest (an RNN's states).
        name, trainable: as Keras.

    Call: ``model(x)`` (or a list matching ``inputs``); returns the outputs in the same form,
    one output alone (from a one-item list too, as Keras).

    Raises:
        ValueError: an output depends on an ``Input`` that is not among ``inputs``.
    """

    masks_from_sublayers = True

    def __init__(self, inputs, outputs, name: str | None = None, trainable: bool = True):
        super().__init__(name=name, trainable=trainable)
        # outputs may nest (an RNN's states over a stack of cells); _outputs is them flattened
        self._inputs, self._outputs = _as_list(inputs), _flatten(outputs)
        self._output_nest = _map(lambda t: t, _as_list(outputs))
        self._single_in = not isinstance(inputs, (list, tuple))
        # Keras (3 and tf.keras) returns a one-item list of outputs as the tensor alone
        self._single_out = not isinstance(outputs, (list, tuple)) or (
            len(outputs) == 1 and not isinstance(outputs[0], (list, tuple)))
        for arg, items in (("inputs", self._inputs), ("outputs", self._outputs)):
            if not items or not all(isinstance(t, SymbolicTensor) for t in items):
                raise TypeError(f"{arg} must be symbolic tensors (from Input and layer calls), "
                                f"got {items!r:.80}")
        self._nodes: list[_Node] = []
        seen: set[int] = set()
        for out in self._outputs:
            self._visit(out, seen)
        self.model_layers = torch.nn.ModuleList(dict.fromkeys(n.layer for n in self._nodes))

    def _visit(self, t: SymbolicTensor, seen: set[int]) -> None:
        if t.node is None:
            if not any(t is i for i in self._inputs):
                raise ValueError(f"outputs depend on {t!r}, which is not among inputs")
            return
        if id(t.node) in seen:
            return
        seen.add(id(t.node))
        for parent in t.node.parents():
            self._visit(parent, seen)
        self._nodes.append(t.node)

    def forward(self, inputs, mask=None, training=None):
        xs = _as_list(inputs)
        if len(xs) != len(self._inputs):
            raise ValueError(f"inputs must be {len(self._inputs)} tensor(s), got {len(xs)}")
        values = {id(s): x for s, x in zip(self._inputs, xs, strict=True)}
        if mask is not None and len(xs) == 1:
            values[id(self._inputs[0])] = _with_mask(xs[0], mask)
        for node in self._nodes:
            args, kwargs = _map(lambda v: values[id(v)] if isinstance(v, SymbolicTensor) else v,
                                (node.args, node.kwargs))
            out = node.layer(values[id(node.inputs)], *args, training=training, **kwargs)
            outs = _flatten(out) if node.layer.output_structure() is not None else [out]
            for sym, o in zip(node.outputs, outs, strict=True):
                values[id(sym)] = o
        result = _map(lambda o: values[id(o)], self._output_nest)
        return result[0] if self._single_out else result

    def get_config(self) -> dict:
        index = {id(n): i for i, n in enumerate(self._nodes)}

        def ref(v):
            if not isinstance(v, SymbolicTensor):
                return v
            if v.node is None:
                return {"input": next(k for k, i in enumerate(self._inputs) if i is v)}
            return {"node": index[id(v.node)], "index": v.index}

        return {**super().get_config(),
                "inputs": [{"shape": list(i.shape[1:]), "dtype": str(i.dtype).removeprefix("torch."),
                            "name": i.name, **({"batch_size": i.shape[0]} if i.shape[0] else {})}
                           for i in self._inputs],
                "layers": [serialize(layer) for layer in self.model_layers],
                "nodes": [{"layer": n.layer.name, "inputs": ref(n.inputs),
                           "args": _map(ref, list(n.args)), "kwargs": _map(ref, n.kwargs)}
                          for n in self._nodes],
                "outputs": _map(ref, self._output_nest), "single": [self._single_in,
                                                                      self._single_out]}

    @classmethod
    def from_config(cls, config: dict):
        layers = {c["config"]["name"]: deserialize(c) for c in config["layers"]}
        inputs = [Input(i["shape"], i["dtype"], i["name"], batch_size=i.get("batch_size"))
                  for i in config["inputs"]]
        made: list = []

        def resolve(v):
            if isinstance(v, dict) and "input" in v:
                return inputs[v["input"]]
            if isinstance(v, dict) and "node" in v:
                out = made[v["node"]]  # the index is in the outputs flattened
                return _flatten(out)[v["index"]] if isinstance(out, list) else out
            return v

        for n in config["nodes"]:
            args, kwargs = _map_refs(resolve, n["args"]), _map_refs(resolve, n["kwargs"])
            made.append(layers[n["layer"]](resolve(n["inputs"]), *args, **kwargs))
        outputs = _map_refs(resolve, config["outputs"])
        single_in, single_out = config.get("single", [False, False])
        return cls(inputs[0] if single_in else inputs, outputs[0] if single_out else outputs,
                   name=config["name"], trainable=config["trainable"])


def _map_refs(fn, obj):
    """``_map`` that treats ``{"input": ..}`` / ``{"node": ..}`` dicts as leaves."""
    if isinstance(obj, dict) and not ({"input", "node"} & obj.keys()):
        return {k: _map_refs(fn, v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_refs(fn, v) for v in obj]
    return fn(obj)


def _with_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A view of ``x`` carrying ``mask`` (the caller's tensor is left as it was)."""
    x = x.view_as(x)
    set_mask(x, mask)
    return x


class Sequential(Layer):
    """A stack of layers, each fed the previous one's output (and mask), as ``keras.Sequential``.

    Weights are named ``<sequential name>/<layer name>/...`` as in Keras.

    Args:
        layers: layers to stack (more can be ``add``-ed); the first may be an ``Input``, as in
            Keras 3, which builds the stack at once (one call on zeros of its shape, unknown
            sizes 1; stateful layers keep no state from it).
        name, trainable: as Keras.
    """

    masks_from_sublayers = True

    def __init__(self, layers: Sequence[Layer] = (), name: str | None = None,
                 trainable: bool = True):
        super().__init__(name=name, trainable=trainable)
        self.model_layers = torch.nn.ModuleList()
        layers = list(layers)
        given = layers.pop(0) if layers and isinstance(layers[0], SymbolicTensor) else None
        if given is not None and given.node is not None:
            raise TypeError(f"layers may start with an Input, not the output of a layer ({given!r})")
        for layer in layers:
            self.add(layer)
        if given is not None and self.model_layers:
            with torch.no_grad():
                self(torch.zeros([d or 1 for d in given.shape], dtype=given.dtype),
                     training=False)
            for module in self.modules():
                if getattr(module, "stateful", False):
                    module.reset_states()

    def add(self, layer: Layer) -> None:
        """Append ``layer`` (a layer returning one tensor)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"layer must be an rnnkit layer, got {type(layer).__name__}")
        if layer.num_outputs() != 1:
            raise ValueError(f"layer {layer.name!r} returns {layer.num_outputs()} tensors "
                             "(return_state?); Sequential needs one; use Model")
        layer.set_path(f"{self.path}/{layer.name}")
        self.model_layers.append(layer)

    def set_path(self, path: str) -> None:
        super().set_path(path)
        for layer in getattr(self, "model_layers", ()):
            layer.set_path(f"{path}/{layer.name}")

    def forward(self, inputs, mask=None, training=None):
        x = _with_mask(inputs, mask) if mask is not None else inputs
        for layer in self.model_layers:
            x = layer(x, mask=get_mask(x), training=training)
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "layers": [serialize(layer) for layer in self.model_layers]}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        return cls([deserialize(c) for c in config.pop("layers")], **config)
