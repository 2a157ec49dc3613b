"""Keras cells: ``SimpleRNNCell``, ``GRUCell``, ``LSTMCell`` with Keras weight layouts
(``kernel [depth, G*units]``, ``recurrent_kernel [units, G*units]``, ``bias``), gate orders
(GRU z, r, h; LSTM i, f, c, o) and initializer defaults. The math is ``rnnkit.cells.equations``,
shared with the TF1 cells; Keras order is the canonical order, so weights are used as stored."""

from __future__ import annotations

import dataclasses

import torch

from rnnkit import activations
from rnnkit import init as _init
from rnnkit.cells import equations as eq
from rnnkit.cells.base import LSTMStateTuple, State, check_units
from rnnkit.cells.fused import FusedCell
from rnnkit.layers import penalties
from rnnkit.layers.base import Tracked, check_mask, check_rank, make_weight, snake, unique_name

_WEIGHTS = ("kernel", "recurrent_kernel", "bias")
_ARG = {"kernel": "kernel", "recurrent_kernel": "recurrent", "bias": "bias"}


class KerasCell(Tracked, FusedCell):
    """Shared by the Keras cells: weights named ``<layer>/<cell>/kernel``, dropout masks, configs.

    Dropout (Keras semantics): in training, one mask per sequence is drawn and reused at every
    step; kept units are scaled by ``1/(1-rate)``. GRU/LSTM with ``recurrent_dropout`` draw one
    mask per gate for inputs and for ``h`` (Keras's "implementation 1"); otherwise one mask.
    """

    gates_count = 1
    _DEFAULTS = {"kernel": _init.glorot_uniform(), "recurrent_kernel": _init.orthogonal(),
                 "bias": _init.zeros()}

    def __init__(self, units: int, activation="tanh", recurrent_activation="sigmoid",
                 use_bias: bool = True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None,
                 dropout: float = 0.0, recurrent_dropout: float = 0.0, seed: int | None = None,
                 name: str | None = None, trainable: bool = True):
        check_units(units, "units")
        for arg, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{arg} must be a number in [0, 1), got {value!r}")
        name = name or unique_name(snake(type(self).__name__))
        super().__init__(name=name)
        self.name = self.path = name
        self.units = units
        # Keras: None means linear (a(x) = x), for both activations.
        self.activation = activations.get(activation, activations.linear)
        self.recurrent_activation = activations.get(recurrent_activation, activations.linear)
        self.use_bias = bool(use_bias)
        self.initializers = {"kernel": _init.get(kernel_initializer),
                             "recurrent_kernel": _init.get(recurrent_initializer),
                             "bias": _init.get(bias_initializer)}
        self.regularizers = penalties.resolve(penalties.get_regularizer, kernel=kernel_regularizer,
                                              recurrent_kernel=recurrent_regularizer,
                                              bias=bias_regularizer)
        self.constraints = penalties.resolve(penalties.get_constraint, kernel=kernel_constraint,
                                             recurrent_kernel=recurrent_constraint,
                                             bias=bias_constraint)
        self.dropout, self.recurrent_dropout = float(dropout), float(recurrent_dropout)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._masks: dict[str, torch.Tensor] = {}
        self.trainable = bool(trainable)

    @property
    def state_size(self):
        return self.units

    @property
    def output_size(self) -> int:
        return self.units

    @property
    def scope_name(self) -> str:
        return self.path

    def read_inputs(self, x: torch.Tensor, lead: str = "batch, time") -> int:
        """Check a layer's inputs ``[batch, time, features]`` and return their depth (a
        ConvLSTM cell's read more)."""
        check_rank(x, lead.count(",") + 2, "inputs", f"[{lead}, features]")
        return x.shape[-1]

    def read_mask(self, mask, batch: int, steps: int, time_major: bool = False):
        """A layer's mask, checked: ``[batch, time]`` bool (``[time, batch]`` if
        ``time_major``), returned as ``[batch, time]``; None for none."""
        return check_mask(mask, batch, steps, time_major=time_major)

    @property
    def step_shape(self) -> list[int] | None:
        """The shape of one step's input without its batch, ``[depth]`` (None before it is
        built)."""
        return None if self.input_depth is None else [self.input_depth]

    def state_shape(self, batch: int) -> tuple:
        """The shape of each of the cell's states (``[h]`` or ``[h, c]``) for ``batch`` rows."""
        return (batch, self.units)

    state_layout = "[batch, units]"

    def weight_count(self, depth: int) -> int:
        """How many numbers the cell's weights hold for inputs of depth ``depth``."""
        n = self.gates_count * self.units
        rows = (2 if getattr(self, "reset_after", False) else 1) if self.use_bias else 0
        return n * (depth + self.units + rows)

    def build_in_scope(self, input_depth: int, dtype: torch.dtype) -> None:
        """Keras weights are named by layer path, not by TF1 variable scopes."""
        self.build(input_depth, dtype)

    def _weight(self, name: str, shape: list[int], dtype: torch.dtype, note: str = "") -> None:
        var = make_weight(f"{self.path}/{name}", shape, dtype, self.initializers[name],
                          self._DEFAULTS[name], note)
        self.register_parameter(name, self.track(var, self.regularizers[name],
                                                 self.constraints[name]))

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        G, u = self.gates_count, self.units
        self._weight("kernel", [input_depth, G * u], dtype)
        self._weight("recurrent_kernel", [u, G * u], dtype)
        if self.use_bias:
            self._weight("bias", self._bias_shape(), dtype)

    def _bias_shape(self) -> list[int]:
        return [self.gates_count * self.units]

    def _w(self, name: str) -> torch.Tensor:
        # getattr, not get_parameter: torch.func.functional_call swaps in plain tensors
        return getattr(self, name)

    def _bias_or_none(self) -> torch.Tensor | None:
        return self.bias if self.use_bias else None

    # -- dropout: one mask per sequence, reused at every step (Keras) ---------------------------
    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device,
                       training: bool | None = None) -> None:
        """Draw this sequence's dropout masks (none outside training)."""
        self._masks = {}
        if not (self.training if training is None else training):
            return
        per_gate = self.gates_count if self.recurrent_dropout > 0 and self.gates_count > 1 else 0
        for kind, rate, width in (("input", self.dropout, self.input_depth),
                                  ("recurrent", self.recurrent_dropout, self.units)):
            if rate > 0:
                shape = (batch_size, per_gate, width) if per_gate else (batch_size, width)
                self._masks[kind] = self.draw_mask(shape, rate, dtype, device)

    def draw_mask(self, shape: tuple, rate: float, dtype: torch.dtype, device) -> torch.Tensor:
        """A Keras dropout mask: each unit kept with probability ``1 - rate`` and scaled by
        ``1 / (1 - rate)``, drawn on the CPU from the cell's generator (``seed``)."""
        u = torch.rand(shape, generator=self._generator, dtype=dtype)
        return ((u >= rate).to(dtype) / (1.0 - rate)).to(device)

    def end_sequence(self) -> None:
        """Forget the dropout masks (Keras resets them after each layer call)."""
        self._masks = {}

    def sequence_params(self) -> eq.Canonical:
        p = self.canonical()
        x_mask, h_mask = self._masks.get("input"), self._masks.get("recurrent")
        if x_mask is None and h_mask is None:
            return p
        return dataclasses.replace(p, x_mask=x_mask, h_mask=h_mask)

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        from rnnkit.fast.dispatch import mode_of  # imported here: rnnkit.fast imports the cells

        drop = self._masks.get("input")
        if drop is None or drop.dim() != 2 or mode_of(fast) is False:  # none, or one per gate
            return super().unroll(inputs, state, mask, masked_output, chunk, fast)
        # One input mask for every step: the whole sequence is dropped once, and the steps are
        # then Canonical's, which a fast path can run; the reference loop (fast=False) makes
        # the same product, (x ⊙ mask) W + b, in ``prepare_inputs``.
        del self._masks["input"]
        try:
            return super().unroll(inputs * drop, state, mask, masked_output, chunk, fast)
        finally:
            self._masks["input"] = drop

    def keras_call(self, inputs: torch.Tensor, states: list[torch.Tensor]
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One step with Keras's state list: ``(output, [h])`` or, for an LSTM, ``(h, [h, c])``."""
        out, new = self(inputs, from_keras_states(self, states, inputs.shape[0]))
        return out, keras_states(new)

    def get_config(self) -> dict:
        config = {"name": self.name, "trainable": self.trainable, "units": self.units,
                  "activation": activations.name_of(self.activation),
                  "recurrent_activation": activations.name_of(self.recurrent_activation),
                  "use_bias": self.use_bias}
        for w in _WEIGHTS:
            init = self.initializers[w]
            config[f"{_ARG[w]}_initializer"] = _init.serialize(init) if init is not None else None
        for w in _WEIGHTS:
            config[f"{_ARG[w]}_regularizer"] = penalties.serialize(self.regularizers[w])
        for w in _WEIGHTS:
            config[f"{_ARG[w]}_constraint"] = penalties.serialize(self.constraints[w])
        return {**config, "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def extra_repr(self) -> str:
        return f"units={self.units}, path={self.path!r}"


class SimpleRNNCell(KerasCell):
    """Keras ``SimpleRNNCell``: h' = act(x W + h U + b).

    Args:
        units: size of h.
        activation: default tanh.
        use_bias, kernel_initializer, recurrent_initializer, bias_initializer, *_regularizer,
        *_constraint, dropout, recurrent_dropout, seed, name, trainable: as Keras.
    """

    def __init__(self, units: int, activation="tanh", use_bias: bool = True, **kwargs):
        super().__init__(units, activation=activation, use_bias=use_bias, **kwargs)

    def canonical(self) -> eq.Canonical:
        p = self._w
        return eq.Canonical("rnn", p("kernel"), p("recurrent_kernel"), self._bias_or_none(),
                            self.activation)

    def gates(self) -> dict[str, torch.Tensor]:
        """Views: ``W_h`` (kernel), ``U_h`` (recurrent_kernel), ``b_h`` (bias)."""
        self.require_built("gates")
        return {"W_h": self.kernel, "U_h": self.recurrent_kernel,
                **({"b_h": self.bias} if self.use_bias else {})}

    def get_config(self) -> dict:
        config = super().get_config()
        del config["recurrent_activation"]
        return config


def gate_views(cell: KerasCell, letters: str) -> dict[str, torch.Tensor]:
    """Views of a Keras cell's weights per gate block (the last axis of its kernels: a
    ConvLSTM's ``[*kernel_size, in, G*F]`` too), named ``W_<g>``, ``U_<g>``, ``b_<g>``."""
    u, p = cell.units, cell._w
    out = {}
    for k, g in enumerate(letters):
        out[f"W_{g}"] = p("kernel")[..., k * u:(k + 1) * u]
        out[f"U_{g}"] = p("recurrent_kernel")[..., k * u:(k + 1) * u]
        if cell.use_bias:
            b = p("bias")
            if b.dim() == 2:  # GRU reset_after: row 0 input biases, row 1 recurrent biases
                out[f"b_{g}"], out[f"b_h{g}"] = b[0, k * u:(k + 1) * u], b[1, k * u:(k + 1) * u]
            else:
                out[f"b_{g}"] = b[k * u:(k + 1) * u]
    return out


class GRUCell(KerasCell):
    """Keras ``GRUCell`` (gate order z, r, h).

    z = σ(x W_z + h U_z + b_z), r = σ(x W_r + h U_r + b_r),
    c = act(x W_h + b_h + r ⊙ (h U_h + b_hh)) with ``reset_after=True`` (the default, cuDNN's;
    ``bias`` is ``(2, 3*units)``: input row, recurrent row), else act(x W_h + (r ⊙ h) U_h + b_h);
    h' = z ⊙ h + (1 - z) ⊙ c.
    """

    gates_count = 3

    def __init__(self, units: int, reset_after: bool = True, **kwargs):
        super().__init__(units, **kwargs)
        self.reset_after = bool(reset_after)

    def _bias_shape(self) -> list[int]:
        return [2, 3 * self.units] if self.reset_after else [3 * self.units]

    def canonical(self) -> eq.Canonical:
        p, b, b_h = self._w, self._bias_or_none(), None
        if b is not None and self.reset_after:
            b, b_h = b[0], b[1]
        return eq.Canonical("gru", p("kernel"), p("recurrent_kernel"), b, self.activation,
                            self.recurrent_activation, b_h=b_h, reset_after=self.reset_after)

    def gates(self) -> dict[str, torch.Tensor]:
        """Views per gate: ``W_z, W_r, W_h``, ``U_z, U_r, U_h``, ``b_z, b_r, b_h`` (input biases)
        and with ``reset_after`` the recurrent biases ``b_hz, b_hr, b_hh``."""
        self.require_built("gates")
        return gate_views(self, "zrh")

    def get_config(self) -> dict:
        return {**super().get_config(), "reset_after": self.reset_after}


class LSTMCell(KerasCell):
    """Keras ``LSTMCell`` (gate order i, f, c, o): c' = σ(f) ⊙ c + σ(i) ⊙ act(g),
    h' = σ(o) ⊙ act(c'). ``unit_forget_bias=True`` initializes the forget block of the bias to 1
    (stored, unlike TF1's run-time ``forget_bias``). Keras state lists are ``[h, c]``.
    """

    gates_count = 4

    def __init__(self, units: int, unit_forget_bias: bool = True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    @property
    def state_size(self) -> LSTMStateTuple:
        return LSTMStateTuple(self.units, self.units)

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        super().build(input_depth, dtype)
        if self.use_bias and self.unit_forget_bias:
            set_forget_bias(self)

    def canonical(self) -> eq.Canonical:
        p = self._w
        return eq.Canonical("lstm", p("kernel"), p("recurrent_kernel"), self._bias_or_none(),
                            self.activation, self.recurrent_activation)

    def gates(self) -> dict[str, torch.Tensor]:
        """Views per gate: ``W_i, W_f, W_c, W_o``, ``U_*``, ``b_*``."""
        self.require_built("gates")
        return gate_views(self, "ifco")

    def get_config(self) -> dict:
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


def set_forget_bias(cell: KerasCell) -> None:
    """``unit_forget_bias``: the forget block (i, f, c, o's second) of a built LSTM cell's
    ``bias`` set to 1, and its provenance says so."""
    bias = cell.bias
    with torch.no_grad():
        bias[cell.units:2 * cell.units] = 1.0
    bias.provenance = dataclasses.replace(bias.provenance,
                                          note="unit_forget_bias: forget block set to 1")


def keras_states(state: State) -> list:
    """Keras's state list: ``[h]`` or, for an LSTM, ``[h, c]``; a stack's (a tuple of its cells'
    states, ``StackedRNNCells``): one such list per cell."""
    if isinstance(state, LSTMStateTuple):
        return [state.h, state.c]
    if isinstance(state, tuple):
        return [keras_states(s) for s in state]
    return [state]


def state_count(cell: KerasCell) -> int:
    """How many tensors a cell's Keras state list holds: 2 for an LSTM's ``[h, c]``, else 1."""
    return 2 if isinstance(cell.state_size, LSTMStateTuple) else 1


def from_keras_states(cell: KerasCell, states, batch: int, argname: str = "initial_state") -> State:
    """Inverse of ``keras_states``, checked: a list (``[h]`` or ``[h, c]``) or a tensor; for a
    ``StackedRNNCells``, a list of those, one per cell.

    Raises:
        ValueError: the wrong number of tensors, or a tensor not of shape ``[batch, units]``.
    """
    stack = getattr(cell, "cells", None)
    if stack is not None:
        if not isinstance(states, (list, tuple)) or len(states) != len(stack):
            raise ValueError(f"{argname} for a stack of {len(stack)} cells must be a list of "
                             f"{len(stack)} state lists, one per cell ([h] or [h, c]), got "
                             f"{states!r:.80}")
        return tuple(from_keras_states(c, s, batch, f"{argname}[{k}]")
                     for k, (c, s) in enumerate(zip(stack, states, strict=True)))
    if torch.is_tensor(states):
        states = [states]
    lstm = state_count(cell) == 2
    want, shape = "[h, c]" if lstm else "[h]", cell.state_shape(batch)
    if not isinstance(states, (list, tuple)) or len(states) != state_count(cell):
        raise ValueError(f"{argname} for {type(cell).__name__} must be a list {want} of tensors "
                         f"of shape {cell.state_layout} = {list(shape)}, got {states!r:.80}")
    for k, s in enumerate(states):  # a None in shape: any size (a ConvLSTM's before its inputs)
        if not torch.is_tensor(s) or s.dim() != len(shape) or any(
                n is not None and n != m for n, m in zip(shape, s.shape, strict=True)):
            got = list(s.shape) if torch.is_tensor(s) else type(s).__name__
            raise ValueError(f"{argname}[{k}] must have shape {cell.state_layout} = "
                             f"{list(shape)}, got {got}")
    return LSTMStateTuple(states[1], states[0]) if lstm else states[0]
