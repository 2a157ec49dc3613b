"""Keras recurrent layers: ``RNN(cell)`` and ``SimpleRNN``, ``GRU``, ``LSTM``.

The layer owns the options (masks, ``go_backwards``, ``stateful``, ``initial_state``, what to
return); the cell owns the weights and the step; the time loop is the cell's ``unroll``
(``rnnkit.unroll.scan``), shared with ``dynamic_rnn``. Keras mask semantics: at a masked step
(anywhere, not only at the end) the state is carried over and the output repeats the previous
one (zeros before the first real step), or is zero with ``zero_output_for_mask=True``.
"""

from __future__ import annotations

import contextlib

import torch

from rnnkit.fast.dispatch import check_fast, fast_mode
from rnnkit.layers import penalties
from rnnkit.layers.base import Layer, check_rank, deserialize, serialize, snake
from rnnkit.layers.cells import (
    GRUCell,
    KerasCell,
    LSTMCell,
    SimpleRNNCell,
    from_keras_states,
    keras_states,
    state_count,
)
from rnnkit.layers.stacked import StackedRNNCells

_RNN_OPTIONS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll",
                "zero_output_for_mask")


class RNN(Layer):
    """Runs a Keras cell over ``[batch, time, features]`` inputs, as ``keras.layers.RNN``.

    Args:
        cell: a ``SimpleRNNCell``, ``GRUCell`` or ``LSTMCell``, or a list of them (or a
            ``StackedRNNCells``): a stack, whose states nest, one list per cell.
        return_sequences: return all outputs ``[batch, time, units]`` (else the last one).
        return_state: also return the final states (``[h]``, or ``[h, c]`` for an LSTM).
        go_backwards: read the inputs (and mask) in reverse; outputs stay in processing order.
        stateful: each call starts from the previous call's final states (same batch size);
            ``reset_states()`` zeroes them.
        unroll: accepted for Keras compatibility; the loop is the same either way.
        zero_output_for_mask: masked steps output zeros instead of the previous output.
        time_major: inputs and returned sequences are ``[time, batch, ...]``, as tf.keras's
            (Keras 2) option, and so is the mask, ``[time, batch]`` (as tf.keras reads it, and
            as a Masking layer over time-major inputs makes it). Keras 3 has no such option:
            ``get_config`` has it only when it is set, and Keras 3 files refuse it.
        activity_regularizer: a penalty on each output (and returned state), in ``losses``
            (see ``Layer.set_activity_regularizer``).
        fast: the fast-path switch for this layer's unroll (``rnnkit.fast``): ``"auto"``,
            ``True``, ``False``, or None (default: the enclosing ``fast_mode`` block's, else
            ``"auto"``). Not a Keras option: ``get_config`` has it only when it is set.
        mask_with_initial_state: a call with ``initial_state`` and no ``mask`` uses the mask
            ``inputs`` carries, as tf.keras does; by default, as in Keras 3, it uses none
            (``Layer._implicit_mask``). Layers loaded from tf.keras files have it set. Not a
            Keras 3 option: ``get_config`` has it only when it is set.
        name, trainable: as Keras.

    Call: ``layer(inputs, mask=None, training=None, initial_state=None)``; ``mask`` is
    ``[batch, time]`` bool (True = real step; ``[time, batch]`` with ``time_major``), by default
    the one ``inputs`` carries (not with ``initial_state``, as in Keras 3: see
    ``mask_with_initial_state``). A stack's states (``initial_state``, ``return_state``) nest, one
    list per cell: ``[[h, c], [h]]``; in a functional graph, as in Keras 3's, a cell other than
    an LSTM gives its ``h`` alone.

    Raises:
        TypeError: ``cell`` is not a Keras cell.
        ValueError: ``fast`` is not None, ``"auto"``, ``True`` or ``False``.
    """

    def __init__(self, cell: KerasCell, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, unroll: bool = False,
                 zero_output_for_mask: bool = False, time_major: bool = False,
                 activity_regularizer=None, name: str | None = None, trainable: bool = True,
                 fast=None, mask_with_initial_state: bool = False):
        if isinstance(cell, (list, tuple)):
            cell = StackedRNNCells(cell)
        if not isinstance(cell, (KerasCell, StackedRNNCells)):
            raise TypeError(f"cell must be a Keras cell (SimpleRNNCell, GRUCell, LSTMCell) or a "
                            f"list of them, got {type(cell).__name__}")
        if fast is not None:
            check_fast(fast)
        super().__init__(name=name, trainable=trainable)
        self.set_activity_regularizer(activity_regularizer)
        self.cell, self.fast = cell, fast
        self.return_sequences, self.return_state = bool(return_sequences), bool(return_state)
        self.go_backwards, self.stateful = bool(go_backwards), bool(stateful)
        self.unroll, self.zero_output_for_mask = bool(unroll), bool(zero_output_for_mask)
        self.time_major = bool(time_major)
        self.mask_with_initial_state = bool(mask_with_initial_state)
        self.states: list[torch.Tensor] | None = None
        self.set_path(self.name)

    def set_path(self, path: str) -> None:
        super().set_path(path)
        if self.cell.input_depth is None:
            self.cell.path = f"{path}/{self.cell.name}"

    @property
    def state_count(self) -> int:
        """How many states a call returns after its output: ``[h]``, ``[h, c]``, or one list
        per cell of a stack."""
        if isinstance(self.cell, StackedRNNCells):
            return len(self.cell.cells)
        return state_count(self.cell)

    def num_outputs(self) -> int:
        return 1 + self.state_count if self.return_state else 1

    def output_structure(self) -> list | None:
        # Keras 3's symbolic outputs of a stack: an LSTM cell's states as a list [h, c], any
        # other cell's state as one tensor (eager calls give [h] lists, as Keras's do)
        if not (self.return_state and isinstance(self.cell, StackedRNNCells)):
            return super().output_structure()
        return [None, *([None, None] if isinstance(c, LSTMCell) else None
                        for c in self.cell.cells)]

    def _initial_state(self, initial_state, batch: int, x: torch.Tensor):
        if initial_state is not None:
            return from_keras_states(self.cell, initial_state, batch)
        if self.stateful and self.states is not None:
            held = _first(self.states).shape[0]
            if held != batch:
                raise ValueError(f"inputs of a stateful {type(self).__name__} must keep batch size "
                                 f"{held} (the states' batch), got {batch}")
            return from_keras_states(self.cell, self.states, batch)
        return self.cell.zero_state(batch, x.dtype, x.device)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None,
                training: bool | None = None, initial_state=None):
        if self.time_major:
            inputs = check_rank(inputs, 3, "inputs", "[time, batch, features]").transpose(0, 1)
        x, depth = inputs, self.cell.read_inputs(inputs)
        if not x.dtype.is_floating_point:
            raise TypeError(f"inputs must be a floating tensor, got dtype {x.dtype}")
        batch, steps = x.shape[:2]
        if steps == 0:
            raise ValueError(f"inputs must have at least one time step, got shape {list(x.shape)}")
        mask = self.cell.read_mask(mask, batch, steps, self.time_major)
        self.cell.ensure_built(depth, x.dtype)
        state = self._initial_state(initial_state, batch, x)
        xs, tm = x.transpose(0, 1), (mask.transpose(0, 1) if mask is not None else None)
        if self.go_backwards:
            xs, tm = xs.flip(0), (tm.flip(0) if tm is not None else None)
        self.cell.begin_sequence(batch, x.dtype, x.device, self.is_training(training))
        mode = contextlib.nullcontext() if self.fast is None else fast_mode(self.fast)
        try:
            with mode:
                outputs, final = self.cell.unroll(
                    xs, state, tm, "zero" if self.zero_output_for_mask else "previous")
        finally:
            self.cell.end_sequence()
        states = keras_states(final)
        if self.stateful:
            self.states = _detached(states)
        out = (outputs if self.time_major else outputs.transpose(0, 1)) \
            if self.return_sequences else outputs[-1]
        return [out, *states] if self.return_state else out

    def reset_states(self, states=None) -> None:
        """Zero the stored states of a stateful layer, or set them (``[h]`` / ``[h, c]``)."""
        if states is None:
            self.states = None
            return
        batch = _first(states).shape[0]
        self.states = keras_states(from_keras_states(self.cell, states, batch, "states"))

    reset_state = reset_states

    def compute_mask(self, inputs, mask):
        out = mask if self.return_sequences else None
        return [out] + [None] * self.state_count if self.return_state else out

    def _options(self) -> dict:
        # options that are not Keras 3's, in a config only where they are set
        when_set = {**({} if self.fast is None else {"fast": self.fast}),
                    **({"time_major": True} if self.time_major else {}),
                    **({"mask_with_initial_state": True} if self.mask_with_initial_state else {})}
        return {**{k: getattr(self, k) for k in _RNN_OPTIONS}, **when_set,
                "activity_regularizer": penalties.serialize(self.activity_regularizer)}

    def get_config(self) -> dict:
        return {**super().get_config(), **self._options(), "cell": serialize(self.cell)}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        return cls(deserialize(config.pop("cell")), **config)


