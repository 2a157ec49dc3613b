"""Cells made of cells: ``MultiRNNCell`` (stacking), ``DropoutWrapper``, ``ResidualWrapper``.

Wrappers add no variable-scope level (their cell's variables keep the cell's own names);
``MultiRNNCell`` puts layer ``k`` under ``cell_k``, as TF does.

A wrapper whose work needs no state from one step to the next (dropout on inputs and outputs, a
residual sum) does it on the whole sequence around its cell's own unroll, so the cell keeps its
fast path (``rnnkit.fast.dispatch``); it runs step by step only where it must (``per_step``
says why), with the same numbers either way: the same masks, drawn in the same order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch.utils import _pytree as pytree

from rnnkit.cells.base import LSTMStateTuple, RNNCell, State
from rnnkit.cells.fused import FusedCell
from rnnkit.scope import variable_scope
from rnnkit.unroll import map_state

WHOLE_SEQUENCE = True  # False: every wrapper runs step by step (the tests compare the two)


def _check_cell(cell, argname: str = "cell") -> None:
    if not isinstance(cell, RNNCell):
        raise TypeError(f"{argname} must be an rnnkit RNNCell, got {type(cell).__name__}")


class MultiRNNCell(RNNCell):
    """Stack of cells: layer k's output is layer k+1's input; the state is a tuple of states.

    Unrolled layer by layer (the same result as step by step: each layer depends only on the
    layer below at the same time step), so each layer gets its hoisted input projection.
    """

    base_name = "multi_rnn_cell"

    def __init__(self, cells: Sequence[RNNCell], state_is_tuple: bool = True):
        if not cells:
            raise ValueError("MultiRNNCell: cells must be a non-empty list of cells")
        if not state_is_tuple:
            raise ValueError("MultiRNNCell: state_is_tuple=False is not supported")
        for k, cell in enumerate(cells):
            _check_cell(cell, f"cells[{k}]")
        super().__init__()
        self.cells = torch.nn.ModuleList(cells)

    @property
    def state_size(self) -> tuple:
        return tuple(cell.state_size for cell in self.cells)

    @property
    def output_size(self) -> int:
        return self.cells[-1].output_size

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        for k, cell in enumerate(self.cells):
            with variable_scope(f"cell_{k}"):
                cell.ensure_built(input_depth, dtype)
            input_depth = cell.output_size

    def sequence_params(self) -> list:
        return [cell.sequence_params() for cell in self.cells]

    def prepare_inputs(self, inputs: torch.Tensor, params) -> torch.Tensor:
        return self.cells[0].prepare_inputs(inputs, params[0])

    def step(self, prepared: torch.Tensor, state: State, params) -> tuple[torch.Tensor, State]:
        new_states, out = [], prepared
        for k, cell in enumerate(self.cells):
            x = out if k == 0 else cell.prepare_inputs(out, params[k])
            out, new = cell.step(x, state[k], params[k])
            new_states.append(new)
        return out, tuple(new_states)

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        finals, x = [], inputs
        for cell, layer_state in zip(self.cells, state, strict=True):
            x, final = cell.unroll(x, layer_state, mask, masked_output, chunk, fast)
            finals.append(final)
        return x, tuple(finals)

    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device) -> None:
        for cell in self.cells:  # each layer's variational masks are drawn anew per sequence
            cell.begin_sequence(batch_size, dtype, device)

    def whole_sequence(self):
        return self.cells[0].whole_sequence()


class _Wrapper(RNNCell):
    """A cell around a cell, sharing its variables, scope and sizes."""

    def __init__(self, cell: RNNCell):
        _check_cell(cell)
        super().__init__()
        self.cell = cell

    @property
    def state_size(self):
        return self.cell.state_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    @property
    def scope_name(self) -> str | None:
        return self.cell.scope_name

    def ensure_built(self, input_depth: int, dtype: torch.dtype) -> None:
        self.cell.ensure_built(input_depth, dtype)
        self.input_depth = input_depth

    def sequence_params(self):
        return self.cell.sequence_params()

    def gates(self) -> dict[str, torch.Tensor]:
        return self.cell.gates()

    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device) -> None:
        self.cell.begin_sequence(batch_size, dtype, device)

    def per_step(self, mask: torch.Tensor | None, masked_output: str) -> tuple[str, ...]:
        """Why this wrapper must run step by step for an unroll with ``mask`` and
        ``masked_output`` (as ``rnnkit.unroll.scan``), rather than do its work on the whole
        sequence around its cell's unroll (``around``); empty where it need not."""
        return ()

    def around(self, inputs: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor | None
               ) -> torch.Tensor:
        """The wrapper's work on the whole sequence: ``outputs`` ``[T, B, out]`` of its cell's
        unroll over ``inputs`` to what its own steps would have given."""
        return outputs

    def _step_by_step(self, mask: torch.Tensor | None, masked_output: str) -> tuple[str, ...]:
        return self.per_step(mask, masked_output) if WHOLE_SEQUENCE else ("WHOLE_SEQUENCE is False",)

    def whole_sequence(self):
        why = self._step_by_step(None, "zero")
        return (self, why) if why else self.cell.whole_sequence()

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        from rnnkit.fast import dispatch  # imported here: rnnkit.fast imports the cells

        why = self._step_by_step(mask, masked_output)
        if why:
            if dispatch.mode_of(fast) is True:
                raise dispatch.refuse(dispatch.step_by_step(why))
            return super().unroll(inputs, state, mask, masked_output, chunk, fast)
        outputs, final = self.inner_unroll(inputs, state, mask, masked_output, chunk, fast)
        return self.around(inputs, outputs, mask), final

    def inner_unroll(self, inputs, state, mask, masked_output, chunk, fast):
        """The wrapped cell's unroll, for a wrapper that does its work around it."""
        return self.cell.unroll(inputs, state, mask, masked_output, chunk, fast)


