"""Initializers as small objects, with TensorFlow's definitions.

Every initializer is called as ``init(shape, dtype=torch.float32, generator=None) -> Tensor``,
has a ``repr`` that reads like the call that made it, and a JSON-able ``get_config()``.
Randomness comes from ``generator``; else from ``torch.Generator().manual_seed(seed)`` when the
initializer was given a ``seed`` (so it returns the same values on every call, as Keras' seeded
initializers do); else from torch's global RNG. Sampling is done in float64, then cast.

Example:
    >>> w = per_gate(orthogonal(), 4)([64, 256], generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import torch

from rnnkit._initializer import (
    _F64,
    _KERAS,
    _TRUNC_STD,
    Initializer,
    _check_number,
    _check_seed,
    _truncated,
    _uniform,
    compute_fans,
    deserialize,
    serialize,
)

__all__ = [
    "Initializer", "compute_fans", "serialize", "deserialize", "get", "zeros", "ones", "constant",
    "random_uniform", "random_normal", "truncated_normal", "variance_scaling", "glorot_uniform",
    "glorot_normal", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
    "lecun_uniform", "lecun_normal", "orthogonal", "identity", "uniform_unit_scaling",
    "per_gate", "chrono", "from_callable",
]


class zeros(Initializer):
    """All zeros."""

    def _sample(self, shape, dtype, generator):
        return torch.zeros(shape, dtype=dtype)


class ones(Initializer):
    """All ones."""

    def _sample(self, shape, dtype, generator):
        return torch.ones(shape, dtype=dtype)


class constant(Initializer):
    """A constant: ``value`` is a scalar (broadcast) or an array-like.

    An array-like must have ``shape``'s number of elements; it is reshaped row-major to ``shape``
    (as TF1's ``constant_initializer``).
    """

    def __init__(self, value: Any = 0):
        value = value.tolist() if hasattr(value, "tolist") else value  # tensors, numpy
        try:
            torch.as_tensor(value, dtype=_F64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"constant: value must be a number or a rectangular array-like of "
                             f"numbers, got {value!r}") from e
        self.value = value

    def _sample(self, shape, dtype, generator):
        if isinstance(self.value, (int, float, bool)):
            return torch.full(shape, self.value, dtype=dtype)
        value = torch.as_tensor(self.value, dtype=dtype)
        if value.numel() != math.prod(shape):
            raise ValueError(f"constant: value has shape {list(value.shape)} "
                             f"({value.numel()} elements) but shape is {shape} "
                             f"({math.prod(shape)} elements); they must match")
        return value.reshape(shape).clone()


class random_uniform(Initializer):
    """Uniform on ``[minval, maxval)``; TF1's defaults ``[0, 1)`` (``get`` gives Keras's).

    Args:
        minval, maxval: the range (``maxval=None`` means 1, as TF1); ``minval <= maxval``.
        seed: makes every call return the same values.
    """

    random = True

    def __init__(self, minval: float = 0.0, maxval: float | None = 1.0, seed: int | None = None):
        maxval = 1.0 if maxval is None else maxval
        self.minval = _check_number(minval, "minval", "random_uniform")
        self.maxval = _check_number(maxval, "maxval", "random_uniform")
        if self.maxval < self.minval:
            raise ValueError(f"random_uniform: maxval must be >= minval, got minval={minval!r} "
                             f"and maxval={maxval!r}")
        self.seed = _check_seed(seed, "random_uniform")

    def _sample(self, shape, dtype, generator):
        return _uniform(shape, self.minval, self.maxval, generator, dtype)


class random_normal(Initializer):
    """Normal ``N(mean, stddev**2)``.

    Args:
        mean, stddev: the distribution's parameters; ``stddev >= 0``.
        seed: makes every call return the same values.
    """

    random = True

    def __init__(self, mean: float = 0.0, stddev: float = 1.0, seed: int | None = None):
        self.mean = _check_number(mean, "mean", self.name)
        self.stddev = _check_number(stddev, "stddev", self.name)
        if self.stddev < 0:
            raise ValueError(f"{self.name}: stddev must be >= 0, got {stddev!r}")
        self.seed = _check_seed(seed, self.name)

    def _sample(self, shape, dtype, generator):
        z = torch.randn(shape, generator=generator, dtype=_F64)
        return (self.mean + self.stddev * z).to(dtype)


class truncated_normal(random_normal):
    """Normal ``N(mean, stddev**2)`` restricted to ``[mean - 2 stddev, mean + 2 stddev]``.

    As TF's op: values beyond 2 stddev are re-drawn, so the result is exactly that truncated
    distribution (its std is ``0.8796 * stddev``).
    """

    def _sample(self, shape, dtype, generator):
        return _truncated(shape, self.mean, self.stddev, generator, dtype)


_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")


class variance_scaling(Initializer):
    """Samples scaled to the layer's fan: ``n = max(1, fan)`` with fan chosen by ``mode``.

    - ``truncated_normal``: ``stddev = sqrt(scale / n) / 0.8796``, truncated at 2 stddev
      (``"normal"`` is TF1's alias for it);
    - ``untruncated_normal``: ``stddev = sqrt(scale / n)``;
    - ``uniform``: on ``[-limit, limit]``, ``limit = sqrt(3 * scale / n)``.

    Fans come from :func:`compute_fans`; ``fan_avg = (fan_in + fan_out) / 2``.

    Args:
        scale: ``> 0``; mode: ``fan_in | fan_out | fan_avg``;
        distribution: ``truncated_normal | untruncated_normal | uniform``; seed: as above.

    Raises:
        ValueError: ``scale <= 0``, or an unknown ``mode`` or ``distribution``.
    """

    random = True

    def __init__(self, scale: float = 1.0, mode: str = "fan_in",
                 distribution: str = "truncated_normal", seed: int | None = None):
        self.scale = _check_number(scale, "scale", self.name)
        if self.scale <= 0:
            raise ValueError(f"{self.name}: scale must be > 0, got {scale!r}")
        if mode not in _MODES:
            raise ValueError(f"{self.name}: mode must be one of {_MODES}, got {mode!r}")
        distribution = "truncated_normal" if distribution == "normal" else distribution
        if distribution not in _DISTRIBUTIONS:
            raise ValueError(f"{self.name}: distribution must be one of {_DISTRIBUTIONS} "
                             f"(or 'normal'), got {distribution!r}")
        self.mode, self.distribution = mode, distribution
        self.seed = _check_seed(seed, self.name)

    def _sample(self, shape, dtype, generator):
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
        var = self.scale / max(1.0, fan[self.mode])
        if self.distribution == "uniform":
            limit = math.sqrt(3 * var)
            return _uniform(shape, -limit, limit, generator, dtype)
        if self.distribution == "untruncated_normal":
            return (math.sqrt(var) * torch.randn(shape, generator=generator, dtype=_F64)).to(dtype)
        return _truncated(shape, 0.0, math.sqrt(var) / _TRUNC_STD, generator, dtype)


def _named_scaling(name: str, scale: float, mode: str, distribution: str) -> type:
    def __init__(self, seed: int | None = None):
        variance_scaling.__init__(self, scale, mode, distribution, seed)

    doc = (f"``variance_scaling(scale={scale}, mode={mode!r}, distribution={distribution!r})``"
           " under its usual name.")
    return type(name, (variance_scaling,), {"__init__": __init__, "__doc__": doc,
                                            "__module__": __name__, "__qualname__": name})


glorot_uniform = _named_scaling("glorot_uniform", 1.0, "fan_avg", "uniform")
glorot_normal = _named_scaling("glorot_normal", 1.0, "fan_avg", "truncated_normal")
xavier_uniform = _named_scaling("xavier_uniform", 1.0, "fan_avg", "uniform")
xavier_normal = _named_scaling("xavier_normal", 1.0, "fan_avg", "truncated_normal")
he_uniform = _named_scaling("he_uniform", 2.0, "fan_in", "uniform")
he_normal = _named_scaling("he_normal", 2.0, "fan_in", "truncated_normal")
lecun_uniform = _named_scaling("lecun_uniform", 1.0, "fan_in", "uniform")
lecun_normal = _named_scaling("lecun_normal", 1.0, "fan_in", "truncated_normal")


class orthogonal(Initializer):
    """A (semi-)orthogonal matrix times ``gain``, reshaped to ``shape`` (rank >= 2).

    With ``rows = prod(shape[:-1])`` and ``cols = shape[-1]``: draw ``A ~ N(0, 1)`` of shape
    ``(max(rows, cols), min(rows, cols))``, take ``Q, R = qr(A)`` (reduced, in float64), multiply
    ``Q``'s columns by ``sign(diag(R))`` so ``Q`` is Haar-distributed, transpose if
    ``rows < cols``.

    Args:
        gain: multiplies the result; seed: makes every call return the same values.

    Raises:
        ValueError: ``shape`` has rank < 2 (at call time).
    """

    random = True

    def __init__(self, gain: float = 1.0, seed: int | None = None):
        self.gain = _check_number(gain, "gain", "orthogonal")
        self.seed = _check_seed(seed, "orthogonal")

    def unsupported(self, shape):
        if len(shape) < 2:
            return f"shape must have rank >= 2, got shape {list(shape)} (rank {len(shape)})"
        return None

    def _sample(self, shape, dtype, generator):
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=_F64)
        q, r = torch.linalg.qr(a, mode="reduced")
        q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
        if rows < cols:
            q = q.T
        return (self.gain * q).reshape(shape).to(dtype)


class identity(Initializer):
    """``gain * eye(rows, cols)`` for a rank-2 shape (non-square allowed, as TF).

    Raises:
        ValueError: ``shape`` does not have rank 2 (at call time).
    """

    def __init__(self, gain: float = 1.0):
        self.gain = _check_number(gain, "gain", "identity")

    def unsupported(self, shape):
        if len(shape) != 2:
            return f"shape must have rank 2, got shape {list(shape)} (rank {len(shape)})"
        return None

    def _sample(self, shape, dtype, generator):
        return (self.gain * torch.eye(*shape, dtype=_F64)).to(dtype)


class uniform_unit_scaling(Initializer):
    """TF1's ``uniform_unit_scaling``: uniform on ``[-m, m]``, ``m = factor * sqrt(3 / n)``.

    ``n = max(1, prod(shape[:-1]))``; so ``n = 1`` for rank 0 and rank 1 (as TF1).

    Args:
        factor: multiplies the limit; seed: makes every call return the same values.
    """

    random = True

    def __init__(self, factor: float = 1.0, seed: int | None = None):
        self.factor = _check_number(factor, "factor", "uniform_unit_scaling")
        self.seed = _check_seed(seed, "uniform_unit_scaling")

    def _sample(self, shape, dtype, generator):
        max_val = math.sqrt(3 / max(1, math.prod(shape[:-1]))) * self.factor
        return _uniform(shape, -max_val, max_val, generator, dtype)


class per_gate(Initializer):
    """Split the last dimension into ``num_gates`` equal blocks and initialize each separately.

    ``init`` is called once per block (in block order, sharing one generator) with the block's
    shape ``shape[:-1] + [shape[-1] // num_gates]``; the blocks are concatenated. A seeded
    ``init`` gives one seeded stream for all blocks (so blocks differ, and calls repeat).

    Args:
        init: the per-block initializer; num_gates: a positive int.

    Raises:
        ValueError: ``num_gates`` is not a positive int, or (at call time) ``shape[-1]`` is not
            divisible by it.
    """

    def __init__(self, init: Initializer, num_gates: int):
        if not isinstance(init, Initializer):
            raise TypeError(f"per_gate: init must be an Initializer, got {init!r}")
        if isinstance(num_gates, bool) or not isinstance(num_gates, int) or num_gates < 1:
            raise ValueError(f"per_gate: num_gates must be a positive int, got {num_gates!r}")
        self.init, self.num_gates = init, num_gates
        self.random = init.random

    def unsupported(self, shape):
        if not shape or shape[-1] % self.num_gates:
            return (f"shape's last dimension must be divisible by num_gates={self.num_gates}, "
                    f"got shape {list(shape)}")
        return self.init.unsupported(list(shape[:-1]) + [shape[-1] // self.num_gates])

    def _sample(self, shape, dtype, generator):
        if generator is None:  # one seeded stream for all blocks, so blocks differ
            generator = self.init._seeded_generator()
        block = shape[:-1] + [shape[-1] // self.num_gates]
        parts = [self.init(block, dtype, generator) for _ in range(self.num_gates)]
        return torch.cat(parts, dim=-1)

    def get_config(self) -> dict[str, Any]:
        return {"init": serialize(self.init), "num_gates": self.num_gates}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> per_gate:
        return cls(deserialize(config["init"]), config["num_gates"])


class chrono(Initializer):
    """Chrono initialization of an LSTM bias [4 * units] (Tallec & Ollivier, 2018).

    ``b_f = log(U(1, max_len - 1))``, ``b_i = -b_f``, candidate and output blocks 0.
    ``gate_order`` names the bias's blocks: ``"ifco"`` (Keras), ``"ifgo"`` (PyTorch),
    ``"ijfo"`` (TF1); letters i input, f forget, o output, one of c/g/j candidate.

    Args:
        max_len: the longest dependency expected (> 2); gate_order: as above; seed: as usual.

    Raises:
        ValueError: ``max_len <= 2``, a bad ``gate_order``, or a shape that is not
            ``[4 * units]``.
    """

    random = True

    def __init__(self, max_len: float, gate_order: str = "ifco", seed: int | None = None):
        self.max_len = _check_number(max_len, "max_len", "chrono")
        if self.max_len <= 2:
            raise ValueError(f"chrono: max_len must be > 2, got {max_len!r}")
        if not (isinstance(gate_order, str) and len(gate_order) == 4
                and all(gate_order.count(g) == 1 for g in "ifo")
                and sum(gate_order.count(g) for g in "cgj") == 1):
            raise ValueError("chrono: gate_order must be 4 letters with one each of i, f, o and "
                             f"one of c/g/j (e.g. 'ifco', 'ifgo', 'ijfo'), got {gate_order!r}")
        self.gate_order = gate_order
        self.seed = _check_seed(seed, "chrono")

    def unsupported(self, shape):
        if len(shape) != 1 or shape[0] % 4:
            return f"shape must be [4 * units] (rank 1, divisible by 4), got shape {list(shape)}"
        return None

    def _sample(self, shape, dtype, generator):
        units = shape[0] // 4
        b_f = torch.log(_uniform([units], 1.0, self.max_len - 1, generator, _F64))
        blocks = {g: torch.zeros(units, dtype=_F64) for g in self.gate_order}
        blocks["f"], blocks["i"] = b_f, -b_f
        return torch.cat([blocks[g] for g in self.gate_order]).to(dtype)


class from_callable(Initializer):
    """Wrap a plain ``fn(shape, dtype) -> array-like`` as an initializer.

    ``fn`` may be given as ``"module:qualname"``; the config stores that form, so only
    functions importable by name serialize (get_config raises ValueError for others).
    """

    def __init__(self, fn: Callable[..., Any] | str):
        self.fn = _import(fn) if isinstance(fn, str) else fn
        if not callable(self.fn):
            raise TypeError(f"from_callable: fn must be callable, got {fn!r}")

    def _sample(self, shape, dtype, generator):
        return torch.as_tensor(self.fn(shape, dtype), dtype=dtype).reshape(shape)

    def get_config(self) -> dict[str, Any]:
        path = f"{getattr(self.fn, '__module__', None)}:{getattr(self.fn, '__qualname__', '')}"
        try:
            if _import(path) is self.fn:
                return {"fn": path}
        except (ImportError, AttributeError, ValueError):
            pass
        raise ValueError(f"from_callable: fn {self.fn!r} cannot be found again by its name "
                         f"{path!r}, so it cannot be serialized; use an importable function")

    def __repr__(self) -> str:
        try:
            return f"from_callable({self.get_config()['fn']!r})"
        except ValueError:
            return f"from_callable({self.fn!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, from_callable) and self.fn is other.fn

    def __hash__(self) -> int:
        return hash(self.fn)


def _import(path: str) -> Any:
    module, _, qualname = path.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


_KERAS_SMALL = {"minval": -0.05, "maxval": 0.05}
# Keras names (snake_case, Keras 2 aliases, CamelCase classes) -> (class, Keras defaults).
_KERAS.update({name: (cls, defaults) for names, cls, defaults in [
    ("zeros zero Zeros", zeros, {}), ("ones one Ones", ones, {}),
    ("constant Constant", constant, {}),
    ("random_uniform uniform RandomUniform", random_uniform, _KERAS_SMALL),
    ("random_normal normal RandomNormal", random_normal, {"stddev": 0.05}),
    ("truncated_normal TruncatedNormal", truncated_normal, {"stddev": 0.05}),
    ("variance_scaling VarianceScaling", variance_scaling, {}),
    ("glorot_uniform GlorotUniform", glorot_uniform, {}),
    ("glorot_normal GlorotNormal", glorot_normal, {}),
    ("he_uniform HeUniform", he_uniform, {}), ("he_normal HeNormal", he_normal, {}),
    ("lecun_uniform LecunUniform", lecun_uniform, {}),
    ("lecun_normal LecunNormal", lecun_normal, {}),
    ("orthogonal Orthogonal OrthogonalInitializer", orthogonal, {}),
    ("identity Identity IdentityInitializer", identity, {}),
    ("uniform_unit_scaling UniformUnitScaling", uniform_unit_scaling, {}),
] for name in names.split()})


def get(identifier: Any) -> Initializer | None:
    """Resolve ``identifier`` to an initializer, as ``keras.initializers.get`` does.

    Args:
        identifier: None; an :class:`Initializer`; a Keras name (``"glorot_uniform"``,
            ``"GlorotUniform"``, ``"random_normal"`` with Keras's stddev 0.05, ...); a
            serialized dict ``{"class_name": ..., "config": ...}``; or a callable
            ``fn(shape, dtype)``, wrapped with :class:`from_callable`.

    Returns:
        The initializer, or None for None.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: any other kind of identifier.
    """
    if identifier is None or isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        if identifier not in _KERAS:
            raise ValueError(f"get: unknown initializer identifier {identifier!r}; "
                             f"known names: {sorted(_KERAS)}")
        cls, defaults = _KERAS[identifier]
        return cls(**defaults)
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        return from_callable(identifier)
    raise TypeError("get: identifier must be None, a str, a dict, an Initializer or a callable, "
                    f"got {type(identifier).__name__}")
