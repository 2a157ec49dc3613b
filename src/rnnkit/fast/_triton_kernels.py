"""Triton kernels of ``rnnkit.fast.steps``: an LSTM's step, forward and backward, and the
helpers that the GRU's (``_triton_gru``) and the layer-norm LSTM's (``_triton_norm``) share.

Imported only where Triton is (``steps`` says why not otherwise). Every tensor is contiguous
and rows are ``[B, width]``; a program handles ``BLOCK`` of the ``N = B * H`` (row, unit)
pairs. Activations are the fused C kernels' (``compiled.ACTIVATIONS``, by id), the logistic
sigmoid and tanh written with ``exp`` so that float32 and float64 take the same code
(tanh(x) = 2 σ(2x) - 1); a derivative is taken from the activation's output, as there.
Float options (cell_clip, epsilon, forget_bias) come in a small tensor ``consts`` of the
inputs' dtype: a Python float would reach the kernel as float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["lstm_forward", "lstm_backward", "lstm_step_forward"]



@triton.jit
def _sig(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _act(x, ID: tl.constexpr):
    """Activation ``ID`` (``compiled.ACTIVATIONS``: tanh 0, sigmoid 1, relu 2, linear 3,
    hard_sigmoid 4 (Keras 3), hard_sigmoid_keras2 5, softsign 6)."""
    if ID == 0:
        y = _tanh(x)
    elif ID == 1:
        y = _sig(x)
    elif ID == 2:
        y = tl.maximum(x, 0.0)
    elif ID == 4:
        y = tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    elif ID == 5:
        y = tl.minimum(tl.maximum(0.2 * x + 0.5, 0.0), 1.0)
    elif ID == 6:
        y = x / (1.0 + tl.abs(x))
    else:
        y = x
    return y


@triton.jit
def _dact(y, ID: tl.constexpr):
    """The derivative of activation ``ID`` where it output ``y``."""
    if ID == 0:
        d = 1.0 - y * y
    elif ID == 1:
        d = y * (1.0 - y)
    elif ID == 2:
        d = tl.where(y > 0.0, 1.0, 0.0)
    elif ID == 4:
        d = tl.where((y > 0.0) & (y < 1.0), 1.0 / 6.0, 0.0)
    elif ID == 5:
        d = tl.where((y > 0.0) & (y < 1.0), 0.2, 0.0)
    elif ID == 6:
        a = 1.0 - tl.abs(y)
        d = a * a
    else:
        d = y * 0.0 + 1.0
    return d


@triton.jit
def _add(ptr, offs, v, m):
    """Add ``v`` to what ``ptr`` holds at ``offs`` (a sum over time steps)."""
    tl.store(ptr + offs, v + tl.load(ptr + offs, mask=m, other=0.0), mask=m)


@triton.jit
def _lstm_in(z, c, N, H, OI: tl.constexpr, OF: tl.constexpr, OG: tl.constexpr,
             OO: tl.constexpr, BLOCK: tl.constexpr):
    """This program's (row, unit) pairs, their mask, unit, offset in ``z``, ``c`` and the four
    gate pre-activations."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < N
    col = idx % H
    zrow = (idx // H) * 4 * H + col
    cv = tl.load(c + idx, mask=m, other=0.0)
    zi = tl.load(z + zrow + OI * H, mask=m, other=0.0)
    zf = tl.load(z + zrow + OF * H, mask=m, other=0.0)
    zg = tl.load(z + zrow + OG * H, mask=m, other=0.0)
    zo = tl.load(z + zrow + OO * H, mask=m, other=0.0)
    return idx, m, col, zrow, cv, zi, zf, zg, zo


@triton.jit
def _store_step(c_out, h_out, y_out, h_prev, y_prev, act, at, rows, m, cn, hn, cv,
                MASKED: tl.constexpr, PREV: tl.constexpr, HAS_C: tl.constexpr = True):
    """Store a step's ``c'`` (unless not ``HAS_C``: a GRU) and ``h``; ``MASKED``: where ``act``
    (by row) is 0, the row keeps ``cv`` and ``h_prev`` and outputs 0 in ``y_out`` (``PREV``:
    its previous output, ``y_prev``, as Keras), elsewhere it outputs ``h`` there too."""
    if MASKED:
        keep = tl.load(act + rows, mask=m, other=0.0) != 0.0
        if PREV:
            y_else = tl.load(y_prev + at, mask=m, other=0.0)
        else:
            y_else = hn * 0.0
        tl.store(y_out + at, tl.where(keep, hn, y_else), mask=m)
        cn = tl.where(keep, cn, cv)
        hn = tl.where(keep, hn, tl.load(h_prev + at, mask=m, other=0.0))
    if HAS_C:
        tl.store(c_out + at, cn, mask=m)
    tl.store(h_out + at, hn, mask=m)


@triton.jit
def _runs(act, rows, m, dh, dc, dy, carry, at, MASKED: tl.constexpr, PREV: tl.constexpr):
    """Where each row ran (``act`` by row; every row unless ``MASKED``), the held state's
    gradients ``dh``, ``dc`` as given, and as the step's own (zero where the row did not run).
    ``PREV`` (Keras's held outputs): the output's gradient ``dy`` plus what the later held
    outputs carried back (``carry``, in and out) reaches the step's ``h`` where the row ran,
    and is carried on to the previous output where it did not."""
    keep = m
    if MASKED:
        keep = tl.load(act + rows, mask=m, other=0.0) != 0.0
    dh_step = dh
    if PREV:
        gy = tl.load(dy + at, mask=m, other=0.0) + tl.load(carry + at, mask=m, other=0.0)
        tl.store(carry + at, tl.where(keep, 0.0, gy), mask=m)
        dh_step = dh + gy
    return keep, dh, dc, tl.where(keep, dh_step, 0.0), tl.where(keep, dc, 0.0)


@triton.jit
def _store_back(dc, dh_pass, extra, at, m, dc_step, keep, dh_held, dc_held, MASKED: tl.constexpr,
                EXTRA: tl.constexpr):
    """Store the gradient reaching the step's input ``c``; ``MASKED``: a row that did not run
    passes ``dc_held`` there and ``dh_held`` (``+ extra``, the previous output's gradient) to
    ``dh_pass``, the others 0 (``+ extra``)."""
    if MASKED:
        dc_step = tl.where(keep, dc_step, dc_held)
        passed = tl.where(keep, 0.0, dh_held)
        if EXTRA:
            passed += tl.load(extra + at, mask=m, other=0.0)
        tl.store(dh_pass + at, passed, mask=m)
    tl.store(dc + at, dc_step, mask=m)


@triton.jit
def lstm_forward(z, c, peep, c_out, h_out, act, h_prev, y_out, y_prev, N, H, consts,
                 OI: tl.constexpr, OF: tl.constexpr, OG: tl.constexpr, OO: tl.constexpr,
                 PEEP: tl.constexpr, CLIP: tl.constexpr, ACT: tl.constexpr, REC: tl.constexpr,
                 MASKED: tl.constexpr, PREV: tl.constexpr, BLOCK: tl.constexpr):
    """c' = σ(f) c + σ(i) act(g) (clipped), h = σ(o) act(c') (σ: ``REC``, act: ``ACT``); gate
    k's block of ``z [B, 4H]`` is ``O<k>``; peepholes ``peep [3, H]`` (p_i, p_f on c, p_o on
    c'). ``MASKED``: rows whose ``act [B]`` is 0 keep ``c`` and ``h_prev`` and output 0 in
    ``y_out`` (TF1's padding; ``PREV``: their previous output ``y_prev``, as Keras), the others
    output h there too."""
    idx, m, col, zrow, cv, zi, zf, zg, zo = _lstm_in(z, c, N, H, OI, OF, OG, OO, BLOCK)
    if PEEP:
        zi += tl.load(peep + col, mask=m, other=0.0) * cv
        zf += tl.load(peep + H + col, mask=m, other=0.0) * cv
    cn = _act(zf, REC) * cv + _act(zi, REC) * _act(zg, ACT)
    if CLIP:
        clip = tl.load(consts)
        cn = tl.minimum(tl.maximum(cn, -clip), clip)
    if PEEP:
        zo += tl.load(peep + 2 * H + col, mask=m, other=0.0) * cn
    _store_step(c_out, h_out, y_out, h_prev, y_prev, act, idx, idx // H, m, cn,
                _act(zo, REC) * _act(cn, ACT), cv, MASKED, PREV)


@triton.jit
def _lstm_cell_grads(zi, zf, zg, zo, cv, cnv, dh, dc, p_i, p_f, p_o, consts, PEEP: tl.constexpr,
                     CLIP: tl.constexpr, ACT: tl.constexpr, REC: tl.constexpr):
    """One LSTM step's backward from its gate pre-activations (before peepholes), ``c`` in and
    out, and the gradients ``dh`` and ``dc`` reaching its outputs: the pre-activations'
    gradients and the one reaching its input ``c`` (``dzi, dzf, dzg, dzo, dc_prev``)."""
    if PEEP:
        zi += p_i * cv
        zf += p_f * cv
        zo += p_o * cnv
    i, f, g, o = _act(zi, REC), _act(zf, REC), _act(zg, ACT), _act(zo, REC)
    tc = _act(cnv, ACT)
    dzo = dh * tc * _dact(o, REC)
    dc += dh * o * _dact(tc, ACT)
    if PEEP:
        dc += dzo * p_o
    if CLIP:
        clip = tl.load(consts)
        pre = f * cv + i * g
        dc = tl.where((pre >= -clip) & (pre <= clip), dc, 0.0)
    dzi = dc * g * _dact(i, REC)
    dzf = dc * cv * _dact(f, REC)
    dzg = dc * i * _dact(g, ACT)
    dcp = dc * f
    if PEEP:
        dcp += dzi * p_i + dzf * p_f
    return dzi, dzf, dzg, dzo, dcp


@triton.jit
def lstm_backward(z, c, cn, peep, dh, dcn, dz, dc, dpeep, act, dh_pass, extra, dy, carry, N, H,
                  consts, OI: tl.constexpr, OF: tl.constexpr, OG: tl.constexpr,
                  OO: tl.constexpr, PEEP: tl.constexpr, CLIP: tl.constexpr, ACT: tl.constexpr,
                  REC: tl.constexpr, MASKED: tl.constexpr, EXTRA: tl.constexpr,
                  PREV: tl.constexpr, BLOCK: tl.constexpr):
    """Gradients of ``lstm_forward``: ``dz [B, 4H]``, ``dc [B, H]`` and, with peepholes, the
    per-row terms ``dpeep [3, B, H]``, added to what it holds (summed over rows by the
    caller). ``dc`` may be ``dcn``: each element is read before it is written. ``MASKED``:
    ``dh`` and ``dcn`` are the held state's gradients (the output's folded into ``dh`` where
    the row ran); a row that did not run passes them on, ``dc`` and ``dh_pass`` (``+ extra``:
    the previous step's output gradient), and its ``dz`` is 0. ``PREV``: Keras's held outputs
    (``dy``, ``carry``: see ``_runs``)."""
    idx, m, col, zrow, cv, zi, zf, zg, zo = _lstm_in(z, c, N, H, OI, OF, OG, OO, BLOCK)
    cnv = tl.load(cn + idx, mask=m, other=0.0)
    if PEEP:
        p_i = tl.load(peep + col, mask=m, other=0.0)
        p_f = tl.load(peep + H + col, mask=m, other=0.0)
        p_o = tl.load(peep + 2 * H + col, mask=m, other=0.0)
    else:
        p_i, p_f, p_o = cv, cv, cv  # unread
    dhv = tl.load(dh + idx, mask=m, other=0.0)
    dct = tl.load(dcn + idx, mask=m, other=0.0)
    keep, dh_held, dc_held, dhv, dct = _runs(act, idx // H, m, dhv, dct, dy, carry, idx, MASKED,
                                             PREV)
    dzi, dzf, dzg, dzo, dcp = _lstm_cell_grads(zi, zf, zg, zo, cv, cnv, dhv, dct, p_i, p_f, p_o,
                                               consts, PEEP, CLIP, ACT, REC)
    if PEEP:
        _add(dpeep, idx, dzi * cv, m)
        _add(dpeep, N + idx, dzf * cv, m)
        _add(dpeep, 2 * N + idx, dzo * cnv, m)
    tl.store(dz + zrow + OI * H, dzi, mask=m)
    tl.store(dz + zrow + OF * H, dzf, mask=m)
    tl.store(dz + zrow + OG * H, dzg, mask=m)
    tl.store(dz + zrow + OO * H, dzo, mask=m)
    _store_back(dc, dh_pass, extra, idx, m, dcp, keep, dh_held, dc_held, MASKED, EXTRA)


@triton.jit
def _dot(a, b, F64: tl.constexpr):
    """``a b``; float32 in full precision (no TF32), as the reference loop's products."""
    if F64:
        out = tl.dot(a, b)
    else:
        out = tl.dot(a, b, input_precision="ieee")
    return out


@triton.jit
def _row_block(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """A fused step's block of ``BLOCK_B`` rows (grid axis 0) and ``BLOCK_H`` units (axis 1):
    rows, units, a chunk's offsets, their masks, and the offsets of ``[rows, units]`` in a
    ``[B, H]`` and a ``[B, 4H]`` slab."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rm, cm = rows < B, cols < H
    return (rows, cols, tl.arange(0, BLOCK_K), rm, cm, rm[:, None] & cm[None, :],
            rows[:, None] * H + cols[None, :], rows[:, None] * (4 * H) + cols[None, :])


@triton.jit
def _k_chunk(S, t, B, H, G, rows, rm, cols, cm, k):
    """Chunk ``k`` (unit offsets) of a fused step's recurrent product: the ``[rows, k]`` tile of
    step ``t`` of ``S [T, B, H]``, and the offsets and mask of the ``[k, cols]`` block of
    ``U [H, G*H]``'s first gate (add ``g * H`` for gate ``g``)."""
    km = k < H
    tile = tl.load(S + t * B * H + rows[:, None] * H + k[None, :],
                   mask=rm[:, None] & km[None, :], other=0.0)
    return tile, k[:, None] * (G * H) + cols[None, :], km[:, None] & cm[None, :]


@triton.jit
def _peephole_rows(peep, cols, cm, H):
    """The peepholes ``peep [3, H]`` as rows to broadcast: p_i, p_f, p_o."""
    return (tl.load(peep + cols, mask=cm, other=0.0)[None, :],
            tl.load(peep + H + cols, mask=cm, other=0.0)[None, :],
            tl.load(peep + 2 * H + cols, mask=cm, other=0.0)[None, :])


@triton.jit
def _load_gates(slab, zat, m2, H, OI: tl.constexpr, OF: tl.constexpr, OG: tl.constexpr,
                OO: tl.constexpr):
    """The four gate blocks of a ``[B, 4H]`` slab at this block's rows: i, f, g, o."""
    return (tl.load(slab + zat + OI * H, mask=m2, other=0.0),
            tl.load(slab + zat + OF * H, mask=m2, other=0.0),
            tl.load(slab + zat + OG * H, mask=m2, other=0.0),
            tl.load(slab + zat + OO * H, mask=m2, other=0.0))


@triton.jit
def _store_gates(slab, zat, m2, H, zi, zf, zg, zo, OI: tl.constexpr, OF: tl.constexpr,
                 OG: tl.constexpr, OO: tl.constexpr):
    """Store the four gate blocks i, f, g, o of a ``[B, 4H]`` slab at this block's rows."""
    tl.store(slab + zat + OI * H, zi, mask=m2)
    tl.store(slab + zat + OF * H, zf, mask=m2)
    tl.store(slab + zat + OG * H, zg, mask=m2)
    tl.store(slab + zat + OO * H, zo, mask=m2)


@triton.jit
def _step_output(Y, act, t, B, H, rows, rm, at, m2, hn, PREV: tl.constexpr):
    """A fused step's output ``Y[t]`` under a mask (``act [T, B]``, 0 where a row does not run):
    the new ``h`` where a row runs, else 0, or (``PREV``) the previous output ``Y[t - 1]``.
    Returns where the block's rows run (``[BLOCK_B, 1]``)."""
    keep = (tl.load(act + t * B + rows, mask=rm, other=0.0) != 0.0)[:, None]
    y = tl.where(keep, hn, 0.0)
    if PREV:
        if t > 0:
            y = tl.where(keep, hn, tl.load(Y + (t - 1) * B * H + at, mask=m2, other=0.0))
    tl.store(Y + t * B * H + at, y, mask=m2)
    return keep


@triton.jit(do_not_specialize=["t"])
def lstm_step_forward(xw, U, C, Hs, Z, Y, peep, act, consts, t, B, H,
                      OI: tl.constexpr, OF: tl.constexpr, OG: tl.constexpr, OO: tl.constexpr,
                      PEEP: tl.constexpr, CLIP: tl.constexpr, ACT: tl.constexpr,
                      REC: tl.constexpr, MASKED: tl.constexpr, PREV: tl.constexpr,
                      F64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """Step ``t`` of an LSTM's forward (no projection), its recurrent product included: where
    the step-by-step loop has a product and ``lstm_forward``, one kernel, a program a block of
    rows and units. From ``xw [T, B, 4H]`` (x W + b), ``U [H, 4H]`` and the previous state
    ``C[t]``, ``Hs[t]`` (of ``[T + 1, B, H]``; the previous ``h`` read in chunks of
    ``BLOCK_K`` units, every unit, the block's or not), it writes the pre-activations
    ``Z[t]`` (of ``[T, B, 4H]``) and the new state ``C[t + 1]``, ``Hs[t + 1]``; with
    ``MASKED`` (``act [T, B]``, 0 where a row does not run: it keeps its state), the output
    ``Y[t]``, 0 or (``PREV``) the previous output ``Y[t - 1]`` where a row does not run."""
    rows, cols, ks, rm, cm, m2, at, zat = _row_block(B, H, BLOCK_B, BLOCK_H, BLOCK_K)
    h = tl.load(Hs + t * B * H + at, mask=m2, other=0.0)
    c = tl.load(C + t * B * H + at, mask=m2, other=0.0)
    base = t * B * 4 * H
    zi, zf, zg, zo = _load_gates(xw + base, zat, m2, H, OI, OF, OG, OO)
    for k0 in range(0, H, BLOCK_K):
        hk, uat, um = _k_chunk(Hs, t, B, H, 4, rows, rm, cols, cm, k0 + ks)
        zi += _dot(hk, tl.load(U + uat + OI * H, mask=um, other=0.0), F64)
        zf += _dot(hk, tl.load(U + uat + OF * H, mask=um, other=0.0), F64)
        zg += _dot(hk, tl.load(U + uat + OG * H, mask=um, other=0.0), F64)
        zo += _dot(hk, tl.load(U + uat + OO * H, mask=um, other=0.0), F64)
    _store_gates(Z + base, zat, m2, H, zi, zf, zg, zo, OI, OF, OG, OO)
    if PEEP:
        p_i, p_f, p_o = _peephole_rows(peep, cols, cm, H)
        zi += p_i * c
        zf += p_f * c
    cn = _act(zf, REC) * c + _act(zi, REC) * _act(zg, ACT)
    if CLIP:
        clip = tl.load(consts)
        cn = tl.minimum(tl.maximum(cn, -clip), clip)
    if PEEP:
        zo += p_o * cn
    hn = _act(zo, REC) * _act(cn, ACT)
    if MASKED:
        keep = _step_output(Y, act, t, B, H, rows, rm, at, m2, hn, PREV)
        cn = tl.where(keep, cn, c)
        hn = tl.where(keep, hn, h)
    tl.store(C + (t + 1) * B * H + at, cn, mask=m2)
    tl.store(Hs + (t + 1) * B * H + at, hn, mask=m2)
