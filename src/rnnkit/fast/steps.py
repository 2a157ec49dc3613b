"""The graph path's loops in Triton: one autograd node a sequence, a step's elementwise work in
one kernel each way.

On a GPU the graph path (``rnnkit.fast.graphs``) replays the loop it captures from a CUDA graph,
so its cost is the number of kernels a step takes, each a few microseconds even when replayed:
as ops, about 18 top-level ops and autograd nodes a step (forward and backward) for an LSTM
with cell clipping, 28 with peepholes and projection, 22 for TF1's GRU, 34 for layer norm.
``sequence`` runs the whole loop as one autograd node instead:

- an LSTM (cell clip, peepholes, TF1's gate order, a projection): per step its recurrent
  product and one kernel forward, one kernel and the product back to the previous state
  backward (a projection: one more product each way);
- a layer-norm LSTM (TF's LayerNormBasicLSTMCell, up to ``MAX_NORM_UNITS`` units: one program
  per row normalizes its four gates and the cell): the same;
- a reset-before GRU (TF1's ``GRUCell``): two products and two kernels each way, the input's
  gradient written into one buffer.

A plain LSTM's forward step (no projection, not layer norm; from ``FUSED_MIN_BATCH`` rows and
up to ``FUSED_STEP_UNITS`` units) runs its recurrent product inside its kernel: one launch a
step where cuBLAS takes two (it splits K at these sizes) and the cell a third; a reset-before
GRU's forward step, its two products inside its two kernels. An LSTM's backward can do the same
(``FUSED_BACKWARD_UNITS``), off: on an H100 it was no faster at 64 units and 2.3x slower at 256
(its product runs over ``4H``, in few programs).

``U``'s (and a projection's) gradient is one product over every step at the end, as cuDNN
does, where per-step autograd makes a product and a sum for it at each step. Masks are in the
kernels: a row past its length (or at any masked step) keeps its state and outputs 0 (TF1's
``sequence_length``) or its previous output (Keras's), and its gradients pass through (an
LSTM's projected state is held by ops, a few a step).

Served: the fused C kernels' activations (tanh, sigmoid, relu, linear, both hard_sigmoids,
softsign), float32 or float64, no recurrent dropout, tensors on a CUDA device (or on the CPU
under Triton's interpreter, ``TRITON_INTERPRET=1``, which the tests use); ``sequence`` returns
None for anything else, and the caller runs the equations' loop. The numbers are the
equations' to rounding (the same formulas; sums in another order), tested against them.

Where Triton is missing the loops stay off (``load_error``). A kernel that fails to compile or
launch turns them off for the process with one warning: in the forward, the equations' loop
runs instead; in the backward, it is recomputed from the saved tensors and differentiated by
autograd. Measured on an H100 (``benchmarks/ab_steps.py``, ``benchmarks/profile_gpu.py``,
``benchmarks/RESULTS.md``): 2-4x faster than the loop as ops; a fused forward step 3.5 us
against 6.8 at B32 H64, 6.6 against 7.8 at H256, 10.9 against 9.7 at H512.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import replace

import torch
from torch.autograd.function import once_differentiable

from rnnkit.activations import name_of
from rnnkit.cells import equations as eq
from rnnkit.cells.base import LSTMStateTuple
from rnnkit.fast.compiled import ACTIVATIONS
from rnnkit.unroll import scan

ENABLED = True  # False: ``sequence`` leaves every loop to the ops (benchmarks/ab_steps.py)
# Up to this many units, and from FUSED_MIN_BATCH rows, a plain LSTM's forward step (no
# projection, not layer norm) runs its recurrent product inside its kernel (``lstm_step_forward``:
# one launch a step, a program a block of STEP_ROWS rows and STEP_UNITS units) instead of a
# product (two kernels: cuBLAS splits K) and a kernel, and a reset-before GRU's its two
# (``gru_gates_step``, ``gru_blend_step``); FUSED_BACKWARD_UNITS, the same for an LSTM's backward
# (``lstm_step_backward``); 0: off. STEP_K, STEP_K_BACKWARD: the chunks of the products (32 and
# 64 measured alike forward, 32 and 128 backward). Measured f+b on an H100 (B32 T100, clipped
# LSTM, torch.nn / rnnkit): 0.62x -> 0.74x at H64, 1.84x -> 1.96x at H256, alike at H512; at
# B1 the forward step was slower (a block of 16 rows holds one), hence FUSED_MIN_BATCH.
FUSED_STEP_UNITS = 256
FUSED_BACKWARD_UNITS = 0
FUSED_MIN_BATCH = 16
STEP_ROWS, STEP_UNITS, STEP_K, STEP_K_BACKWARD = 16, 16, 32, 32
BLOCK = 512  # (row, unit) pairs a program handles
MAX_NORM_UNITS = 4096  # a layer-norm LSTM's row (four gates) in one program up to this
_DTYPES = (torch.float32, torch.float64)
# Every launch's compile options. Multiply-adds fused (one rounding, as torch's own CUDA
# kernels): Triton 3.9 does so by default with a warning, and 3.10 stops, so it is said here.
LAUNCH = {"enable_fp_fusion": True}
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


def _placed(*tensors: torch.Tensor) -> bool:
    """One dtype the kernels take, on one device where they run."""
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
    kernel[(max(1, -(-n // BLOCK)),)](*args, BLOCK=BLOCK, **meta, **LAUNCH)


def _turn_off(err: Exception) -> None:
    if not _broken:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        _broken.append(first)
        warnings.warn(f"rnnkit: the graph path's fused steps failed ({type(err).__name__}: "
                      f"{first}); its loops run as separate ops from now on", stacklevel=3)


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


def _order(p: eq.Canonical) -> tuple[int, ...]:
    return tuple(p.gate_order) if p.gate_order is not None else (0, 1, 2, 3)


def _block(H: int) -> int:
    return 1 << max(0, H - 1).bit_length()


def _fused_steps(p: eq.Canonical, Pw, B: int, H: int, backward: bool = False) -> bool:
    """Whether a loop's steps run their products in their kernels: a plain LSTM's
    (``FUSED_STEP_UNITS``; backward, ``FUSED_BACKWARD_UNITS``) or a reset-before GRU's forward
    (``FUSED_STEP_UNITS``)."""
    units = FUSED_BACKWARD_UNITS if backward else FUSED_STEP_UNITS
    kinds = ("lstm",) if backward else ("lstm", "gru")
    return Pw is None and p.kind in kinds and H <= units and B >= FUSED_MIN_BATCH


def _step_grid(B: int, H: int, backward: bool) -> tuple[tuple[int, int], dict]:
    """The fused steps' grid (blocks of ``STEP_ROWS`` rows by ``STEP_UNITS`` units) and
    compile options."""
    grid = (-(-B // STEP_ROWS), -(-H // STEP_UNITS))
    return grid, dict(BLOCK_B=STEP_ROWS, BLOCK_H=STEP_UNITS,
                      BLOCK_K=STEP_K_BACKWARD if backward else STEP_K, num_warps=4, **LAUNCH)


def _norm_warps(block: int, dtype: torch.dtype) -> int:
    """Warps for a layer-norm kernel whose program holds rows of ``block`` values: one thread's
    share of its gates must fit in registers. At 4 warps ptxas spilled from 1024 float32 units
    (2048: 800 bytes a thread, 4096: 18 KB); with this rule, none up to 2048 float32 units,
    540 bytes at 4096 (tests/test_steps_compile.py)."""
    size = block * (8 if dtype == torch.float64 else 4)
    return min(16, max(4, size // 512))


# -- whole loops: one autograd node a sequence -----------------------------------------------
# Per-step autograd costs a step's backward its products' gradient for U (a product and a sum a
# step) and the sums of gradients that meet at each step's state. A loop's own backward runs the
# steps' kernels and one product a step (two for a GRU), and makes U's gradient at the end, in
# one product over every step (as cuDNN does).


class _LSTMLoop(torch.autograd.Function):
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
        for t in range(0 if fused else T):  # (else each step ran above)
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

    def _step_launch(self, backward: bool) -> tuple[tuple[int, int], dict]:
        grid, options = _step_grid(self.B, self.H, backward)
        return grid, options | self.meta

    def step(self, t: int, xw, U, C, Hs, Z, Y, extra, mask, held: bool) -> None:
        """Step ``t`` of the forward, its product in its kernel (``lstm_step_forward``): the
        tensors the step-by-step loop writes, written the same way."""
        grid, options = self._step_launch(False)
        self.k.lstm_step_forward[grid](
            xw, U, C, Hs, Z, Y, extra if extra is not None else xw,
            mask if mask is not None else xw, self.consts, t, self.B, self.H,
            PEEP=extra is not None, MASKED=mask is not None, PREV=held,
            F64=xw.dtype == torch.float64, **options)

    def step_backward(self, t: int, Z, C, U, extra, mask, dym, dyh, dh, dc, carry, dZ,
                      dextra) -> None:
        """Step ``t`` of the backward (``T - 1`` down to ``-1``), its product in its kernel
        (``lstm_step_backward``): ``dh``, ``dc`` (the final state's gradients, the last
        output's folded into ``dh``) become the initial state's; ``dZ`` written, ``dextra``
        summed; ``dym`` the outputs' gradient where rows ran, ``dyh`` Keras's held outputs',
        ``carry`` zeros before the first launch."""
        grid, options = self._step_launch(True)
        self.k.lstm_step_backward[grid](
            Z, C, U, extra if extra is not None else Z, mask if mask is not None else Z,
            dym if dym is not None else Z, dyh if dyh is not None else Z, dh, dc,
            carry if carry is not None else dh, dZ, dextra if dextra is not None else Z,
            self.consts, t, Z.shape[0], self.B, self.H, PEEP=extra is not None,
            MASKED=mask is not None, PREV=dyh is not None, DY=dym is not None,
            F64=Z.dtype == torch.float64, **options)

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
    if _fused_steps(p, Pw, *C.shape[1:], backward=True):
        Uc = U.contiguous()
        for t in range(T - 1, -2, -1):
            launch.step_backward(t, Z, C, Uc, extra, mask, dy, dy_held if held else None, dh, dc,
                                 carry, dZ, dextra)
        dU = _weight_grad(Hs[:T], dZ) if ctx.needs_input_grad[3] else None
        return dZ, dc, dh, dU, (dextra.sum(1) if dextra is not None else None), None, None, \
            None, None
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


class _GRULoop(torch.autograd.Function):
    """A reset-before GRU's whole unroll from ``xw [T, B, 3H]`` (x W + b) and ``mask`` (as
    ``_LSTMLoop``'s): ``(y, h_T)``; per step, two products and two kernels each way."""

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
            grid, options = _step_grid(B, H, False)
            Uc = U.contiguous()
            for t in range(T):
                k.gru_gates_step[grid](xw, Uc, Hs, ZR, Zs, RH, t, B, H, REC=acts["REC"],
                                       F64=xw.dtype == torch.float64, **options)
                k.gru_blend_step[grid](xw, Uc, RH, CP, Hs, Zs, Y,
                                       mask if mask is not None else Hs, t, B, H,
                                       ACT=acts["ACT"], MASKED=mask is not None, PREV=held,
                                       F64=xw.dtype == torch.float64, **options)
        for t in range(0 if fused else T):  # (else each step ran above)
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


def _own(t):
    """A contiguous copy of ``t`` that a loop may write into."""
    return t.clone(memory_format=torch.contiguous_format)


def _fresh(g, like):
    """A contiguous copy of gradient ``g`` (zeros if None) shaped as one step's state."""
    out = like.new_empty(like.shape[-2:])
    return out.zero_() if g is None else out.copy_(g)


def _previous(Y, t, held: bool):
    """Step ``t``'s previous output for Keras's held outputs (zeros before the first step)."""
    if not held:
        return Y[t]  # unread
    return Y[t - 1] if t > 0 else Y.new_zeros(Y.shape[1:])


def _output_grads(held: bool, dy):
    """For Keras's held outputs, ``(True, dy contiguous, carry)`` (the gradient carried back to
    earlier outputs through the steps that held them, zeros to start); else ``(False, ...)``."""
    if not held or dy is None:
        return False, None, None
    dy = dy.contiguous()
    return True, dy, torch.zeros_like(dy[0])


def _masked_grad(dy, mask):
    """The outputs' gradient where each row ran (outputs past a length are zeros, constants)."""
    if dy is None or mask is None:
        return dy
    return (dy * mask[..., None]).contiguous()


def _last_grad(dy, dhT, like):
    """The last step's output gradient: the last output's plus the final state's."""
    out = _fresh(dhT, like)
    if dy is not None:
        out += dy[-1]
    return out


def _ops_loop(p, xw, c0, h0, U, extra, Pw=None, mask=None, held=False):
    """The loop as the equations' ops through ``rnnkit.unroll.scan`` (a failed kernel's
    backward recomputes it): ``(y, h_T)`` for a GRU, ``(y, c_T, h_T)`` for the LSTMs;
    ``extra``: peepholes ``[3, H]`` or the gains and shifts ``[10, H]``; ``Pw``: an LSTM's
    projection; ``mask [T, B]`` (1 where a row runs; elsewhere the state is held and the output
    is 0, or the previous output if ``held``)."""
    if p.kind == "gru":
        q = replace(p, U=U)

        def step(x, h):
            h = eq.gru(x, h, q)
            return h, h
        state = h0
    else:
        if p.kind == "lstm":
            q = replace(p, U=U, peepholes=None if extra is None else tuple(extra.unbind(0)),
                        P=Pw)
            cell_step = eq.lstm
        else:
            pairs = tuple(zip(extra[0::2].unbind(0), extra[1::2].unbind(0), strict=True))
            q, cell_step = replace(p, U=U, norms=(pairs, p.norms[1])), eq.layer_norm_lstm

        def step(x, s):
            c, h = cell_step(x, s.c, s.h, q)
            return h, LSTMStateTuple(c, h)
        state = LSTMStateTuple(c0, h0)
    y, final = scan(step, xw, state, mask != 0 if mask is not None else None,
                    "previous" if held else "zero")
    return (y, final) if p.kind == "gru" else (y, final.c, final.h)


def _loop_recomputed(ctx, Z, C, Hs, U, extra, Pw, mask, grads):
    """An LSTM loop's gradients by autograd through the ops, from its saved tensors (the inputs
    ``x W + b`` are ``Z - h U``)."""
    T = Z.shape[0]
    xw = Z - Hs[:T] @ U

    def ops(xw_, c_, h_, U_, e_, P_):
        return _ops_loop(ctx.p, xw_, c_, h_, U_, e_, P_, mask, ctx.held)

    return (*_recomputed(ops, [xw, C[0], Hs[0], U, extra, Pw], list(grads),
                         ctx.needs_input_grad[:6]), None, None, None)


def _weight_grad(states, dZ):
    """U's gradient over every step: ``states [T, B, H]`` (each step's input state) against
    ``dZ [T, B, G]``, one product."""
    T, B, H = states.shape
    return torch.mm(states.reshape(T * B, H).t(), dZ.reshape(T * B, -1))


def serves(p: eq.Canonical) -> bool:
    """Whether ``sequence`` runs a Triton loop for a cell of ``p``'s math in this process (on a
    CUDA device, in float32 or float64), rather than leaving it to the ops."""
    return ENABLED and load_error() is None and not _broken and p.h_mask is None and \
        p.kind in ("lstm", "layer_norm_lstm", "gru") and \
        not (p.kind == "gru" and p.reset_after) and \
        name_of(p.activation) in ACTIVATIONS and name_of(p.recurrent_activation) in ACTIVATIONS


def sequence(cell, x: torch.Tensor, state, mask: torch.Tensor | None = None,
             masked_output: str = "zero"):
    """``cell.unroll(x, state, mask, masked_output, fast=False)`` as one autograd node with the
    fused steps' kernels (``(outputs, final_state)``), or None where a loop does not serve it:
    a cell with a step of its own, what the steps do not serve. A mask (``[T, B]``, False where
    a step is padding) holds the state there, and the output is 0 (``"zero"``, TF1's
    ``sequence_length``) or the previous output (``"previous"``, Keras's)."""
    if not cell.uses_canonical_step() or state is None:
        return None
    p = cell.sequence_params()
    if not isinstance(p, eq.Canonical) or not serves(p):
        return None
    h0 = state.h if p.kind != "gru" else state
    if h0.dim() != 2 or not _placed(x, h0) or \
            (p.kind == "layer_norm_lstm" and h0.shape[-1] > MAX_NORM_UNITS):
        return None
    xw = cell.prepare_inputs(x, p).contiguous()
    runs = mask.to(x.dtype).contiguous() if mask is not None else None
    held = mask is not None and masked_output == "previous"
    try:
        if p.kind == "gru":
            y, hT = _GRULoop.apply(xw, h0.contiguous(), p.U, runs, held, p)
            return y, hT
        if p.kind == "lstm":
            extra = torch.stack(p.peepholes) if p.peepholes is not None else None
        else:
            extra = torch.stack([t for pair in p.norms[0] for t in pair])
        y, cT, hT = _LSTMLoop.apply(xw, state.c.contiguous(), h0.contiguous(), p.U, extra,
                                    p.P if p.kind == "lstm" else None, runs, held, p)
    except Exception as err:  # a kernel that does not compile or launch here
        _turn_off(err)
        return None
    return y, LSTMStateTuple(cT, hT)
