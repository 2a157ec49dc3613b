"""``DropoutWrapper``: TF1's dropout on a cell's inputs, outputs and state.

Input and output dropout are done on the whole sequence around the wrapped cell's unroll
(``rnnkit.cells.wrappers``); state dropout on the ``h`` of one of rnnkit's cells, or of each
layer of a stack of them, is the cell's unroll with a state mask (``Canonical.state_mask``),
which the fused kernels run. Every mask is drawn as the steps would draw it, so both ways give
the same numbers from the same seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils import _pytree as pytree

from rnnkit.cells.base import LSTMStateTuple, RNNCell, State
from rnnkit.cells.fused import FusedCell
from rnnkit.cells.wrappers import MultiRNNCell, _Wrapper
from rnnkit.unroll import map_state


def keep_mask(u: torch.Tensor, keep, dtype: torch.dtype | None = None) -> torch.Tensor:
    """TF's dropout mask from uniform draws ``u`` in [0, 1): 1/keep where keep + u >= 1 (with
    probability ``keep``, a float or a tensor that broadcasts), else 0; in ``dtype`` (default
    ``u``'s)."""
    return torch.floor(keep + u).to(dtype or u.dtype) / keep


def _draws_noise(cell: RNNCell) -> bool:
    """Whether an unroll of ``cell`` draws dropout masks of its own (a cell inside it that
    does: ``RNNCell.draws_masks``)."""
    return any(isinstance(m, RNNCell) and m.draws_masks() for m in cell.modules())


def _keep_state_leaf(state: State) -> State:
    """TF's default state filter: dropout on every state tensor except an LSTM's memory ``c``."""
    if isinstance(state, LSTMStateTuple):
        return LSTMStateTuple(False, True)
    if isinstance(state, tuple):
        return tuple(_keep_state_leaf(s) for s in state)
    return True


def _dropped_unroll(cell: RNNCell, inputs: torch.Tensor, state: State, keep: torch.Tensor,
                    last: torch.Tensor, mask, masked_output: str, chunk, fast):
    """``cell``'s unroll whose steps read ``h`` dropped by ``keep`` (``[B, n]``, or per step
    ``[T - 1, B, n]``: Canonical.state_mask): the first step reads the initial state as it is,
    the steps after it the dropped ``h``; the final ``h`` is dropped by ``last``, but where a
    sequence is empty (masks here come from lengths), which keeps its initial state."""
    lstm = isinstance(state, LSTMStateTuple)
    h0 = state.h if lstm else state
    out, final = cell.unroll(inputs[:1], state, None if mask is None else mask[:1],
                             masked_output, None, fast)
    if inputs.shape[0] > 1:
        params = dataclasses.replace(cell.sequence_params(), state_mask=keep)
        rest, final = cell.unroll_with(params, inputs[1:], final,
                                       None if mask is None else mask[1:], masked_output, chunk,
                                       fast)
        out = torch.cat([out, rest])
    h = (final.h if lstm else final) * last
    if mask is not None:
        h = torch.where(mask[0, :, None], h, h0)
    return out, LSTMStateTuple(final.c, h) if lstm else h


class DropoutWrapper(_Wrapper):
    """Dropout on a cell's inputs, outputs and state, as ``tf.nn.rnn_cell.DropoutWrapper``.

    Kept values are scaled by ``1/keep_prob``. With ``variational_recurrent=True`` one mask per
    sequence is drawn (Gal & Ghahramani, 2016) and reused at every step. Dropout applies in
    training mode only (``module.eval()`` turns it off; TF1 code sets keep_prob=1 instead).

    Input and output dropout are applied to the whole sequence around the cell's unroll, so
    the cell keeps its fast path. State dropout (``state_keep_prob < 1``) acts between steps: on
    the ``h`` of one of rnnkit's cells or of each layer of a stack of them (TF's default
    filter), it is each cell's unroll with a state mask (``Canonical.state_mask``: one, or one
    per step), which the fused kernels run. Another filter, or a wrapper inside, runs the loop
    step by step, as does a cell that draws masks of its own (another ``DropoutWrapper``
    inside, a ``LayerNormLSTMCell`` with ``dropout_keep_prob < 1``: its draws and these would
    come in another order).
    """

    def __init__(self, cell: RNNCell, input_keep_prob: float = 1.0, output_keep_prob: float = 1.0,
                 state_keep_prob: float = 1.0, variational_recurrent: bool = False,
                 input_size: int | None = None, dtype: torch.dtype | None = None,
                 seed: int | None = None,
                 dropout_state_filter_visitor: Callable[[State], State] | None = None):
        super().__init__(cell)
        for arg, value in (("input_keep_prob", input_keep_prob),
                           ("output_keep_prob", output_keep_prob),
                           ("state_keep_prob", state_keep_prob)):
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"DropoutWrapper: {arg} must be in (0, 1], got {value!r}")
        self.keep = {"input": float(input_keep_prob), "output": float(output_keep_prob),
                     "state": float(state_keep_prob)}
        self.variational = bool(variational_recurrent)
        self.state_filter = dropout_state_filter_visitor or _keep_state_leaf
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._in_unroll = False
        self._masks: dict[str, object] = {}
        del input_size, dtype

    def _noise(self, like: torch.Tensor, keep, global_rng: bool) -> torch.Tensor:
        """A mask shaped as ``like``: 1/keep with probability ``keep`` (a float, or a CPU tensor
        that broadcasts), else 0."""
        u = torch.rand(like.shape, generator=None if global_rng else self._generator, dtype=like.dtype)
        return keep_mask(u, keep).to(like.device)

    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device) -> None:
        self._masks = {}
        super().begin_sequence(batch_size, dtype, device)

    def sequence_params(self):
        # the masks of this sequence, in the dict it draws them into: a chunk that swap_memory
        # recomputes after the wrapper has begun another sequence (begin_sequence: a new dict)
        # still finds its own
        return self.cell.sequence_params(), self._in_unroll, self._masks

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        # Inside an unroll the noise comes from the global RNG, which swap_memory's recomputed
        # chunks replay (forked and seeded from the private generator when there is one), and the
        # inputs are dropped here for the whole sequence, so chunked and plain runs draw the same
        # masks; the steps learn this from their params.
        seeded = self._generator is not None
        seed = int(torch.randint(2**62, (), generator=self._generator)) if seeded else 0
        self._in_unroll = True
        try:
            with torch.random.fork_rng(devices=[], enabled=seeded):
                if seeded:
                    torch.manual_seed(seed)
                inputs = self._drop(inputs, "input", True)
                return super().unroll(inputs, state, mask, masked_output, chunk, fast)
        finally:
            self._in_unroll = False

    def per_step(self, mask, masked_output):
        if not self.training:
            return ()
        why = []
        unmet = self._state_unmet(mask, masked_output) if self.keep["state"] < 1.0 else []
        if unmet:
            why.append("DropoutWrapper: state dropout (state_keep_prob < 1) acts between steps ("
                       + "; ".join(unmet) + ")")
        if min(self.keep.values()) < 1.0 and _draws_noise(self.cell):
            why.append("DropoutWrapper: the wrapped cell draws dropout masks of its own (drawn "
                       "step by step, they and this wrapper's come in another order)")
        if self.keep["output"] < 1.0 and mask is not None and masked_output != "zero":
            why.append("DropoutWrapper: output dropout where masked steps hold the previous "
                       "output")
        return tuple(why)

    def _layers(self) -> list[RNNCell] | None:
        """The cells whose ``h`` state dropout drops: the wrapped cell, or a stack's layers;
        None where one is not a cell with rnnkit's own step."""
        cells = list(self.cell.cells) if isinstance(self.cell, MultiRNNCell) else [self.cell]
        own = all(isinstance(c, FusedCell) and c.uses_canonical_step() for c in cells)
        # a concatenated state (state_is_tuple=False) is one tensor to TF's filter: its c drops too
        tuples = all(getattr(c, "state_is_tuple", True) for c in (self.cell, *cells))
        return cells if own and tuples else None

    def _state_unmet(self, mask, masked_output) -> list[str]:
        """Why state dropout cannot be state masks on the wrapped cells' unrolls."""
        if self._layers() is None:
            return ["the wrapped cell is not a cell with rnnkit's own step or a stack of them "
                    "(a wrapper inside, a step of its own, or a state_is_tuple=False state, "
                    "whose LSTM memory c drops with h)"]
        zero = self.cell.zero_state(1)
        if pytree.tree_leaves(self.state_filter(zero)) != pytree.tree_leaves(_keep_state_leaf(zero)):
            return ["a state filter other than TF's default (h alone)"]
        if mask is not None and masked_output != "zero":
            return ["masked steps hold the previous output"]
        return []

    def draws_masks(self) -> bool:
        return self.training and min(self.keep.values()) < 1.0

    def _drops_state(self) -> bool:
        return self.training and self.keep["state"] < 1.0

    def whole_sequence(self):
        cell, why = super().whole_sequence()
        return (self, ()) if self._drops_state() and not why else (cell, why)

    def dispatch_params(self, batch: int, dtype: torch.dtype, device) -> tuple[object, bool]:
        if not self._drops_state():
            return self.cell.dispatch_params(batch, dtype, device)
        first = self._layers()[0]  # a stack is explained by its first layer
        h = first.zero_state(batch, dtype, device)
        mask = torch.ones_like(h.h if isinstance(h, LSTMStateTuple) else h)
        return dataclasses.replace(first.sequence_params(), state_mask=mask), False

    def inner_unroll(self, inputs, state, mask, masked_output, chunk, fast):
        if not self._drops_state():
            return super().inner_unroll(inputs, state, mask, masked_output, chunk, fast)
        # Each layer's unroll with its state mask (_dropped_unroll), the masks drawn as the
        # steps draw them: after the inputs', each layer's h in turn, then the outputs';
        # variational, once; else at every step: step t's (read by step t + 1) one of [T, B, n],
        # and the final state takes its sequence's last step's.
        stack, steps = isinstance(self.cell, MultiRNNCell), inputs.shape[0]
        states = list(state) if stack else [state]
        h0s = [s.h if isinstance(s, LSTMStateTuple) else s for s in states]
        if self.variational:
            keeps = lasts = [self._drop(torch.ones_like(h), "state", True, str(k))
                             for k, h in enumerate(h0s)]
        else:
            drawn = self._step_masks(h0s, steps)
            at = mask.sum(0).clamp(min=1) - 1 if mask is not None else steps - 1
            lasts = [m[at, torch.arange(m.shape[1], device=m.device)] for m in drawn]
            keeps = [m[:-1] for m in drawn]
        x, finals = inputs, []
        for cell, s, keep, last in zip(self._layers(), states, keeps, lasts, strict=True):
            x, final = _dropped_unroll(cell, x, s, keep, last, mask, masked_output, chunk, fast)
            finals.append(final)
        return x, tuple(finals) if stack else finals[0]

    def _step_masks(self, h0s: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
        """Each layer's state masks ``[T, B, n]``, drawn as the steps draw theirs: at each step
        each layer's state's, then (output dropout) the output's, which ``around`` then takes;
        one draw of ``[T, B * (n_0 + n_1 + ... + out)]`` is those draws in that order (a cell's
        output is its ``h``)."""
        sizes = [h.shape[-1] for h in h0s]
        keeps = [self.keep["state"]] * len(sizes)
        if self.keep["output"] < 1.0:
            sizes, keeps = sizes + sizes[-1:], keeps + [self.keep["output"]]
        batch, h0 = h0s[0].shape[0], h0s[0]
        keep = torch.cat([torch.full((batch * n,), k, dtype=h0.dtype) for n, k in zip(sizes, keeps,
                                                                                        strict=True)])
        drawn = self._noise(h0.new_empty(steps, keep.numel()), keep, True)
        masks = [m.view(steps, batch, n) for m, n in
                 zip(drawn.split([batch * n for n in sizes], dim=1), sizes, strict=True)]
        self._masks["steps_output"] = masks.pop() if self.keep["output"] < 1.0 else None
        return masks

    def around(self, inputs, outputs, mask):
        # The steps' masks from one draw of [T, B, out]: a draw of [B, out] per step, in order
        # (variational: one [B, out] mask, drawn at the first step, as the steps do), or those
        # drawn with the state's (_step_masks). Padded steps' outputs are zeros either way.
        drawn = self._masks.pop("steps_output", None)
        return self._drop(outputs, "output", True) if drawn is None else outputs * drawn

    def _drop(self, x: torch.Tensor, kind: str, global_rng: bool, key: str = "",
              masks: dict | None = None) -> torch.Tensor:
        """``x`` dropped; variational masks are kept in ``masks`` (default: this sequence's)."""
        keep = self.keep[kind]
        if keep == 1.0 or not self.training:
            return x
        if not self.variational:
            return x * self._noise(x, keep, global_rng)
        key, masks = kind + key, self._masks if masks is None else masks
        mask = masks.get(key)
        if mask is None or mask.shape != x.shape[-2:]:
            mask = masks[key] = self._noise(x[(0,) * (x.dim() - 2)], keep, global_rng)
        return x * mask

    def prepare_inputs(self, inputs: torch.Tensor, params) -> torch.Tensor:
        cell_params, in_unroll, masks = params
        dropped = inputs if in_unroll else self._drop(inputs, "input", False, masks=masks)
        return self.cell.prepare_inputs(dropped, cell_params)

    def step(self, prepared: torch.Tensor, state: State, params) -> tuple[torch.Tensor, State]:
        cell_params, global_rng, masks = params
        out, new = self.cell.step(prepared, state, cell_params)
        if self.keep["state"] < 1.0:
            leaves = iter(range(10**9))
            new = map_state(lambda s, use: self._drop(s, "state", global_rng, str(next(leaves)),
                                                      masks) if use else s,
                            new, self.state_filter(new))
        return self._drop(out, "output", global_rng, masks=masks), new
