"""TF1 variable scopes and the variable store, on PyTorch.

``variable_scope`` and ``get_variable`` name, share and initialize variables exactly as
``tf.compat.v1`` does: names are ``outer/inner/name`` (``:0`` appended in ``Variable.name``), a
scope opened with ``default_name`` gets TF's unique numbering (``gru_cell``, ``gru_cell_1``...),
an inner scope inherits its outer scope's initializer and reuse flag, ``reuse=True`` fetches and
``AUTO_REUSE`` fetches-or-creates. Every variable is a ``torch.nn.Parameter`` that also carries
its TF name and its provenance: which initializer made it and where that choice came from.

The store (the "default graph") is shared by all threads; the stack of open scopes and the
scope-name counters are per thread, as in TF.
"""

from __future__ import annotations

import copy
import enum
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from rnnkit import init as _init

__all__ = [
    "AUTO_REUSE", "Provenance", "Variable", "VariableScope", "variable_scope", "get_variable",
    "get_variable_scope", "reset_default_graph", "global_variables", "trainable_variables",
    "embedding_lookup",
]


class _ReuseMode(enum.Enum):
    AUTO_REUSE = 1

    def __repr__(self) -> str:
        return "AUTO_REUSE"


AUTO_REUSE = _ReuseMode.AUTO_REUSE
"""``reuse=AUTO_REUSE``: ``get_variable`` returns the variable if it exists, else creates it."""


@dataclass(frozen=True)
class Provenance:
    """Which initializer made a variable, and why that one.

    ``origin`` is one of ``"argument"`` (passed to ``get_variable`` or to the cell/layer),
    ``"scope"`` (inherited from the ``variable_scope`` named in ``scope``), ``"default"``
    (``get_variable``'s own default: glorot_uniform for floats, zeros otherwise), ``"cell default"``
    (a cell's built-in choice, e.g. TF1 GRU gate bias 1.0), ``"fallback"`` (the scope's
    initializer could not make this shape; ``note`` says what was used instead), ``"value"``
    (an explicit initial value) or ``"restored"`` (loaded from a file).
    """

    initializer: object
    origin: str
    scope: str | None = None
    note: str = ""

    def describe(self) -> str:
        where = {"scope": f"scope '{self.scope}'"}.get(self.origin, self.origin)
        return f"{where}: {self.note}" if self.note else where


class Variable(torch.nn.Parameter):
    """A ``torch.nn.Parameter`` with a TF name (``name``, ``op_name``) and a ``provenance``."""

    def __new__(cls, data: torch.Tensor | None = None, requires_grad: bool = True, *,
                op_name: str = "", provenance: Provenance | None = None) -> Variable:
        floating = data is None or data.dtype.is_floating_point or data.dtype.is_complex
        var = super().__new__(cls, data, requires_grad and floating)
        var.op_name = op_name
        var.provenance = provenance
        var.is_trainable = bool(requires_grad)
        return var

    @property
    def name(self) -> str:
        """TF's ``Variable.name``: the full scoped name with the ``:0`` output suffix."""
        return f"{self.op_name}:0"

    @property
    def trainable(self) -> bool:
        """In ``trainable_variables()``; integer variables are trainable yet take no gradient."""
        return self.is_trainable

    def __deepcopy__(self, memo: dict) -> Variable:
        clone = Variable(self.data.clone(memory_format=torch.preserve_format), self.is_trainable,
                         op_name=self.op_name, provenance=self.provenance)
        memo[id(self)] = clone
        return clone

    def __reduce_ex__(self, proto):  # pragma: no cover - rnnkit never pickles
        raise TypeError("rnnkit variables are not picklable; use rnnkit.io.save")


class VariableScope:
    """An open scope: its name, reuse flag, default initializer and default dtype."""

    def __init__(self, name: str, reuse: bool | _ReuseMode = False, initializer=None,
                 initializer_scope: str | None = None, dtype: torch.dtype = torch.float32):
        self.name = name
        self.reuse = reuse
        self.initializer = initializer
        self.initializer_scope = initializer_scope
        self.dtype = dtype

    @property
    def original_name_scope(self) -> str:
        return f"{self.name}/" if self.name else ""

    def reuse_variables(self) -> None:
        """From now on, ``get_variable`` in this scope fetches existing variables."""
        self.reuse = True

    def set_initializer(self, initializer) -> None:
        self.initializer = _init.get(initializer)
        self.initializer_scope = self.name

    def __repr__(self) -> str:
        return (f"VariableScope(name={self.name!r}, reuse={self.reuse!r}, "
                f"initializer={self.initializer!r})")


