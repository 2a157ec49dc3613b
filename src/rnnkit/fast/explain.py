"""``explain``: which path an unroll would take, and why not the others (the dispatch's own
decision, ``rnnkit.fast.dispatch.decide``, made for a cell as ``dynamic_rnn`` would call it)."""

from __future__ import annotations

import dataclasses

import torch

from rnnkit.cells.wrappers import DeviceWrapper, MultiRNNCell
from rnnkit.fast import steps
from rnnkit.fast.dispatch import Decision, decide, step_by_step
from rnnkit.unroll import default_chunk, length_mask


def explain(cell, inputs: torch.Tensor, sequence_length=None, swap_memory: bool = False,
            time_major: bool = False) -> Decision:
    """Which path ``dynamic_rnn(cell, inputs, sequence_length, swap_memory=...)`` would take
    with ``fast="auto"``, and why not the others.

    Args:
        cell: a built cell (a ``MultiRNNCell`` layer by layer: the decision is its first
            layer's, with every layer's in ``layers``; a wrapper by the cell it wraps, unless
            the wrapper must run step by step: ``whole_sequence``).
        inputs: ``[batch, time, depth]`` (``[time, batch, depth]`` if ``time_major``).
        sequence_length: optional ``[batch]`` lengths.
        swap_memory: as ``dynamic_rnn``.
        time_major: layout of ``inputs``.

    Returns:
        the ``Decision``; print it for one line per path.

    Raises:
        RuntimeError: the cell has no variables yet.
    """
    cell.require_built("explain")
    x = inputs if time_major else inputs.transpose(0, 1)
    if isinstance(cell, DeviceWrapper):  # it moves the inputs to its device
        x = x.to(cell.device)
    if isinstance(cell, MultiRNNCell):  # each layer reads the outputs of the one below
        layers, depth = [], x.shape[-1]
        for layer in cell.cells:
            xk = x.new_zeros(*x.shape[:2], depth)
            layers.append(explain(layer, xk, sequence_length, swap_memory, time_major=True))
            depth = layer.output_size
        return dataclasses.replace(layers[0], layers=tuple(layers))
    cell, why = cell.whole_sequence()
    if why:
        return step_by_step(why)
    params, own_step = cell.dispatch_params(x.shape[1], x.dtype, x.device)
    mask = None
    if sequence_length is not None:
        mask = length_mask(torch.as_tensor(sequence_length, device=x.device), x.shape[0])
    chunk = default_chunk(x.shape[0]) if swap_memory else None
    state = cell.zero_state(x.shape[1], x.dtype, x.device)
    decision = decide(params, x, state, mask, "zero", chunk, own_step)
    if decision.path != "graph" or decision.captures:
        return decision
    return dataclasses.replace(decision, loop=steps.describe(params, x.shape[1], own_step))
