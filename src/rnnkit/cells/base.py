"""The cell protocol shared by every recurrent cell, TF1-style and Keras-style.

A cell is a ``torch.nn.Module`` called as ``cell(inputs, state) -> (output, new_state)``. Its
variables are made by ``get_variable`` when the input depth is first known (``input_size=`` at
construction, else the first call), under the variable scope open at that moment plus the
cell's own name (``gru_cell``, ``gru_cell_1``...), exactly as TF1 layers do.

For the unroll, a cell splits its step in two: ``prepare_inputs`` does the work that does not
depend on the state for a whole sequence at once (the input projection ``x W + b``), and
``step`` does the recurrent rest. ``forward`` is ``step(prepare_inputs(x), state)``, so the
per-step call and the unrolled loop run the same code.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from rnnkit.scope import Variable, VariableScope, get_variable, variable_scope
from rnnkit.unroll import scan

State = Any  # a tensor, an LSTMStateTuple, or a tuple of states (MultiRNNCell)
_BUILD_LOCK = threading.RLock()  # reentrant: building a MultiRNNCell builds its cells


class LSTMStateTuple(NamedTuple):
    """TF1's LSTM state: ``c`` (memory) then ``h`` (output). torch.nn.LSTM orders it (h, c)."""

    c: torch.Tensor
    h: torch.Tensor


def split_state(state: torch.Tensor, c_size: int) -> LSTMStateTuple:
    """TF1's concatenated LSTM state (``state_is_tuple=False``): ``c`` then ``h`` side by side
    on the last axis, taken apart."""
    c, h = state.split([c_size, state.shape[-1] - c_size], -1)
    return LSTMStateTuple(c, h)


def join_state(state: LSTMStateTuple) -> torch.Tensor:
    """``split_state``'s inverse: ``[c, h]`` on the last axis."""
    return torch.cat([state.c, state.h], -1)


def check_state(cell: RNNCell, state: State, batch: int, argname: str = "state") -> None:
    """Raise ValueError unless ``state`` has the structure and shapes of ``cell.state_size``."""
    want_leaves = pytree.tree_leaves(cell.state_size)
    got_leaves = pytree.tree_leaves(state)
    if len(want_leaves) != len(got_leaves) or not all(torch.is_tensor(g) for g in got_leaves):
        raise ValueError(f"{argname} must have the structure of {type(cell).__name__}.state_size "
                         f"{cell.state_size!r} (tensors of shape [batch, size]), got "
                         f"{_shapes(state)}")
    for want, got in zip(want_leaves, got_leaves, strict=True):
        if tuple(got.shape) != (batch, want):
            raise ValueError(f"{argname} must have shapes {_shapes_of_size(cell.state_size, batch)}"
                             f" for batch {batch}, got {_shapes(state)}")


def _shapes(state: State):
    return pytree.tree_map(lambda t: list(t.shape) if torch.is_tensor(t) else t, state)


def _shapes_of_size(size, batch: int):
    return pytree.tree_map(lambda n: [batch, n], size)


def check_units(num_units, argname: str = "num_units") -> None:
    if not isinstance(num_units, int) or isinstance(num_units, bool) or num_units <= 0:
        raise ValueError(f"{argname} must be a positive int, got {num_units!r}")


