"""Keras-style layer plumbing: unique names, weights with Keras paths and provenance, regularizer
losses, constraints, masks carried on tensors, the layer registry and argument checks."""

from __future__ import annotations

import re
import threading
import warnings

import torch
from torch.utils import _pytree as pytree

from rnnkit import init as _init
from rnnkit.layers.penalties import get_constraint, get_regularizer
from rnnkit.scope import Provenance, Variable

_names = threading.local()
_calls = threading.local()  # how deep in layer calls this thread is (0: the next is an entry call)
_REGISTRY: dict[str, type] = {}
MASK_ATTR = "_keras_mask"  # where a mask rides on a tensor between layers, as in Keras 3


def clear_session() -> None:
    """Restart automatic layer numbering (``lstm``, ``lstm_1``...), as ``keras.backend.clear_session``."""
    _names.counts = {}


def unique_name(base: str) -> str:
    """``base``, then ``base_1``, ``base_2``... (per thread, until ``clear_session``)."""
    counts = getattr(_names, "counts", None)
    if counts is None:
        counts = _names.counts = {}
    n = counts.get(base, 0)
    counts[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def snake(name: str) -> str:
    """Keras's ``to_snake_case``, behind its default names: ``SimpleRNN`` -> ``simple_rnn``,
    ``GRUCell`` -> ``gru_cell``, ``ConvLSTM2D`` -> ``conv_lstm2d``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def make_weight(path: str, shape: list[int], dtype: torch.dtype, initializer, default,
                note: str = "") -> Variable:
    """A ``Variable`` named ``path`` made by ``initializer`` (an argument) or the layer default."""
    chosen = _init.get(initializer)
    origin = "argument" if chosen is not None and chosen != default else "layer default"
    chosen = chosen if chosen is not None else default
    prov = Provenance(chosen, origin, note=note)
    return Variable(chosen(list(shape), dtype=dtype).detach(), True, op_name=path, provenance=prov)


def get_mask(x) -> torch.Tensor | None:
    """The Keras mask a tensor carries (None if it carries none)."""
    return getattr(x, MASK_ATTR, None) if torch.is_tensor(x) else None


def _is_tensor_argument(value) -> bool:
    """A tensor, or a non-empty nest of tensors and Nones (what Keras counts as one)."""
    if torch.is_tensor(value):
        return True
    leaves = pytree.tree_leaves(value) if isinstance(value, (list, tuple, dict)) else []
    return bool(leaves) and all(leaf is None or torch.is_tensor(leaf) for leaf in leaves)


def set_mask(x, mask: torch.Tensor | None) -> None:
    """Attach ``mask`` to tensor ``x`` (or to each tensor of a list, with a list of masks)."""
    if isinstance(x, (list, tuple)):
        masks = mask if isinstance(mask, (list, tuple)) else [mask] + [None] * (len(x) - 1)
        for t, m in zip(x, masks, strict=True):
            set_mask(t, m)
    elif torch.is_tensor(x):
        setattr(x, MASK_ATTR, mask)


def check_rank(x, rank: int, argname: str, layout: str) -> torch.Tensor:
    """Raise unless ``x`` is a tensor of rank ``rank``; ``layout`` names the expected axes."""
    if not torch.is_tensor(x) or x.dim() != rank:
        got = list(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{argname} must be a tensor of shape {layout} (rank {rank}), got {got}")
    return x


def check_mask(mask, batch: int, steps: int, argname: str = "mask",
               time_major: bool = False) -> torch.Tensor | None:
    """A ``[batch, time]`` bool mask (True = real step), or None; ``time_major``: ``mask`` is
    ``[time, batch]`` (tf.keras's for a time-major layer), returned transposed."""
    if mask is None:
        return None
    want, layout = ((steps, batch), "[time, batch]") if time_major else ((batch, steps),
                                                                         "[batch, time]")
    if not torch.is_tensor(mask) or tuple(mask.shape) != want:
        got = list(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"{argname} must have shape {layout} = {list(want)}, got {got}")
    return (mask.T if time_major else mask).bool()


class Tracked:
    """Mixin: registry for configs, weights with regularizers (``losses``) and constraints."""

    trainable = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def track(self, var: Variable, regularizer=None, constraint=None) -> Variable:
        """Register ``var``'s regularizer and constraint; freeze it if the layer is not trainable."""
        if regularizer is not None:
            self.__dict__.setdefault("_regularized", []).append((var, get_regularizer(regularizer)))
        if constraint is not None:
            self.__dict__.setdefault("_constrained", []).append((var, get_constraint(constraint)))
        if not self.trainable:
            var.requires_grad_(False)
        return var

    @property
    def losses(self) -> list[torch.Tensor]:
        """Regularization penalties of this layer and everything in it (add them to the loss):
        per layer, the activity penalties of the last call (``activity_regularizer``), then
        its weights' penalties at their current values."""
        return [loss for m in self.modules() for loss in (
            *m.__dict__.get("_activity_losses", ()),
            *(fn(v) for v, fn in m.__dict__.get("_regularized", ())))]

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Project constrained weights back onto their sets; call after each optimizer step."""
        for m in self.modules():
            for var, fn in m.__dict__.get("_constrained", ()):
                var.copy_(fn(var))

    @property
    def weights(self) -> list[Variable]:
        """All weights, in Keras order (``kernel, recurrent_kernel, bias``, forward before backward)."""
        return list(self.parameters())

    def get_weights(self) -> list:
        """The weights as numpy arrays, in ``weights`` order (``keras.Layer.get_weights``)."""
        return [w.detach().cpu().numpy() for w in self.weights]

    @torch.no_grad()
    def set_weights(self, values) -> None:
        """Copy arrays into the weights, in ``weights`` order (``keras.Layer.set_weights``).

        Raises:
            ValueError: a different number of arrays, or an array of the wrong shape.
        """
        weights, values = self.weights, list(values)
        if len(values) != len(weights):
            raise ValueError(f"set_weights: values has {len(values)} arrays but the layer has "
                             f"{len(weights)} weights ({[w.op_name for w in weights]})")
        for w, v in zip(weights, values, strict=True):
            v = torch.as_tensor(v, dtype=w.dtype)
            if v.shape != w.shape:
                raise ValueError(f"set_weights: {w.op_name} has shape {list(w.shape)}, got "
                                 f"{list(v.shape)}")
            w.copy_(v)


class Layer(Tracked, torch.nn.Module):
    """A Keras-style layer: built on first call, named uniquely, masks in and out, a config.

    ``layer(inputs, mask=None, training=None, **kwargs)``: without ``mask`` the mask carried by
    ``inputs`` is used (set by ``Embedding(mask_zero=True)``, ``Masking`` or an RNN with
    ``return_sequences``); ``compute_mask`` says which mask the outputs carry. ``training=None``
    means the module's own mode (``.train()`` / ``.eval()``). Called on ``Input`` tensors, a layer
    records a node of a functional ``Model`` instead of computing.
    """

    supports_masking = True
    mask_with_initial_state = False  # tf.keras's mask rule (see _implicit_mask); RNNs take it
    masks_from_sublayers = False  # containers: outputs already carry their last layer's masks
    activity_regularizer = None  # set by the layers that take one (Dense, Embedding, RNNs)

    def __init__(self, name: str | None = None, trainable: bool = True):
        super().__init__()
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"name must be a non-empty str without '/', got {name!r}")
        self.name = name or unique_name(snake(type(self).__name__))
        self.path = self.name
        self.trainable = bool(trainable)

    def __call__(self, inputs, *args, mask=None, training=None, **kwargs):
        from rnnkit.layers.model import SymbolicTensor, symbolic_call

        if isinstance(inputs, SymbolicTensor):
            return symbolic_call(self, inputs, args, kwargs if mask is None else {**kwargs, "mask": mask})
        carried, seen = get_mask(inputs), inputs
        if mask is None and carried is not None:
            mask = self._implicit_mask(carried, args, kwargs)
            if mask is None:  # the call dropped the mask: so do the layers it calls (Bidirectional's)
                seen = inputs.view_as(inputs)
        depth = getattr(_calls, "depth", 0)
        if depth == 0:  # an entry call: the activity penalties of the last one are dropped
            for m in self.modules():
                m.__dict__.pop("_activity_losses", None)
        _calls.depth = depth + 1
        try:
            outputs = super().__call__(seen, *args, mask=mask, training=training, **kwargs)
        finally:
            _calls.depth = depth
        if outputs is inputs:  # never tag the caller's own tensor with a mask
            outputs = inputs.view_as(inputs)
        if not self.masks_from_sublayers:  # from the carried mask where the call dropped it
            set_mask(outputs, self.compute_mask(inputs, carried if mask is None else mask))
        if self.activity_regularizer is not None:
            self.__dict__.setdefault("_activity_losses", []).extend(
                self._activity_penalty(o) for o in pytree.tree_leaves(outputs))
        return outputs

    def _implicit_mask(self, carried: torch.Tensor, args: tuple, kwargs: dict):
        """The mask a call without ``mask=`` uses: the one ``inputs`` carries, unless the call
        has other tensor arguments (``initial_state``) — Keras 3 then passes no mask (its
        layers look only for ``<argument>_mask``; keras-team/keras#19311), though the outputs
        still carry one. ``mask_with_initial_state=True`` (tf.keras's rule, set on layers
        loaded from tf.keras files) keeps it."""
        if self.mask_with_initial_state or not any(map(_is_tensor_argument, (*args, *kwargs.values()))):
            return carried
        if not self.__dict__.get("_warned_dropped_mask"):
            self._warned_dropped_mask = True
            warnings.warn(f"{type(self).__name__} {self.name!r} is called with initial_state: as "
                          "in Keras 3, the mask its inputs carry is not applied to this call "
                          "(pass mask= to apply it; its outputs still carry the mask)",
                          stacklevel=3)
        return None

    def _activity_penalty(self, output: torch.Tensor) -> torch.Tensor:
        """Keras's: the regularizer of an output over its batch size."""
        loss = self.activity_regularizer(output)
        return loss / output.shape[0] if output.dim() else loss

    def set_activity_regularizer(self, identifier) -> None:
        """``activity_regularizer``: a penalty on each output of every call, over the batch
        size, in ``losses`` until the next call (as Keras's; None for none)."""
        self.activity_regularizer = None if identifier is None else get_regularizer(identifier)

    def num_outputs(self) -> int:
        """How many tensors a call returns (more than one for ``return_state``)."""
        return 1

    def output_structure(self) -> list | None:
        """How a call's outputs nest: None (one tensor), or a list whose items are None (a
        tensor) or lists of them (a stack's state lists)."""
        n = self.num_outputs()
        return None if n == 1 else [None] * n

    def set_path(self, path: str) -> None:
        """Weight-name prefix (``sequential/lstm``); containers set it before building."""
        self.path = path

    def compute_mask(self, inputs: torch.Tensor, mask: torch.Tensor | None):
        """The mask the outputs carry: by default the input mask passes through."""
        return mask

    def get_config(self) -> dict:
        """Constructor arguments as a JSON-able dict; ``from_config`` rebuilds the layer."""
        return {"name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict):
        """Rebuild a layer from ``get_config``'s dict (weights are not part of it)."""
        return cls(**config)

    def is_training(self, training: bool | None) -> bool:
        return self.training if training is None else bool(training)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def serialize(obj) -> dict:
    """``{"class_name": ..., "config": ...}`` for a layer or a Keras cell."""
    return {"class_name": type(obj).__name__, "config": obj.get_config()}


def deserialize(config: dict):
    """Rebuild a layer or cell from ``serialize``'s dict.

    Raises:
        ValueError: not such a dict, or an unknown class name.
    """
    if not isinstance(config, dict) or config.get("class_name") not in _REGISTRY:
        raise ValueError(f"deserialize: config must be {{'class_name': one of {sorted(_REGISTRY)}, "
                         f"'config': {{...}}}}, got {config!r}")
    return _REGISTRY[config["class_name"]].from_config(dict(config.get("config") or {}))
