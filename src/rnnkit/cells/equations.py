"""The recurrent equations, one short function per variant, in the papers' letters.

Every cell (TF1 or Keras layout) reduces its weights to one canonical layout, ``Canonical``:
``W [depth, G*H]`` (inputs), ``U [H_out, G*H]`` (recurrent), ``b [G*H]`` (all biases that add
before the nonlinearity; TF1's run-time ``forget_bias`` is folded in here), gate blocks in
Keras order (but see ``gate_order`` below): SimpleRNN (h); GRU (z, r, c); LSTM (i, f, g, o).
The input projection ``x W + b`` is done for a whole sequence at once; the functions below
are the recurrent rest. Fast paths consume the same ``Canonical``.

An LSTM's blocks may also stay in the order its variables store them (``gate_order``: TF1's
i, j, f, o kernels are then plain views, with nothing copied per unroll); the equations take
their gates through ``lstm_gates``, the fused kernel reads the blocks where they are, and
``in_keras_order`` makes the Keras-order copy for consumers that need it (the cudnn path,
exporters; oneDNN's path gathers with its weight layout, cached per kernel version).

Keras recurrent dropout multiplies ``h`` by a mask before the recurrent matmul (``h_mask``):
one ``[B, H]`` mask for every gate (SimpleRNN), or ``[B, G, H]``, one per gate block (Keras
GRU/LSTM with ``recurrent_dropout``, its "implementation 1"); the GRU's ``z ⊙ h`` keeps the
undropped ``h``. ``masked_matmul`` is that product, also used for Keras input dropout
(``x_mask``, the same shapes over the input depth, applied in ``project``).

TF1's ``DropoutWrapper`` with state dropout drops the state itself: every step reads
``h ⊙ state_mask`` in place of ``h``, in its products and in a GRU's update alike (an LSTM's
``c`` is left alone, as TF's default filter does). ``state_mask`` is ``[B, H]`` for every step
(``variational_recurrent``) or ``[T, B, H]``, step ``t``'s at ``t``. The cell's step applies it
(``FusedCell.step``, ``FusedCell.loop`` one step's at a time); for an LSTM or a vanilla RNN it
equals ``h_mask``.

TF1's ``LayerNormBasicLSTMCell(dropout_keep_prob=...)`` drops the LSTM's candidate instead
(Semeniuta et al., 2016, recurrent dropout without memory loss): ``c' = σ(f) ⊙ c + σ(i) ⊙
(act(g) ⊙ g_mask)``, a new mask every step. Over a sequence ``g_mask`` is ``[T, B, H]`` (drawn
before the unroll, so every path reads the same masks; ``FusedCell.loop`` hands each step its
own), in a step ``[B, H]``. Where nothing drew it (one step, or a wrapper's steps),
``g_dropout`` draws a step's masks as its inputs are prepared (``FusedCell.prepare_inputs``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from rnnkit.activations import Activation


def reorder_blocks(t: torch.Tensor | None, order: list[int], dim: int = -1,
                   out: torch.Tensor | None = None) -> torch.Tensor | None:
    """``t`` with the ``len(order)`` equal blocks of dimension ``dim`` in ``order`` (block ``k``
    of the result is block ``order[k]`` of ``t``), written into ``out`` if given: one
    concatenation of views, whose backward is slices (an index with a list would copy the list
    to the device each call and scatter in its backward)."""
    if t is None:
        return None
    blocks = t.chunk(len(order), dim=dim)
    return torch.cat([blocks[k] for k in order], dim=dim, out=out)


def inverse_order(order) -> tuple[int, ...]:
    """The order that ``reorder_blocks`` undoes ``order`` with: ``reorder_blocks(reorder_blocks(t,
    order), inverse_order(order))`` is ``t``."""
    return tuple(order.index(k) for k in range(len(order)))


@dataclass(frozen=True)
class Canonical:
    """A cell's weights and options in the one layout the unroll and the fast paths use."""

    kind: str  # "rnn" | "gru" | "lstm" | "layer_norm_lstm"
    W: torch.Tensor
    U: torch.Tensor
    b: torch.Tensor | None
    activation: Activation
    recurrent_activation: Activation | None = None
    b_h: torch.Tensor | None = None  # GRU reset_after: recurrent bias, inside r * (h U + b_h)
    reset_after: bool = False
    peepholes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (p_i, p_f, p_o)
    cell_clip: float | None = None
    P: torch.Tensor | None = None  # LSTM projection [H, num_proj]
    proj_clip: float | None = None
    norms: tuple | None = None  # layer-norm LSTM: ((gamma, beta) for i, f, g, o, c), eps
    forget_bias: float = 0.0  # only for layer_norm_lstm, where it cannot be folded into b
    h_mask: torch.Tensor | None = None  # recurrent dropout: [B, H] or [B, G, H], see above
    gate_order: tuple[int, ...] | None = None  # LSTM: stored block of i, f, g, o; None: as is
    x_mask: torch.Tensor | None = None  # input dropout, applied by ``project``: as ``h_mask``
    state_mask: torch.Tensor | None = None  # state dropout: [B, H] or [T, B, H], see above
    g_mask: torch.Tensor | None = None  # LSTM candidate dropout: [T, B, H] or [B, H], see above
    # draws g_mask for inputs [..., B, depth] (shape, dtype, device -> mask), see above
    g_dropout: Callable[[tuple, torch.dtype, torch.device], torch.Tensor] | None = None

    @functools.cached_property
    def U_blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A reset-before GRU's ``U`` as its (z, r) and c blocks, sliced once per ``Canonical``:
        a loop whose steps share one (the reference loop, ``raw_rnn``) then has one slice to
        differentiate, not one a step (each scatters into a zeroed U-sized gradient)."""
        H = self.U.shape[1] // 3
        return self.U[:, :2 * H], self.U[:, 2 * H:]

    def lstm_gates(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """An LSTM's gates i, f, g, o: the blocks of ``v``'s last dimension, laid out as ``W``'s
        columns."""
        parts = v.chunk(4, dim=-1)
        return parts if self.gate_order is None else tuple(parts[k] for k in self.gate_order)

    def in_keras_order(self) -> Canonical:
        """This ``Canonical`` with ``W``, ``U`` and ``b`` in Keras gate order (itself if they
        are; else one differentiable gather per matrix)."""
        if self.gate_order is None:
            return self
        order = list(self.gate_order)
        return replace(self, W=reorder_blocks(self.W, order), U=reorder_blocks(self.U, order),
                       b=reorder_blocks(self.b, order), gate_order=None)

    def project(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x W + b`` over any leading dimensions; ``(x ⊙ mask) W + b`` with an input-dropout
        ``mask`` (``[B, depth]`` or per gate ``[B, G, depth]``, see ``masked_matmul``)."""
        if mask is not None:
            return masked_matmul(x, self.W, mask, self.b)
        y = x @ self.W
        return y if self.b is None else y + self.b