class RNNCell(torch.nn.Module):
    """Base of all cells: scoping, lazy building, state helpers and the step protocol.

    Subclasses set ``base_name``, implement ``state_size``, ``output_size``, ``build(depth,
    dtype)`` (making variables with ``self.add_variable``), ``prepare_inputs`` and ``step``.
    """

    base_name = "rnn_cell"

    def __init__(self, name: str | None = None, reuse: bool | None = None,
                 input_size: int | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self._base = name or self.base_name
        self._reuse = reuse
        self._scope: VariableScope | None = None
        self.input_depth: int | None = None
        if input_size is not None:
            self.ensure_built(int(input_size), dtype or torch.float32)

    def get_parameter(self, target: str) -> torch.Tensor:
        """The cell's variable ``target``, a TF name such as ``"gates/kernel"``.

        It is the tensor the module holds under that name: a plain tensor while
        ``torch.func.functional_call`` has swapped one in (torch's own lookup insists on a
        ``Parameter``). Dotted paths into submodules go to torch's lookup."""
        held = self._parameters.get(target)
        return held if held is not None else super().get_parameter(target)

    # -- structure -------------------------------------------------------------------------
    @property
    def state_size(self):
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        raise NotImplementedError

    @property
    def scope_name(self) -> str | None:
        """The full variable-scope name the cell's variables live under, once built."""
        return self._scope.name if self._scope is not None else None

    def zero_state(self, batch_size: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> State:
        """All-zero state of structure ``state_size`` for ``batch_size`` sequences.

        On ``device``; by default where the cell's variables are (the CPU before it is built).
        """
        if not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"zero_state: batch_size must be a non-negative int, got {batch_size!r}")
        if device is None:
            device = next((p.device for p in self.parameters()), None)
        size = self.state_size
        if isinstance(size, int):  # the common structures without pytree's walk
            return torch.zeros(batch_size, size, dtype=dtype, device=device)
        if type(size) is LSTMStateTuple and all(isinstance(n, int) for n in size):
            return LSTMStateTuple(*(torch.zeros(batch_size, n, dtype=dtype, device=device)
                                    for n in size))
        return pytree.tree_map(lambda n: torch.zeros(batch_size, n, dtype=dtype, device=device),
                               size)

    # -- building --------------------------------------------------------------------------
    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        """Make the cell's variables for inputs of depth ``input_depth``."""

    def add_variable(self, name: str, shape: list[int], dtype: torch.dtype, initializer=None,
                     origin: str | None = None) -> Variable:
        """``get_variable`` in the cell's scope, registered as a parameter under ``name``."""
        var = get_variable(name, shape, dtype=dtype, initializer=initializer, origin=origin)
        self.register_parameter(name, var)
        return var

    def ensure_built(self, input_depth: int, dtype: torch.dtype) -> None:
        """Build on first use under the current scope; afterwards check the depth is unchanged.
        When several threads call a new cell at once, one builds it and the others wait."""
        if self.input_depth is not None:
            if input_depth != self.input_depth:
                raise ValueError(f"inputs to {type(self).__name__} '{self.scope_name}' must have "
                                 f"depth {self.input_depth} (it was built for that), got "
                                 f"{input_depth}")
            return
        if input_depth <= 0:
            raise ValueError(f"inputs to {type(self).__name__} must have a positive last "
                             f"dimension (depth), got {input_depth}")
        with _BUILD_LOCK:
            if self.input_depth is not None:  # another thread built it while this one waited
                return self.ensure_built(input_depth, dtype)
            self.build_in_scope(input_depth, dtype)
            self.input_depth = input_depth

    def build_in_scope(self, input_depth: int, dtype: torch.dtype) -> None:
        """``build`` under the cell's own variable scope, opened (and numbered) the first time."""
        if self._scope is None:
            opener = (variable_scope(self._base, reuse=self._reuse) if self._reuse
                      else variable_scope(None, default_name=self._base))
            with opener as captured:
                self._scope = captured
        with variable_scope(self._scope, reuse=self._reuse):
            self.build(input_depth, dtype)

    def require_built(self, what: str) -> None:
        if self.input_depth is None:
            raise RuntimeError(f"{type(self).__name__}.{what}: the cell has no variables yet; "
                               "call it once or construct it with input_size=")

    # -- the step protocol -------------------------------------------------------------------
    def sequence_params(self):
        """Weights in the layout ``prepare_inputs``/``step`` use, derived once per unroll."""
        return None

    def prepare_inputs(self, inputs: torch.Tensor, params) -> torch.Tensor:
        """State-independent work on inputs ``[..., depth]`` (default: none)."""
        return inputs

    def step(self, prepared: torch.Tensor, state: State, params) -> tuple[torch.Tensor, State]:
        """One recurrent step on prepared inputs ``[batch, ...]``."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step: ``inputs`` ``[batch, depth]`` and ``state`` to ``(output, new_state)``."""
        self.begin_step(inputs, state)
        params = self.sequence_params()
        return self.step(self.prepare_inputs(inputs, params), state, params)

    def begin_step(self, inputs: torch.Tensor, state: State) -> None:
        """A lone step's checks (``forward``'s): ``inputs`` a ``[batch, depth]`` tensor, the
        cell built for it, ``state`` of the cell's structure for that batch.

        Raises:
            ValueError: naming the argument and the shapes expected.
        """
        if not torch.is_tensor(inputs) or inputs.dim() != 2:
            raise ValueError(f"inputs to {type(self).__name__} must be a tensor of shape "
                             f"[batch, depth], got {_shapes(inputs)}")
        self.ensure_built(inputs.shape[-1], inputs.dtype)
        check_state(self, state, inputs.shape[0])

    def calls_are_steps(self) -> bool:
        """Whether a call of the cell is ``step(prepare_inputs(x, p), state, p)`` with ``p =
        sequence_params()``, so a loop of calls may make ``p`` once (``raw_rnn``): true where
        ``forward`` is this class's, or computes the same step another way."""
        return type(self).forward is RNNCell.forward

    def draws_masks(self) -> bool:
        """Whether an unroll or a step of this cell draws dropout masks of its own (in training
        mode, dropping something): a ``DropoutWrapper``, a ``LayerNormLSTMCell`` with
        ``dropout_keep_prob < 1``."""
        return False

    def uses_canonical_step(self) -> bool:
        """True when ``step`` is exactly ``Canonical``'s equations, so a fast path may replace
        the whole unroll (``FusedCell`` without overrides)."""
        return False

    def whole_sequence(self) -> tuple[RNNCell, tuple[str, ...]]:
        """The cell whose unroll decides the path of this one's, and why this one must run
        step by step instead (empty if it need not). A cell is its own; a wrapper that does
        its work on the whole sequence around its cell's unroll gives that cell's, and a
        ``MultiRNNCell`` its first layer's (``rnnkit.fast.explain`` reads this)."""
        return self, ()

    def dispatch_params(self, batch: int, dtype: torch.dtype, device) -> tuple[object, bool]:
        """What an unroll of this cell over ``batch`` sequences hands ``rnnkit.fast.dispatch``:
        its params (``sequence_params()``; a ``DropoutWrapper`` adds its state mask's shape)
        and whether its step is its own (``rnnkit.fast.explain`` reads this)."""
        del batch, dtype, device
        return self.sequence_params(), not self.uses_canonical_step()

    def unroll(self, inputs: torch.Tensor, state: State, mask: torch.Tensor | None = None,
               masked_output: str = "zero", chunk: int | None = None, fast=None):
        """Run over time-major ``inputs`` ``[T, B, depth]`` (built and checked by the caller),
        on the path ``rnnkit.fast.dispatch`` picks; ``fast`` (``"auto"``, ``True``, ``False``)
        overrides the switch set by ``rnnkit.fast.fast_mode``.

        Returns ``(outputs [T, B, output_size], final_state)``; see ``rnnkit.unroll.scan``.
        """
        return self.unroll_with(self.sequence_params(), inputs, state, mask, masked_output,
                                chunk, fast)

    def unroll_with(self, params, inputs: torch.Tensor, state: State,
                    mask: torch.Tensor | None = None, masked_output: str = "zero",
                    chunk: int | None = None, fast=None):
        """``unroll`` with ``params`` in place of ``sequence_params()`` (a ``DropoutWrapper``
        adds its state mask to them)."""
        from rnnkit.fast import dispatch  # imported here: rnnkit.fast imports the cells

        done = dispatch.unroll(params, inputs, state, mask, masked_output, chunk, fast,
                               own_step=not self.uses_canonical_step(), cell=self)
        if done is not None:
            return done
        return self.loop(params, inputs, state, mask, masked_output, chunk)

    def loop(self, params, inputs: torch.Tensor, state: State, mask: torch.Tensor | None = None,
             masked_output: str = "zero", chunk: int | None = None):
        """The reference loop: ``step`` over ``prepare_inputs``, by ``rnnkit.unroll.scan``."""
        return scan(lambda x, s: self.step(x, s, params), inputs, state, mask, masked_output, chunk,
                    prepare=lambda x: self.prepare_inputs(x, params))

    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device) -> None:
        """Called once before an unroll (variational dropout draws its masks here)."""

    def extra_repr(self) -> str:
        return f"scope={self.scope_name!r}" if self._scope is not None else ""
