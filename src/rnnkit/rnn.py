"""TF1's unrolling functions: ``dynamic_rnn``, ``static_rnn``, ``bidirectional_dynamic_rnn`` and
``static_bidirectional_rnn``, with TF's signatures, return structures and scope names.

Past each sequence's length the output is zero and the state stays at its last valid step; the
backward direction reverses each sequence within its own length. All four run the cell's
``unroll`` (``rnnkit.unroll.scan``), so the per-step cell and the unrolled loop are one code path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rnnkit.cells.base import RNNCell, State, check_state
from rnnkit.cells.block import LSTMBlockFusedCell
from rnnkit.fast.dispatch import check_fast, fast_mode
from rnnkit.scope import VariableScope, variable_scope
from rnnkit.unroll import default_chunk, length_mask, reverse_sequence

__all__ = ["dynamic_rnn", "static_rnn", "bidirectional_dynamic_rnn", "static_bidirectional_rnn",
           "stack_bidirectional_dynamic_rnn", "stack_bidirectional_rnn"]


def _check_cell(cell, argname: str) -> None:
    if not isinstance(cell, RNNCell):
        raise TypeError(f"{argname} must be an rnnkit RNNCell, got {type(cell).__name__}")
    if isinstance(cell, LSTMBlockFusedCell):
        raise TypeError(f"{argname}: an LSTMBlockFusedCell runs a whole sequence itself "
                        "(cell(inputs, ...)); as in TF, it is not a cell to unroll "
                        "(LSTMBlockCell is, with the same variables)")


def _check_lengths(sequence_length, batch: int, steps: int, device) -> torch.Tensor | None:
    if sequence_length is None:
        return None
    lengths = torch.as_tensor(sequence_length, device=device)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"sequence_length must hold integers, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"sequence_length must have shape [batch] = [{batch}], got "
                         f"{list(lengths.shape)}")
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > steps):
        raise ValueError(f"sequence_length values must be in [0, {steps}] (the number of time "
                         f"steps), got {lengths.tolist()}")
    return lengths.long()


def _check_fast(fast) -> None:
    if fast is not None:
        check_fast(fast)


def _run(cell: RNNCell, inputs_tm: torch.Tensor, initial_state: State | None, dtype,
         lengths: torch.Tensor | None, swap_memory: bool, argname: str = "initial_state",
         fast=None):
    """Build the cell, check the state and run the time-major unroll (on the path ``fast``
    allows, see ``rnnkit.fast.dispatch``; None: the enclosing ``fast_mode`` block's, else
    ``"auto"``)."""
    steps, batch, depth = inputs_tm.shape
    cell.ensure_built(depth, inputs_tm.dtype)
    if initial_state is None:
        state = cell.zero_state(batch, dtype or inputs_tm.dtype, inputs_tm.device)
    else:
        check_state(cell, initial_state, batch, argname)
        state = initial_state
    cell.begin_sequence(batch, inputs_tm.dtype, inputs_tm.device)
    mask = length_mask(lengths, steps) if lengths is not None else None
    chunk = default_chunk(steps) if swap_memory else None
    if fast is None:  # inherit the enclosing fast_mode block
        return cell.unroll(inputs_tm, state, mask, "zero", chunk)
    with fast_mode(fast):
        return cell.unroll(inputs_tm, state, mask, "zero", chunk)


def _run_both(cell_fw: RNNCell, cell_bw: RNNCell, x: torch.Tensor, initial_state_fw, initial_state_bw,
              dtype, lengths: torch.Tensor | None, swap_memory: bool, scope, fast):
    """Both directions over time-major ``x`` under ``scope/fw`` and ``scope/bw``; the backward
    cell reads each sequence reversed within its length and its outputs are reversed back."""
    with variable_scope(scope or "bidirectional_rnn"):
        with variable_scope("fw"):
            out_fw, st_fw = _run(cell_fw, x, initial_state_fw, dtype, lengths, swap_memory,
                                 "initial_state_fw", fast)
        with variable_scope("bw"):
            out_bw, st_bw = _run(cell_bw, reverse_sequence(x, lengths), initial_state_bw, dtype,
                                 lengths, swap_memory, "initial_state_bw", fast)
    return (out_fw, reverse_sequence(out_bw, lengths)), (st_fw, st_bw)


def _check_inputs(inputs, time_major: bool) -> torch.Tensor:
    layout = "[time, batch, depth]" if time_major else "[batch, time, depth]"
    if not torch.is_tensor(inputs) or inputs.dim() != 3:
        got = list(inputs.shape) if torch.is_tensor(inputs) else type(inputs).__name__
        raise ValueError(f"inputs must be a tensor of shape {layout}, got {got}")
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"inputs must be a floating tensor, got dtype {inputs.dtype}")
    if inputs.shape[0 if time_major else 1] == 0:
        raise ValueError(f"inputs must have at least one time step, got shape {list(inputs.shape)}")
    return inputs if time_major else inputs.transpose(0, 1)


def dynamic_rnn(cell: RNNCell, inputs: torch.Tensor, sequence_length=None,
                initial_state: State | None = None, dtype: torch.dtype | None = None,
                parallel_iterations: int | None = None, swap_memory: bool = False,
                time_major: bool = False, scope: str | VariableScope | None = None,
                fast=None) -> tuple[torch.Tensor, State]:
    """Unroll ``cell`` over ``inputs``, as ``tf.compat.v1.nn.dynamic_rnn``.

    Args:
        cell: an ``RNNCell``; built here (under scope ``scope or "rnn"``) if it is new.
        inputs: ``[batch, time, depth]`` (``[time, batch, depth]`` if ``time_major``).
        sequence_length: ``[batch]`` ints in ``[0, time]``; outputs past a length are zero and
            the state is held at the last valid step.
        initial_state: a state of structure ``cell.state_size``; default zeros.
        dtype: dtype of the zero state (default: the inputs').
        parallel_iterations: accepted for compatibility; unused.
        swap_memory: keep training memory bounded by recomputing chunks of ~sqrt(T) steps in
            the backward pass.
        time_major: layout of ``inputs`` and outputs.
        scope: variable scope name or object (default ``"rnn"``).
        fast: ``"auto"`` (the fastest exact path, e.g. oneDNN on CPU, else the reference loop),
            ``True`` (a fast path or an error), ``False`` (the reference loop), or None (the
            default: the switch of the enclosing ``rnnkit.fast.fast_mode`` block, else
            ``"auto"``); the result does not depend on it. ``rnnkit.fast.explain`` says which
            path runs and why.

    Returns:
        ``(outputs, final_state)``; outputs ``[batch, time, cell.output_size]``.

    Raises:
        ValueError / TypeError: inputs not rank 3, lengths of the wrong shape or range, an
            initial state of the wrong structure or shape, ``fast`` not one of its three
            values, or ``fast=True`` where no fast path can run (the message lists why).

    Example:
        >>> outputs, state = dynamic_rnn(GRUCell(8), x, sequence_length=lengths)  # doctest: +SKIP
    """
    del parallel_iterations
    _check_cell(cell, "cell")
    _check_fast(fast)
    x = _check_inputs(inputs, time_major)
    lengths = _check_lengths(sequence_length, x.shape[1], x.shape[0], x.device)
    with variable_scope(scope or "rnn"):
        outputs, state = _run(cell, x, initial_state, dtype, lengths, swap_memory, fast=fast)
    return (outputs if time_major else outputs.transpose(0, 1)), state


def bidirectional_dynamic_rnn(cell_fw: RNNCell, cell_bw: RNNCell, inputs: torch.Tensor,
                              sequence_length=None, initial_state_fw: State | None = None,
                              initial_state_bw: State | None = None,
                              dtype: torch.dtype | None = None,
                              parallel_iterations: int | None = None, swap_memory: bool = False,
                              time_major: bool = False, scope: str | VariableScope | None = None,
                              fast=None):
    """Forward and backward ``dynamic_rnn``, as ``tf.compat.v1.nn.bidirectional_dynamic_rnn``.

    The backward cell reads each sequence reversed within its own length; its outputs are
    reversed back, so both outputs are aligned with the inputs. Scopes:
    ``bidirectional_rnn/fw`` and ``bidirectional_rnn/bw`` (or under ``scope``). ``fast`` is
    as in ``dynamic_rnn``, for both directions.

    Returns:
        ``((output_fw, output_bw), (state_fw, state_bw))``.
    """
    del parallel_iterations
    _check_cell(cell_fw, "cell_fw")
    _check_cell(cell_bw, "cell_bw")
    _check_fast(fast)
    x = _check_inputs(inputs, time_major)
    lengths = _check_lengths(sequence_length, x.shape[1], x.shape[0], x.device)
    (out_fw, out_bw), (st_fw, st_bw) = _run_both(
        cell_fw, cell_bw, x, initial_state_fw, initial_state_bw, dtype, lengths, swap_memory, scope,
        fast)
    if not time_major:
        out_fw, out_bw = out_fw.transpose(0, 1), out_bw.transpose(0, 1)
    return (out_fw, out_bw), (st_fw, st_bw)


def _stack_static(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, (list, tuple)) or not inputs:
        raise TypeError("inputs must be a non-empty list of [batch, depth] tensors (one per step)")
    shapes = {tuple(t.shape) if torch.is_tensor(t) else None for t in inputs}
    if len(shapes) != 1 or None in shapes or len(next(iter(shapes))) != 2:
        raise ValueError(f"inputs must be tensors of one shape [batch, depth], got shapes "
                         f"{[list(t.shape) if torch.is_tensor(t) else type(t).__name__ for t in inputs]}")
    return torch.stack(list(inputs))


def static_rnn(cell: RNNCell, inputs: Sequence[torch.Tensor], initial_state: State | None = None,
               dtype: torch.dtype | None = None, sequence_length=None,
               scope: str | VariableScope | None = None, fast=None):
    """Unroll over a Python list of ``[batch, depth]`` tensors, as ``tf.compat.v1.nn.static_rnn``.
    ``fast`` is as in ``dynamic_rnn``.

    Returns:
        ``(outputs, final_state)`` with ``outputs`` a list, one ``[batch, output_size]`` per step.
    """
    _check_cell(cell, "cell")
    _check_fast(fast)
    x = _stack_static(inputs)
    lengths = _check_lengths(sequence_length, x.shape[1], x.shape[0], x.device)
    with variable_scope(scope or "rnn"):
        outputs, state = _run(cell, x, initial_state, dtype, lengths, False, fast=fast)
    return list(outputs.unbind(0)), state


def static_bidirectional_rnn(cell_fw: RNNCell, cell_bw: RNNCell, inputs: Sequence[torch.Tensor],
                             initial_state_fw: State | None = None,
                             initial_state_bw: State | None = None,
                             dtype: torch.dtype | None = None, sequence_length=None,
                             scope: str | VariableScope | None = None, fast=None):
    """``tf.compat.v1.nn.static_bidirectional_rnn``: outputs are per-step concatenations
    ``[fw, bw]``; ``fast`` is as in ``dynamic_rnn``, for both directions.

    Returns:
        ``(outputs, state_fw, state_bw)``.
    """
    _check_cell(cell_fw, "cell_fw")
    _check_cell(cell_bw, "cell_bw")
    _check_fast(fast)
    x = _stack_static(inputs)
    lengths = _check_lengths(sequence_length, x.shape[1], x.shape[0], x.device)
    (out_fw, out_bw), (st_fw, st_bw) = _run_both(
        cell_fw, cell_bw, x, initial_state_fw, initial_state_bw, dtype, lengths, False, scope, fast)
    return list(torch.cat([out_fw, out_bw], dim=-1).unbind(0)), st_fw, st_bw


def _stacked(layer: Callable, inputs, scope, cells_fw, cells_bw, initial_states_fw,
             initial_states_bw):
    """contrib's stacked bidirectional layers: ``layer(cell_fw, cell_bw, x, state_fw,
    state_bw) -> (outputs, state_fw, state_bw)`` under ``scope/cell_k``, each reading the last
    one's outputs; returns the last outputs and tuples of every layer's final states."""
    layers = _check_stack(cells_fw, cells_bw, initial_states_fw, initial_states_bw)
    states_fw, states_bw, x = [], [], inputs
    with variable_scope(scope or "stack_bidirectional_rnn"):
        for k, (cell_fw, cell_bw, state_fw, state_bw) in enumerate(layers):
            with variable_scope(f"cell_{k}"):
                x, st_fw, st_bw = layer(cell_fw, cell_bw, x, state_fw, state_bw)
            states_fw.append(st_fw)
            states_bw.append(st_bw)
    return x, tuple(states_fw), tuple(states_bw)


def _check_stack(cells_fw, cells_bw, initial_states_fw, initial_states_bw) -> list:
    """The layers' ``(cell_fw, cell_bw, state_fw, state_bw)``, checked."""
    for name, cells in (("cells_fw", cells_fw), ("cells_bw", cells_bw)):
        if not isinstance(cells, (list, tuple)) or not cells:
            raise ValueError(f"{name} must be a non-empty list of cells, got {cells!r:.80}")
        for k, cell in enumerate(cells):
            _check_cell(cell, f"{name}[{k}]")
    if len(cells_fw) != len(cells_bw):
        raise ValueError(f"cells_fw and cells_bw must have the same length, got {len(cells_fw)} "
                         f"and {len(cells_bw)}")
    states = []
    for name, given in (("initial_states_fw", initial_states_fw),
                        ("initial_states_bw", initial_states_bw)):
        if given is not None and (not isinstance(given, (list, tuple))
                                  or len(given) != len(cells_fw)):
            raise ValueError(f"{name} must be a list of {len(cells_fw)} states (one per layer), "
                             f"got {given!r:.80}")
        states.append(list(given) if given else [None] * len(cells_fw))
    return list(zip(cells_fw, cells_bw, *states, strict=True))


