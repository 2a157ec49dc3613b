"""Keras weight regularizers (penalties added to the loss) and constraints (projections applied
after each optimizer step), with Keras names and configs."""

from __future__ import annotations

from collections.abc import Callable

import torch


class L1L2:
    """``l1 * sum(|w|) + l2 * sum(w^2)``."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1, self.l2 = float(l1), float(l2)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.l1 * w.abs().sum() + self.l2 * w.square().sum()

    def get_config(self) -> dict:
        return {"l1": self.l1, "l2": self.l2}


def l1(l1: float = 0.01) -> L1L2:
    """``l1 * sum(|w|)``."""
    return L1L2(l1=l1)


def l2(l2: float = 0.01) -> L1L2:
    """``l2 * sum(w^2)``."""
    return L1L2(l2=l2)


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    """``l1 * sum(|w|) + l2 * sum(w^2)``."""
    return L1L2(l1, l2)


class MaxNorm:
    """Rescale each column (norm over ``axis``, default 0: a kernel's input axis) to norm <= max_value."""

    def __init__(self, max_value: float = 2.0, axis: int = 0):
        self.max_value, self.axis = float(max_value), axis

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        norms = w.norm(dim=self.axis, keepdim=True)
        return w * torch.clamp(norms, max=self.max_value) / (norms + 1e-7)

    def get_config(self) -> dict:
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg:
    """Negative entries set to zero."""

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w.clamp_min(0.0)

    def get_config(self) -> dict:
        return {}


class UnitNorm:
    """Each column (norm over ``axis``) scaled to unit norm."""

    def __init__(self, axis: int = 0):
        self.axis = axis

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w / (w.norm(dim=self.axis, keepdim=True) + 1e-7)

    def get_config(self) -> dict:
        return {"axis": self.axis}


_REGULARIZERS = {"l1": l1, "l2": l2, "l1_l2": l1_l2, "L1L2": L1L2}
_CONSTRAINTS = {"max_norm": MaxNorm, "non_neg": NonNeg, "unit_norm": UnitNorm,
                "MaxNorm": MaxNorm, "NonNeg": NonNeg, "UnitNorm": UnitNorm}


def _get(identifier, table: dict, what: str) -> Callable:
    if isinstance(identifier, str):
        if identifier not in table:
            raise ValueError(f"{what} {identifier!r} is unknown; known: {', '.join(sorted(table))}")
        return table[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in table:
        return table[identifier["class_name"]](**identifier.get("config", {}))
    if callable(identifier):
        return identifier
    raise TypeError(f"{what} must be a name, a {{'class_name', 'config'}} dict or a callable, "
                    f"got {identifier!r}")


def get_regularizer(identifier) -> Callable:
    """A regularizer from a Keras name (``"l2"``), a serialized dict or a callable."""
    return _get(identifier, _REGULARIZERS, "regularizer")


def get_constraint(identifier) -> Callable:
    """A constraint from a Keras name (``"max_norm"``), a serialized dict or a callable."""
    return _get(identifier, _CONSTRAINTS, "constraint")


def resolve(get: Callable, **identifiers) -> dict[str, Callable | None]:
    """``{name: get(identifier)}``, None kept: a layer's regularizers or constraints by weight."""
    return {k: None if v is None else get(v) for k, v in identifiers.items()}


def serialize(obj) -> dict | None:
    """Config form of a regularizer or constraint (None stays None).

    Raises:
        TypeError: a plain callable, which has no config.
    """
    if obj is None:
        return obj
    if not hasattr(obj, "get_config"):
        raise TypeError(f"cannot serialize {obj!r}: use a named regularizer/constraint or an "
                        f"object with get_config")
    return {"class_name": type(obj).__name__, "config": obj.get_config()}