def _draws_noise(cell: RNNCell) -> bool:
    """Whether an unroll of ``cell`` draws dropout masks of its own (a ``DropoutWrapper``
    inside it, in training and dropping something)."""
    return any(isinstance(m, DropoutWrapper) and m.training and min(m.keep.values()) < 1.0
               for m in cell.modules())


def _keep_state_leaf(state: State) -> State:
    """TF's default state filter: dropout on every state tensor except an LSTM's memory ``c``."""
    if isinstance(state, LSTMStateTuple):
        return LSTMStateTuple(False, True)
    if isinstance(state, tuple):
        return tuple(_keep_state_leaf(s) for s in state)
    return True


class DropoutWrapper(_Wrapper):
    """Dropout on a cell's inputs, outputs and state, as ``tf.nn.rnn_cell.DropoutWrapper``.

    Kept values are scaled by ``1/keep_prob``. With ``variational_recurrent=True`` one mask per
    sequence is drawn (Gal & Ghahramani, 2016) and reused at every step. Dropout applies in
    training mode only (``module.eval()`` turns it off; TF1 code sets keep_prob=1 instead).

    Input and output dropout are applied to the whole sequence around the cell's unroll, so
    the cell keeps its fast path. State dropout (``state_keep_prob < 1``) acts between steps: on
    the ``h`` of one of rnnkit's cells (TF's default filter), it is the cell's unroll with a
    state mask (``Canonical.state_mask``: one, or one per step), which the fused kernels run
    (but for a layer-norm LSTM's). Another filter, or a stack or wrapper inside, runs the loop
    step by step, as does a cell that draws masks of its own (another ``DropoutWrapper``
    inside: its draws and these would come in another order).
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
        return (torch.floor(keep + u) / keep).to(like.device)

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

    def _state_unmet(self, mask, masked_output) -> list[str]:
        """Why state dropout cannot be a state mask on the wrapped cell's unroll."""
        cell = self.cell
        if not (isinstance(cell, FusedCell) and cell.uses_canonical_step()):
            return ["the wrapped cell is not one cell with rnnkit's own step (a stack, a wrapper "
                    "or a step of its own)"]
        zero = cell.zero_state(1)
        if pytree.tree_leaves(self.state_filter(zero)) != pytree.tree_leaves(_keep_state_leaf(zero)):
            return ["a state filter other than TF's default (h alone)"]
        if mask is not None and masked_output != "zero":
            return ["masked steps hold the previous output"]
        return []

    def _drops_state(self) -> bool:
        return self.training and self.keep["state"] < 1.0

    def whole_sequence(self):
        cell, why = super().whole_sequence()
        return (self, ()) if self._drops_state() and not why else (cell, why)

    def dispatch_params(self, batch: int, dtype: torch.dtype, device) -> tuple[object, bool]:
        if not self._drops_state():
            return self.cell.dispatch_params(batch, dtype, device)
        h = self.cell.zero_state(batch, dtype, device)
        mask = torch.ones_like(h.h if isinstance(h, LSTMStateTuple) else h)
        return dataclasses.replace(self.cell.sequence_params(), state_mask=mask), False

    def inner_unroll(self, inputs, state, mask, masked_output, chunk, fast):
        if not self._drops_state():
            return super().inner_unroll(inputs, state, mask, masked_output, chunk, fast)
        # The steps after the first read the dropped h (Canonical.state_mask); the first reads
        # the initial state as it is; the final state is the last step's h, dropped. The
        # masks are drawn as the steps draw them (after the inputs', before the outputs'), and
        # a sequence of length 0 (masks here come from lengths) keeps its initial state. Not
        # variational, step t's mask (read by step t + 1) is one of [T, B, n], and the final
        # state takes its sequence's last step's.
        lstm, steps = isinstance(state, LSTMStateTuple), inputs.shape[0]
        h0 = state.h if lstm else state
        if self.variational:
            keep = last = self._drop(torch.ones_like(h0), "state", True, "0")
        else:
            keep = self._step_masks(h0, steps)
            at = mask.sum(0).clamp(min=1) - 1 if mask is not None else steps - 1
            last, keep = keep[at, torch.arange(h0.shape[0])], keep[:-1]
        out, final = self.cell.unroll(inputs[:1], state, None if mask is None else mask[:1],
                                      masked_output, None, fast)
        if steps > 1:
            params = dataclasses.replace(self.cell.sequence_params(), state_mask=keep)
            rest, final = self.cell.unroll_with(params, inputs[1:], final,
                                                None if mask is None else mask[1:],
                                                masked_output, chunk, fast)
            out = torch.cat([out, rest])
        h = (final.h if lstm else final) * last
        if mask is not None:
            h = torch.where(mask[0, :, None], h, h0)
        return out, LSTMStateTuple(final.c, h) if lstm else h

    def _step_masks(self, h0: torch.Tensor, steps: int) -> torch.Tensor:
        """Each step's state mask ``[T, B, n]``, drawn as the steps draw theirs: at each step
        the state's, then (output dropout) the output's, which ``around`` then takes; one draw
        of ``[T, 2, B, n]`` is ``2T`` draws of ``[B, n]`` in that order (an LSTM's or GRU's
        output is its ``h``)."""
        kinds = ["state"] + (["output"] if self.keep["output"] < 1.0 else [])
        keep = torch.tensor([self.keep[k] for k in kinds], dtype=h0.dtype).view(1, -1, 1, 1)
        masks = self._noise(h0.new_empty(steps, len(kinds), *h0.shape), keep, True)
        self._masks["steps_output"] = masks[:, 1] if len(kinds) == 2 else None
        return masks[:, 0]

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


