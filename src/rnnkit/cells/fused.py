"""Cells whose weights reduce to one ``Canonical`` layout: the input projection is hoisted out
of the time loop and the recurrent rest is one of the functions in ``equations``."""

from __future__ import annotations

from dataclasses import replace

import torch

from rnnkit.cells import equations as eq
from rnnkit.cells.base import LSTMStateTuple, RNNCell, State, join_state, split_state
from rnnkit.unroll import scan


class FusedCell(RNNCell):
    """A cell described by ``canonical()``; subclasses only lay out and name their variables."""

    def canonical(self) -> eq.Canonical:
        """This cell's weights as ``W, U, b`` in Keras gate order (views or small copies); the
        unroll reads ``sequence_params()``, which may keep the variables' own gate order."""
        raise NotImplementedError

    def sequence_params(self) -> eq.Canonical:
        return self.canonical()

    def prepare_inputs(self, inputs: torch.Tensor, params: eq.Canonical) -> torch.Tensor:
        xw = params.project(inputs, params.x_mask)
        if params.g_dropout is None:
            return xw
        # candidate dropout that no unroll drew: this call's masks ride with its inputs
        H = params.U.shape[1] // 4
        return torch.cat([xw, params.g_dropout((*inputs.shape[:-1], H), xw.dtype, xw.device)],
                         -1)

    def uses_canonical_step(self) -> bool:
        """True unless a subclass replaces ``prepare_inputs`` or ``step`` with its own."""
        return (type(self).prepare_inputs is FusedCell.prepare_inputs
                and type(self).step is FusedCell.step)

    def loop(self, params, inputs, state, mask=None, masked_output="zero", chunk=None):
        per_step = {name: m for name, m in (("state_mask", params.state_mask),
                                            ("g_mask", params.g_mask))
                    if m is not None and m.dim() == 3}
        if not per_step:
            return super().loop(params, inputs, state, mask, masked_output, chunk)
        # masks per step [T, B, n] (state dropout's, candidate dropout's): step t's travel with
        # step t's inputs
        depth = inputs.shape[-1]
        fixed = replace(params, **dict.fromkeys(per_step))
        width = fixed.W.shape[1] + (fixed.U.shape[1] // 4 if fixed.g_dropout else 0)
        widths = [m.shape[-1] for m in per_step.values()]

        def prepare(xm: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.prepare_inputs(xm[..., :depth], fixed), xm[..., depth:]], -1)

        def step(xm: torch.Tensor, s: State) -> tuple[torch.Tensor, State]:
            masks = xm[..., width:].split(widths, -1)
            return self.step(xm[..., :width], s, replace(fixed, **dict(zip(per_step, masks,
                                                                           strict=True))))

        return scan(step, torch.cat([inputs, *(m.to(inputs.dtype) for m in per_step.values())],
                                    -1), state, mask, masked_output, chunk, prepare=prepare)

    def step(self, xw: torch.Tensor, state: State, params: eq.Canonical
             ) -> tuple[torch.Tensor, State]:
        if params.g_dropout is not None:  # the masks prepare_inputs drew
            xw, g_mask = xw.split([params.W.shape[1], params.U.shape[1] // 4], -1)
            params = replace(params, g_mask=g_mask)
        if params.state_mask is not None:  # state dropout: the step reads the dropped h
            state = LSTMStateTuple(state.c, state.h * params.state_mask) \
                if isinstance(state, LSTMStateTuple) else state * params.state_mask
        if params.kind == "rnn":
            h = eq.simple_rnn(xw, state, params)
            return h, h
        if params.kind == "gru":
            h = eq.gru(xw, state, params)
            return h, h
        fn = eq.lstm if params.kind == "lstm" else eq.layer_norm_lstm
        if torch.is_tensor(state):  # TF1's state_is_tuple=False: [c, h] side by side
            c, h = fn(xw, *split_state(state, params.U.shape[1] // 4), params)
            return h, join_state(LSTMStateTuple(c, h))
        c, h = fn(xw, state.c, state.h, params)
        return h, LSTMStateTuple(c, h)


def split_kernel(kernel: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TF1's ``[depth + H, G*H]`` kernel acts on ``concat([x, h])``: its input and recurrent
    halves are views ``kernel[:depth]`` (W) and ``kernel[depth:]`` (U), made by one split,
    whose backward joins the halves' gradients (two slices' would each fill a zero kernel, then
    add them: a quarter of a lone LSTM step's backward at B1 H256)."""
    W, U = kernel.split([depth, kernel.shape[0] - depth])
    return W, U

