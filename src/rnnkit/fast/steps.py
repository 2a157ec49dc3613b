"""Fused time steps for the graph path: one Triton kernel for a step's elementwise work, each way.

On a GPU the graph path (``rnnkit.fast.graphs``) replays the reference loop from a CUDA graph,
so its cost is the number of kernels a step takes: about 20 (forward and backward) for an LSTM
with cell clipping, 26 with peepholes, 22 for TF1's GRU, each a few microseconds even when
replayed. With these steps an LSTM's step is its recurrent product and one kernel (two
backward, plus the products'), and a reset-before GRU's two products and two kernels.

``enabled()`` switches them on for the unrolls run inside it (``graphs.run`` does, for the
eager first call and the capture alike); the equations (``rnnkit.cells.equations``) ask
``equations.FUSED_STEPS`` at each step and keep their own ops where a step is not served here:
tanh and sigmoid only, float32 or float64, no recurrent dropout, tensors on a CUDA device (or on
the CPU under Triton's interpreter, ``TRITON_INTERPRET=1``, which the tests use). The numbers are
the equations' to rounding (the same formulas; sums in another order), tested against them.

Where Triton is missing the steps stay off (``load_error``). A kernel that fails to compile or
launch turns them off for the process with one warning, and the step runs as ops: in the
forward, the equations' own; in the backward, the equations recomputed from the saved inputs
and differentiated by autograd.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import replace

import torch

from rnnkit.activations import name_of
from rnnkit.cells import equations as eq

ENABLED = True  # False: ``enabled()`` leaves the steps off (benchmarks/ab_steps.py compares)
BLOCK = 512  # (row, unit) pairs a program handles
_DTYPES = (torch.float32, torch.float64)
_broken: list[str] = []  # why the kernels were turned off in this process (at most one entry)


@functools.cache
def load_error() -> str | None:
    """Why the fused steps cannot run in this process (None when they can)."""
    try:
        from rnnkit.fast import _triton_kernels  # noqa: F401
    except Exception as err:  # ImportError, or a Triton that fails to initialize
        return f"Triton is unavailable ({type(err).__name__}: {err})"
    return None


def _kernels():
    from rnnkit.fast import _triton_kernels
    return _triton_kernels


def _on_device(t: torch.Tensor) -> bool:
    return t.is_cuda or (t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def _ok(p: eq.Canonical, *tensors: torch.Tensor) -> bool:
    if _broken or p.h_mask is not None:
        return False
    if name_of(p.activation) != "tanh" or name_of(p.recurrent_activation) != "sigmoid":
        return False
    first = tensors[0]
    return all(t.dtype == first.dtype and t.device == first.device for t in tensors) and \
        first.dtype in _DTYPES and _on_device(first)


def _launch(kernel, n: int, *args, **meta) -> None:
    kernel[(max(1, -(-n // BLOCK)),)](*args, BLOCK=BLOCK, **meta)


def _turn_off(err: Exception) -> None:
    if not _broken:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        _broken.append(first)
        warnings.warn(f"rnnkit: the graph path's fused steps failed ({type(err).__name__}: "
                      f"{first}); its steps run as separate ops from now on", stacklevel=3)


def _recomputed(ops, saved, grads, needs):
    """Gradients of ``ops(*saved)`` by autograd (a failed kernel's backward)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(n) if t is not None else None
                  for t, n in zip(saved, needs, strict=True)]
        outs = ops(*leaves)
        wrt = [t for t, n in zip(leaves, needs, strict=True) if n and t is not None]
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                       allow_unused=True)) if pairs and wrt else iter(())
    return [next(got, None) if n and t is not None else None
            for t, n in zip(saved, needs, strict=True)]


class _LSTMStep(torch.autograd.Function):
    """``(c', h)`` of an LSTM step from its gate pre-activations ``z [B, 4H]`` and ``c``."""

    @staticmethod
    def forward(ctx, z, c, peep, p):
        order = tuple(p.gate_order) if p.gate_order is not None else (0, 1, 2, 3)
        clip = p.cell_clip
        N, H = c.numel(), c.shape[-1]
        c_new, h = torch.empty_like(c), torch.empty_like(c)
        _launch(_kernels().lstm_forward, N, z, c, peep if peep is not None else z, c_new, h, N,
                H, 0.0 if clip is None else float(clip), OI=order[0], OF=order[1],
                OG=order[2], OO=order[3], PEEP=peep is not None, CLIP=clip is not None)
        ctx.p, ctx.order, ctx.clip = p, order, clip
        ctx.save_for_backward(z, c, c_new, peep)
        return c_new, h

    @staticmethod
    def backward(ctx, dcn, dh):
        z, c, c_new, peep = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        try:
            return (*_lstm_backward(z, c, c_new, peep, ctx.order, ctx.clip, dh, dcn), None)
        except Exception as err:  # a kernel that does not compile or launch here
            _turn_off(err)

        def ops(z_, c_, peep_):
            p = ctx.p if peep_ is None else replace(ctx.p, peepholes=tuple(peep_.unbind(0)))
            return eq.lstm_pointwise(z_, c_, p)

        return (*_recomputed(ops, [z, c, peep], [dcn, dh], needs), None)