class _Graph:
    """The variable store. Variables are shared by all threads; scope state is per thread."""

    def __init__(self) -> None:
        self.variables: dict[str, Variable] = {}
        self.lock = threading.RLock()
        self.local = threading.local()

    @property
    def current(self) -> VariableScope:
        if not hasattr(self.local, "scope"):
            self.local.scope = VariableScope("")
        return self.local.scope

    @current.setter
    def current(self, scope: VariableScope) -> None:
        self.local.scope = scope

    @property
    def counts(self) -> dict[str, int]:
        if not hasattr(self.local, "counts"):
            self.local.counts = {}
        return self.local.counts


_graph = _Graph()
_graph_lock = threading.Lock()


def reset_default_graph() -> None:
    """Forget every variable and scope counter, as ``tf.compat.v1.reset_default_graph``."""
    global _graph
    with _graph_lock:
        _graph = _Graph()


def get_variable_scope() -> VariableScope:
    """The innermost open variable scope of this thread (the root scope has name ``""``)."""
    return _graph.current


def global_variables() -> list[Variable]:
    """Every variable made by ``get_variable`` since the last reset, in creation order."""
    with _graph.lock:
        return list(_graph.variables.values())


def trainable_variables() -> list[Variable]:
    """The variables created with ``trainable=True``."""
    return [v for v in global_variables() if v.trainable]


def _unique_scope_name(prefix: str) -> str:
    """TF's numbering for ``default_name``: ``prefix``, then ``prefix_1``, ``prefix_2``..."""
    outer = _graph.current.name
    full = f"{outer}/{prefix}" if outer else prefix
    counts = _graph.counts
    if counts.get(full, 0) == 0:
        return prefix
    idx = 1
    while counts.get(f"{full}_{idx}", 0) > 0:
        idx += 1
    return f"{prefix}_{idx}"


def _check_reuse(reuse) -> None:
    if reuse not in (None, True, False, AUTO_REUSE):
        raise ValueError(f"variable_scope: reuse must be True, False, None or AUTO_REUSE, got {reuse!r}")


@contextmanager
def variable_scope(name_or_scope: str | VariableScope | None = None, default_name: str | None = None,
                   values=None, initializer=None, reuse: bool | _ReuseMode | None = None,
                   dtype: torch.dtype | None = None) -> Iterator[VariableScope]:
    """Open a variable scope, as ``tf.compat.v1.variable_scope``.

    Args:
        name_or_scope: a name (appended to the current scope's), or a ``VariableScope`` captured
            earlier to re-enter it.
        default_name: used, made unique (``name``, ``name_1``...), when ``name_or_scope`` is None.
        values: accepted for signature compatibility; unused.
        initializer: default initializer for ``get_variable`` inside (an object, a Keras name or a
            callable); inner scopes inherit it.
        reuse: True to fetch existing variables, ``AUTO_REUSE`` to fetch or create; None/False
            inherit the outer scope's flag (reuse cannot be switched off in a reusing scope).
        dtype: default dtype of new variables.

    Raises:
        TypeError: neither ``name_or_scope`` nor ``default_name`` is given.
        ValueError: ``reuse=True`` together with ``default_name`` only, or a bad ``reuse`` value.

    Example:
        >>> with variable_scope("model", initializer="orthogonal"):
        ...     w = get_variable("w", [4, 4])      # model/w:0, orthogonal
    """
    del values
    _check_reuse(reuse)
    if name_or_scope is None and default_name is None:
        raise TypeError("variable_scope: if default_name is None then name_or_scope is required")
    if name_or_scope is not None and not isinstance(name_or_scope, (str, VariableScope)):
        raise TypeError(f"variable_scope: name_or_scope must be a str or VariableScope, "
                        f"got {type(name_or_scope).__name__}")
    if name_or_scope is None:
        if reuse is True:
            raise ValueError("variable_scope: reuse=True cannot be used without a name_or_scope")
        name_or_scope = _unique_scope_name(default_name)

    graph = _graph
    old = graph.current
    counts = graph.counts
    if isinstance(name_or_scope, VariableScope):
        src = name_or_scope
        new = VariableScope(src.name, reuse if reuse else src.reuse, src.initializer,
                            src.initializer_scope, src.dtype)
        saved_counts = copy.copy(counts)
    else:
        name = f"{old.name}/{name_or_scope}" if old.name else name_or_scope
        new = VariableScope(name, reuse or old.reuse, old.initializer, old.initializer_scope,
                            old.dtype)
        saved_counts = None
    if initializer is not None:
        new.set_initializer(initializer)
    if dtype is not None:
        new.dtype = dtype
    counts[new.name] = counts.get(new.name, 0) + 1
    graph.current = new
    try:
        yield new
    finally:
        graph.current = old
        if saved_counts is not None:
            counts.clear()
            counts.update(saved_counts)
        else:
            prefix = new.name + "/"
            for key in counts:
                if key.startswith(prefix):
                    counts[key] = 0


