"""Keras core layers around recurrent ones: ``Embedding`` (``mask_zero``), ``Masking``, ``Dense``,
``Dropout``."""

from __future__ import annotations

import torch

from rnnkit import activations
from rnnkit import init as _init
from rnnkit.cells.base import check_units
from rnnkit.layers import penalties
from rnnkit.layers.base import Layer, make_weight


def _check_rate(rate, argname: str = "rate") -> float:
    if not isinstance(rate, (int, float)) or not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"{argname} must be a number in [0, 1), got {rate!r}")
    return float(rate)


class Embedding(Layer):
    """Integer ids ``[...]`` to vectors ``[..., output_dim]``, as ``keras.layers.Embedding``.

    Args:
        input_dim: vocabulary size (ids in ``[0, input_dim)``).
        output_dim: vector size.
        embeddings_initializer: default Keras's ``"uniform"`` (U(-0.05, 0.05)).
        embeddings_regularizer, embeddings_constraint: as Keras.
        mask_zero: id 0 is padding; the output carries the mask ``ids != 0``.
        activity_regularizer: a penalty on the output, in ``losses`` (see
            ``Layer.set_activity_regularizer``).
        name, trainable: as Keras.
    """

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer="uniform",
                 embeddings_regularizer=None, embeddings_constraint=None, mask_zero: bool = False,
                 activity_regularizer=None, name: str | None = None, trainable: bool = True):
        check_units(input_dim, "input_dim")
        check_units(output_dim, "output_dim")
        super().__init__(name=name, trainable=trainable)
        self.set_activity_regularizer(activity_regularizer)
        self.input_dim, self.output_dim, self.mask_zero = input_dim, output_dim, bool(mask_zero)
        self.embeddings_initializer = _init.get(embeddings_initializer)
        self.embeddings_regularizer = penalties.resolve(
            penalties.get_regularizer, w=embeddings_regularizer)["w"]
        self.embeddings_constraint = penalties.resolve(
            penalties.get_constraint, w=embeddings_constraint)["w"]
        self.built = False

    def _build(self, dtype: torch.dtype) -> None:
        var = make_weight(f"{self.path}/embeddings", [self.input_dim, self.output_dim], dtype,
                          self.embeddings_initializer, _init.get("uniform"))
        self.register_parameter("embeddings", self.track(var, self.embeddings_regularizer,
                                                         self.embeddings_constraint))
        self.built = True

    def forward(self, inputs, mask=None, training=None) -> torch.Tensor:
        ids = torch.as_tensor(inputs)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"inputs to Embedding must be integer ids, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.input_dim):
            raise ValueError(f"inputs to Embedding must be ids in [0, {self.input_dim}), got "
                             f"values in [{int(ids.min())}, {int(ids.max())}]")
        if not self.built:
            self._build(torch.get_default_dtype())
        return self.embeddings[ids.long()]

    def compute_mask(self, inputs, mask):
        return torch.as_tensor(inputs) != 0 if self.mask_zero else None

    def get_config(self) -> dict:
        init = self.embeddings_initializer
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": _init.serialize(init) if init is not None else None,
                "embeddings_regularizer": penalties.serialize(self.embeddings_regularizer),
                "embeddings_constraint": penalties.serialize(self.embeddings_constraint),
                "activity_regularizer": penalties.serialize(self.activity_regularizer),
                "mask_zero": self.mask_zero}


class Masking(Layer):
    """Mask the time steps whose features all equal ``mask_value``, as ``keras.layers.Masking``:
    the output is the input with masked steps zeroed; it carries the mask ``[batch, time]``."""

    def __init__(self, mask_value: float = 0.0, name: str | None = None, trainable: bool = True):
        super().__init__(name=name, trainable=trainable)
        self.mask_value = float(mask_value)

    def forward(self, inputs: torch.Tensor, mask=None, training=None) -> torch.Tensor:
        keep = self.compute_mask(inputs, mask)
        return inputs * keep.unsqueeze(-1).to(inputs.dtype)

    def compute_mask(self, inputs, mask):
        return (inputs != self.mask_value).any(dim=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "mask_value": self.mask_value}


