"""A reset-before GRU's whole unroll (TF1's ``GRUCell``) as one autograd node on the fused
steps' kernels, which ``rnnkit.fast.steps.sequence`` runs: per step two products and two
kernels each way (forward, from ``steps.FUSED_MIN_BATCH`` rows, two kernels with the products
inside), the input's gradient written into one buffer, U's gradient in two products at the end.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnnkit.fast.steps import (
    _acts,
    _fused_steps,
    _kernels,
    _last_grad,
    _launch,
    _masked_grad,
    _ops_loop,
    _output_grads,
    _own,
    _previous,
    _recomputed,
    _step_grid,
    _turn_off,
)


class GRULoop(torch.autograd.Function):
    """A reset-before GRU's whole unroll from ``xw [T, B, 3H]`` (x W + b) and ``mask`` (as
    ``_lstm_loop.LSTMLoop``'s): ``(y, h_T)``; per step, two products and two kernels each way."""

    @staticmethod
    def forward(ctx, xw, h0, U, mask, held, p):
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None, not zeros
        T, B, H = xw.shape[0], h0.shape[0], h0.shape[-1]
        N, k, acts = B * H, _kernels(), _acts(p)
        fused = _fused_steps(p, None, B, H)
        if fused:  # each step's two products inside its two kernels
            ZR, CP = xw.new_empty(T, B, 2 * H), xw.new_empty(T, B, H)
        else:  # x W + b, to which each step adds its products in place (no copy a step)
            ZR, CP = _own(xw[..., :2 * H]), _own(xw[..., 2 * H:])
        Zs, RH, Hs = (xw.new_empty(n, B, H) for n in (T, T, T + 1))
        Y = xw.new_empty(T, B, H) if mask is not None else Hs[1:]  # outputs: 0 past a length
        Hs[0].copy_(h0)
        if fused:
            grid, options = _step_grid(B, H)
            Uc = U.contiguous()
            for t in range(T):
                k.gru_gates_step[grid](xw, Uc, Hs, ZR, Zs, RH, t, B, H, REC=acts["REC"],
                                       F64=xw.dtype == torch.float64, **options)
                k.gru_blend_step[grid](xw, Uc, RH, CP, Hs, Zs, Y,
                                       mask if mask is not None else Hs, t, B, H,
                                       ACT=acts["ACT"], MASKED=mask is not None, PREV=held,
                                       F64=xw.dtype == torch.float64, **options)
        else:
            for t in range(T):
                ZR[t].addmm_(Hs[t], U[:, :2 * H])
                _launch(k.gates_forward, N, ZR[t], Hs[t], Zs[t], RH[t], N, H, REC=acts["REC"])
                CP[t].addmm_(RH[t], U[:, 2 * H:])
                _launch(k.blend_forward, N, CP[t], Hs[t], Zs[t], Hs[t + 1],
                        mask[t] if mask is not None else Hs[t], Y[t], _previous(Y, t, held), N, H,
                        ACT=acts["ACT"], MASKED=mask is not None, PREV=held)
        ctx.p, ctx.held = p, held
        ctx.save_for_backward(U, ZR, Zs, RH, CP, Hs, mask)
        return Y, Hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT):
        U, ZR, Zs, RH, CP, Hs, mask = ctx.saved_tensors
        try:
            return _gru_loop_backward(ctx, U, ZR, Zs, RH, CP, Hs, mask, dy, dhT)
        except Exception as err:  # a kernel that does not compile or launch here
            _turn_off(err)
        T, H = Zs.shape[0], Zs.shape[-1]
        xw = torch.cat([ZR - Hs[:T] @ U[:, :2 * H], CP - RH @ U[:, 2 * H:]], dim=-1)
        return (*_recomputed(lambda xw_, h_, U_: _ops_loop(ctx.p, xw_, None, h_, U_, None,
                                                           mask=mask, held=ctx.held),
                             [xw, Hs[0], U], [dy, dhT], ctx.needs_input_grad[:3]), None, None,
                None)


def _gru_loop_backward(ctx, U, ZR, Zs, RH, CP, Hs, mask, dy, dhT):
    T, B, H = Zs.shape
    N, k, acts = B * H, _kernels(), _acts(ctx.p)
    dXW = ZR.new_empty(T, B, 3 * H)
    held, dy_held, carry = _output_grads(ctx.held, dy)
    dy = _masked_grad(dy, mask) if not held else None
    dh = _last_grad(dy, dhT, Hs)
    dh_blend, dz = (torch.empty_like(Hs[0]) for _ in range(2))
    gates = [torch.empty_like(Hs[0]) for _ in range(2)]  # in turn: one read, one written
    U_zr_t, U_c_t = U[:, :2 * H].t(), U[:, 2 * H:].t()
    for t in reversed(range(T)):
        dh_gates = gates[t % 2]
        dcp = dXW[t, :, 2 * H:]
        _launch(k.blend_backward, N, CP[t], Hs[t], Zs[t], dh, dcp, dh_blend, dz,
                mask[t] if mask is not None else dh, dy_held[t] if held else dh,
                carry if held else dh, N, H, 3 * H, ACT=acts["ACT"], MASKED=mask is not None,
                PREV=held)
        drh = torch.mm(dcp, U_c_t)
        extra = dy is not None and t > 0
        _launch(k.gates_backward, N, ZR[t], Hs[t], dz, drh, dh_blend,
                dy[t - 1].contiguous() if extra else dh, dXW[t], dh_gates, N, H, 3 * H,
                REC=acts["REC"], EXTRA=extra)
        dh = dh_gates.addmm_(dXW[t, :, :2 * H], U_zr_t)
    dU = None
    if ctx.needs_input_grad[2]:
        flat = dXW.reshape(T * B, 3 * H)
        dUt = U.new_empty(3 * H, H)
        torch.mm(flat[:, :2 * H].t(), Hs[:T].reshape(T * B, H), out=dUt[:2 * H])
        torch.mm(flat[:, 2 * H:].t(), RH.reshape(T * B, H), out=dUt[2 * H:])
        dU = dUt.t()
    return dXW, dh, dU, None, None, None