def stack_bidirectional_dynamic_rnn(cells_fw: Sequence[RNNCell], cells_bw: Sequence[RNNCell],
                                    inputs: torch.Tensor, initial_states_fw=None,
                                    initial_states_bw=None, dtype: torch.dtype | None = None,
                                    sequence_length=None, parallel_iterations: int | None = None,
                                    time_major: bool = False,
                                    scope: str | VariableScope | None = None,
                                    swap_memory: bool = False, fast=None):
    """Bidirectional layers stacked, as ``tf.contrib.rnn.stack_bidirectional_dynamic_rnn``:
    layer ``k`` is ``bidirectional_dynamic_rnn(cells_fw[k], cells_bw[k])`` under scope
    ``stack_bidirectional_rnn/cell_k`` (or ``scope/cell_k``), over the concatenated ``[fw, bw]``
    outputs of layer ``k - 1``. ``fast`` is as in ``dynamic_rnn``.

    Returns:
        ``(outputs, states_fw, states_bw)``: the last layer's concatenated outputs
        ``[batch, time, fw + bw]``, and tuples of every layer's final states.

    Raises:
        ValueError: the cell lists empty or of different lengths, initial states not one per
            layer, or what ``bidirectional_dynamic_rnn`` refuses.
    """
    del parallel_iterations

    def layer(cell_fw, cell_bw, x, state_fw, state_bw):
        outs, (st_fw, st_bw) = bidirectional_dynamic_rnn(
            cell_fw, cell_bw, x, sequence_length, state_fw, state_bw, dtype,
            swap_memory=swap_memory, time_major=time_major, fast=fast)
        return torch.cat(outs, dim=-1), st_fw, st_bw

    return _stacked(layer, inputs, scope, cells_fw, cells_bw, initial_states_fw,
                    initial_states_bw)


def stack_bidirectional_rnn(cells_fw: Sequence[RNNCell], cells_bw: Sequence[RNNCell],
                            inputs: Sequence[torch.Tensor], initial_states_fw=None,
                            initial_states_bw=None, dtype: torch.dtype | None = None,
                            sequence_length=None, scope: str | VariableScope | None = None,
                            fast=None):
    """``tf.contrib.rnn.stack_bidirectional_rnn``: ``stack_bidirectional_dynamic_rnn`` over a
    Python list of ``[batch, depth]`` tensors, each layer a ``static_bidirectional_rnn``.

    Returns:
        ``(outputs, states_fw, states_bw)``, ``outputs`` a list of ``[batch, fw + bw]``.
    """
    def layer(cell_fw, cell_bw, x, state_fw, state_bw):
        return static_bidirectional_rnn(cell_fw, cell_bw, x, state_fw, state_bw, dtype,
                                        sequence_length, fast=fast)

    return _stacked(layer, inputs, scope, cells_fw, cells_bw, initial_states_fw,
                    initial_states_bw)
