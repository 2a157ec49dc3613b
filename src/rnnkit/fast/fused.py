"""rnnkit's own fused kernels (the LSTM's, ``lstm.h``; the GRU's, ``gru.h``, through
``fused_gru``) as ``torch.autograd.Function``s: the cells oneDNN has no primitive for (LSTMs
with ``cell_clip``, ``proj_clip`` or layer normalization, and LSTMs, GRUs and vanilla RNNs with
activations other than oneDNN's), with oneDNN's sgemm for every matrix product.

A whole sequence is one call forward and one backward: the input projection of all steps is
one matrix product, each step one recurrent product and one pass over the gates; backward runs
the steps in reverse, keeps the gates' gradients and makes the weight gradients in three
products at the end. A variable-length batch is packed (sorted longest first, each step's rows
the sequences still running, steps one after another), so every product costs the batch's
tokens; outputs past a length are zero and the state is held there (TF1 semantics).

The kernels also run Keras recurrent dropout (``Canonical.h_mask``, a mask per gate block:
each step's recurrent product a block at a time, on ``h`` times that block's mask) with its
per-gate input masks (``x_mask``: the input projection a block at a time, on ``x`` times that
block's mask), and a ``DropoutWrapper``'s state dropout (``state_mask``: the recurrent mask of
every block, and in a GRU the update's too).
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from rnnkit.activations import name_of
from rnnkit.cells.base import LSTMStateTuple
from rnnkit.cells.equations import Canonical
from rnnkit.fast import compiled
from rnnkit.fast.autograd import blocks, grad_buffers, whole
from rnnkit.fast.fused_gru import per_step_mask, run_gru, shared_mask
from rnnkit.fast.library import check
from rnnkit.fast.scratch import scratch
from rnnkit.fast.varlen import take_tokens


def unmet(p: Canonical) -> list[str]:
    """Why the fused kernel cannot run ``p`` (empty when it can); dtype, device and sequence
    masks are the dispatch's to check. Dropout masks: both kernels have them (``x_mask`` and
    ``h_mask`` one per gate block or one for all, a vanilla RNN's one; ``state_mask`` one for
    all gates, or one per step: ``_kernel_masks``), the LSTM kernel a candidate mask per step
    (``g_mask``)."""
    out = []
    if p.g_mask is not None and (p.kind not in ("lstm", "layer_norm_lstm") or p.g_mask.dim() != 3):
        out.append(f"candidate dropout mask g_mask of shape {list(p.g_mask.shape)} on a {p.kind} "
                   "cell (the fused LSTM kernel takes one per step, [T, B, H])")
    for name, mask in (("h_mask", p.h_mask), ("x_mask", p.x_mask), ("state_mask", p.state_mask)):
        dims = (2, 3) if name == "state_mask" or p.kind != "rnn" else (2,)
        norm = p.kind == "layer_norm_lstm" and name != "state_mask"  # no Keras layer has one
        if mask is not None and (norm or mask.dim() not in dims):
            out.append(f"dropout mask {name} of shape {list(mask.shape)} on a {p.kind} cell "
                       "(the fused kernels take [B, n], or [B, gates, n] for GRUs' and LSTMs' "
                       "h_mask and x_mask, or [T, B, n] for a state mask per step)")
    if p.state_mask is not None and p.h_mask is not None:
        out.append("both a state mask and a recurrent-dropout mask")
    for what, fn in (("activation", p.activation), ("recurrent_activation",
                                                    p.recurrent_activation)):
        if fn is not None and name_of(fn) not in compiled.ACTIVATIONS:
            out.append(f"{what} is {name_of(fn)} (the fused kernel has "
                       f"{', '.join(compiled.ACTIVATIONS)})")
    return out


class _Fused(torch.autograd.Function):
    """Forward (keeping what backward needs) and backward of one sorted batch."""

    @staticmethod
    def forward(ctx, cfg: compiled.Config, masks, lengths, x, h0, c0, W, U, b, peep, Pw, gamma,
                beta):
        ctx.masks = masks  # cfg.xmask and cfg.hmask point into them (Keras dropout): kept alive
        ctx.joint = U is None  # W: a TF1 kernel whose row blocks are W and U (whole)
        W, U = blocks(W, U, cfg.D)
        N, H = x.shape[0], cfg.H
        saved = {"gates": x.new_empty(N, 4 * H), "cells": x.new_empty(N, H),
                 "act_c": x.new_empty(N, H), "m": x.new_empty(N, H) if cfg.proj else None,
                 "xhat": x.new_empty(N, 5 * H) if cfg.layer_norm else None,
                 "rstd": x.new_empty(N, 5) if cfg.layer_norm else None}
        y, hT, cT = _forward(cfg, lengths, x, h0, c0, W, U, b, peep, Pw, gamma, beta, saved)
        ctx.cfg, ctx.saved_names = cfg, list(saved)
        ctx.save_for_backward(lengths, x, h0, c0, W, U, b, peep, Pw, gamma, y, *saved.values())
        return y, hT, cT

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT, dcT):
        cfg = ctx.cfg
        lengths, x, h0, c0, W, U, b, peep, Pw, gamma, y, *rest = ctx.saved_tensors
        saved = dict(zip(ctx.saved_names, rest, strict=True))
        N, B, H, P = x.shape[0], cfg.B, cfg.H, cfg.P
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        dh = torch.zeros_like(h0) if dhT is None else dhT.clone(memory_format=torch.contiguous_format)
        dc = torch.zeros_like(c0) if dcT is None else dcT.clone(memory_format=torch.contiguous_format)
        dx = torch.empty_like(x) if ctx.needs_input_grad[3] else None
        dW, dU, weight_grads = grad_buffers(W, U, ctx.joint)
        db = torch.empty_like(b) if b is not None else None
        dpeep = torch.empty_like(peep) if peep is not None else None
        dPw = torch.empty_like(Pw) if Pw is not None else None
        dgamma = torch.empty_like(gamma) if gamma is not None else None
        dbeta = torch.empty_like(gamma) if gamma is not None else None
        h_in = N * P if lengths is not None else 0  # each row's previous h (lengths only)
        buf = scratch("fused-backward", N * 4 * H + h_in + (N * P if cfg.proj else 0) + B * H)
        Ut = U.t().contiguous()  # the per-step products run faster on untransposed matrices
        Pwt = Pw.t().contiguous() if Pw is not None else None
        status = compiled.kernels("lstm").rk_lstm_backward(
            ctypes.byref(cfg), *map(compiled.ptr, (lengths, x, h0, c0, W, Ut, peep, Pwt, gamma, y)),
            ctypes.byref(_saved_struct(saved)),
            *map(compiled.ptr, (dy, dh, dc, dx, dW, dU, db, dpeep, dPw, dgamma, dbeta, buf)))
        check(status, "rk_lstm_backward")
        return None, None, None, dx, dh, dc, *weight_grads, db, dpeep, dPw, dgamma, dbeta


def _saved_struct(saved: dict) -> compiled.Saved:
    return compiled.Saved(**{k: compiled.ptr(v) for k, v in saved.items()})


def _forward(cfg, lengths, x, h0, c0, W, U, b, peep, Pw, gamma, beta, saved):
    N, B, H, P = x.shape[0], cfg.B, cfg.H, cfg.P
    y, hT, cT = x.new_empty(N, P), x.new_empty(B, P), x.new_empty(B, H)
    buf = scratch("fused-forward", (0 if saved else N * 4 * H) + 4 * B * H)
    status = compiled.kernels("lstm").rk_lstm_forward(
        ctypes.byref(cfg),
        *map(compiled.ptr, (lengths, x, h0, c0, W, U, b, peep, Pw, gamma, beta, y, hT, cT)),
        ctypes.byref(_saved_struct(saved)) if saved else None, compiled.ptr(buf))
    check(status, "rk_lstm_forward")
    return y, hT, cT


def _config(p: Canonical, steps: int, batch: int, depth: int,
            masks: tuple = (None, None, None)) -> compiled.Config:
    H = p.U.shape[1] // 4
    eps = p.norms[1] if p.norms is not None else 0.0
    return compiled.Config(
        T=steps, B=batch, D=depth, H=H, P=p.U.shape[0],
        act=compiled.ACTIVATIONS[name_of(p.activation)],
        ract=compiled.ACTIVATIONS[name_of(p.recurrent_activation)],
        peephole=p.peepholes is not None, proj=p.P is not None, layer_norm=p.norms is not None,
        cell_clip=p.cell_clip or 0.0, proj_clip=(p.proj_clip or 0.0) if p.P is not None else 0.0,
        forget_bias=p.forget_bias if p.norms is not None else 0.0, eps=eps,
        order=(ctypes.c_int32 * 4)(*(p.gate_order or range(4))), xmask=compiled.ptr(masks[0]),
        hmask=compiled.ptr(masks[1]), per_step=per_step_mask(p), shared=shared_mask(p),
        gmask=compiled.ptr(masks[2]))


def pack(lengths: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                     torch.Tensor]:
    """The packed order of a variable-length batch.

    Returns:
        ``(order, sorted_lengths, t_idx, b_idx)``: the batch sorted longest first, its lengths,
        and the time step and batch index of each packed row (steps in order, each step's rows
        the sequences still running, in sorted order).
    """
    lengths = lengths.to(torch.int64).cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    lens = lengths[order].contiguous()
    active = (lens[None, :] > torch.arange(steps)[:, None]).sum(1)
    t_idx = torch.repeat_interleave(torch.arange(steps), active)
    starts = torch.cumsum(active, 0) - active
    b_idx = order[torch.arange(t_idx.numel()) - starts[t_idx]]
    return order, lens, t_idx, b_idx


def _run_lstm(p: Canonical, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
              lengths: torch.Tensor | None, steps: int, masks: tuple = (None, None, None)):
    """The LSTM kernel over packed ``x`` ``[N, depth]``; ``masks``: dropout's ``x_mask``
    ``[B, 4, depth]``, ``h_mask`` ``[B, 4, H]`` and ``g_mask`` ``[T, B, H]`` (or None), sorted
    as ``h0``."""
    peep = torch.stack(p.peepholes) if p.peepholes is not None else None
    gamma = beta = None
    if p.norms is not None:
        gamma = torch.stack([g for g, _ in p.norms[0]])
        beta = torch.stack([b for _, b in p.norms[0]])
    args = [t.contiguous() if t is not None else None
            for t in (x, h0, c0, p.W, p.U, p.b, peep, p.P, gamma, beta)]
    cfg = _config(p, steps, h0.shape[0], x.shape[1], masks)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        args[3:5] = whole(*args[3:5])
        return _Fused.apply(cfg, masks, lengths, *args)
    return _forward(cfg, lengths, *args, None)


def _kernel_masks(p: Canonical) -> tuple:
    """The kernels' ``(xmask, hmask, umask)`` (the LSTM's ``(xmask, hmask, gmask)``) from
    ``p``'s dropout masks: ``xmask`` per gate block (one for all gates repeated); ``hmask`` per
    gate block, or one for all of them (``shared_mask``): a state mask, which is a GRU's
    update's ``umask`` too (``[T, ...]``: one per step); an LSTM's candidate masks ``g_mask``."""
    x_mask, gates = p.x_mask, {"lstm": 4, "gru": 3}.get(p.kind)
    if x_mask is not None and x_mask.dim() == 2 and gates:
        x_mask = x_mask.unsqueeze(1).expand(-1, gates, -1)
    third = p.g_mask if p.kind != "gru" else p.state_mask
    return x_mask, p.h_mask if p.state_mask is None else p.state_mask, third


def run_fused(p: Canonical, x: torch.Tensor, state, lengths: torch.Tensor | None = None):
    """Run ``p`` over time-major ``x`` ``[T, B, depth]`` from ``state`` on the fused kernels;
    the caller (``rnnkit.fast.dispatch``) has checked eligibility.

    Args:
        p: the cell's ``Canonical`` (``unmet(p)`` empty), float32 on the CPU.
        x: inputs ``[T, B, depth]``.
        state: ``LSTMStateTuple(c, h)`` for LSTMs, else ``[B, H]``.
        lengths: optional ``[B]`` lengths in ``[0, T]`` (TF1 semantics past them).

    Returns:
        ``(outputs [T, B, out], final_state)``, the state in the cell's structure.
    """
    steps, batch, depth = x.shape
    lstm = p.kind in ("lstm", "layer_norm_lstm")
    h0, c0 = (state.h, state.c) if lstm else (state, None)
    masks = _kernel_masks(p)
    per_step = per_step_mask(p)  # the state masks [T, B, ...]: the batch on dim 1
    if lengths is None:
        order, packed = None, x.reshape(steps * batch, depth)
    else:
        order, lengths, t_idx, b_idx = pack(lengths, steps)
        packed = take_tokens(x, t_idx, b_idx)
        h0 = h0.index_select(0, order)
        c0 = c0.index_select(0, order) if lstm else None
        batch_dims = (0, int(per_step), 1 if lstm else int(per_step))  # g_mask: [T, B, H]
        masks = tuple(m.index_select(dim, order) if m is not None else None
                      for dim, m in zip(batch_dims, masks, strict=True))
    masks = tuple(m.contiguous() if m is not None else None for m in masks)
    if lstm:
        y, hT, cT = _run_lstm(p, packed, h0, c0, lengths, steps, masks)
    else:
        (y, hT), cT = run_gru(p, packed, h0, lengths, steps, masks), None
    if order is not None:
        y = y.new_zeros(steps, batch, y.shape[-1]).index_put((t_idx, b_idx), y)
        inverse = torch.argsort(order)
        hT = hT.index_select(0, inverse)
        cT = cT.index_select(0, inverse) if lstm else None
    y = y.view(steps, batch, -1)
    return y, (LSTMStateTuple(cT, hT) if lstm else hT)