def _first(states) -> torch.Tensor:
    """The first tensor of a (nested) state list."""
    while isinstance(states, (list, tuple)) and states:
        states = states[0]
    if not torch.is_tensor(states):
        raise ValueError(f"states must be tensors or (nested) lists of them, got {states!r:.80}")
    return states


def _detached(states: list) -> list:
    return [_detached(s) if isinstance(s, list) else s.detach() for s in states]


class _KerasRNN(RNN):
    """A layer that makes its own cell from the Keras arguments (``SimpleRNN``, ``GRU``, ``LSTM``)."""

    cell_class: type[KerasCell] = KerasCell
    takes_use_cudnn = False  # Keras 3's GRU and LSTM take use_cudnn, its SimpleRNN does not

    def __init__(self, units: int, *, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, stateful: bool = False, unroll: bool = False,
                 zero_output_for_mask: bool = False, time_major: bool = False,
                 activity_regularizer=None, name: str | None = None, trainable: bool = True,
                 fast=None, use_cudnn=None, mask_with_initial_state: bool = False, **cell_kwargs):
        if use_cudnn is not None and not self.takes_use_cudnn:
            raise TypeError(f"{type(self).__name__} got an unexpected keyword argument "
                            "'use_cudnn' (Keras's GRU and LSTM take it)")
        if use_cudnn not in (None, "auto", True, False):
            raise ValueError(f"use_cudnn must be 'auto', True or False, got {use_cudnn!r}")
        cell_kwargs.setdefault("name", snake(self.cell_class.__name__))  # Keras: "lstm_cell"
        cell = self.make_cell(units, trainable=trainable, **cell_kwargs)
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=stateful, unroll=unroll,
                         zero_output_for_mask=zero_output_for_mask, time_major=time_major,
                         activity_regularizer=activity_regularizer, name=name,
                         trainable=trainable, fast=fast,
                         mask_with_initial_state=mask_with_initial_state)

    def make_cell(self, units: int, **kwargs) -> KerasCell:
        """The layer's cell, from its arguments."""
        return self.cell_class(units, **kwargs)

    def get_config(self) -> dict:
        cell = self.cell.get_config()
        del cell["name"], cell["trainable"]
        return {"name": self.name, "trainable": self.trainable, **self._options(), **cell}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    cell_attrs = frozenset({"units", "activation", "recurrent_activation", "use_bias", "dropout",
                            "recurrent_dropout", "reset_after", "unit_forget_bias", "kernel",
                            "recurrent_kernel", "bias"})  # read through to the cell

    def __getattr__(self, name: str):
        if name in type(self).cell_attrs:
            return getattr(self.cell, name)
        return super().__getattr__(name)

    def gates(self) -> dict[str, torch.Tensor]:
        """The cell's per-gate views of ``kernel``, ``recurrent_kernel`` and ``bias``."""
        return self.cell.gates()


