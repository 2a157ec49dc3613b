"""The fused kernel's GRU (both reset variants) and vanilla RNN (``gru.h``) as a
``torch.autograd.Function``, on a packed batch (see ``rnnkit.fast.fused``)."""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from rnnkit.activations import name_of
from rnnkit.cells.equations import Canonical
from rnnkit.fast import compiled
from rnnkit.fast.autograd import blocks, grad_buffers, whole
from rnnkit.fast.library import check
from rnnkit.fast.scratch import scratch


def _forward(cfg: compiled.GRUConfig, lengths, x, h0, W, U, b, b_h, saved: dict | None):
    N, B, H, G = x.shape[0], cfg.B, cfg.H, U.shape[1]
    y, hT = x.new_empty(N, H), x.new_empty(B, H)
    buf = scratch("fused-forward", (0 if saved else N * G) + 4 * B * H)
    status = compiled.kernels("gru").rk_gru_forward(
        ctypes.byref(cfg), *map(compiled.ptr, (lengths, x, h0, W, U, b, b_h, y, hT)),
        ctypes.byref(compiled.GRUSaved(**{k: compiled.ptr(v) for k, v in saved.items()}))
        if saved else None, compiled.ptr(buf))
    check(status, "rk_gru_forward")
    return y, hT


class _FusedGRU(torch.autograd.Function):
    """Forward (keeping what backward needs) and backward of one packed batch."""

    @staticmethod
    def forward(ctx, cfg: compiled.GRUConfig, masks, lengths, x, h0, W, U, b, b_h):
        ctx.masks = masks  # cfg.xmask and cfg.hmask point into them (Keras dropout): kept alive
        ctx.joint = U is None  # W: a TF1 kernel whose row blocks are W and U (whole)
        W, U = blocks(W, U, cfg.D)
        N, H = x.shape[0], cfg.H
        saved = {"gates": x.new_empty(N, U.shape[1]),
                 "extra": x.new_empty(N, H) if cfg.gru else None}
        y, hT = _forward(cfg, lengths, x, h0, W, U, b, b_h, saved)
        ctx.cfg = cfg
        ctx.save_for_backward(lengths, x, h0, W, U, b, b_h, y, saved["gates"], saved["extra"])
        return y, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT):
        cfg = ctx.cfg
        lengths, x, h0, W, U, b, b_h, y, gates, extra = ctx.saved_tensors
        N, B, H, G = x.shape[0], cfg.B, cfg.H, U.shape[1]
        dy = torch.zeros_like(y) if dy is None else dy.contiguous()
        dh = torch.zeros_like(h0) if dhT is None else dhT.clone(memory_format=torch.contiguous_format)
        dx = torch.empty_like(x) if ctx.needs_input_grad[3] else None
        dW, dU, weight_grads = grad_buffers(W, U, ctx.joint)
        db = torch.empty_like(b) if b is not None else None
        db_h = torch.empty_like(b_h) if b_h is not None else None
        h_in = N * H if lengths is not None else 0  # each row's previous h (lengths only)
        buf = scratch("fused-backward", 2 * N * G + h_in + B * H)
        Ut = U.t().contiguous()  # the per-step products run faster on untransposed matrices
        saved = compiled.GRUSaved(gates=compiled.ptr(gates), extra=compiled.ptr(extra))
        status = compiled.kernels("gru").rk_gru_backward(
            ctypes.byref(cfg), *map(compiled.ptr, (lengths, x, h0, W, Ut, y)), ctypes.byref(saved),
            *map(compiled.ptr, (dy, dh, dx, dW, dU, db, db_h, buf)))
        check(status, "rk_gru_backward")
        return None, None, None, dx, dh, *weight_grads, db, db_h


def per_step_mask(p: Canonical) -> bool:
    """Whether ``p``'s state mask is one per step, ``[T, B, n]`` (the kernels' ``per_step``)."""
    return p.state_mask is not None and p.state_mask.dim() == 3


def shared_mask(p: Canonical) -> bool:
    """Whether the kernels' (both) ``hmask`` is one mask for every gate block of a GRU or LSTM:
    a state mask, or any ``[B, n]`` recurrent mask."""
    h_mask = p.h_mask if p.state_mask is None else p.state_mask
    return p.kind != "rnn" and h_mask is not None and (p.state_mask is not None
                                                        or h_mask.dim() == 2)


def _config(p: Canonical, steps: int, batch: int, depth: int,
            masks: tuple = (None, None, None)) -> compiled.GRUConfig:
    """The kernel's configuration for the GRU or vanilla RNN ``p`` over ``steps`` x ``batch``
    inputs of ``depth`` (``masks``: dropout's input, recurrent and update masks, or None)."""
    gru = p.kind == "gru"
    return compiled.GRUConfig(
        T=steps, B=batch, D=depth, H=p.U.shape[0],
        act=compiled.ACTIVATIONS[name_of(p.activation)],
        ract=compiled.ACTIVATIONS[name_of(p.recurrent_activation)] if gru else 0,
        gru=gru, reset_after=gru and p.reset_after, xmask=compiled.ptr(masks[0]),
        hmask=compiled.ptr(masks[1]), umask=compiled.ptr(masks[2]),
        per_step=per_step_mask(p), shared=shared_mask(p))


def run_gru(p: Canonical, x: torch.Tensor, h0: torch.Tensor, lengths: torch.Tensor | None,
            steps: int, masks: tuple = (None, None, None)) -> tuple[torch.Tensor, torch.Tensor]:
    """The GRU or vanilla RNN ``p`` over packed ``x`` ``[N, depth]`` (``lengths`` sorted
    longest first, or None: ``N = steps * B``) from ``h0`` (sorted alike); ``masks``: dropout's
    ``x_mask`` ``[B, 3, depth]``, ``h_mask`` ``[B, 3, H]`` (a vanilla RNN's ``[B, H]``) and a
    GRU's update mask ``[B, H]`` (state dropout: ``z ⊙ h ⊙ mask``), or None, sorted alike.

    Returns:
        ``(y [N, H], hT [B, H])``, packed and sorted as the inputs.
    """
    gru = p.kind == "gru"
    cfg = _config(p, steps, h0.shape[0], x.shape[1], masks)
    b_h = p.b_h if gru and p.reset_after else None
    args = [t.contiguous() if t is not None else None for t in (x, h0, p.W, p.U, p.b, b_h)]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        args[2:4] = whole(*args[2:4])
        return _FusedGRU.apply(cfg, masks, lengths, *args)
    return _forward(cfg, lengths, *args, None)
