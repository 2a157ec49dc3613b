"""The initializer protocol: the base class, argument checks, fans, samplers and the registry.

:mod:`rnnkit.init` holds the initializers themselves; every subclass of :class:`Initializer`
registers under its class name, which is what :func:`serialize` writes.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch

_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
_F64 = torch.float64
_MISSING = inspect.Parameter.empty


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` for a TensorFlow-layout ``shape`` (kernels are ``[in, out]``).

    Rank 0: (1, 1); rank 1: (n, n); rank 2: (shape[0], shape[1]); rank > 2: with
    ``receptive = prod(shape[:-2])``, ``(shape[-2] * receptive, shape[-1] * receptive)``.
    """
    shape = _check_shape(shape, "compute_fans")
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _check_shape(shape: Any, owner: str) -> list[int]:
    expected = "a sequence of non-negative ints"
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
        raise ValueError(f"{owner}: shape must be {expected}, got {shape!r}")
    out = []
    for d in shape:
        try:
            d = -1 if isinstance(d, bool) else operator.index(d)
        except TypeError:
            d = -1
        if d < 0:
            raise ValueError(f"{owner}: shape must be {expected}, got {list(shape)!r}")
        out.append(d)
    return out


def _check_number(value: Any, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite real number, got {value!r}")
    return float(value)


class Initializer:
    """Base class: ``init(shape, dtype, generator) -> Tensor``; config = constructor arguments.

    Subclasses implement ``_sample(shape, dtype, generator)`` (shape already checked) and set
    ``random = True`` when they draw random numbers (their dtype must then be floating).
    """

    random = False

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls

    def __call__(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Return a new tensor of ``shape`` and ``dtype``.

        Raises:
            ValueError: ``shape`` is not a sequence of non-negative ints, or this initializer
                does not support it.
            TypeError: ``dtype`` is not a torch dtype (a floating one for random initializers),
                or ``generator`` is not a ``torch.Generator``.
        """
        shape = _check_shape(shape, self.name)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"{self.name}: dtype must be a torch.dtype, got {dtype!r}")
        if self.random and not dtype.is_floating_point:
            raise TypeError(f"{self.name}: dtype must be a floating torch dtype, got {dtype}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{self.name}: generator must be a torch.Generator or None, "
                            f"got {type(generator).__name__}")
        reason = self.unsupported(shape)
        if reason is not None:
            raise ValueError(f"{self.name}: {reason}")
        if generator is None:
            generator = self._seeded_generator()
        return self._sample(shape, dtype, generator).contiguous()  # one memory layout for all

    def unsupported(self, shape: Sequence[int]) -> str | None:
        """Why this initializer cannot make ``shape``, or None if it can."""
        return None

    def _sample(self, shape: list[int], dtype: torch.dtype,
                generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def _seeded_generator(self) -> torch.Generator | None:
        seed = getattr(self, "seed", None)
        return None if seed is None else torch.Generator().manual_seed(seed)

    @property
    def name(self) -> str:
        return type(self).__name__

    @classmethod
    def _params(cls) -> list[inspect.Parameter]:
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return [p for p in params if p.kind in named]

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments as a JSON-able dict."""
        return {p.name: getattr(self, p.name) for p in self._params()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Initializer:
        """Rebuild an initializer from ``get_config()``'s dict."""
        return cls(**config)

    def __repr__(self) -> str:
        config, args = self.get_config(), []
        for p in self._params():
            value = getattr(self, p.name)
            if p.default is _MISSING:
                args.append(repr(value))
            elif config[p.name] != p.default:
                args.append(f"{p.name}={value!r}")
        return f"{self.name}({', '.join(args)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Initializer):
            return NotImplemented
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))


def _check_seed(seed: Any, owner: str) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"{owner}: seed must be an int or None, got {seed!r}")
    return seed


def _uniform(shape: list[int], low: float, high: float, gen: torch.Generator | None,
             dtype: torch.dtype) -> torch.Tensor:
    return (low + (high - low) * torch.rand(shape, generator=gen, dtype=_F64)).to(dtype)


def _truncated(shape: list[int], mean: float, stddev: float, gen: torch.Generator | None,
               dtype: torch.dtype) -> torch.Tensor:
    # Inverse-CDF sampling on [Phi(-2), Phi(2)] is exactly the normal truncated at 2 std.
    lo = 0.5 * math.erfc(2 / math.sqrt(2))
    u = lo + (1 - 2 * lo) * torch.rand(shape, generator=gen, dtype=_F64)
    return (mean + stddev * torch.special.ndtri(u).clamp(-2.0, 2.0)).to(dtype)


# class name -> class (filled by Initializer.__init_subclass__); Keras name -> (class, Keras
# defaults) (filled by rnnkit.init).
_CLASSES: dict[str, type[Initializer]] = {}
_KERAS: dict[str, tuple[type[Initializer], dict[str, Any]]] = {}


def serialize(init: Initializer) -> dict[str, Any]:
    """Return ``{"class_name": ..., "config": ...}`` (JSON-able) for ``init``."""
    if not isinstance(init, Initializer):
        raise TypeError(f"serialize: init must be an Initializer, got {init!r}")
    return {"class_name": init.name, "config": init.get_config()}


def names_code(config: Any) -> bool:
    """Whether a serialized initializer names importable code anywhere inside it (``from_callable``,
    also nested in ``per_gate``). Readers of files refuse such configs: a file never imports code."""
    if isinstance(config, dict):
        return config.get("class_name") == "from_callable" or any(map(names_code, config.values()))
    if isinstance(config, (list, tuple)):
        return any(map(names_code, config))
    return False


def deserialize(config: dict[str, Any]) -> Initializer:
    """Build an initializer from ``serialize``'s dict or a Keras/TF serialized dict.

    rnnkit's class names use rnnkit's (TF1) defaults; Keras class names (``"RandomUniform"``)
    use Keras's defaults. TF's extra ``dtype`` key is ignored.

    Raises:
        ValueError: ``config`` has no ``class_name`` or names an unknown class.
    """
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ValueError(f"deserialize: config must be a dict with a str 'class_name', "
                         f"got {config!r}")
    name, kwargs = config["class_name"], dict(config.get("config") or {})
    kwargs.pop("dtype", None)
    if name in _CLASSES:
        return _CLASSES[name].from_config(kwargs)
    if name in _KERAS:
        cls, defaults = _KERAS[name]
        return cls.from_config({**defaults, **kwargs})
    raise ValueError(f"deserialize: unknown class_name {name!r}; known: "
                     f"{sorted(set(_CLASSES) | set(_KERAS))}")
