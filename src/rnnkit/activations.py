"""Activation functions by Keras/TF name, including the two ``hard_sigmoid`` conventions."""

from __future__ import annotations

from collections.abc import Callable

import torch

Activation = Callable[[torch.Tensor], torch.Tensor]


def linear(x: torch.Tensor) -> torch.Tensor:
    return x


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras 3: ``relu6(x + 3) / 6``."""
    return torch.nn.functional.relu6(x + 3.0) / 6.0


def hard_sigmoid_keras2(x: torch.Tensor) -> torch.Tensor:
    """Keras 2 / tf.keras: ``clip(0.2 x + 0.5, 0, 1)`` (legacy ``.h5`` files carry this one)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis (Keras's default axis)."""
    return torch.softmax(x, dim=-1)


def log_softmax(x: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last axis."""
    return torch.log_softmax(x, dim=-1)


_BY_NAME: dict[str, Activation] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "relu6": torch.nn.functional.relu6,
    "elu": torch.nn.functional.elu,
    "selu": torch.nn.functional.selu,
    "softsign": torch.nn.functional.softsign,
    "softplus": torch.nn.functional.softplus,
    "gelu": torch.nn.functional.gelu,
    "swish": torch.nn.functional.silu,
    "silu": torch.nn.functional.silu,
    "hard_sigmoid": hard_sigmoid,
    "hard_sigmoid_keras2": hard_sigmoid_keras2,
    "linear": linear,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "exponential": torch.exp,
    "mish": torch.nn.functional.mish,
    "hard_silu": torch.nn.functional.hardswish,
    "hard_swish": torch.nn.functional.hardswish,
}


def get(identifier: str | Activation | None, default: Activation = torch.tanh) -> Activation:
    """Resolve an activation: a name (``"tanh"``, ``"relu"``...), a callable, or None (default).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: neither a str nor a callable.
    """
    if identifier is None:
        return default
    if isinstance(identifier, str):
        try:
            return _BY_NAME[identifier]
        except KeyError:
            raise ValueError(f"activation {identifier!r} is unknown; known: "
                             f"{', '.join(sorted(_BY_NAME))}") from None
    if callable(identifier):
        return identifier
    raise TypeError(f"activation must be a name or a callable, got {type(identifier).__name__}")


def name_of(fn: Activation) -> str:
    """The registered name of an activation, or its ``__name__``."""
    for name, known in _BY_NAME.items():
        if known is fn:
            return name
    return getattr(fn, "__name__", repr(fn))
