"""An LSTM's whole unroll as one autograd node on the fused steps' kernels (cell clip,
peepholes, TF1's gate order, a projection; or a layer-norm LSTM's), which
``rnnkit.fast.steps.sequence`` runs.

Per-step autograd costs a step's backward its products' gradient for U (a product and a sum a
step) and the sums of gradients that meet at each step's state. This loop's own backward runs
the steps' kernels and one product a step, and makes U's gradient at the end, in one product
over every step (as cuDNN does).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from rnnkit.cells import equations as eq
from rnnkit.fast.steps import (
    LAUNCH,
    _acts,
    _block,
    _consts,
    _fresh,
    _fused_steps,
    _kernels,
    _last_grad,
    _launch,
    _masked_grad,
    _norm_warps,
    _ops_loop,
    _order,
    _output_grads,
    _own,
    _previous,
    _recomputed,
    _step_grid,
    _turn_off,
    _weight_grad,
)


class LSTMLoop(torch.autograd.Function):
    """An LSTM's whole unroll, or a layer-norm LSTM's, from ``xw [T, B, 4H]`` (x W + b),
    ``extra`` (peepholes ``[3, H]`` or None; a layer-norm LSTM's gains and shifts ``[10, H]``),
    the projection ``Pw [H, P]`` or None, and ``mask [T, B]`` or None (1 where a row runs;
    elsewhere it keeps its state and outputs 0, or its previous output where ``held``):
    ``(y, c_T, h_T)``. Per step, its product and one kernel each way, and a projection's
    product (and clip) each way."""

    @staticmethod
    def forward(ctx, xw, c0, h0, U, extra, Pw, mask, held, p):
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None, not zeros
        T, B, H, P = xw.shape[0], c0.shape[0], c0.shape[-1], h0.shape[-1]
        fused = _fused_steps(p, Pw, B, H)
        # x W + b, to which each step adds its product in place: one copy, not one a step
        Z = xw.new_empty(T, B, 4 * H) if fused else _own(xw)
        C = xw.new_empty(T + 1, B, H)
        Hs = xw.new_empty(T + 1, B, P)
        M = xw.new_empty(T, B, H) if Pw is not None else Hs[1:]  # h before the projection
        R = xw.new_empty(T, B, P) if p.proj_clip is not None else None  # before its clip
        Y = xw.new_empty(T, B, P) if mask is not None else Hs[1:]  # outputs: 0 past a length
        C[0].copy_(c0)
        Hs[0].copy_(h0)
        launch = _LSTMLaunch(p, c0)
        if mask is not None and Pw is not None:  # c held in the kernel, h after the projection
            zeros, unread, proj = c0.new_zeros(B, H), c0.new_empty(B, H), h0.new_empty(B, P)
        if fused:
            Uc = U.contiguous()
            for t in range(T):
                launch.step(t, xw, Uc, C, Hs, Z, Y, extra, mask, held)
        else:
            for t in range(T):
                Z[t].addmm_(Hs[t], U)
                if mask is None:
                    launch.forward(Z[t], C[t], extra, C[t + 1], M[t])
                    if Pw is None:
                        continue
                elif Pw is None:
                    launch.forward(Z[t], C[t], extra, C[t + 1], Hs[t + 1], mask[t], Hs[t], Y[t],
                                   _previous(Y, t, held) if held else None)
                    continue
                else:  # rows that do not run: c held, m 0 (unread but finite), h held below
                    launch.forward(Z[t], C[t], extra, C[t + 1], M[t], mask[t], zeros, unread)
                out = Hs[t + 1] if mask is None else proj
                if R is None:
                    torch.mm(M[t], Pw, out=out)
                else:
                    torch.clamp(torch.mm(M[t], Pw, out=R[t]), -p.proj_clip, p.proj_clip, out=out)
                if mask is not None:
                    runs = mask[t][:, None] != 0
                    torch.where(runs, proj, Hs[t], out=Hs[t + 1])
                    torch.where(runs, proj, Y[t - 1] if held and t > 0 else proj.new_zeros(()),
                                out=Y[t])
        ctx.p, ctx.held = p, held
        ctx.save_for_backward(Z, C, Hs, U, extra, Pw, M if Pw is not None else None, R, mask)
        return Y, C[T].clone(), Hs[T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dcT, dhT):
        Z, C, Hs, U, extra, Pw, M, R, mask = ctx.saved_tensors
        try:
            return _lstm_loop_backward(ctx, Z, C, Hs, U, extra, Pw, M, R, mask, dy, dcT, dhT)
        except Exception as err:  # a kernel that does not compile or launch here
            _turn_off(err)
        return _loop_recomputed(ctx, Z, C, Hs, U, extra, Pw, mask, (dy, dcT, dhT))


class _LSTMLaunch:
    """One step's kernel launches for an LSTM loop: the plain or the layer-norm kernels."""

    def __init__(self, p: eq.Canonical, like: torch.Tensor):
        self.p, self.norm = p, p.kind == "layer_norm_lstm"
        self.B, self.H = like.shape
        self.k, order = _kernels(), _order(p)
        self.consts = _consts(p.norms[1], p.forget_bias, like=like) if self.norm else \
            _consts(p.cell_clip or 0.0, like=like)
        self.meta = dict(OI=order[0], OF=order[1], OG=order[2], OO=order[3], **_acts(p))
        if not self.norm:
            self.meta["CLIP"] = p.cell_clip is not None
        self.norm_launch = dict(LAUNCH, num_warps=_norm_warps(_block(self.H), like.dtype))

    def forward(self, z, c, extra, c_out, h_out, act=None, h_prev=None, y_out=None,
                y_prev=None) -> None:
        """``act [B]`` (0 where a row does not run: it keeps ``c`` and ``h_prev``, and outputs 0
        in ``y_out``, or its previous output ``y_prev`` if given) or None."""
        B, H = self.B, self.H
        masked = dict(MASKED=act is not None, PREV=y_prev is not None)
        act, h_prev, y_out, y_prev = (t if t is not None else c
                                      for t in (act, h_prev, y_out, y_prev))
        if self.norm:
            self.k.ln_lstm_forward[(B,)](z, c, extra, c_out, h_out, act, h_prev, y_out, y_prev, H,
                                         self.consts, BLOCK_H=_block(H), **masked, **self.meta,
                                         **self.norm_launch)
        else:
            _launch(self.k.lstm_forward, B * H, z, c, extra if extra is not None else z, c_out,
                    h_out, act, h_prev, y_out, y_prev, B * H, H, self.consts,
                    PEEP=extra is not None, **masked, **self.meta)

    def step(self, t: int, xw, U, C, Hs, Z, Y, extra, mask, held: bool) -> None:
        """Step ``t`` of the forward, its product in its kernel (``lstm_step_forward``): the
        tensors the step-by-step loop writes, written the same way."""
        grid, options = _step_grid(self.B, self.H)
        self.k.lstm_step_forward[grid](
            xw, U, C, Hs, Z, Y, extra if extra is not None else xw,
            mask if mask is not None else xw, self.consts, t, self.B, self.H,
            PEEP=extra is not None, MASKED=mask is not None, PREV=held,
            F64=xw.dtype == torch.float64, **options, **self.meta)

    def backward(self, z, c, cn, extra, dh, dc, dz, dextra, act=None, dh_pass=None,
                 extra_dy=None, dy=None, carry=None) -> None:
        """``dc`` in and out (the next step's gradient, then this one's); ``dextra`` summed
        over steps. With ``act``, a row that did not run passes ``dh`` (``+ extra_dy``) to
        ``dh_pass`` and ``dc`` on; with ``dy`` (Keras's held outputs), the output's gradient
        and ``carry`` (see ``_runs``)."""
        B, H = self.B, self.H
        flags = dict(MASKED=act is not None, EXTRA=extra_dy is not None, PREV=dy is not None)
        act, dh_pass, extra_dy, dy, carry = (t if t is not None else dc
                                             for t in (act, dh_pass, extra_dy, dy, carry))
        if self.norm:
            self.k.ln_lstm_backward[(B,)](z, c, extra, dh, dc, dz, dc, dextra, act, dh_pass,
                                          extra_dy, dy, carry, B, H, self.consts,
                                          BLOCK_H=_block(H), **flags, **self.meta,
                                          **self.norm_launch)
        else:
            _launch(self.k.lstm_backward, B * H, z, c, cn, extra if extra is not None else z,
                    dh, dc, dz, dc, dextra if dextra is not None else dc, act, dh_pass, extra_dy,
                    dy, carry, B * H, H, self.consts, PEEP=extra is not None, **flags,
                    **self.meta)


def _lstm_loop_backward(ctx, Z, C, Hs, U, extra, Pw, M, R, mask, dy, dcT, dhT):
    T, p = Z.shape[0], ctx.p
    launch = _LSTMLaunch(p, C[0])
    dZ = torch.empty_like(Z)
    dc = _fresh(dcT, C)
    if mask is not None and Pw is not None:
        return _projected_masked_backward(ctx, launch, Z, C, Hs, U, extra, Pw, M, R, mask, dy,
                                          dc, dhT)
    held, dy_held, carry = _output_grads(ctx.held, dy)
    dy = _masked_grad(dy, mask) if not held else None
    dh = _last_grad(dy, dhT, Hs)
    dextra = C.new_zeros(extra.shape[0], *C.shape[1:]) if extra is not None else None
    dR = torch.empty_like(Hs[1:]) if Pw is not None else None  # gradients after the clip
    Ut, Pt = U.t(), (Pw.t() if Pw is not None else None)
    zero = _consts(0.0, like=C)[0]
    # each step's products add into a buffer in place: two in turn under a mask (one is read
    # while the other is written); else the earlier outputs' gradients, copied once
    passes = [torch.empty_like(dc) for _ in range(2)] if mask is not None else None
    earlier = _own(dy[:-1]) if dy is not None and mask is None else None
    for t in reversed(range(T)):
        if mask is not None:  # rows past their length pass the held state's gradients on
            passed = passes[t % 2]
            launch.backward(Z[t], C[t], C[t + 1], extra, dh, dc, dZ[t], dextra, mask[t], passed,
                            dy[t - 1] if dy is not None and t > 0 else None,
                            dy_held[t] if held else None, carry)
            dh = passed.addmm_(dZ[t], Ut)
            continue
        dm = dh
        if Pw is not None:
            if R is not None:  # clamp's gradient: where min <= x <= max
                torch.where((R[t] >= -p.proj_clip) & (R[t] <= p.proj_clip), dh, zero, out=dR[t])
            else:
                dR[t].copy_(dh)
            dm = torch.mm(dR[t], Pt)
        launch.backward(Z[t], C[t], C[t + 1], extra, dm, dc, dZ[t], dextra)
        dh = earlier[t - 1].addmm_(dZ[t], Ut) if earlier is not None and t > 0 else \
            torch.mm(dZ[t], Ut)
    dU = _weight_grad(Hs[:T], dZ) if ctx.needs_input_grad[3] else None
    dP = _weight_grad(M, dR) if Pw is not None and ctx.needs_input_grad[5] else None
    return dZ, dc, dh, dU, (dextra.sum(1) if dextra is not None else None), dP, None, None, None


def _projected_masked_backward(ctx, launch, Z, C, Hs, U, extra, Pw, M, R, mask, dy, dc, dhT):
    """``_lstm_loop_backward`` for an LSTM with a projection under a mask: the projected state
    is held (and the output zeroed or held) by ops; the kernel holds ``c``."""
    T, p = Z.shape[0], ctx.p
    dZ = torch.empty_like(Z)
    dh = _fresh(dhT, Hs)  # the held (projected) state's gradient; the outputs' come in below
    dy = dy.contiguous() if dy is not None else None
    carry = torch.zeros_like(dh) if ctx.held and dy is not None else None
    dextra = C.new_zeros(extra.shape[0], *C.shape[1:]) if extra is not None else None
    dR, unread = torch.empty_like(Hs[1:]), torch.empty_like(dc)
    Ut, Pt = U.t(), Pw.t()
    for t in reversed(range(T)):
        runs = mask[t][:, None]
        gy = dy[t] if dy is not None else None
        if carry is not None:  # Keras's held outputs: the gradient of the ones held at t
            gy = gy + carry
            carry = gy * (1.0 - runs)
        total = dh if gy is None else dh + gy
        torch.mul(total, runs, out=dR[t])
        if R is not None:  # clamp's gradient: where min <= x <= max
            dR[t].mul_((R[t] >= -p.proj_clip) & (R[t] <= p.proj_clip))
        launch.backward(Z[t], C[t], C[t + 1], extra, torch.mm(dR[t], Pt), dc, dZ[t], dextra,
                        mask[t], unread)
        dh = (dh * (1.0 - runs)).addmm_(dZ[t], Ut)
    dU = _weight_grad(Hs[:T], dZ) if ctx.needs_input_grad[3] else None
    dP = _weight_grad(M, dR) if ctx.needs_input_grad[5] else None
    return dZ, dc, dh, dU, (dextra.sum(1) if dextra is not None else None), dP, None, None, None


def _loop_recomputed(ctx, Z, C, Hs, U, extra, Pw, mask, grads):
    """An LSTM loop's gradients by autograd through the ops, from its saved tensors (the inputs
    ``x W + b`` are ``Z - h U``)."""
    T = Z.shape[0]
    xw = Z - Hs[:T] @ U

    def ops(xw_, c_, h_, U_, e_, P_):
        return _ops_loop(ctx.p, xw_, c_, h_, U_, e_, P_, mask, ctx.held)

    return (*_recomputed(ops, [xw, C[0], Hs[0], U, extra, Pw], list(grads),
                         ctx.needs_input_grad[:6]), None, None, None)
