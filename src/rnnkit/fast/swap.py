"""``swap_memory`` on a fast path: bounded training memory by recomputing chunks of time.

Each chunk of ``chunk`` steps runs under ``torch.utils.checkpoint`` (non-reentrant): its saved
tensors, the oneDNN workspace included, are dropped after the forward pass and recomputed,
one chunk at a time, in the backward pass, so memory grows with ``T / chunk + chunk`` steps
instead of ``T``. The state is carried from chunk to chunk; a variable-length batch keeps TF1
semantics (lengths relative to each chunk; a sequence that ended earlier passes its state
through and outputs zeros).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils.checkpoint import checkpoint

SeqFn = Callable[..., tuple[torch.Tensor, object]]  # (x, state, lengths, steps=slice)


def run_chunked(run: SeqFn, x: torch.Tensor, state, lengths: torch.Tensor | None, chunk: int
                ) -> tuple[torch.Tensor, object]:
    """Run ``run(x_chunk, state, lengths_in_chunk, steps=...)`` over time-major ``x`` chunk by chunk.

    Args:
        run: an unroll of a stretch of time, ``lengths_in_chunk`` None when every sequence runs
            through the whole stretch; ``steps``: the stretch, ``slice(lo, hi)`` of ``x``'s steps
            (for what else the run reads per step: a state mask per step).
        x: ``[T, B, depth]``.
        state: initial state.
        lengths: ``[B]`` lengths (at least one positive) or None for full length.
        chunk: steps per recomputed chunk.

    Returns:
        ``(outputs [T, B, out], final_state)``.
    """
    leaves, spec = pytree.tree_flatten(state)
    outs = []
    for lo in range(0, x.shape[0], chunk):
        hi = min(lo + chunk, x.shape[0])
        rel = None if lengths is None else (lengths - lo).clamp(0, hi - lo)
        if rel is not None and int(rel.max()) == 0:  # every sequence has ended
            outs.append(outs[-1].new_zeros(hi - lo, *outs[-1].shape[1:]))
            continue
        if rel is not None and bool((rel == hi - lo).all()):
            rel = None

        def body(x_chunk, *flat, rel=rel, steps=slice(lo, hi)):
            out, st = run(x_chunk, pytree.tree_unflatten(list(flat), spec), rel, steps=steps)
            return (out, *pytree.tree_leaves(st))

        res = checkpoint(body, x[lo:hi], *leaves, use_reentrant=False)
        outs.append(res[0])
        leaves = list(res[1:])
    return torch.cat(outs), pytree.tree_unflatten(leaves, spec)
