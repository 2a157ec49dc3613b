"""TF1's ``raw_rnn``: a cell driven step by step by the caller's ``loop_fn``, and the small
``TensorArray`` it emits into.

``raw_rnn`` is the unroll for what ``dynamic_rnn`` cannot express: a decoder whose next input
is made from the last output (greedy decoding, scheduled sampling), per-step stopping decided
on the fly, a state changed between steps. Its semantics are TF's, step for step::

    time = 0
    finished, next_input, state, emit_structure, loop_state = loop_fn(time, None, None, None)
    while not all(finished):
        output, cell_state = cell(next_input, state)
        next_finished, next_input, next_state, emit, next_loop_state = loop_fn(
            time + 1, output, cell_state, loop_state)
        state = where(finished, state, next_state)   # finished rows keep their state
        emit = where(finished, zeros, emit)          # ... and emit zeros
        emit_ta.write(time, emit)
        finished = finished | next_finished
        loop_state = loop_state if next_loop_state is None else next_loop_state
        time += 1

Every step is the cell's step (``cell(inputs, state)``, its weights' layout made once for the
call), so any cell or wrapper runs, and autograd differentiates the whole loop. As in TF1,
which builds the cell when it traces the loop's body, the cell is built before the first step,
even if none runs; a new call is a new sequence (``begin_sequence``: new variational masks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree

from rnnkit.cells.base import RNNCell, _shapes, check_state
from rnnkit.scope import VariableScope, variable_scope

__all__ = ["raw_rnn", "TensorArray"]


class TensorArray:
    """A list of same-shaped tensors indexed by step, as ``tf.TensorArray`` in eager code.

    ``write`` adds to this array and returns it (so TF's ``ta = ta.write(t, x)`` reads the
    same); ``stack`` gives ``[size, ...]``.

    Args:
        dtype: the elements' dtype (elements are cast to it on ``write``).
        size: the initial number of elements.
        dynamic_size: whether ``write`` may grow the array past ``size``.
        element_shape: the shape of an element (what ``stack`` of an empty array uses).
        clear_after_read, tensor_array_name, infer_shape, colocate_with_first_write_call,
            name: TF's, accepted and without effect here.
        device: where ``stack`` of an empty array puts it (not TF's: a TF array is placed by
            its device scope); else where its elements are.

    Example:
        >>> ta = TensorArray(torch.float32, size=0, dynamic_size=True)
        >>> ta = ta.write(0, torch.ones(2)).write(1, torch.zeros(2))
        >>> ta.stack().shape
        torch.Size([2, 2])
    """

    def __init__(self, dtype: torch.dtype, size: int = 0, dynamic_size: bool = False,
                 clear_after_read: bool | None = None, tensor_array_name: str | None = None,
                 element_shape=None, infer_shape: bool = True,
                 colocate_with_first_write_call: bool = True, name: str | None = None,
                 device: torch.device | str | None = None):
        del clear_after_read, tensor_array_name, infer_shape, colocate_with_first_write_call, name
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"TensorArray: dtype must be a torch.dtype, got {dtype!r}")
        size = int(size)
        if size < 0:
            raise ValueError(f"TensorArray: size must be >= 0, got {size}")
        self.dtype, self.dynamic_size = dtype, bool(dynamic_size)
        self.element_shape = None if element_shape is None else tuple(element_shape)
        self.device = device
        self._items: list[torch.Tensor | None] = [None] * size

    def size(self) -> torch.Tensor:
        """The number of elements, as an int32 scalar (as TF's)."""
        return torch.tensor(len(self._items), dtype=torch.int32)

    def __len__(self) -> int:
        return len(self._items)

    def _index(self, index, who: str) -> int:
        i = int(index)
        if i < 0 or (i >= len(self._items) and not (who == "write" and self.dynamic_size)):
            raise IndexError(f"TensorArray.{who}: index {i} is out of range for an array of size "
                             f"{len(self._items)}{'' if self.dynamic_size else ' (not dynamic_size)'}")
        return i

    def write(self, index, value: torch.Tensor) -> TensorArray:
        """Set element ``index`` to ``value`` (growing a ``dynamic_size`` array); returns self."""
        i = self._index(index, "write")
        value = torch.as_tensor(value).to(self.dtype)
        if self.element_shape is not None and tuple(value.shape) != self.element_shape:
            raise ValueError(f"TensorArray.write: element {i} has shape {list(value.shape)}, the "
                             f"array holds {list(self.element_shape)}")
        self.element_shape = tuple(value.shape)
        self._items.extend([None] * (i + 1 - len(self._items)))
        self._items[i] = value
        return self

    def read(self, index) -> torch.Tensor:
        """Element ``index``."""
        i = self._index(index, "read")
        if self._items[i] is None:
            raise ValueError(f"TensorArray.read: element {i} was never written")
        return self._items[i]

    def unstack(self, value: torch.Tensor) -> TensorArray:
        """Set the elements to ``value``'s slices along its first axis; returns self."""
        value = torch.as_tensor(value).to(self.dtype)
        if value.dim() == 0:
            raise ValueError("TensorArray.unstack: value must have at least one axis")
        if len(self._items) and value.shape[0] != len(self._items) and not self.dynamic_size:
            raise ValueError(f"TensorArray.unstack: value has {value.shape[0]} elements, the "
                             f"array has size {len(self._items)}")
        self._items = list(value.unbind(0))
        self.element_shape = tuple(value.shape[1:])
        return self

    def gather(self, indices) -> torch.Tensor:
        """The elements at ``indices``, stacked."""
        return torch.stack([self.read(i) for i in torch.as_tensor(indices).tolist()])

    def stack(self) -> torch.Tensor:
        """All elements stacked along a new first axis: ``[size, *element_shape]``."""
        if not self._items:
            return torch.zeros(0, *(self.element_shape or ()), dtype=self.dtype, device=self.device)
        return torch.stack([self.read(i) for i in range(len(self._items))])


def _where(finished: torch.Tensor, kept, new):
    """``new`` with the rows of finished entries taken from ``kept`` (scalars pass through)."""
    def pick(k, n):
        if k.dim() == 0:
            return n
        rows = finished.reshape(-1, *([1] * (n.dim() - 1)))
        return torch.where(rows, k, n)

    return pytree.tree_map(pick, kept, new)


def _check_same(want, got, what: str, time: int) -> None:
    """ValueError unless ``got`` is tensors in ``want``'s structure (pytree takes None for a
    leaf, so the leaves are checked too)."""
    leaves, spec = pytree.tree_flatten(got)
    if spec != pytree.tree_structure(want) or not all(map(torch.is_tensor, leaves)):
        raise ValueError(f"raw_rnn: loop_fn at time {time} returned {what} of another structure "
                         f"than before: {_shapes(got)} vs {_shapes(want)}")


def raw_rnn(cell: RNNCell, loop_fn: Callable, parallel_iterations: int | None = None,
            swap_memory: bool = False, scope: str | VariableScope | None = None):
    """Run ``cell`` for as long as ``loop_fn`` says, feeding it what ``loop_fn`` gives.

    ``loop_fn(time, cell_output, cell_state, loop_state)`` returns ``(elements_finished,
    next_input, next_cell_state, emit_output, next_loop_state)``. It is first called with
    ``time = 0`` and ``cell_output = cell_state = loop_state = None``: its ``next_cell_state``
    is then the initial state and its ``emit_output`` the structure of what is emitted (None:
    the cell's ``output_size``; else tensors shaped as one batch entry's emission, without the
    batch axis, as in TF); afterwards it is called after each step with the step's output
    and state. The loop stops when every entry is finished; a finished entry keeps its state
    and emits zeros from then on. See the module docstring for the loop, which is TF's.

    Args:
        cell: an rnnkit cell (built before the first step, under ``scope``, from the depth
            of ``loop_fn``'s first ``next_input``).
        loop_fn: the function above; ``time`` is an int32 scalar tensor, ``elements_finished``
            a bool tensor ``[batch]``.
        parallel_iterations, swap_memory: TF's, accepted and without effect (each step is one
            call of the cell).
        scope: the variable scope (default ``"rnn"``).

    Returns:
        ``(emit_ta, final_state, final_loop_state)``: ``emit_ta`` a ``TensorArray`` (or a
        structure of them, as the emitted values) whose ``stack()`` is ``[time, batch, ...]``.

    Raises:
        TypeError: ``cell`` is not an rnnkit cell or ``loop_fn`` is not callable.
        ValueError: ``loop_fn`` returns no initial state, finished flags that are not a bool
            vector over the batch, or a state or emitted value of another structure than before.

    Example:
        >>> def loop_fn(time, cell_output, cell_state, loop_state):
        ...     state = cell.zero_state(B, torch.float32) if cell_output is None else cell_state
        ...     finished = time >= lengths
        ...     x = inputs[min(int(time), T - 1)]
        ...     return finished, x, state, cell_output, None
        >>> emit_ta, state, _ = raw_rnn(cell, loop_fn)
        >>> outputs = emit_ta.stack()  # [T, B, units]
    """
    del parallel_iterations, swap_memory
    if not isinstance(cell, RNNCell):
        raise TypeError(f"cell must be an rnnkit RNNCell, got {type(cell).__name__}")
    if not callable(loop_fn):
        raise TypeError(f"loop_fn must be callable, got {type(loop_fn).__name__}")
    with variable_scope(scope or "rnn"):
        time = torch.tensor(0, dtype=torch.int32)
        finished, next_input, state, emit_structure, loop_state = loop_fn(time, None, None, None)
        if state is None:
            raise ValueError("raw_rnn: loop_fn(time=0, ...) must return the initial cell state "
                             "as its next_cell_state")
        if not torch.is_tensor(next_input) or next_input.dim() != 2:
            raise ValueError(f"raw_rnn: loop_fn(time=0, ...) must return next_input as a tensor "
                             f"[batch, depth], got {_shapes(next_input)}")
        finished = _finished(finished, next_input, 0)
        batch, dtype = finished.shape[0], pytree.tree_leaves(state)[0].dtype
        # built before the loop, as TF1 builds it tracing the loop's body: the variables exist
        # even if no step runs
        cell.ensure_built(next_input.shape[-1], next_input.dtype)
        check_state(cell, state, batch, "raw_rnn: loop_fn(time=0, ...)'s next_cell_state")
        cell.begin_sequence(batch, next_input.dtype, next_input.device)
        # the weights' layout once for the whole loop, where a step is a plain call of the cell
        params = cell.sequence_params() if cell.calls_are_steps() else None
        if emit_structure is None:
            zero_emit = pytree.tree_map(
                lambda n: torch.zeros(batch, n, dtype=dtype, device=next_input.device),
                cell.output_size)
        else:
            zero_emit = pytree.tree_map(  # each leaf is one entry's template, as in TF
                lambda t: torch.zeros(batch, *t.shape, dtype=t.dtype, device=t.device),
                emit_structure)
        leaves, spec = pytree.tree_flatten(zero_emit)
        emit_ta = [TensorArray(t.dtype, dynamic_size=True, element_shape=t.shape, device=t.device)
                   for t in leaves]
        step = 0
        while not bool(finished.all()):
            if params is None:
                output, cell_state = cell(next_input, state)
            else:
                _check_input(next_input, batch, cell.input_depth, step)
                output, cell_state = cell.step(cell.prepare_inputs(next_input, params), state,
                                               params)
            step += 1
            (next_finished, next_input, next_state, emit, next_loop_state) = loop_fn(
                time + 1, output, cell_state, loop_state)
            _check_same(state, next_state, "a next_cell_state", step)
            _check_same(zero_emit, emit, "an emit_output", step)
            if bool(finished.any()):  # (mostly none are: no selects then)
                state = _where(finished, state, next_state)
                emit = _where(finished, zero_emit, emit)
            else:
                state = next_state
            for ta, value in zip(emit_ta, pytree.tree_leaves(emit), strict=True):
                ta.write(time, value)
            finished = finished | _finished(next_finished, next_input, step)
            loop_state = loop_state if next_loop_state is None else next_loop_state
            time = time + 1
    return pytree.tree_unflatten(emit_ta, spec), state, loop_state


def _check_input(x, batch: int, depth: int, time: int) -> None:
    if not torch.is_tensor(x) or tuple(x.shape) != (batch, depth):
        raise ValueError(f"raw_rnn: loop_fn at time {time} must return next_input as a tensor "
                         f"[batch, depth] = [{batch}, {depth}], got {_shapes(x)}")


def _finished(flags, next_input, time: int) -> torch.Tensor:
    """``elements_finished`` as a bool vector over the batch of ``next_input``."""
    flags = torch.as_tensor(flags)
    batch = pytree.tree_leaves(next_input)[0].shape[0]
    if flags.dtype != torch.bool or tuple(flags.shape) != (batch,):
        raise ValueError(f"raw_rnn: loop_fn at time {time} must return elements_finished as a "
                         f"bool tensor of shape [batch] = [{batch}], got {flags.dtype} of shape "
                         f"{list(flags.shape)}")
    return flags
