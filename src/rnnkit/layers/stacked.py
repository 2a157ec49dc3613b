"""Keras ``StackedRNNCells``: Keras cells run as one stack, what ``RNN([cell, cell, ...])``
makes. Layer k's output is layer k+1's input; the state is one state per cell, and Keras's
state lists nest: ``[[h, c], [h]]`` for an LSTM cell under a GRU cell."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rnnkit.cells.wrappers import MultiRNNCell
from rnnkit.layers.base import Tracked, deserialize, serialize, unique_name
from rnnkit.layers.cells import KerasCell


class StackedRNNCells(Tracked, MultiRNNCell):
    """Keras cells in a stack, as ``keras.layers.StackedRNNCells``; weights are named
    ``<layer>/<stack>/<cell>/kernel`` (Keras 3's paths). Unrolled layer by layer, each cell on
    its own fast path (``MultiRNNCell``'s unroll: the same numbers as step by step).

    Args:
        cells: a non-empty list of ``SimpleRNNCell``, ``GRUCell`` or ``LSTMCell``.
        name, trainable: as Keras.

    Raises:
        TypeError: ``cells`` is not a non-empty list of Keras cells.
    """

    def __init__(self, cells: Sequence[KerasCell], name: str | None = None,
                 trainable: bool = True):
        if isinstance(cells, (str, bytes)) or not isinstance(cells, Sequence) or not cells:
            raise TypeError(f"cells must be a non-empty list of Keras cells, got {cells!r:.80}")
        for k, cell in enumerate(cells):
            if not isinstance(cell, KerasCell):
                raise TypeError(f"cells[{k}] must be a Keras cell (SimpleRNNCell, GRUCell, "
                                f"LSTMCell), got {type(cell).__name__}")
            if type(cell).read_inputs is not KerasCell.read_inputs:
                raise TypeError(f"cells[{k}]: a {type(cell).__name__} cannot be stacked (its "
                                "inputs and states are images); stack ConvLSTM layers instead")
        super().__init__(list(cells))
        self.name = name or unique_name("stacked_rnn_cells")
        self._path = self.name
        self.trainable = bool(trainable)

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        """The stack's weight path; each cell's goes under it (``<path>/<cell name>``)."""
        self._path = value
        for cell in self.cells:
            if cell.input_depth is None:
                cell.path = f"{value}/{cell.name}"

    @property
    def scope_name(self) -> str:
        return self.path

    @property
    def units(self) -> int:
        return self.cells[-1].units

    def read_inputs(self, x: torch.Tensor, lead: str = "batch, time") -> int:
        """The first cell's ``read_inputs``."""
        return self.cells[0].read_inputs(x, lead)

    def read_mask(self, mask, batch: int, steps: int, time_major: bool = False):
        """The first cell's ``read_mask``."""
        return self.cells[0].read_mask(mask, batch, steps, time_major)

    @property
    def step_shape(self) -> list[int] | None:
        return self.cells[0].step_shape

    def build_in_scope(self, input_depth: int, dtype: torch.dtype) -> None:
        """Keras weights are named by path, not by TF1 variable scopes."""
        self.build(input_depth, dtype)

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        for cell in self.cells:
            cell.ensure_built(input_depth, dtype)
            input_depth = cell.output_size

    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device,
                       training: bool | None = None) -> None:
        """Draw every cell's dropout masks for this sequence (none outside training)."""
        for cell in self.cells:
            cell.begin_sequence(batch_size, dtype, device, training)

    def end_sequence(self) -> None:
        for cell in self.cells:
            cell.end_sequence()

    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable,
                "cells": [serialize(cell) for cell in self.cells]}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        return cls([deserialize(c) for c in config.pop("cells")], **config)

    def extra_repr(self) -> str:
        return f"path={self.path!r}"