class SimpleRNN(_KerasRNN):
    """Fully connected RNN, as ``keras.layers.SimpleRNN``: h' = act(x W + h U + b).

    Args:
        units: size of the output and state.
        activation ("tanh"), use_bias, kernel_initializer ("glorot_uniform"),
        recurrent_initializer ("orthogonal"), bias_initializer ("zeros"), kernel/recurrent/bias
        regularizer and constraint, dropout, recurrent_dropout, seed: the cell's (Keras names;
        initializer names resolve through ``rnnkit.init.get``).
        return_sequences, return_state, go_backwards, stateful, unroll, zero_output_for_mask,
        time_major, activity_regularizer, name, trainable, fast, mask_with_initial_state: see
        ``RNN``.

    Example:
        >>> y = SimpleRNN(8, return_sequences=True)(torch.randn(4, 10, 3))  # doctest: +SKIP
    """

    cell_class = SimpleRNNCell


class GRU(_KerasRNN):
    """Gated recurrent unit, as ``keras.layers.GRU`` (gate order z, r, h).

    Args:
        units, activation ("tanh"), recurrent_activation ("sigmoid"), reset_after (True: the
        cuDNN variant, ``bias`` of shape ``(2, 3*units)``) and the rest: see ``SimpleRNN``.
        use_cudnn: Keras 3's switch of its cuDNN implementation (``"auto"``, True, False),
            accepted for Keras code: it changes no number in Keras, and rnnkit's paths give the
            same numbers too (``fast=`` picks them). As in Keras, not in ``get_config``.
    """

    cell_class = GRUCell
    takes_use_cudnn = True


class LSTM(_KerasRNN):
    """Long short-term memory, as ``keras.layers.LSTM`` (gate order i, f, c, o).

    Args:
        units, activation ("tanh"), recurrent_activation ("sigmoid"), unit_forget_bias (True:
        the forget block of ``bias`` starts at 1), use_cudnn (see ``GRU``) and the rest: see
        ``SimpleRNN``. States are ``[h, c]``.
    """

    cell_class = LSTMCell
    takes_use_cudnn = True
