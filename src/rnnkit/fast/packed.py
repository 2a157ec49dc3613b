"""Variable-length batches on oneDNN in one autograd node: the segments of
``rnnkit.fast.varlen`` (sorted by length, constant active batch per stretch of time) run as
consecutive primitive calls on one packed tensor.

The inputs of every segment are gathered at once into ``[tokens, depth]`` (a contiguous
``[steps, active, depth]`` block per segment, time-major within it), the outputs come back the
same way and are scattered at once; the states pass from segment to segment as prefixes of
contiguous buffers, with no per-segment slicing, padding or autograd node, and the backward
pass runs the backward primitives in reverse order, carrying the state gradients and summing
the weight gradients in one set of buffers (oneDNN adds into them). TF1 semantics (outputs
zero past each length, the state held at the last valid step) are checked against the
reference loop in ``tests/test_fast.py``.
"""

from __future__ import annotations

import weakref

import torch
from torch.autograd.function import once_differentiable

from rnnkit.cells.base import LSTMStateTuple
from rnnkit.fast import onednn as dnnl
from rnnkit.fast.autograd import Weights, workspaces
from rnnkit.fast.varlen import hold_last, plan, take_tokens
from rnnkit.unroll import map_state

_ALIGN = 64  # bytes: each segment's workspace starts on a cache line


def _workspace_slices(sizes: list[int], pooled: bool
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One buffer (from the pool unless ``pooled`` is False) cut into aligned workspaces."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // _ALIGN) * _ALIGN
    buf = workspaces.take(total) if pooled else torch.empty(total, dtype=torch.uint8)
    return buf, [buf[o:o + s] for o, s in zip(offsets, sizes, strict=True)]


class _Segments(torch.autograd.Function):
    """Forward and backward of every segment; ``segs`` lists ``(steps, active, alive_after,
    offset)`` (``offset``: first packed row), states and outputs in sorted batch order."""

    @staticmethod
    def forward(ctx, weights: Weights, segs: list[tuple[int, int, int, int]], training: bool,
                x, h0, c0, wl, wi, bias, wp, wproj):
        lstm, P, H = weights.cell == "lstm", weights.proj, weights.hidden
        prims = [dnnl.primitives(weights.shape(t, a)).forward(training) for t, a, _, _ in segs]
        y = x.new_empty(x.shape[0], P)
        hT = h0.new_zeros(h0.shape)
        cT = c0.new_zeros(c0.shape) if lstm else None
        if training:
            buf, ws = _workspace_slices([p.ws_size for p in prims], weights.pooled)
            if weights.pooled:
                weakref.finalize(ctx, workspaces.give, buf)
        h_prev, c_prev, states = h0, c0, []
        for k, ((t, a, alive, off), prim) in enumerate(zip(segs, prims, strict=True)):
            hn, cn = x.new_empty(a, P), (x.new_empty(a, H) if lstm else None)
            args = {dnnl.SRC_LAYER: x[off:off + t * a].view(t, a, -1), dnnl.SRC_ITER: h_prev[:a],
                    dnnl.BIAS: bias, dnnl.DST_LAYER: y[off:off + t * a].view(t, a, P),
                    dnnl.DST_ITER: hn, **weights.laid_out(prim)}
            if lstm:
                args.update({dnnl.SRC_ITER_C: c_prev[:a], dnnl.DST_ITER_C: cn})
                if wp is not None:
                    args[dnnl.WEIGHTS_PEEPHOLE] = wp
            if training:
                args[dnnl.WORKSPACE] = ws[k]
            prim.execute(args)
            hT[alive:a] = hn[alive:a]
            if lstm:
                cT[alive:a] = cn[alive:a]
            states += [hn, cn]
            h_prev, c_prev = hn, cn
        if training:
            ctx.weights, ctx.segs = weights, segs
            ctx.save_for_backward(x, h0, c0, wl, wi, bias, wp, wproj, y, *states, *ws)
        return y, hT, cT

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT, dcT):
        weights, segs = ctx.weights, ctx.segs
        saved = ctx.saved_tensors
        x, h0, c0, wl, wi, bias, wp, wproj, y = saved[:9]
        n = len(segs)
        states, ws = saved[9:9 + 2 * n], saved[9 + 2 * n:]
        lstm = weights.cell == "lstm"
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        dhT = torch.zeros_like(h0) if dhT is None else dhT
        dcT = (torch.zeros_like(c0) if dcT is None else dcT) if lstm else None
        dx = torch.empty_like(x)
        wgrads = weights.grad_buffers(bias, wp, wproj)
        carry_h = carry_c = None
        for k in reversed(range(n)):
            t, a, alive, off = segs[k]
            hn, cn = states[2 * k], states[2 * k + 1]
            h_in = h0 if k == 0 else states[2 * k - 2]
            c_in = c0 if k == 0 else states[2 * k - 1]
            bwd = dnnl.primitives(weights.shape(t, a)).backward()
            rows = slice(off, off + t * a)
            d_h, d_hs = _join(carry_h, dhT[alive:a]), x.new_empty(a, h0.shape[1])
            args = {dnnl.SRC_LAYER: x[rows].view(t, a, -1), dnnl.SRC_ITER: h_in[:a],
                    dnnl.BIAS: bias, dnnl.DST_LAYER: y[rows].view(t, a, -1), dnnl.DST_ITER: hn,
                    dnnl.WORKSPACE: ws[k], **weights.laid_out(bwd),
                    dnnl.DIFF + dnnl.DST_LAYER: dy[rows].view(t, a, -1),
                    dnnl.DIFF + dnnl.DST_ITER: d_h, dnnl.DIFF + dnnl.SRC_ITER: d_hs,
                    dnnl.DIFF + dnnl.SRC_LAYER: dx[rows].view(t, a, -1),
                    **{dnnl.DIFF + arg: g for arg, g in wgrads.items()}}
            if lstm:
                d_c, d_cs = _join(carry_c, dcT[alive:a]), x.new_empty(a, c0.shape[1])
                args.update({dnnl.SRC_ITER_C: c_in[:a], dnnl.DST_ITER_C: cn,
                             dnnl.DIFF + dnnl.DST_ITER_C: d_c, dnnl.DIFF + dnnl.SRC_ITER_C: d_cs})
                if wp is not None:
                    args[dnnl.WEIGHTS_PEEPHOLE] = wp
                carry_c = d_cs
            bwd.execute(args)
            carry_h = d_hs
        first = segs[0][1]
        dh0 = torch.zeros_like(h0)
        dh0[:first] = carry_h
        dc0 = None
        if lstm:
            dc0 = torch.zeros_like(c0)
            dc0[:first] = carry_c
        g = weights.stored(wgrads).get
        return (None, None, None, dx, dh0, dc0, g(dnnl.WEIGHTS_LAYER), g(dnnl.WEIGHTS_ITER),
                g(dnnl.BIAS), g(dnnl.WEIGHTS_PEEPHOLE), g(dnnl.WEIGHTS_PROJECTION))