def _as_shape(shape, what: str) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = [shape]
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(f"get_variable: shape of {what} must be a list of ints, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"get_variable: shape of {what} must have non-negative dimensions, "
                         f"got {list(dims)}")
    return dims


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    try:
        return torch.from_numpy(np.zeros(0, dtype=np.dtype(dtype))).dtype
    except TypeError:
        raise TypeError(f"get_variable: dtype must be a torch dtype or a numpy dtype name, "
                        f"got {dtype!r}") from None


def _default_initializer(dtype: torch.dtype):
    return _init.glorot_uniform() if dtype.is_floating_point else _init.zeros()


def _choose_initializer(scope: VariableScope, initializer, origin: str | None,
                        shape: tuple[int, ...], dtype: torch.dtype) -> Provenance:
    if initializer is not None:
        return Provenance(_init.get(initializer), origin or "argument")
    if scope.initializer is not None:
        inherited = scope.initializer
        reason = inherited.unsupported(shape) if isinstance(inherited, _init.Initializer) else None
        if reason is None:
            return Provenance(inherited, "scope", scope.initializer_scope)
        fallback = _default_initializer(dtype)
        note = (f"{inherited!r} from scope '{scope.initializer_scope}': {reason}; "
                f"used {fallback!r}")
        return Provenance(fallback, "fallback", scope.initializer_scope, note)
    return Provenance(_default_initializer(dtype), "default")


