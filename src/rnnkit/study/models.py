"""The configurations of the initialization study, built from rnnkit's TF1 cells.

Every model is a TF1 cell unrolled by ``rnnkit.dynamic_rnn`` plus a linear readout; all weights
are variables made by ``get_variable``, so ``rnnkit.describe`` shows which initializer made each
one and where that choice came from (a scope, an argument, the cell's default).

TF1 cells fuse the input and recurrent weights into one kernel ``[depth + H, G*H]`` acting on
``[x, h]``. To give the recurrent rows ``U`` their own initializer, the study uses
``fused_kernel(base, recurrent, num_units)``: ``base`` makes the whole kernel exactly as TF1's
default would (so ``W`` is identical in distribution across the configurations), then the last
``num_units`` rows are replaced by ``recurrent`` applied to each ``H x H`` gate block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import rnnkit as rk
from rnnkit.init import Initializer

__all__ = ["fused_kernel", "StudyConfig", "StudyModel", "CONFIGS", "recurrent_blocks",
           "spectral_radius"]


class fused_kernel(Initializer):
    """A TF1 fused kernel ``[depth + H, G*H]`` with its own initializer for the recurrent rows.

    ``base(shape)`` makes the whole kernel; then rows ``[depth:]`` (``U``, the last
    ``num_units`` rows) are replaced, one ``[H, H]`` gate block at a time, by ``recurrent``.

    Args:
        base: initializer of the whole kernel (TF1's default is ``glorot_uniform()``).
        recurrent: initializer of each ``H x H`` block of ``U`` (``orthogonal()``,
            ``identity()``...).
        num_units: H.

    Raises:
        TypeError: ``base`` or ``recurrent`` is not an Initializer.
        ValueError: ``num_units`` is not a positive int, or (at call time) the shape is not
            ``[rows > H, k * H]``.
    """

    def __init__(self, base: Initializer, recurrent: Initializer, num_units: int):
        for arg, value in (("base", base), ("recurrent", recurrent)):
            if not isinstance(value, Initializer):
                raise TypeError(f"fused_kernel: {arg} must be an rnnkit Initializer, got {value!r}")
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"fused_kernel: num_units must be a positive int, got {num_units!r}")
        self.base, self.recurrent, self.num_units = base, recurrent, num_units
        self.random = base.random or recurrent.random

    def unsupported(self, shape):
        H = self.num_units
        if len(shape) != 2 or shape[0] <= H or shape[1] % H:
            return (f"shape must be [depth + {H}, k * {H}] (a TF1 fused kernel with "
                    f"num_units={H}), got shape {list(shape)}")
        return None

    def _sample(self, shape, dtype, generator):
        H = self.num_units
        kernel = self.base(shape, dtype, generator)
        gates = [self.recurrent([H, H], dtype, generator) for _ in range(shape[1] // H)]
        kernel[shape[0] - H:] = torch.cat(gates, dim=1)
        return kernel

    def get_config(self) -> dict:
        return {"base": rk.init.serialize(self.base), "recurrent": rk.init.serialize(self.recurrent),
                "num_units": self.num_units}

    @classmethod
    def from_config(cls, config: dict) -> fused_kernel:
        return cls(rk.init.deserialize(config["base"]), rk.init.deserialize(config["recurrent"]),
                   config["num_units"])

    def __repr__(self) -> str:
        return f"fused_kernel({self.base!r}, recurrent={self.recurrent!r}, num_units={self.num_units})"


Overrides = dict[str, tuple[list[int], Initializer]]


@dataclass(frozen=True)
class StudyConfig:
    """One configuration: a name, a family, a one-line description, and how to build its cell.

    ``make(H, max_len)`` returns ``(cell, kernel_initializer, overrides)``: an unbuilt cell, the
    initializer for ``variable_scope(name, initializer=...)`` (None: the cell's defaults), and
    ``{variable name: (shape, initializer)}`` for variables of the cell to create beforehand.
    """

    name: str
    family: str  # "tanh RNN" | "ReLU RNN" | "LSTM" | "GRU"
    description: str
    make: Callable[[int, int], tuple[rk.RNNCell, Initializer | None, Overrides]]


def _rnn(recurrent: Initializer | None, activation: str = "tanh"):
    def make(H: int, max_len: int):
        kernel = None if recurrent is None else fused_kernel(rk.init.glorot_uniform(), recurrent, H)
        return rk.BasicRNNCell(H, activation=activation), kernel, {}
    return make


def _lstm(forget_bias: float, bias: Callable[[int, int], Initializer] | None = None,
          kernel: Callable[[int], Initializer] | None = None):
    def make(H: int, max_len: int):
        overrides = {} if bias is None else {"bias": ([4 * H], bias(H, max_len))}
        cell = rk.BasicLSTMCell(H, forget_bias=forget_bias, reuse=rk.AUTO_REUSE if overrides else None)
        return cell, None if kernel is None else kernel(H), overrides
    return make


def _gru(gate_bias: float | None):
    def make(H: int, max_len: int):
        bias = None if gate_bias is None else rk.init.constant(gate_bias)
        return rk.GRUCell(H, bias_initializer=bias), None, {}
    return make


def _torch_uniform(H: int, max_len: int = 0) -> Initializer:
    k = 1.0 / math.sqrt(H)
    return rk.init.random_uniform(-k, k)


CONFIGS: tuple[StudyConfig, ...] = (
    StudyConfig("rnn_glorot", "tanh RNN", "BasicRNNCell, kernel glorot_uniform (TF1 default)",
                _rnn(None)),
    StudyConfig("rnn_orthogonal", "tanh RNN", "BasicRNNCell, U orthogonal, W glorot_uniform rows",
                _rnn(rk.init.orthogonal())),
    StudyConfig("irnn", "ReLU RNN", "BasicRNNCell(relu), U identity, W glorot_uniform rows (IRNN)",
                _rnn(rk.init.identity(), "relu")),
    StudyConfig("lstm_fb0", "LSTM", "BasicLSTMCell, forget_bias=0", _lstm(0.0)),
    StudyConfig("lstm_fb1", "LSTM", "BasicLSTMCell, forget_bias=1 (TF1 default)", _lstm(1.0)),
    StudyConfig("lstm_chrono", "LSTM", "BasicLSTMCell, forget_bias=0, bias chrono(T)",
                _lstm(0.0, lambda H, T: rk.init.chrono(T, gate_order="ijfo"))),
    StudyConfig("gru_bias1", "GRU", "GRUCell, gate bias 1.0 (TF1 default)", _gru(None)),
    StudyConfig("gru_bias0", "GRU", "GRUCell, gate bias 0", _gru(0.0)),
    StudyConfig("lstm_torch", "LSTM", "BasicLSTMCell, forget_bias=0, kernel and bias "
                "U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's default)",
                _lstm(0.0, _torch_uniform, _torch_uniform)),
)


class StudyModel(torch.nn.Module):
    """A TF1 cell unrolled with ``dynamic_rnn`` and a linear readout applied at every step.

    Variables live under ``<config>/``: the cell's (``<config>/basic_lstm_cell/kernel``...) and
    ``<config>/readout/{kernel,bias}`` (glorot_uniform, zeros).

    Args:
        config: a ``StudyConfig``.
        input_size, output_size: task dimensions.
        num_units: H.
        max_len: longest dependency (chrono's ``max_len``), usually the sequence length.

    Build each model in a graph without another model of the same configuration (``train_run``
    calls ``rk.reset_default_graph()`` first): the variable names would collide.
    """

    def __init__(self, config: StudyConfig, input_size: int, output_size: int, num_units: int,
                 max_len: int):
        super().__init__()
        self.config = config
        cell, kernel, overrides = config.make(num_units, max_len)
        self.cell = cell
        with rk.variable_scope(config.name, initializer=kernel):
            if overrides:
                with rk.variable_scope(cell.base_name):
                    for name, (shape, init) in overrides.items():
                        rk.get_variable(name, shape, initializer=init)
            cell.ensure_built(input_size, torch.float32)
            with rk.variable_scope("readout"):
                self.kernel = rk.get_variable("kernel", [num_units, output_size],
                                              initializer=rk.init.glorot_uniform())
                self.bias = rk.get_variable("bias", [output_size], initializer=rk.init.zeros())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Readout ``[batch, steps, output_size]`` of inputs ``x [batch, steps, input_size]``."""
        outputs, _ = rk.dynamic_rnn(self.cell, x)
        return outputs @ self.kernel + self.bias

    def forward_states(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Like ``forward``, calling the cell one step at a time and keeping every state.

        Returns ``(readout, states)``; ``states[t]`` is the state carried out of step ``t + 1`` (a
        tensor, or ``LSTMStateTuple(c, h)``). Each carried tensor is a copy made after the step,
        so that only the later steps and the readout consume it: with ``retain_grad`` set on it
        (when grad is enabled), its ``.grad`` after ``backward`` is ``d loss / d state_t`` with
        the state's parts as independent variables (for an LSTM, ``h_t``'s own dependence on
        ``c_t`` inside step t is not counted again).
        """
        state = self.cell.zero_state(x.shape[0], x.dtype)
        outs, states = [], []
        for t in range(x.shape[1]):
            _, new = self.cell(x[:, t], state)
            state = type(new)(*map(torch.clone, new)) if isinstance(new, tuple) else new.clone()
            for leaf in (state if isinstance(state, tuple) else (state,)):
                if leaf.requires_grad:
                    leaf.retain_grad()
            outs.append(state.h if isinstance(state, rk.LSTMStateTuple) else state)
            states.append(state)
        return torch.stack(outs, 1) @ self.kernel + self.bias, states


def recurrent_blocks(cell: rk.RNNCell) -> dict[str, torch.Tensor]:
    """The square recurrent blocks ``U_*`` ``[H, H]`` of a built cell, by gate name."""
    return {k: v for k, v in cell.gates().items() if k.startswith("U_")}


def spectral_radius(matrix: torch.Tensor) -> float:
    """Largest ``|eigenvalue|`` of a square matrix (computed in float64)."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {list(matrix.shape)}")
    return float(torch.linalg.eigvals(matrix.detach().double()).abs().max())
