"""Triton kernels of ``rnnkit.fast.steps`` for a layer-norm LSTM (TF's
``LayerNormBasicLSTMCell``): a program a row, its four gates and cell normalized, forward and
backward. Conventions as ``_triton_kernels``'s.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rnnkit.fast._triton_kernels import _act, _add, _dact, _runs, _store_back, _store_step

__all__ = ["ln_lstm_forward", "ln_lstm_backward"]


@triton.jit
def _ln(x, m, H, eps):
    """Layer norm's x̂ and 1/σ over one row (``m``: the row's valid units)."""
    mean = tl.sum(tl.where(m, x, 0.0), axis=0) / H
    d = tl.where(m, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / H + eps)
    return d * rstd, rstd


@triton.jit
def _ln_back(dxhat, xhat, rstd, m, H):
    """Layer norm's input gradient from the gradient of x̂."""
    mean_d = tl.sum(tl.where(m, dxhat, 0.0), axis=0) / H
    mean_dx = tl.sum(tl.where(m, dxhat * xhat, 0.0), axis=0) / H
    return rstd * (dxhat - mean_d - xhat * mean_dx)


@triton.jit
def _ln_lstm_in(z, c, gb, H, consts, OI: tl.constexpr, OF: tl.constexpr,
                OG: tl.constexpr, OO: tl.constexpr, ACT: tl.constexpr, REC: tl.constexpr,
                BLOCK_H: tl.constexpr):
    """One row's layer-norm LSTM step, recomputed from ``z``, ``c``, the gains and shifts
    ``gb [10, H]`` (γ, β of i, f, g, o, c) and ``consts`` (epsilon, forget_bias)."""
    eps, forget_bias = tl.load(consts), tl.load(consts + 1)
    row = tl.program_id(0)
    col = tl.arange(0, BLOCK_H)
    m = col < H
    zr = z + row * 4 * H + col
    cv = tl.load(c + row * H + col, mask=m, other=0.0)
    xi, ri = _ln(tl.load(zr + OI * H, mask=m, other=0.0), m, H, eps)
    xf, rf = _ln(tl.load(zr + OF * H, mask=m, other=0.0), m, H, eps)
    xg, rg = _ln(tl.load(zr + OG * H, mask=m, other=0.0), m, H, eps)
    xo, ro = _ln(tl.load(zr + OO * H, mask=m, other=0.0), m, H, eps)
    gi = tl.load(gb + col, mask=m, other=0.0)
    gf = tl.load(gb + 2 * H + col, mask=m, other=0.0)
    gg = tl.load(gb + 4 * H + col, mask=m, other=0.0)
    go = tl.load(gb + 6 * H + col, mask=m, other=0.0)
    gc = tl.load(gb + 8 * H + col, mask=m, other=0.0)
    si = _act(xi * gi + tl.load(gb + H + col, mask=m, other=0.0), REC)
    sf = _act(xf * gf + tl.load(gb + 3 * H + col, mask=m, other=0.0) + forget_bias, REC)
    tg = _act(xg * gg + tl.load(gb + 5 * H + col, mask=m, other=0.0), ACT)
    so = _act(xo * go + tl.load(gb + 7 * H + col, mask=m, other=0.0), REC)
    xc, rc = _ln(sf * cv + si * tg, m, H, eps)
    cn = xc * gc + tl.load(gb + 9 * H + col, mask=m, other=0.0)
    return (row, col, m, cv, xi, ri, xf, rf, xg, rg, xo, ro, gi, gf, gg, go, gc, si, sf, tg, so,
            xc, rc, cn)


