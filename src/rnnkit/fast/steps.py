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
GRU's forward step, its two products inside its two kernels. The backward keeps its products
apart: an LSTM's backward step with its product inside (its product runs over ``4H``, in few
programs) measured no faster at 64 units and 2.3x slower at 256 on an H100 (session 12).

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
import types
import warnings
from dataclasses import replace

import torch

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
# (``gru_gates_step``, ``gru_blend_step``); 0: off. STEP_K: the chunks of the products (32 and
# 64 measured alike). Measured f+b on an H100 (B32 T100, torch.nn / rnnkit): a clipped LSTM
# 0.62x -> 0.74x at H64, 1.84x -> 1.96x at H256, alike at H512; TF1's GRU 0.30x -> 0.41x at
# H64, 0.95x -> 1.22x at H256. At B1 the forward step was slower (a block of 16 rows holds
# one), hence FUSED_MIN_BATCH.
FUSED_STEP_UNITS = 256
FUSED_MIN_BATCH = 16
STEP_ROWS, STEP_UNITS, STEP_K = 16, 16, 32
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
        _kernels()
    except Exception as err:  # ImportError, or a Triton that fails to initialize
        return f"Triton is unavailable ({type(err).__name__}: {err})"
    return None


@functools.cache
def _kernels() -> types.SimpleNamespace:
    """Every loop kernel by name (one object for the process: tests swap kernels on it)."""
    from rnnkit.fast import _triton_gru, _triton_kernels, _triton_norm
    return types.SimpleNamespace(**{name: getattr(module, name)
                                    for module in (_triton_kernels, _triton_gru, _triton_norm)
                                    for name in module.__all__})


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


def _fused_steps(p: eq.Canonical, Pw, B: int, H: int) -> bool:
    """Whether a plain LSTM's or a reset-before GRU's forward steps run their products in their
    kernels (``FUSED_STEP_UNITS``, ``FUSED_MIN_BATCH``)."""
    return Pw is None and p.kind in ("lstm", "gru") and H <= FUSED_STEP_UNITS and \
        B >= FUSED_MIN_BATCH


def _step_grid(B: int, H: int) -> tuple[tuple[int, int], dict]:
    """The fused steps' grid (blocks of ``STEP_ROWS`` rows by ``STEP_UNITS`` units) and
    compile options."""
    grid = (-(-B // STEP_ROWS), -(-H // STEP_UNITS))
    return grid, dict(BLOCK_B=STEP_ROWS, BLOCK_H=STEP_UNITS, BLOCK_K=STEP_K, num_warps=4,
                      **LAUNCH)


def _norm_warps(block: int, dtype: torch.dtype) -> int:
    """Warps for a layer-norm kernel whose program holds rows of ``block`` values: one thread's
    share of its gates must fit in registers. At 4 warps ptxas spilled from 1024 float32 units
    (2048: 800 bytes a thread, 4096: 18 KB); with this rule, none up to 2048 float32 units,
    540 bytes at 4096 (tests/test_steps_compile.py)."""
    size = block * (8 if dtype == torch.float64 else 4)
    return min(16, max(4, size // 512))


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


def _weight_grad(states, dZ):
    """U's gradient over every step: ``states [T, B, H]`` (each step's input state) against
    ``dZ [T, B, G]``, one product."""
    T, B, H = states.shape
    return torch.mm(states.reshape(T * B, H).t(), dZ.reshape(T * B, -1))


def serves(p: eq.Canonical) -> bool:
    """Whether ``sequence`` runs a Triton loop for a cell of ``p``'s math in this process (on a
    CUDA device, in float32 or float64), rather than leaving it to the ops."""
    return ENABLED and load_error() is None and not _broken and p.h_mask is None and \
        p.x_mask is None and p.state_mask is None and p.g_mask is None and \
        p.kind in ("lstm", "layer_norm_lstm", "gru") and \
        not (p.kind == "gru" and p.reset_after) and \
        not (p.kind == "layer_norm_lstm" and p.U.shape[0] > MAX_NORM_UNITS) and \
        name_of(p.activation) in ACTIVATIONS and name_of(p.recurrent_activation) in ACTIVATIONS


def describe(p: eq.Canonical, batch: int, own_step: bool = False) -> str:
    """What the graph path captures for a cell of ``p``'s math (cuDNN lacks it) at ``batch``
    rows: the Triton loop (``sequence``), its forward steps' products inside their kernels where
    they are, or the loop as ops (``own_step``: the cell replaces the canonical step)."""
    if own_step or not serves(p):
        return "the loop as ops"
    if _fused_steps(p, p.P, batch, p.U.shape[0]):
        return "the Triton loop, its forward steps' products inside their kernels"
    return "the Triton loop"


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
    if h0.dim() != 2 or not _placed(x, h0):
        return None
    from rnnkit.fast import _gru_loop, _lstm_loop  # (they import this module's helpers)

    xw = cell.prepare_inputs(x, p).contiguous()
    runs = mask.to(x.dtype).contiguous() if mask is not None else None
    held = mask is not None and masked_output == "previous"
    try:
        if p.kind == "gru":
            y, hT = _gru_loop.GRULoop.apply(xw, h0.contiguous(), p.U, runs, held, p)
            return y, hT
        if p.kind == "lstm":
            extra = torch.stack(p.peepholes) if p.peepholes is not None else None
        else:
            extra = torch.stack([t for pair in p.norms[0] for t in pair])
        y, cT, hT = _lstm_loop.LSTMLoop.apply(xw, state.c.contiguous(), h0.contiguous(), p.U,
                                              extra, p.P if p.kind == "lstm" else None, runs,
                                              held, p)
    except Exception as err:  # a kernel that does not compile or launch here
        _turn_off(err)
        return None
    return y, LSTMStateTuple(cT, hT)
