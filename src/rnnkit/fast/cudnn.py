"""The ``cudnn`` path: torch's own fused RNN ops (``torch.lstm``, ``torch.gru``,
``torch.rnn_tanh``, ``torch.rnn_relu``; cuDNN on a CUDA device) for the cells whose math they
have.

torch's cells are cuDNN's: an LSTM with sigmoid gates and tanh (optionally projected), a GRU
with the reset applied after the recurrent product (Keras ``reset_after=True``; TF1's
``GRUCell`` resets before it and is not one of them), a vanilla RNN with tanh or relu. Their
weights are ``Canonical``'s transposed, gate blocks in torch's order (LSTM i, f, g, o, as
Keras; GRU r, z, n where ``Canonical`` has z, r, c), so autograd carries the gradients back to
the cell's variables through the transposes. A variable-length batch has the same TF1
semantics as on the other paths: outputs past a length are zero, the final state is the one at
each sequence's length, and a sequence of length 0 keeps its initial state; an LSTM's batch is
packed (``torch.nn.utils.rnn``), a GRU's or vanilla RNN's runs padded (``_padded``).

cuDNN refuses some configurations at run time (``CUDNN_STATUS_NOT_SUPPORTED`` and the like): such
an error in the forward call becomes ``CuDNNError``, which the dispatch answers as it does a
oneDNN error (the reference loop under ``fast="auto"``). Other errors, out-of-memory included,
propagate, as do errors in the backward pass (the forward has then already run).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.activations import name_of
from rnnkit.cells.base import LSTMStateTuple
from rnnkit.cells.equations import Canonical, inverse_order, reorder_blocks
from rnnkit.fast.autograd import blocks, whole
from rnnkit.fast.library import FastPathError

DEVICE = "cuda"  # where the dispatch takes this path (tests run it on "cpu", torch's own op)
DTYPES = ("float32", "float64")
_TORCH_GRU_ORDER = [1, 0, 2]  # torch's r, z, n from Canonical's z, r, c


class CuDNNError(FastPathError):
    """torch's fused RNN op failed in cuDNN."""


def _call(op, *args):
    """``op(*args)``, a cuDNN failure raised as ``CuDNNError``."""
    try:
        return op(*args)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        if "cudnn" not in str(err).lower():
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CuDNNError(f"torch.{op.__name__} failed in cuDNN: {first}") from err


def unmet(p: Canonical) -> list[str]:
    """What torch's fused RNN ops lack for ``p``'s math (empty when they have it)."""
    act, rec = name_of(p.activation), p.recurrent_activation and name_of(p.recurrent_activation)
    if p.kind == "layer_norm_lstm":
        return ["layer normalization has no cuDNN cell"]
    if p.kind == "rnn":
        return [] if act in ("tanh", "relu") else [f"activation is {act} (cuDNN's RNN has tanh "
                                                   "and relu)"]
    out = []
    if act != "tanh" or rec != "sigmoid":
        out.append(f"activations are {act}/{rec} (cuDNN's {p.kind.upper()} has tanh/sigmoid)")
    if p.kind == "gru" and not p.reset_after:
        out.append("the GRU resets before the recurrent product (TF1 GRUCell); cuDNN's resets "
                   "after it (reset_after=True)")
    if p.peepholes is not None:
        out.append("peepholes (cuDNN's LSTM has none)")
    if p.cell_clip is not None or p.proj_clip is not None:
        out.append("cell_clip/proj_clip set (cuDNN's LSTM does not clip)")
    return out


def _torch_order(p: Canonical) -> tuple[int, ...] | None:
    """Where each of torch's gate blocks sits among ``p``'s stored ones (None: the same place):
    an LSTM's are Keras's (a TF1 kernel's are not: ``gate_order``), a GRU's r, z, n are
    ``Canonical``'s blocks 1, 0, 2."""
    if p.kind == "gru":
        return _TORCH_GRU_ORDER
    if p.gate_order is not None and tuple(p.gate_order) != tuple(range(len(p.gate_order))):
        return tuple(p.gate_order)
    return None


