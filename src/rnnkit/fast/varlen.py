"""Variable-length batches on a full-length kernel: sort by length, run segments of constant
active batch, carry and slice the state.

With the batch sorted by length (longest first), the sequences still running between two
consecutive distinct lengths are a prefix of the batch, so each such stretch of time is one
full-length call on that prefix. A sequence's final state is the state after the segment where
it ends; its outputs past its length are zero (TF1 ``dynamic_rnn``) or repeat the last valid
output (Keras masks, ``masked_output="previous"``). Work done is the batch's tokens, not
``B * T`` (plus a bounded padding where ``plan`` merges segments of a GRU or vanilla RNN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rnnkit.unroll import map_state

RunFn = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]


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


def plan(sorted_lens: list[int], state_is_output: bool, waste: float = 0.125
         ) -> list[tuple[int, int]]:
    """Segments ``(start, end)`` of time for lengths sorted longest first.

    Without more, a segment ends at every distinct length, so that each ending sequence's final
    state is a kernel's final state. Where the state is the output (vanilla RNN, GRU), a
    sequence's final state can be read from the outputs at its last step instead, so segments
    are merged while the steps computed past some sequence's end stay within ``waste`` of the
    segment's useful steps: fewer, longer calls for a little padding.
    """
    ends = sorted(set(sorted_lens) - {0})
    if not state_is_output:
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


def run_segments(run: RunFn, x: torch.Tensor, state, lengths: torch.Tensor,
                 masked_output: str = "zero", state_is_output: bool = False
                 ) -> tuple[torch.Tensor, object]:
    """Run ``run(x_segment, state)`` over time-major ``x`` ``[T, B, depth]`` with per-sequence
    ``lengths`` ``[B]``, TF1 semantics.

    Args:
        run: a full-length unroll, ``(x [t, b, depth], state) -> (outputs [t, b, out], state)``.
        x: time-major inputs.
        state: initial state (tensors ``[B, n]`` in nested tuples).
        lengths: ints in ``[0, T]``, at least one of them positive.
        masked_output: ``"zero"`` or ``"previous"`` for outputs past each length.
        state_is_output: the state is a tensor equal to the output at every step (vanilla
            RNN, GRU), which lets segments merge (see ``plan``).

    Returns:
        ``(outputs [T, B, out], final_state)``.
    """
    steps, batch = x.shape[0], x.shape[1]
    lengths = lengths.to(torch.long).cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    lens = lengths[order].tolist()
    inverse = torch.argsort(order).to(x.device)
    order = order.to(x.device)
    segments = plan(lens, state_is_output)
    # one split of the sorted inputs (not a slice of the whole per segment: each slice's
    # backward would fill a zero tensor of the full size)
    last = segments[-1][1]
    pieces_in = x.index_select(1, order)[:last].split([e - s for s, e in segments])
    initial = map_state(lambda s: s.index_select(0, order), state)
    current, pieces, finals = initial, [], []
    for (start, end), x_seg in zip(segments, pieces_in, strict=True):
        active = sum(n > start for n in lens)
        alive_after = sum(n > end for n in lens)
        current = map_state(lambda s, n=active: s[:n], current)
        out, current = run(x_seg[:, :active], current)
        if lens[active - 1] < end:  # merged segment: some sequences end inside it
            stop = torch.tensor(lens[:active], device=out.device) - start
            rows = torch.arange(alive_after, active, device=out.device)
            finals.append(out[stop[alive_after:] - 1, rows])
            t = torch.arange(end - start, device=out.device)[:, None]
            out = out * (t < stop[None, :]).unsqueeze(-1).to(out.dtype)
        else:
            finals.append(map_state(lambda s, a=alive_after: s[a:], current))
        pieces.append(F.pad(out, (0, 0, 0, batch - active)))
    out = F.pad(torch.cat(pieces), (0, 0, 0, 0, 0, steps - last))
    finals.reverse()
    empty = lens.count(0)
    if empty:
        finals.append(map_state(lambda s: s[batch - empty:], initial))
    final = map_state(lambda *parts: torch.cat(parts).index_select(0, inverse), *finals)
    if masked_output == "previous":
        out = _hold_last(out, torch.tensor(lens))
    return out.index_select(1, inverse), final


def _hold_last(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Outputs past each length repeat the last valid one (zeros for length 0)."""
    steps = torch.arange(out.shape[0])[:, None]
    lens = lengths[None, :]
    src = torch.where(steps < lens, steps, (lens - 1).clamp(min=0))
    held = out.gather(0, src[..., None].expand_as(out).to(out.device))
    return torch.where((lens > 0)[..., None].to(out.device), held, torch.zeros_like(out))
