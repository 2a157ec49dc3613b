"""TF1 ``BasicRNNCell``: h' = act([x, h] K + b)."""

from __future__ import annotations

import torch

from rnnkit import activations
from rnnkit import init as _init
from rnnkit.cells import equations as eq
from rnnkit.cells.base import check_units
from rnnkit.cells.fused import FusedCell, split_kernel


class BasicRNNCell(FusedCell):
    """The most basic RNN cell, as ``tf.nn.rnn_cell.BasicRNNCell``.

    Variables: ``kernel [depth + H, H]`` (scope initializer, else glorot_uniform) and
    ``bias [H]`` (zeros).

    Args:
        num_units: H.
        activation: name or callable, default tanh.
        name, reuse: the cell's scope name and reuse flag, as in TF.
        input_size: build now for this input depth instead of on the first call.
        dtype: dtype of the variables when built at construction.
    """

    base_name = "basic_rnn_cell"

    def __init__(self, num_units: int, activation=None, reuse: bool | None = None,
                 name: str | None = None, dtype: torch.dtype | None = None,
                 input_size: int | None = None):
        check_units(num_units)
        self.num_units = num_units
        self.activation = activations.get(activation)
        super().__init__(name=name, reuse=reuse, input_size=input_size, dtype=dtype)

    @property
    def state_size(self) -> int:
        return self.num_units

    @property
    def output_size(self) -> int:
        return self.num_units

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        self.add_variable("kernel", [input_depth + self.num_units, self.num_units], dtype)
        self.add_variable("bias", [self.num_units], dtype, _init.zeros(), "cell default")

    def canonical(self) -> eq.Canonical:
        W, U = split_kernel(self.get_parameter("kernel"), self.input_depth)
        return eq.Canonical("rnn", W, U, self.get_parameter("bias"), self.activation)

    def gates(self) -> dict[str, torch.Tensor]:
        """``W_h``, ``U_h``, ``b_h`` as views of the fused variables: h' = act(x W_h + h U_h + b_h)."""
        self.require_built("gates")
        W, U = split_kernel(self.get_parameter("kernel"), self.input_depth)
        return {"W_h": W, "U_h": U, "b_h": self.get_parameter("bias")}

