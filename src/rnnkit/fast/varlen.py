"""Variable-length batches on a full-length kernel: the plan (sort by length, run segments of
constant active batch, carry and slice the state) and its helpers; ``rnnkit.fast.packed`` runs
it on oneDNN.

With the batch sorted by length (longest first), the sequences still running between two
consecutive distinct lengths are a prefix of the batch, so each such stretch of time is one
full-length call on that prefix. A sequence's final state is the state after the segment where
it ends; its outputs past its length are zero (TF1 ``dynamic_rnn``) or repeat the last valid
output (Keras masks, ``masked_output="previous"``). Work done is the batch's tokens, not
``B * T``, plus a bounded padding where ``plan`` merges segments of a vanilla RNN or GRU: a
sequence ending inside a merged segment runs on past its end (outputs discarded), and its final
state, being its output, is read at its last step. (An LSTM's ``c`` is not an output: recovering
it costs about as many step computations as merging saves, measured, so LSTMs do not merge.)
"""

from __future__ import annotations

import torch


def prefix_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """The lengths of a ``[T, B]`` mask that is True exactly on a prefix of each column, else
    None (a mask with holes, as Keras masks may have)."""
    lengths = mask.sum(0)
    steps = torch.arange(mask.shape[0], device=mask.device)[:, None]
    return lengths if bool(torch.equal(steps < lengths[None, :], mask)) else None


def roll_to_front(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Rotate each sequence of time-major ``x`` ``[T, B, ...]`` so that its last ``lengths[b]``
    steps come first (a suffix mask becomes a prefix mask); ``roll_to_front(y, T - lengths)``
    undoes it, and is its backward (a permutation: no accumulation, which ``torch.gather``'s
    own backward pays, several times slower on CPU)."""
    return _Roll.apply(x, lengths)


def _rolled(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    steps = x.shape[0]
    t = torch.arange(steps, device=x.device)[:, None]
    src = (t + steps - lengths.to(x.device)[None, :]) % steps
    index = src.reshape(steps, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 0, index)


class _Roll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lengths):
        ctx.save_for_backward(lengths)
        return _rolled(x, lengths)

    @staticmethod
    def backward(ctx, g):
        (lengths,) = ctx.saved_tensors
        return roll_to_front(g, g.shape[0] - lengths), None


def plan(sorted_lens: list[int], merge: bool, waste: float = 0.125
         ) -> list[tuple[int, int]]:
    """Segments ``(start, end)`` of time for lengths sorted longest first.

    Without ``merge``, a segment ends at every distinct length, so that each ending sequence's
    final state is a kernel's final state. With it (the state is the output), segments are
    merged while the steps computed past some sequence's end stay
    within ``waste`` of the segment's useful steps: fewer, longer calls for a little padding.
    """
    ends = sorted(set(sorted_lens) - {0})
    if not merge:
        return list(zip([0, *ends], ends, strict=False))
    segments, start = [], 0
    while start < ends[-1]:
        alive = [n for n in sorted_lens if n > start]
        end = next(e for e in ends if e > start)
        for candidate in (e for e in ends if e > end):
            useful = sum(min(n, candidate) - start for n in alive)
            if len(alive) * (candidate - start) - useful > waste * useful:
                break
            end = candidate
        segments.append((start, end))
        start = end
    return segments


class _Tokens(torch.autograd.Function):
    """``x[t_idx, b_idx]`` for index pairs that are all different: the backward writes each
    row's gradient in place (``index_put`` without accumulation), where autograd's own backward
    of advanced indexing accumulates, about 10x slower on CPU (1.3 against 0.12 ms for
    B32 T100 H256)."""

    @staticmethod
    def forward(ctx, x, t_idx, b_idx):
        ctx.save_for_backward(t_idx, b_idx)
        ctx.shape = x.shape
        return x[t_idx, b_idx]

    @staticmethod
    def backward(ctx, g):
        t_idx, b_idx = ctx.saved_tensors
        return g.new_zeros(ctx.shape).index_put_((t_idx, b_idx), g), None, None


def take_tokens(x: torch.Tensor, t_idx: torch.Tensor, b_idx: torch.Tensor) -> torch.Tensor:
    """The packed rows ``x[t_idx, b_idx]`` of time-major ``x`` (each ``(t, b)`` at most once)."""
    return _Tokens.apply(x, t_idx, b_idx)


def hold_last(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Outputs past each length repeat the last valid one (zeros for length 0). One row gather
    (``index_select``, whose backward ``index_add_`` is fast where ``gather``'s is not)."""
    steps, batch = out.shape[0], out.shape[1]
    t = torch.arange(steps, device=lengths.device)[:, None]
    lens = lengths[None, :]
    src = torch.where(t < lens, t, (lens - 1).clamp(min=0))
    rows = (src * batch + torch.arange(batch, device=lengths.device)).flatten().to(out.device)
    held = out.reshape(steps * batch, -1).index_select(0, rows).view(out.shape)
    keep = (lens > 0).to(out.device).view(1, batch, *([1] * (out.dim() - 2)))
    return torch.where(keep, held, torch.zeros_like(out))