def _gather(src: torch.Tensor, order: tuple[int, ...] | None, dim: int,
            out: torch.Tensor) -> torch.Tensor:
    """``src``'s equal blocks along ``dim`` in ``order`` (block k of ``out`` is block
    ``order[k]`` of ``src``), written into ``out``: one copy either way."""
    return out.copy_(src) if order is None else reorder_blocks(src, order, dim, out)


class _TorchWeights(torch.autograd.Function):
    """``Canonical``'s weights as torch's flat weight list for one layer (``w_ih, w_hh, b_ih,
    b_hh``, then ``w_hr``), every one a view of one buffer in torch's order: cuDNN reads that
    buffer in place where its layout is cuDNN's own; loose weights it would copy into a buffer
    of its own each call, after querying cuDNN for each one's place (0.45 ms of CPU a call,
    measured on an H100), and a transposed view it refuses.

    One autograd node each way: the forward writes each matrix transposed and its gate blocks
    in torch's order with one copy; the backward writes each gradient back in the cell's layout
    with one copy, a TF1 kernel's (``W`` and ``U`` its row blocks, given whole with ``U``
    None) into one buffer. As differentiable torch ops (concatenations, transposes, reshapes,
    a flat concatenation, its split) the same took about 25 autograd nodes a call."""

    @staticmethod
    def forward(ctx, order, rows, W, U, b, b_h, P):
        joint = U is None
        W, U = blocks(W, U, rows)
        gh = U.shape[1]
        shapes = [(gh, W.shape[0]), (gh, U.shape[0]), (gh,), (gh,)]
        if P is not None:
            shapes.append((P.shape[1], P.shape[0]))
        flat = W.new_empty(sum(math.prod(s) for s in shapes))
        views = [v.view(s) for v, s in
                 zip(flat.split([math.prod(s) for s in shapes]), shapes, strict=True)]
        _gather(W.t(), order, 0, views[0])
        _gather(U.t(), order, 0, views[1])
        for bias, view in ((b, views[2]), (b_h, views[3])):
            if bias is None:
                view.zero_()
            else:
                _gather(bias, order, 0, view)
        if P is not None:
            views[4].copy_(P.t())
        ctx.order, ctx.rows, ctx.joint = order, rows, joint
        ctx.mark_non_differentiable(*(views[k] for k in (2, 3) if (b, b_h)[k - 2] is None))
        return tuple(views)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_ih, g_hh, g_b, g_bh, g_hr=None):
        order = ctx.order
        back = None if order is None else inverse_order(order)
        need = ctx.needs_input_grad  # (order, rows, W, U, b, b_h, P)

        # (autograd materializes every gradient: none of these is None)
        def cell_layout(g, out=None):  # [gates*H, n] in torch's order -> [n, gates*H], cell's
            if back is None and out is None:
                return g.t()
            if out is None:
                out = g.new_empty(g.shape[::-1])
            return _gather(g.t(), back, 1, out)

        gW = gU = gb = gbh = gP = None
        if ctx.joint:
            if need[2]:
                gW = g_ih.new_empty(ctx.rows + g_hh.shape[1], g_ih.shape[0])
                cell_layout(g_ih, gW[:ctx.rows])
                cell_layout(g_hh, gW[ctx.rows:])
        else:
            gW = cell_layout(g_ih) if need[2] else None
            gU = cell_layout(g_hh) if need[3] else None
        if need[4]:
            gb = g_b if back is None else _gather(g_b, back, 0, torch.empty_like(g_b))
        if need[5]:
            gbh = g_bh if back is None else _gather(g_bh, back, 0, torch.empty_like(g_bh))
        if need[6]:
            gP = g_hr.t()
        return None, None, gW, gU, gb, gbh, gP


def _weights(p: Canonical) -> list[torch.Tensor]:
    """torch's flat weight list for one layer: ``w_ih, w_hh, b_ih, b_hh`` (then ``w_hr``), views
    of one buffer (``_TorchWeights``)."""
    return list(_TorchWeights.apply(_torch_order(p), p.W.shape[0], *whole(p.W, p.U), p.b,
                                    p.b_h, p.P))