def get_variable(name: str, shape: Sequence[int] | None = None, dtype=None, initializer=None,
                 trainable: bool | None = None, *, origin: str | None = None) -> Variable:
    """Create a variable in the current scope, or fetch it when the scope reuses.

    The initializer is, in order: ``initializer``; the innermost scope initializer; else
    glorot_uniform (floats) or zeros. A scope initializer that cannot make the shape (orthogonal
    on a peephole vector, say) falls back to the default and says so in ``provenance``, where TF
    would fail.

    Args:
        name: the last name component; the full name is ``<scope>/<name>``.
        shape: the variable's shape; required for new variables unless ``initializer`` is a value.
        dtype: torch dtype (default: the scope's, float32).
        initializer: an initializer object, Keras name, callable ``(shape, dtype)`` or an initial
            value (array or tensor; then ``shape`` must be omitted or equal to its shape).
        trainable: whether the variable requires grad and is in ``trainable_variables()``.
        origin: provenance label recorded when ``initializer`` is given (library code uses
            ``"cell default"``); default ``"argument"``.

    Returns:
        The ``Variable`` (a ``torch.nn.Parameter``).

    Raises:
        ValueError: the variable exists and the scope does not reuse, it does not exist and the
            scope reuses (``reuse=True``), or the shape or dtype differ from the existing one.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"get_variable: name must be a non-empty str, got {name!r}")
    scope = _graph.current
    full = f"{scope.name}/{name}" if scope.name else name
    dtype = _as_dtype(dtype) if dtype is not None else None
    value = None
    if initializer is not None and not callable(initializer) and not isinstance(initializer, str):
        value = torch.as_tensor(np.asarray(initializer) if not torch.is_tensor(initializer)
                                else initializer.detach())
        if shape is not None and tuple(_as_shape(shape, full)) != tuple(value.shape):
            raise ValueError(f"get_variable: initializer for {full} is a value of shape "
                             f"{list(value.shape)} but shape={list(shape)}; omit shape")
        shape = tuple(value.shape)
    dims = _as_shape(shape, full) if shape is not None else None
    with _graph.lock:
        existing = _graph.variables.get(full)
        if existing is not None:
            if scope.reuse is False:
                raise ValueError(f"Variable {full} already exists, disallowed. Did you mean to set "
                                 "reuse=True or reuse=AUTO_REUSE in variable_scope?")
            if dims is not None and tuple(existing.shape) != dims:
                raise ValueError(f"Trying to share variable {full}, but specified shape "
                                 f"{list(dims)} and found shape {list(existing.shape)}.")
            if dtype is not None and existing.dtype != dtype:
                raise ValueError(f"Trying to share variable {full}, but specified dtype {dtype} "
                                 f"and found dtype {existing.dtype}.")
            return existing
        if scope.reuse is True:
            raise ValueError(f"Variable {full} does not exist, or was not created with "
                             "get_variable(). Did you mean to set reuse=AUTO_REUSE in "
                             "variable_scope?")
        if dims is None:
            raise ValueError(f"get_variable: shape of a new variable ({full}) must be given")
        dtype = dtype or (value.dtype if value is not None else scope.dtype)
        if value is not None:
            prov = Provenance(None, "value", note="initial value given")
            data = value.to(dtype).clone()
        else:
            prov = _choose_initializer(scope, initializer, origin, dims, dtype)
            data = prov.initializer(list(dims), dtype=dtype)
        var = Variable(data.detach(), requires_grad=True if trainable is None else bool(trainable),
                       op_name=full, provenance=prov)
        _graph.variables[full] = var
        return var


def embedding_lookup(params: torch.Tensor | Sequence[torch.Tensor], ids,
                     partition_strategy: str = "mod", max_norm: float | None = None) -> torch.Tensor:
    """Rows of ``params`` at ``ids``, as ``tf.nn.embedding_lookup``.

    Args:
        params: a ``[vocab, depth...]`` tensor, or a list of shards split by ``partition_strategy``
            (``"mod"``: id ``i`` lives in shard ``i % n`` at row ``i // n``; ``"div"``: contiguous).
        ids: integer tensor or array of any shape.
        max_norm: if given, rows with a larger L2 norm are scaled down to it.

    Returns:
        A tensor of shape ``ids.shape + params.shape[1:]``.

    Raises:
        TypeError: ids are not integers.
        ValueError: an id is negative or not below the vocabulary size.
    """
    shards = [params] if torch.is_tensor(params) else list(params)
    if not shards or not all(torch.is_tensor(p) and p.dim() >= 1 for p in shards):
        raise TypeError("embedding_lookup: params must be a tensor of rank >= 1 or a list of them")
    ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"embedding_lookup: ids must be integers, got dtype {ids.dtype}")
    ids = ids.to(device=shards[0].device, dtype=torch.long)
    vocab = sum(p.shape[0] for p in shards)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        bad = ids[(ids < 0) | (ids >= vocab)][0].item()
        raise ValueError(f"embedding_lookup: ids must be in [0, {vocab}), found {bad}")
    if partition_strategy not in ("mod", "div"):
        raise ValueError(f"embedding_lookup: partition_strategy must be 'mod' or 'div', "
                         f"got {partition_strategy!r}")
    table = shards[0] if len(shards) == 1 else torch.cat(shards, dim=0)
    if len(shards) > 1 and partition_strategy == "mod":
        sizes = torch.tensor([p.shape[0] for p in shards], device=ids.device)
        offsets = torch.cumsum(sizes, 0) - sizes
        ids = offsets[ids % len(shards)] + ids // len(shards)
    rows = table[ids]
    if max_norm is not None:
        norms = rows.flatten(ids.dim()).norm(dim=-1).clamp_min(1e-12)
        scale = torch.clamp(max_norm / norms, max=1.0)
        rows = rows * scale.reshape(scale.shape + (1,) * (rows.dim() - ids.dim()))
    return rows
