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
    undoes it."""
    steps = x.shape[0]
    t = torch.arange(steps, device=x.device)[:, None]
    src = (t + steps - lengths.to(x.device)[None, :]) % steps
    index = src.reshape(steps, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 0, index)


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


def hold_last(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Outputs past each length repeat the last valid one (zeros for length 0)."""
    steps = torch.arange(out.shape[0], device=lengths.device)[:, None]
    lens = lengths[None, :]
    src = torch.where(steps < lens, steps, (lens - 1).clamp(min=0))
    held = out.gather(0, src[..., None].expand_as(out).to(out.device))
    return torch.where((lens > 0)[..., None].to(out.device), held, torch.zeros_like(out))