def _lstm_backward(z, c, c_new, peep, order, clip, dh, dcn):
    N, H = c.numel(), c.shape[-1]
    dz, dc = torch.empty_like(z), torch.empty_like(c)
    dpeep = c.new_empty(3, *c.shape) if peep is not None else None
    dh_, dcn_ = (None if g is None else g.contiguous() for g in (dh, dcn))
    _launch(_kernels().lstm_backward, N, z, c, c_new, peep if peep is not None else z,
            dh_ if dh_ is not None else c, dcn_ if dcn_ is not None else c, dz, dc,
            dpeep if dpeep is not None else c, N, H, 0.0 if clip is None else float(clip),
            OI=order[0], OF=order[1], OG=order[2], OO=order[3], PEEP=peep is not None,
            CLIP=clip is not None, HAS_DH=dh_ is not None, HAS_DC=dcn_ is not None)
    return dz, dc, (dpeep.flatten(1, -2).sum(1) if dpeep is not None else None)


class _GRUGates(torch.autograd.Function):
    """``(z, r ⊙ h)`` of a reset-before GRU from ``zr [B, 2H]`` (z's and r's pre-activations)."""

    @staticmethod
    def forward(ctx, zr, h):
        N, H = h.numel(), h.shape[-1]
        z, rh = torch.empty_like(h), torch.empty_like(h)
        _launch(_kernels().gates_forward, N, zr, h, z, rh, N, H)
        ctx.save_for_backward(zr, h)
        return z, rh

    @staticmethod
    def backward(ctx, dz, drh):
        zr, h = ctx.saved_tensors
        N, H = h.numel(), h.shape[-1]
        try:
            dzr, dh = torch.empty_like(zr), torch.empty_like(h)
            dz_, drh_ = (None if g is None else g.contiguous() for g in (dz, drh))
            _launch(_kernels().gates_backward, N, zr, h, dz_ if dz_ is not None else h,
                    drh_ if drh_ is not None else h, dzr, dh, N, H, HAS_DZ=dz_ is not None,
                    HAS_DRH=drh_ is not None)
            return dzr, dh
        except Exception as err:
            _turn_off(err)
        return tuple(_recomputed(_gates_ops, [zr, h], [dz, drh], ctx.needs_input_grad))


def _gates_ops(zr, h):
    z, r = torch.sigmoid(zr).chunk(2, dim=-1)
    return z, r * h


class _GRUBlend(torch.autograd.Function):
    """A GRU's new state ``c + z (h - c)``, ``c = tanh(cp)``."""

    @staticmethod
    def forward(ctx, cp, h, z):
        out = torch.empty_like(h)
        _launch(_kernels().blend_forward, h.numel(), cp, h, z, out, h.numel())
        ctx.save_for_backward(cp, h, z)
        return out

    @staticmethod
    def backward(ctx, dout):
        cp, h, z = ctx.saved_tensors
        try:
            dcp, dh, dz = (torch.empty_like(h) for _ in range(3))
            _launch(_kernels().blend_backward, h.numel(), cp, h, z, dout.contiguous(), dcp, dh,
                    dz, h.numel())
            return dcp, dh, dz
        except Exception as err:
            _turn_off(err)
        return tuple(_recomputed(lambda a, b, c: (torch.lerp(torch.tanh(a), b, c),),
                                 [cp, h, z], [dout], ctx.needs_input_grad))


class FusedSteps:
    """What ``equations.FUSED_STEPS`` holds while the steps are on: each method returns None
    where it does not serve the step (the equations then run their own ops)."""

    @staticmethod
    def lstm(z: torch.Tensor, c: torch.Tensor, p: eq.Canonical):
        """``(c', h)`` before any projection, from the pre-activations ``z = x W + b + h U``."""
        peep = torch.stack(p.peepholes) if p.peepholes is not None else None
        if not _ok(p, z, c, *(() if peep is None else (peep,))):
            return None
        try:
            return _LSTMStep.apply(z.contiguous(), c.contiguous(), peep, p)
        except Exception as err:
            _turn_off(err)
            return None

    @staticmethod
    def gru(xw: torch.Tensor, h: torch.Tensor, p: eq.Canonical):
        """A reset-before GRU's new state (reset-after GRUs are cuDNN's)."""
        if p.reset_after or not _ok(p, xw, h, p.U):
            return None
        H = h.shape[-1]
        try:
            zr = torch.addmm(xw[..., :2 * H], h, p.U[:, :2 * H])
            z, rh = _GRUGates.apply(zr, h.contiguous())
            cp = torch.addmm(xw[..., 2 * H:], rh, p.U[:, 2 * H:])
            return _GRUBlend.apply(cp, h.contiguous(), z)
        except Exception as err:
            _turn_off(err)
            return None


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Fused steps for the unrolls run inside (where Triton loads; else the block runs as is)."""
    token = eq.FUSED_STEPS.set(FusedSteps if ENABLED and load_error() is None else None)
    try:
        yield
    finally:
        eq.FUSED_STEPS.reset(token)