def _join(carried: torch.Tensor | None, ending: torch.Tensor) -> torch.Tensor:
    """The gradient of a segment's final state: rows carried into the next segment, then the
    rows whose sequences end here."""
    return ending.contiguous() if carried is None else torch.cat([carried, ending])


def run_packed(weights: Weights, x: torch.Tensor, state, lengths: torch.Tensor,
               masked_output: str = "zero") -> tuple[torch.Tensor, object]:
    """Run ``weights`` over a variable-length batch on oneDNN in one autograd node (see the
    module and ``varlen``).

    Args:
        weights: the cell's ``Weights``.
        x: time-major inputs ``[T, B, depth]``.
        state: initial state (``[B, P]``, or an ``LSTMStateTuple``).
        lengths: ``[B]`` ints in ``[0, T]``, at least one positive.
        masked_output: ``"zero"`` or ``"previous"`` for outputs past each length.

    Returns:
        ``(outputs [T, B, out], final_state)``.
    """
    steps, batch = x.shape[0], x.shape[1]
    lstm = weights.cell == "lstm"
    lengths = lengths.to(torch.long).cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    lens = lengths[order].tolist()
    segments = plan(lens, merge=not lstm)
    segs, offset, ends_inside = [], 0, []
    for start, end in segments:
        active = sum(n > start for n in lens)
        alive = sum(n > end for n in lens)
        segs.append((end - start, active, alive, offset))
        ends_inside += [(r, offset + (lens[r] - start - 1) * active + r)
                        for r in range(alive, active) if lens[r] < end]
        offset += (end - start) * active
    t_idx = torch.cat([torch.arange(s, e).repeat_interleave(a) for (s, e), (_, a, _, _) in
                       zip(segments, segs, strict=True)])
    b_idx = torch.cat([order[:a].repeat(t) for t, a, _, _ in segs])
    dev = x.device
    valid = (t_idx < lengths[b_idx]).to(dev)
    t_idx, b_idx, order_d = t_idx.to(dev), b_idx.to(dev), order.to(dev)
    sorted_state = map_state(lambda s: s.index_select(0, order_d).contiguous(), state)
    h0, c0 = (sorted_state.h, sorted_state.c) if lstm else (sorted_state, None)
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *weights.inputs))
    y, hT, cT = _Segments.apply(weights, segs, training, take_tokens(x, t_idx, b_idx), h0, c0,
                                *weights.inputs)
    if ends_inside:  # merged segments: a final state is the output at the sequence's last step
        rows, pos = (torch.tensor(v, device=dev) for v in zip(*ends_inside, strict=True))
        hT = hT.index_put((rows,), y[pos])
        y = y * valid[:, None].to(y.dtype)
    empty = lens.count(0)
    if empty:  # a sequence of length 0 keeps its initial state
        hT = torch.cat([hT[:batch - empty], h0[batch - empty:]])
        cT = torch.cat([cT[:batch - empty], c0[batch - empty:]]) if lstm else None
    out = y.new_zeros(steps, batch, y.shape[-1]).index_put((t_idx, b_idx), y)
    inverse = torch.argsort(order).to(dev)
    final = LSTMStateTuple(cT.index_select(0, inverse), hT.index_select(0, inverse)) if lstm \
        else hT.index_select(0, inverse)
    if masked_output == "previous":
        out = hold_last(out, lengths)
    return out, final