@triton.jit
def ln_lstm_forward(z, c, gb, c_out, h_out, act, h_prev, y_out, y_prev, H, consts,
                    OI: tl.constexpr, OF: tl.constexpr, OG: tl.constexpr, OO: tl.constexpr,
                    ACT: tl.constexpr, REC: tl.constexpr, MASKED: tl.constexpr,
                    PREV: tl.constexpr, BLOCK_H: tl.constexpr):
    """TF's LayerNormBasicLSTMCell step, one program per row: i, f, g, o = LN(z blocks),
    c' = LN(σ(f + forget_bias) c + σ(i) act(g)), h = act(c') σ(o) (σ: ``REC``, act:
    ``ACT``); ``MASKED`` as ``lstm_forward``."""
    (row, col, m, cv, xi, ri, xf, rf, xg, rg, xo, ro, gi, gf, gg, go, gc, si, sf, tg, so, xc, rc,
     cn) = _ln_lstm_in(z, c, gb, H, consts, OI, OF, OG, OO, ACT, REC, BLOCK_H)
    _store_step(c_out, h_out, y_out, h_prev, y_prev, act, row * H + col, row + col * 0, m, cn,
                _act(cn, ACT) * so, cv, MASKED, PREV)


@triton.jit
def ln_lstm_backward(z, c, gb, dh, dcn, dz, dc, dgb, act, dh_pass, extra, dy, carry, B, H,
                     consts, OI: tl.constexpr, OF: tl.constexpr, OG: tl.constexpr,
                     OO: tl.constexpr, ACT: tl.constexpr, REC: tl.constexpr,
                     MASKED: tl.constexpr, EXTRA: tl.constexpr, PREV: tl.constexpr,
                     BLOCK_H: tl.constexpr):
    """Gradients of ``ln_lstm_forward``: ``dz``, ``dc`` and the per-row terms of the gains'
    and shifts' gradients, added to what ``dgb [10, B, H]`` holds (summed over rows by the
    caller). ``dc`` may be ``dcn``: each element is read before it is written.
    ``MASKED`` as ``lstm_backward``."""
    (row, col, m, cv, xi, ri, xf, rf, xg, rg, xo, ro, gi, gf, gg, go, gc, si, sf, tg, so, xc, rc,
     cn) = _ln_lstm_in(z, c, gb, H, consts, OI, OF, OG, OO, ACT, REC, BLOCK_H)
    at = row * H + col
    dhv = tl.load(dh + at, mask=m, other=0.0)
    dcv = tl.load(dcn + at, mask=m, other=0.0)
    keep, dh_held, dc_held, dhv, dcv = _runs(act, row + col * 0, m, dhv, dcv, dy, carry, at,
                                             MASKED, PREV)
    tc = _act(cn, ACT)
    dao = dhv * tc * _dact(so, REC)
    dcv += dhv * so * _dact(tc, ACT)
    dcp = _ln_back(dcv * gc, xc, rc, m, H)
    dai = dcp * tg * _dact(si, REC)
    daf = dcp * cv * _dact(sf, REC)
    dag = dcp * si * _dact(tg, ACT)
    _store_back(dc, dh_pass, extra, at, m, dcp * sf, keep, dh_held, dc_held, MASKED, EXTRA)
    zr = dz + row * 4 * H + col
    tl.store(zr + OI * H, _ln_back(dai * gi, xi, ri, m, H), mask=m)
    tl.store(zr + OF * H, _ln_back(daf * gf, xf, rf, m, H), mask=m)
    tl.store(zr + OG * H, _ln_back(dag * gg, xg, rg, m, H), mask=m)
    tl.store(zr + OO * H, _ln_back(dao * go, xo, ro, m, H), mask=m)
    step = B * H
    _add(dgb, at, dai * xi, m)
    _add(dgb, step + at, dai, m)
    _add(dgb, 2 * step + at, daf * xf, m)
    _add(dgb, 3 * step + at, daf, m)
    _add(dgb, 4 * step + at, dag * xg, m)
    _add(dgb, 5 * step + at, dag, m)
    _add(dgb, 6 * step + at, dao * xo, m)
    _add(dgb, 7 * step + at, dao, m)
    _add(dgb, 8 * step + at, dcv * xc, m)
    _add(dgb, 9 * step + at, dcv, m)