class Dense(Layer):
    """``act(x W + b)`` on the last axis, as ``keras.layers.Dense`` (weights ``kernel [in, units]``,
    ``bias [units]``); the input mask passes through.

    Args:
        units: output size.
        activation: default linear.
        use_bias, kernel_initializer ("glorot_uniform"), bias_initializer ("zeros"),
        kernel/bias regularizer and constraint, activity_regularizer, name, trainable: as Keras.
    """

    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, activity_regularizer=None, name: str | None = None,
                 trainable: bool = True):
        check_units(units, "units")
        super().__init__(name=name, trainable=trainable)
        self.set_activity_regularizer(activity_regularizer)
        self.units, self.use_bias = units, bool(use_bias)
        self.activation = activations.get(activation, activations.linear)
        self.initializers = {"kernel": _init.get(kernel_initializer),
                             "bias": _init.get(bias_initializer)}
        self.regularizers = penalties.resolve(penalties.get_regularizer, kernel=kernel_regularizer,
                                              bias=bias_regularizer)
        self.constraints = penalties.resolve(penalties.get_constraint, kernel=kernel_constraint,
                                             bias=bias_constraint)
        self.input_depth: int | None = None

    def _build(self, depth: int, dtype: torch.dtype) -> None:
        defaults = {"kernel": _init.glorot_uniform(), "bias": _init.zeros()}
        shapes = {"kernel": [depth, self.units], "bias": [self.units]}
        for w in ("kernel", "bias") if self.use_bias else ("kernel",):
            var = make_weight(f"{self.path}/{w}", shapes[w], dtype, self.initializers[w], defaults[w])
            self.register_parameter(w, self.track(var, self.regularizers[w], self.constraints[w]))
        self.input_depth = depth

    def forward(self, inputs: torch.Tensor, mask=None, training=None) -> torch.Tensor:
        if not torch.is_tensor(inputs) or inputs.dim() < 1 or not inputs.dtype.is_floating_point:
            raise ValueError(f"inputs to Dense must be a floating tensor [..., features], got "
                             f"{list(inputs.shape) if torch.is_tensor(inputs) else inputs!r}")
        if self.input_depth is None:
            self._build(inputs.shape[-1], inputs.dtype)
        elif inputs.shape[-1] != self.input_depth:
            raise ValueError(f"inputs to Dense '{self.name}' must have {self.input_depth} features "
                             f"(it was built for that), got shape {list(inputs.shape)}")
        y = inputs @ self.kernel
        return self.activation(y + self.bias if self.use_bias else y)

    def get_config(self) -> dict:
        config = {**super().get_config(), "units": self.units,
                  "activation": activations.name_of(self.activation), "use_bias": self.use_bias}
        for w in ("kernel", "bias"):
            init = self.initializers[w]
            config[f"{w}_initializer"] = _init.serialize(init) if init is not None else None
            config[f"{w}_regularizer"] = penalties.serialize(self.regularizers[w])
            config[f"{w}_constraint"] = penalties.serialize(self.constraints[w])
        config["activity_regularizer"] = penalties.serialize(self.activity_regularizer)
        return config


class Dropout(Layer):
    """Inverted dropout in training (kept values scaled by ``1/(1-rate)``), identity otherwise.

    Args:
        rate: fraction dropped, in [0, 1).
        noise_shape: broadcastable mask shape (``None`` entries take the input's size), e.g.
            ``(None, 1, None)`` drops the same features at every time step.
        seed: seed of the layer's own generator.
        name, trainable: as Keras.
    """

    def __init__(self, rate: float, noise_shape=None, seed: int | None = None,
                 name: str | None = None, trainable: bool = True):
        super().__init__(name=name, trainable=trainable)
        self.rate = _check_rate(rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def forward(self, inputs: torch.Tensor, mask=None, training=None) -> torch.Tensor:
        if not self.is_training(training) or self.rate == 0.0:
            return inputs
        shape = list(inputs.shape)
        if self.noise_shape is not None:
            if len(self.noise_shape) != inputs.dim():
                raise ValueError(f"noise_shape {self.noise_shape} must have one entry per input "
                                 f"axis, inputs have shape {shape}")
            shape = [n if s is None else s for s, n in zip(self.noise_shape, shape, strict=True)]
        u = torch.rand(shape, generator=self._generator, dtype=inputs.dtype).to(inputs.device)
        return inputs * (u >= self.rate).to(inputs.dtype) / (1.0 - self.rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate,
                "noise_shape": list(self.noise_shape) if self.noise_shape is not None else None,
                "seed": self.seed}