def _padded(op, x: torch.Tensor, h0: torch.Tensor, weights, lengths: torch.Tensor, train: bool,
            every_step: bool = False):
    """A GRU's or vanilla RNN's variable-length batch, run padded up to its longest sequence:
    its state is its output and a step never reads later ones, so the outputs past each length
    set to zero and the final state read from the output at each length (``h0`` at length 0)
    give packing's numbers and gradients without its sorts and gathers (on an H100 a packed
    batch of B32 T100 H256 took twice the padded one). ``every_step``: up to the last step of
    ``x`` instead, without reading the longest length on the host (a CUDA graph's capture).
    Returns ``(y, final_h)``."""
    steps, batch = x.shape[:2]
    lengths = lengths.to(x.device)
    longest = steps if every_step else int(lengths.max())
    y, _ = _call(op, x[:longest], h0[None].contiguous(), weights, True, 1, 0.0, train, False,
                 False)
    valid = torch.arange(longest, device=x.device)[:, None] < lengths[None, :]
    last = y.gather(0, (lengths - 1).clamp(min=0).view(1, -1, 1).expand(1, batch, y.shape[-1]))
    final = torch.where((lengths > 0)[:, None], last[0], h0)
    y = torch.where(valid[..., None], y, 0.0)
    if longest < steps:
        y = torch.cat([y, y.new_zeros(steps - longest, batch, y.shape[-1])])
    return y, final


def run_cudnn(p: Canonical, x: torch.Tensor, state, lengths: torch.Tensor | None = None,
              every_step: bool = False):
    """Run ``p`` over time-major ``x`` ``[T, B, depth]`` from ``state`` on torch's fused op;
    the caller (``rnnkit.fast.dispatch``) has checked eligibility.

    Args:
        p: the cell's ``Canonical`` (``unmet(p)`` empty).
        x: inputs ``[T, B, depth]``.
        state: ``LSTMStateTuple(c, h)`` for LSTMs, else ``[B, H]``.
        lengths: optional ``[B]`` lengths in ``[0, T]`` (TF1 semantics past them).
        every_step: a GRU's or vanilla RNN's variable-length batch runs every step of ``x``
            rather than up to its longest length, which is then not read on the host (inside a
            CUDA graph's capture); the same numbers.

    Returns:
        ``(outputs [T, B, out], final_state)``, the state in the cell's structure.
    """
    lstm = p.kind == "lstm"
    op = {"lstm": torch.lstm, "gru": torch.gru}.get(p.kind)
    if op is None:
        op = torch.rnn_relu if name_of(p.activation) == "relu" else torch.rnn_tanh
    weights = _weights(p)
    x = x.contiguous()
    h0, c0 = (state.h, state.c) if lstm else (state, None)
    train = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *weights))
    steps, batch = x.shape[:2]
    with warnings.catch_warnings():
        # the weights are views of the cell's variables, not one flat buffer (CUDA); torch's
        # CPU op (tests) notes that its oneDNN has no projection
        warnings.filterwarnings("ignore", message=".*(contiguous chunk of memory|not supported "
                                "with oneDNN)")
        if lengths is None:
            hx = (h0[None].contiguous(), c0[None].contiguous()) if lstm else h0[None].contiguous()
            y, *final = _call(op, x, hx, weights, True, 1, 0.0, train, False, False)
            hT, cT = final[0][0], (final[1][0] if lstm else None)
        elif not lstm:
            (y, hT), cT = _padded(op, x, h0, weights, lengths, train, every_step), None
        else:
            live = torch.nonzero(lengths > 0).flatten().to(x.device)
            packed = pack_padded_sequence(x.index_select(1, live), lengths[lengths > 0].cpu(),
                                          enforce_sorted=False)
            order = packed.sorted_indices
            h_live = h0.index_select(0, live).index_select(0, order)[None]
            hx = (h_live, c0.index_select(0, live).index_select(0, order)[None]) if lstm else h_live
            data, *final = _call(op, packed.data, packed.batch_sizes, hx, weights, True, 1, 0.0,
                                 train, False)
            y_live, _ = pad_packed_sequence(packed._replace(data=data), total_length=steps)
            y = y_live.new_zeros(steps, batch, y_live.shape[-1]).index_copy(1, live, y_live)
            back = packed.unsorted_indices
            hT = h0.index_copy(0, live, final[0][0].index_select(0, back))
            cT = c0.index_copy(0, live, final[1][0].index_select(0, back)) if lstm else None
    return y, (LSTMStateTuple(cT, hT) if lstm else hT)
