"""Cells whose weights reduce to one ``Canonical`` layout: the input projection is hoisted out
of the time loop and the recurrent rest is one of the functions in ``equations``."""

from __future__ import annotations

from dataclasses import replace

import torch

from rnnkit.cells import equations as eq
from rnnkit.cells.base import LSTMStateTuple, RNNCell, State
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
        return params.project(inputs, params.x_mask)

    def uses_canonical_step(self) -> bool:
        """True unless a subclass replaces ``prepare_inputs`` or ``step`` with its own."""
        return (type(self).prepare_inputs is FusedCell.prepare_inputs
                and type(self).step is FusedCell.step)

    def loop(self, params, inputs, state, mask=None, masked_output="zero", chunk=None):
        m = params.state_mask
        if m is None or m.dim() == 2:
            return super().loop(params, inputs, state, mask, masked_output, chunk)
        # a state mask per step [T, B, n]: step t's travels with step t's inputs
        depth, fixed = inputs.shape[-1], replace(params, state_mask=None)
        width = fixed.W.shape[1]

        def prepare(xm: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.prepare_inputs(xm[..., :depth], fixed), xm[..., depth:]], -1)

        def step(xm: torch.Tensor, s: State) -> tuple[torch.Tensor, State]:
            return self.step(xm[..., :width], s, replace(fixed, state_mask=xm[..., width:]))

        return scan(step, torch.cat([inputs, m.to(inputs.dtype)], -1), state, mask, masked_output,
                    chunk, prepare=prepare)

    def step(self, xw: torch.Tensor, state: State, params: eq.Canonical
             ) -> tuple[torch.Tensor, State]:
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
        c, h = fn(xw, state.c, state.h, params)
        return h, LSTMStateTuple(c, h)


def split_kernel(kernel: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TF1's ``[depth + H, G*H]`` kernel acts on ``concat([x, h])``: its input and recurrent
    halves are views ``kernel[:depth]`` (W) and ``kernel[depth:]`` (U)."""
    return kernel[:depth], kernel[depth:]