def masked_matmul(v: torch.Tensor, M: torch.Tensor, mask: torch.Tensor | None,
                  add: torch.Tensor | None = None) -> torch.Tensor:
    """``(v ⊙ mask) M + add``: ``mask`` None, ``[B, n]`` (one mask), or ``[B, G, n]`` (gate block
    ``g`` of ``M``'s columns sees ``v ⊙ mask[:, g]``); ``v`` is ``[..., B, n]``."""
    if mask is None:
        if add is not None and v.dim() == 2:
            return torch.addmm(add, v, M)
        out = v @ M
    elif mask.dim() == 2:
        out = (v * mask) @ M
    else:
        gates = mask.shape[1]
        out = torch.einsum("...gi,igj->...gj", v.unsqueeze(-2) * mask,
                           M.unflatten(1, (gates, -1))).flatten(-2)
    return out if add is None else out + add


def _gates(mask: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    """The part of a per-gate mask for gate blocks ``lo:hi`` (a shared mask is returned as is)."""
    return mask[:, lo:hi] if mask is not None and mask.dim() == 3 else mask


def simple_rnn(xw: torch.Tensor, h: torch.Tensor, p: Canonical) -> torch.Tensor:
    """h' = act(x W + b + h U)."""
    return p.activation(masked_matmul(h, p.U, p.h_mask, xw))


def gru(xw: torch.Tensor, h: torch.Tensor, p: Canonical) -> torch.Tensor:
    """z = σ(x W_z + h U_z + b_z), r = σ(x W_r + h U_r + b_r),
    c = act(x W_c + b_c + (r ⊙ h) U_c)            (reset before, TF1 GRUCell)
    c = act(x W_c + b_c + r ⊙ (h U_c + b_hc))      (reset after, cuDNN / Keras / torch)
    h' = z ⊙ h + (1 - z) ⊙ c.
    """
    H = h.shape[-1]
    sig = p.recurrent_activation
    # z and r as one block (one sum, one activation), h' as one lerp: c + z (h - c)
    # blocks by split, not slices: one node whose backward joins the parts' gradients
    xw_zr, xw_c = xw.split([2 * H, H], dim=-1)
    if p.reset_after:
        hu_zr, hu_c = masked_matmul(h, p.U, p.h_mask, p.b_h).split([2 * H, H], dim=-1)
        z, r = sig(xw_zr + hu_zr).split(H, dim=-1)
        c = p.activation(torch.addcmul(xw_c, r, hu_c))
    else:
        U_zr, U_c = p.U_blocks
        z, r = sig(masked_matmul(h, U_zr, _gates(p.h_mask, 0, 2), xw_zr)).split(H, dim=-1)
        c = p.activation(masked_matmul(r * h, U_c, _gates(p.h_mask, 2, 3), xw_c))
    return torch.lerp(c, h, z)


def _dropped(g: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return g if mask is None else g * mask


def lstm(xw: torch.Tensor, c: torch.Tensor, h: torch.Tensor, p: Canonical
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """i, f, g, o = x W + b + h U (peepholes add p_i ⊙ c, p_f ⊙ c to i, f and p_o ⊙ c' to o),
    c' = σ(f) ⊙ c + σ(i) ⊙ act(g), clipped to ±cell_clip,
    h' = σ(o) ⊙ act(c'), then projected h' P and clipped to ±proj_clip; act(g) ⊙ g_mask with a
    candidate dropout mask.
    """
    z = masked_matmul(h, p.U, p.h_mask, xw)
    i, f, g, o = p.lstm_gates(z)
    sig = p.recurrent_activation
    if p.peepholes is not None:
        p_i, p_f, p_o = p.peepholes
        i, f = torch.addcmul(i, p_i, c), torch.addcmul(f, p_f, c)
        i, f = sig(i), sig(f)
    else:  # one activation for the whole block (g's part unused): fewer, larger kernels
        i, f, _, o = p.lstm_gates(sig(z))
    c_new = torch.addcmul(f * c, i, _dropped(p.activation(g), p.g_mask))
    if p.cell_clip is not None:
        c_new = c_new.clamp(-p.cell_clip, p.cell_clip)
    if p.peepholes is not None:
        o = sig(torch.addcmul(o, p_o, c_new))
    h_new = o * p.activation(c_new)
    if p.P is not None:
        h_new = h_new @ p.P
        if p.proj_clip is not None:
            h_new = h_new.clamp(-p.proj_clip, p.proj_clip)
    return c_new, h_new


def _norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last dimension (biased variance,
    as TF's moments): torch's layer norm, one kernel each way where the same equation as
    separate ops took about ten (a CUDA graph of the loop replays every one of them)."""
    return torch.nn.functional.layer_norm(x, x.shape[-1:], gamma, beta, eps)


def layer_norm_lstm(xw: torch.Tensor, c: torch.Tensor, h: torch.Tensor, p: Canonical
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """TF's LayerNormBasicLSTMCell: each gate pre-activation and the new cell are normalized,
    i, f, g, o = LN(x W + h U); c' = LN(σ(f + forget_bias) ⊙ c + σ(i) ⊙ act(g));
    h' = act(c') ⊙ σ(o); act(g) ⊙ g_mask with a candidate dropout mask.
    """
    (ln_i, ln_f, ln_g, ln_o, ln_c), eps = p.norms
    i, f, g, o = p.lstm_gates(masked_matmul(h, p.U, p.h_mask, xw))
    i, f, g, o = (_norm(v, *ln, eps) for v, ln in ((i, ln_i), (f, ln_f), (g, ln_g), (o, ln_o)))
    sig = p.recurrent_activation
    c_new = _norm(sig(f + p.forget_bias) * c + sig(i) * _dropped(p.activation(g), p.g_mask),
                  *ln_c, eps)
    return c_new, p.activation(c_new) * sig(o)


def conv_lstm(x: torch.Tensor, c: torch.Tensor, h: torch.Tensor,
              products: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              activation: Activation, recurrent_activation: Activation
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolutional LSTM's step (Shi et al., 2015), channels first (``[B, C, *spatial]``):
    i, f, g, o = x ∗ W + b + h ∗ U (``products(x, h)``; ∗ a convolution, the gate blocks on the
    channel axis), c' = σ(f) ⊙ c + σ(i) ⊙ act(g), h' = σ(o) ⊙ act(c'). No peepholes: Keras's
    ConvLSTM has none.
    """
    z = products(x, h)
    sig = recurrent_activation
    i, f, g, o = z.chunk(4, dim=1)
    # g.clone(): a channel block of channels-last z is strided, and torch's tanh ran 2x faster
    # on a dense copy (measured; sigmoid does not care)
    c_new = torch.addcmul(sig(f) * c, sig(i), activation(g.clone()))
    return c_new, sig(o) * activation(c_new)
