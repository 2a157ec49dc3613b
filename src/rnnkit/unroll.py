"""The one time loop both API families use: masking, reversal and bounded-memory chunks.

``scan`` runs a step function over time-major inputs, prepared (the input projection) by a
``prepare`` function. Past a sequence's end the state is held; the output is zero (TF1
``dynamic_rnn``) or the previous output (Keras masks, where masked steps may sit in the middle).
With ``chunk`` set, each chunk of steps, its preparation included, is recomputed in the
backward pass instead of stored (``swap_memory=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils.checkpoint import checkpoint

StepFn = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]


def map_state(fn, *states):
    """Apply ``fn`` leaf-wise over equally structured states (tensors in nested tuples)."""
    return pytree.tree_map(fn, *states)


def length_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """``[T, B]`` bool mask, True where step ``t`` is within sequence ``b``'s length."""
    return torch.arange(steps, device=lengths.device)[:, None] < lengths[None, :]


def reverse_sequence(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse time-major ``x`` ``[T, B, ...]`` within each sequence's length (all of T if None);
    steps past a length stay where they are, as ``tf.reverse_sequence``."""
    if lengths is None:
        return x.flip(0)
    steps = x.shape[0]
    t = torch.arange(steps, device=x.device)[:, None]
    lens = lengths.to(x.device)[None, :]
    src = torch.where(t < lens, lens - 1 - t, t)  # [T, B]
    index = src.reshape(steps, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 0, index)


def _rows(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A step's mask shaped to select in ``like``: ``[B]`` selects rows of ``[B, ...]`` (a state
    of any rank), ``[B, *spatial]`` positions of a convolutional state ``[B, C, *spatial]``
    (Keras's Masking over a ConvLSTM's inputs)."""
    if m.dim() > 1:
        return m.unsqueeze(1)
    return m.view(m.shape[0], *([1] * (like.dim() - 1)))


def _run(step: StepFn, xs: torch.Tensor, state, mask: torch.Tensor | None, keep_output: bool,
         prev_out: torch.Tensor | None):
    outputs = []
    for t, x_t in enumerate(xs.unbind(0)):
        out, new = step(x_t, state)
        if mask is not None:
            m = mask[t]
            state = map_state(lambda n, o, m=m: torch.where(_rows(m, n), n, o), new, state)
            if keep_output:
                prev_out = torch.zeros_like(out) if prev_out is None else prev_out
                out = prev_out = torch.where(_rows(m, out), out, prev_out)
            else:
                out = torch.where(_rows(m, out), out, torch.zeros_like(out))
        else:
            state = new
        outputs.append(out)
    return outputs, state, prev_out


def scan(step: StepFn, xs: torch.Tensor, state, mask: torch.Tensor | None = None,
         masked_output: str = "zero", chunk: int | None = None,
         prepare: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Run ``step`` over ``prepare(xs)`` ``[T, B, ...]``.

    Args:
        step: ``(x_t, state) -> (output, new_state)``.
        xs: time-major inputs.
        state: initial state (a tensor or nested tuple of ``[B, ...]`` tensors, ``[B, n]`` but
            for convolutional cells).
        mask: ``[T, B]`` bool, False where a step is padding; the state is held there (or
            ``[T, B, *spatial]`` for a convolutional state, per position).
        masked_output: ``"zero"`` (TF1) or ``"previous"`` (Keras) output at masked steps.
        chunk: recompute each run of ``chunk`` steps in backward instead of storing it.
        prepare: state-independent work on a run of steps (the input projection); with ``chunk``
            it runs inside each recomputed chunk, so neither its result nor that result's
            gradient is ever held for all T steps.

    Returns:
        ``(outputs [T, B, out], final_state)``.
    """
    keep = masked_output == "previous"
    steps = xs.shape[0]
    if steps == 0:
        raise ValueError("inputs must have at least one time step")
    prepare = prepare or (lambda x: x)
    if not chunk or chunk >= steps or not torch.is_grad_enabled():
        outputs, state, _ = _run(step, prepare(xs), state, mask, keep, None)
        return torch.stack(outputs), state
    leaves, spec = pytree.tree_flatten(state)
    pieces, prev = [], None
    # split, not slices: the gradient of a slice is a zero-padded tensor of all T steps, one per
    # chunk in the backward pass; split's backward concatenates the chunks' gradients once.
    for lo, part in zip(range(0, steps, chunk), xs.split(chunk), strict=True):
        sub_mask = mask[lo:lo + chunk] if mask is not None else None

        def body(x_chunk, prev_out, *flat, sub_mask=sub_mask):
            outs, st, last = _run(step, prepare(x_chunk), pytree.tree_unflatten(list(flat), spec),
                                  sub_mask, keep, prev_out)
            return (torch.stack(outs), last, *pytree.tree_leaves(st))

        res = checkpoint(body, part, prev, *leaves, use_reentrant=False)
        pieces.append(res[0])
        prev, leaves = res[1], list(res[2:])
    return torch.cat(pieces), pytree.tree_unflatten(leaves, spec)


def default_chunk(steps: int) -> int:
    """Chunk length for bounded-memory backprop: about sqrt(T) steps stored at once."""
    return max(1, int(math.ceil(math.sqrt(steps))))
