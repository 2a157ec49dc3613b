"""Triton kernels of ``rnnkit.fast.steps`` for a reset-before GRU (TF1's ``GRUCell``): a step's
gates and blend, forward and backward, and the forward step's two halves with their recurrent
products inside. Conventions as ``_triton_kernels``'s.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rnnkit.fast._triton_kernels import (
    _act,
    _dact,
    _dot,
    _k_chunk,
    _row_block,
    _runs,
    _step_output,
    _store_step,
)

__all__ = ["gates_forward", "gates_backward", "blend_forward", "blend_backward", "gru_gates_step",
           "gru_blend_step"]


@triton.jit
def _gru_in(zr, N, H, REC: tl.constexpr, BLOCK: tl.constexpr):
    """This program's (row, unit) pairs, their mask, offset in ``zr [B, 2H]``, z and r."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < N
    base = (idx // H) * 2 * H + idx % H
    z = _act(tl.load(zr + base, mask=m, other=0.0), REC)
    r = _act(tl.load(zr + base + H, mask=m, other=0.0), REC)
    return idx, m, base, z, r


@triton.jit
def gates_forward(zr, h, z_out, rh_out, N, H, REC: tl.constexpr, BLOCK: tl.constexpr):
    """A reset-before GRU's gates: z = σ(zr[:, :H]), r = σ(zr[:, H:]) (σ: ``REC``); writes z
    and r ⊙ h."""
    idx, m, base, z, r = _gru_in(zr, N, H, REC, BLOCK)
    tl.store(z_out + idx, z, mask=m)
    tl.store(rh_out + idx, r * tl.load(h + idx, mask=m, other=0.0), mask=m)


@triton.jit
def gates_backward(zr, h, dz, drh, dh_in, extra, dzr, dh, N, H, LD, REC: tl.constexpr,
                   EXTRA: tl.constexpr, BLOCK: tl.constexpr):
    """Gradients of ``gates_forward``: ``dzr`` (rows ``LD`` apart: the first 2H columns of a
    step's input gradient) and ``dh = dh_in + drh ⊙ r`` (``+ extra``: the previous output's
    gradient, in a whole loop)."""
    idx, m, base, z, r = _gru_in(zr, N, H, REC, BLOCK)
    hv = tl.load(h + idx, mask=m, other=0.0)
    drhv = tl.load(drh + idx, mask=m, other=0.0)
    out = (idx // H) * LD + idx % H
    tl.store(dzr + out, tl.load(dz + idx, mask=m, other=0.0) * _dact(z, REC), mask=m)
    tl.store(dzr + out + H, drhv * hv * _dact(r, REC), mask=m)
    dhv = tl.load(dh_in + idx, mask=m, other=0.0) + drhv * r
    if EXTRA:
        dhv += tl.load(extra + idx, mask=m, other=0.0)
    tl.store(dh + idx, dhv, mask=m)


@triton.jit
def blend_forward(cp, h, z, h_out, act, y_out, y_prev, N, H, ACT: tl.constexpr,
                  MASKED: tl.constexpr, PREV: tl.constexpr, BLOCK: tl.constexpr):
    """h' = c + z (h - c) with c = act(cp) (``ACT``): a GRU's new state. ``MASKED`` as
    ``lstm_forward``'s (the row keeps ``h``)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < N
    c = _act(tl.load(cp + idx, mask=m, other=0.0), ACT)
    hv = tl.load(h + idx, mask=m, other=0.0)
    zv = tl.load(z + idx, mask=m, other=0.0)
    hn = c + zv * (hv - c)
    _store_step(h_out, h_out, y_out, h, y_prev, act, idx, idx // H, m, hn, hn, hv, MASKED, PREV,
                HAS_C=False)


@triton.jit(do_not_specialize=["t"])
def gru_gates_step(xw, U, Hs, ZR, Zs, RH, t, B, H, REC: tl.constexpr, F64: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step ``t``'s gates of a reset-before GRU with their recurrent product, a program a block
    of rows and units: where the step-by-step loop has a product and ``gates_forward``. From
    ``xw [T, B, 3H]`` (x W + b: z, r, then the candidate's), ``U [H, 3H]`` and ``Hs[t]`` (of
    ``[T + 1, B, H]``, read in chunks of ``BLOCK_K`` units, every unit), it writes the gates'
    pre-activations ``ZR[t]`` (of ``[T, B, 2H]``), z in ``Zs[t]`` and r ⊙ h in ``RH[t]`` (of
    ``[T, B, H]``)."""
    rows, cols, ks, rm, cm, m2, at, _ = _row_block(B, H, BLOCK_B, BLOCK_H, BLOCK_K)
    xat = t * B * 3 * H + rows[:, None] * (3 * H) + cols[None, :]
    zz = tl.load(xw + xat, mask=m2, other=0.0)
    zr = tl.load(xw + xat + H, mask=m2, other=0.0)
    for k0 in range(0, H, BLOCK_K):
        hk, uat, um = _k_chunk(Hs, t, B, H, 3, rows, rm, cols, cm, k0 + ks)
        zz += _dot(hk, tl.load(U + uat, mask=um, other=0.0), F64)
        zr += _dot(hk, tl.load(U + uat + H, mask=um, other=0.0), F64)
    gat = t * B * 2 * H + rows[:, None] * (2 * H) + cols[None, :]
    tl.store(ZR + gat, zz, mask=m2)
    tl.store(ZR + gat + H, zr, mask=m2)
    tl.store(Zs + t * B * H + at, _act(zz, REC), mask=m2)
    h = tl.load(Hs + t * B * H + at, mask=m2, other=0.0)
    tl.store(RH + t * B * H + at, _act(zr, REC) * h, mask=m2)


@triton.jit(do_not_specialize=["t"])
def gru_blend_step(xw, U, RH, CP, Hs, Zs, Y, act, t, B, H, ACT: tl.constexpr,
                   MASKED: tl.constexpr, PREV: tl.constexpr, F64: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step ``t``'s new state of a reset-before GRU with the candidate's recurrent product
    (``RH[t]`` against ``U``'s last ``H`` columns, read in chunks of ``BLOCK_K`` units), a
    program a block of rows and units: where the step-by-step loop has a product and
    ``blend_forward``. Writes the candidate's pre-activation ``CP[t]`` and
    ``Hs[t + 1] = c + z (h - c)``, ``c = act(CP[t])``; ``MASKED`` as ``lstm_step_forward``'s
    (a row that does not run keeps ``h``; its output ``Y[t]`` is 0, or with ``PREV`` the
    previous output)."""
    rows, cols, ks, rm, cm, m2, at, _ = _row_block(B, H, BLOCK_B, BLOCK_H, BLOCK_K)
    cp = tl.load(xw + t * B * 3 * H + rows[:, None] * (3 * H) + cols[None, :] + 2 * H,
                 mask=m2, other=0.0)
    for k0 in range(0, H, BLOCK_K):
        rk, uat, um = _k_chunk(RH, t, B, H, 3, rows, rm, cols, cm, k0 + ks)
        cp += _dot(rk, tl.load(U + uat + 2 * H, mask=um, other=0.0), F64)
    tl.store(CP + t * B * H + at, cp, mask=m2)
    c = _act(cp, ACT)
    h = tl.load(Hs + t * B * H + at, mask=m2, other=0.0)
    hn = c + tl.load(Zs + t * B * H + at, mask=m2, other=0.0) * (h - c)
    if MASKED:
        hn = tl.where(_step_output(Y, act, t, B, H, rows, rm, at, m2, hn, PREV), hn, h)
    tl.store(Hs + (t + 1) * B * H + at, hn, mask=m2)


@triton.jit
def blend_backward(cp, h, z, dout, dcp, dh, dz, act, dy, carry, N, H, LD, ACT: tl.constexpr,
                   MASKED: tl.constexpr, PREV: tl.constexpr, BLOCK: tl.constexpr):
    """Gradients of ``blend_forward`` with respect to ``cp`` (rows ``LD`` apart), ``h`` and
    ``z``; ``MASKED``: a row that did not run passes ``dout`` (the held state's gradient) to
    ``dh`` whole; ``PREV`` as ``lstm_backward``'s."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < N
    c = _act(tl.load(cp + idx, mask=m, other=0.0), ACT)
    hv = tl.load(h + idx, mask=m, other=0.0)
    zv = tl.load(z + idx, mask=m, other=0.0)
    d_in = tl.load(dout + idx, mask=m, other=0.0)
    keep, d_held, _, d, _ = _runs(act, idx // H, m, d_in, d_in, dy, carry, idx, MASKED, PREV)
    passed = d_in * 0.0
    if MASKED:
        passed = tl.where(keep, 0.0, d_held)
    tl.store(dcp + (idx // H) * LD + idx % H, d * (1.0 - zv) * _dact(c, ACT), mask=m)
    tl.store(dh + idx, d * zv + passed, mask=m)
    tl.store(dz + idx, d * (hv - c), mask=m)
