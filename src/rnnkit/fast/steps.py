"""Fused time steps for the graph path: a step's elementwise work in one Triton kernel each way.

On a GPU the graph path (``rnnkit.fast.graphs``) replays the reference loop from a CUDA graph,
so its cost is the number of kernels a step takes, each a few microseconds even when replayed:
as ops, about 18 top-level ops and autograd nodes a step (forward and backward) for an LSTM with
cell clipping, 28 with peepholes and projection, 22 for TF1's GRU, 34 for layer norm. With
these steps:

- an LSTM (cell clip, peepholes, TF1's gate order; a projection stays a product): its
  recurrent product and one kernel forward, one kernel and the product's two backward;
- a layer-norm LSTM (TF's LayerNormBasicLSTMCell, up to ``MAX_NORM_UNITS`` units: one program
  per row normalizes its four gates and the cell): the same, plus stacking the gains;
- a reset-before GRU (TF1's ``GRUCell``): two products and two kernels forward; two kernels and
  four products backward, the input's and ``U``'s gradients each written into one buffer.

``enabled()`` switches them on for the unrolls run inside it (``graphs.run`` does for the
loop it captures, warm-up included, so that a shape's eager first call compiles nothing); the
equations (``rnnkit.cells.equations``) ask ``equations.FUSED_STEPS`` at each step and keep
their own ops where a step is not served here. Served: the fused C kernels' activations (tanh,
sigmoid, relu, linear, both hard_sigmoids, softsign), float32 or float64, no recurrent
dropout, tensors on a CUDA device (or on the CPU under Triton's interpreter,
``TRITON_INTERPRET=1``, which the tests use). The numbers are the equations' to rounding (the
same formulas; sums in another order), tested against them.

Where Triton is missing the steps stay off (``load_error``). A kernel that fails to compile or
launch turns them off for the process with one warning, and the step runs as ops: in the
forward, the equations' own; in the backward, the equations recomputed from the saved inputs
and differentiated by autograd. Not yet measured on a GPU (``benchmarks/ab_steps.py``).
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
from rnnkit.fast.compiled import ACTIVATIONS

ENABLED = True  # False: ``enabled()`` leaves the steps off (benchmarks/ab_steps.py compares)
BLOCK = 512  # (row, unit) pairs a program handles
MAX_NORM_UNITS = 4096  # a layer-norm LSTM's row (four gates) in one program up to this
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


def _acts(p: eq.Canonical) -> dict[str, int]:
    """The kernels' activation ids (``compiled.ACTIVATIONS``, as the fused C kernels')."""
    return {"ACT": ACTIVATIONS[name_of(p.activation)],
            "REC": ACTIVATIONS[name_of(p.recurrent_activation)]}


def _ok(p: eq.Canonical, *tensors: torch.Tensor) -> bool:
    if _broken or p.h_mask is not None:
        return False
    if name_of(p.activation) not in ACTIVATIONS or \
            name_of(p.recurrent_activation) not in ACTIVATIONS:
        return False
    first = tensors[0]
    return all(t.dtype == first.dtype and t.device == first.device for t in tensors) and \
        first.dtype in _DTYPES and _on_device(first)


def _consts(*values: float, like: torch.Tensor) -> torch.Tensor:
    """``values`` as a tensor of ``like``'s dtype on its device, made once (none is made while
    a CUDA graph is captured: the warm-up before it made them)."""
    return _cached_consts(tuple(float(v) for v in values), like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _cached_consts(values: tuple[float, ...], dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


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
        order, clip = _order(p), p.cell_clip
        N, H = c.numel(), c.shape[-1]
        c_new, h = torch.empty_like(c), torch.empty_like(c)
        _launch(_kernels().lstm_forward, N, z, c, peep if peep is not None else z, c_new, h, N,
                H, _consts(0.0 if clip is None else clip, like=c), OI=order[0], OF=order[1],
                OG=order[2], OO=order[3], PEEP=peep is not None, CLIP=clip is not None,
                **_acts(p))
        ctx.p, ctx.order, ctx.clip = p, order, clip
        ctx.save_for_backward(z, c, c_new, peep)
        return c_new, h

    @staticmethod
    def backward(ctx, dcn, dh):
        z, c, c_new, peep = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        try:
            return (*_lstm_backward(z, c, c_new, peep, ctx.p, dh, dcn), None)
        except Exception as err:  # a kernel that does not compile or launch here
            _turn_off(err)

        def ops(z_, c_, peep_):
            p = ctx.p if peep_ is None else replace(ctx.p, peepholes=tuple(peep_.unbind(0)))
            return eq.lstm_pointwise(z_, c_, p)

        return (*_recomputed(ops, [z, c, peep], [dcn, dh], needs), None)


def _lstm_backward(z, c, c_new, peep, p, dh, dcn):
    order, clip = _order(p), p.cell_clip
    N, H = c.numel(), c.shape[-1]
    dz, dc = torch.empty_like(z), torch.empty_like(c)
    dpeep = c.new_empty(3, *c.shape) if peep is not None else None
    dh_, dcn_ = (None if g is None else g.contiguous() for g in (dh, dcn))
    _launch(_kernels().lstm_backward, N, z, c, c_new, peep if peep is not None else z,
            dh_ if dh_ is not None else c, dcn_ if dcn_ is not None else c, dz, dc,
            dpeep if dpeep is not None else c, N, H, _consts(0.0 if clip is None else clip, like=c),
            OI=order[0], OF=order[1], OG=order[2], OO=order[3], PEEP=peep is not None,
            CLIP=clip is not None, HAS_DH=dh_ is not None, HAS_DC=dcn_ is not None,
            **_acts(p))
    return dz, dc, (dpeep.flatten(1, -2).sum(1) if dpeep is not None else None)


class _GRUStep(torch.autograd.Function):
    """A reset-before GRU's step from ``xw [B, 3H]`` (x W + b), ``h`` and ``U [H, 3H]``: its two
    products and two kernels forward; backward, two kernels and four products that write the
    input's and ``U``'s gradients each into one buffer (as ops, slices of ``xw`` and ``U``
    would each cost a zeroed buffer, a copy and a sum)."""

    @staticmethod
    def forward(ctx, xw, h, U, p):
        N, H = h.numel(), h.shape[-1]
        k = _kernels()
        zr = torch.addmm(xw[:, :2 * H], h, U[:, :2 * H])
        z, rh = torch.empty_like(h), torch.empty_like(h)
        _launch(k.gates_forward, N, zr, h, z, rh, N, H, REC=_acts(p)["REC"])
        cp = torch.addmm(xw[:, 2 * H:], rh, U[:, 2 * H:])
        out = torch.empty_like(h)
        _launch(k.blend_forward, N, cp, h, z, out, N, ACT=_acts(p)["ACT"])
        ctx.p = p
        ctx.save_for_backward(xw, h, U, zr, z, rh, cp)
        return out

    @staticmethod
    def backward(ctx, dout):
        xw, h, U, zr, z, rh, cp = ctx.saved_tensors
        try:
            return (*_gru_backward(h, U, zr, z, rh, cp, dout.contiguous(),
                                   ctx.needs_input_grad[2], _acts(ctx.p)), None)
        except Exception as err:
            _turn_off(err)

        def ops(xw_, h_, U_):
            token = eq.FUSED_STEPS.set(None)
            try:
                return (eq.gru(xw_, h_, replace(ctx.p, U=U_)),)
            finally:
                eq.FUSED_STEPS.reset(token)

        return (*_recomputed(ops, [xw, h, U], [dout], ctx.needs_input_grad[:3]), None)


def _gru_backward(h, U, zr, z, rh, cp, dout, want_U: bool, acts: dict[str, int]):
    N, H = h.numel(), h.shape[-1]
    k = _kernels()
    dxw = h.new_empty(h.shape[0], 3 * H)
    dcp = dxw[:, 2 * H:]
    dh_blend, dz, dh = torch.empty_like(h), torch.empty_like(h), torch.empty_like(h)
    _launch(k.blend_backward, N, cp, h, z, dout, dcp, dh_blend, dz, N, H, 3 * H, ACT=acts["ACT"])
    drh = torch.mm(dcp, U[:, 2 * H:].t())
    _launch(k.gates_backward, N, zr, h, dz, drh, dh_blend, dxw, dh, N, H, 3 * H,
            REC=acts["REC"])
    dzr = dxw[:, :2 * H]
    dh = torch.addmm(dh, dzr, U[:, :2 * H].t())
    dU = None
    if want_U:  # U's gradient transposed: its row blocks are contiguous outputs of a product
        dUt = U.new_empty(3 * H, H)
        torch.mm(dzr.t(), h, out=dUt[:2 * H])
        torch.mm(dcp.t(), rh, out=dUt[2 * H:])
        dU = dUt.t()
    return dxw, dh, dU


class _LayerNormLSTMStep(torch.autograd.Function):
    """``(c', h)`` of a layer-norm LSTM step from ``z [B, 4H]``, ``c`` and ``gb [10, H]`` (the
    gains and shifts of i, f, g, o and c), one program per row."""

    @staticmethod
    def forward(ctx, z, c, gb, p):
        B, H = c.shape
        c_new, h = torch.empty_like(c), torch.empty_like(c)
        order = _order(p)
        _kernels().ln_lstm_forward[(B,)](z, c, gb, c_new, h, H,
                                         _consts(p.norms[1], p.forget_bias, like=c),
                                         OI=order[0], OF=order[1], OG=order[2],
                                         OO=order[3], BLOCK_H=_block(H), **_acts(p))
        ctx.p = p
        ctx.save_for_backward(z, c, gb)
        return c_new, h

    @staticmethod
    def backward(ctx, dcn, dh):
        z, c, gb = ctx.saved_tensors
        p, (B, H) = ctx.p, c.shape
        try:
            dz, dc, dgb = torch.empty_like(z), torch.empty_like(c), c.new_empty(10, B, H)
            dh_, dcn_ = (None if g is None else g.contiguous() for g in (dh, dcn))
            order = _order(p)
            _kernels().ln_lstm_backward[(B,)](
                z, c, gb, dh_ if dh_ is not None else c, dcn_ if dcn_ is not None else c, dz,
                dc, dgb, B, H, _consts(p.norms[1], p.forget_bias, like=c), OI=order[0],
                OF=order[1], OG=order[2], OO=order[3], HAS_DH=dh_ is not None,
                HAS_DC=dcn_ is not None, BLOCK_H=_block(H), **_acts(p))
            return dz, dc, dgb.sum(1), None
        except Exception as err:
            _turn_off(err)

        def ops(z_, c_, gb_):
            pairs = tuple(zip(gb_[0::2].unbind(0), gb_[1::2].unbind(0), strict=True))
            return eq.layer_norm_pointwise(z_, c_, replace(p, norms=(pairs, p.norms[1])))

        return (*_recomputed(ops, [z, c, gb], [dcn, dh], ctx.needs_input_grad[:3]), None)


def _order(p: eq.Canonical) -> tuple[int, ...]:
    return tuple(p.gate_order) if p.gate_order is not None else (0, 1, 2, 3)


def _block(H: int) -> int:
    return 1 << max(0, H - 1).bit_length()


class FusedSteps:
    """What ``equations.FUSED_STEPS`` holds while the steps are on: each method returns None
    where it does not serve the step (the equations then run their own ops). The dispatch has
    checked that the cell's tensors share the inputs' device and dtype."""

    @staticmethod
    def lstm(z: torch.Tensor, c: torch.Tensor, p: eq.Canonical):
        """``(c', h)`` before any projection, from the pre-activations ``z = x W + b + h U``."""
        if not _ok(p, z, c):
            return None
        peep = torch.stack(p.peepholes) if p.peepholes is not None else None
        return _served(_LSTMStep, z.contiguous(), c.contiguous(), peep, p)

    @staticmethod
    def layer_norm_lstm(z: torch.Tensor, c: torch.Tensor, p: eq.Canonical):
        """``(c', h)`` of a layer-norm LSTM (TF's LayerNormBasicLSTMCell) from ``z = x W + h U``,
        up to ``MAX_NORM_UNITS`` units (a row's gates in one program)."""
        if c.dim() != 2 or c.shape[-1] > MAX_NORM_UNITS or not _ok(p, z, c):
            return None
        gb = torch.stack([t for pair in p.norms[0] for t in pair])
        return _served(_LayerNormLSTMStep, z.contiguous(), c.contiguous(), gb, p)

    @staticmethod
    def gru(xw: torch.Tensor, h: torch.Tensor, p: eq.Canonical):
        """A reset-before GRU's new state (reset-after GRUs are cuDNN's)."""
        if p.reset_after or h.dim() != 2 or not _ok(p, xw, h):
            return None
        return _served(_GRUStep, xw, h.contiguous(), p.U, p)


def _served(step, *args):
    """``step.apply(*args)``, or None (the ops then run) where its kernel fails."""
    try:
        return step.apply(*args)
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