class ResidualWrapper(_Wrapper):
    """Adds the cell's input to its output: ``residual_fn(inputs, output)``, default a sum.

    The default sum is added to the whole sequence's outputs after the cell's unroll (the cell
    keeps its fast path); a ``residual_fn`` of your own is called step by step, on ``[B, n]``
    inputs and outputs, as in TF.
    """

    def __init__(self, cell: RNNCell, residual_fn: Callable | None = None):
        super().__init__(cell)
        self.custom = residual_fn is not None
        self.residual_fn = residual_fn or (lambda x, y: x + y)

    def ensure_built(self, input_depth: int, dtype: torch.dtype) -> None:
        super().ensure_built(input_depth, dtype)
        if input_depth != self.cell.output_size:
            raise ValueError(f"ResidualWrapper: inputs must have depth {self.cell.output_size} "
                             f"(the cell's output size) to be added, got {input_depth}")

    def per_step(self, mask, masked_output):
        why = []
        if self.custom:
            why.append("ResidualWrapper: a residual_fn of your own is called step by step")
        if mask is not None and masked_output != "zero":
            why.append("ResidualWrapper: masked steps hold the previous output")
        return tuple(why)

    def around(self, inputs, outputs, mask):
        summed = inputs + outputs
        if mask is None:
            return summed
        return torch.where(mask.unsqueeze(-1), summed, torch.zeros_like(summed))

    def prepare_inputs(self, inputs: torch.Tensor, params) -> torch.Tensor:
        # The raw input rides along with the prepared one so each step can add it back.
        return torch.cat([inputs, self.cell.prepare_inputs(inputs, params)], dim=-1)

    def step(self, prepared: torch.Tensor, state: State, params) -> tuple[torch.Tensor, State]:
        x, rest = prepared[..., : self.input_depth], prepared[..., self.input_depth:]
        out, new = self.cell.step(rest, state, params)
        return self.residual_fn(x, out), new
