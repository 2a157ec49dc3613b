"""Keras's convolutional LSTM: ``ConvLSTM1D``, ``ConvLSTM2D``, ``ConvLSTM3D`` (Shi et al., 2015).

An LSTM whose products are convolutions. ``kernel [*kernel_size, channels, 4*filters]`` reads
the inputs (with ``strides``, ``padding`` and ``dilation_rate``), ``recurrent_kernel
[*kernel_size, filters, 4*filters]`` the state (stride 1, ``"same"`` padding), ``bias
[4*filters]``; the gate blocks i, f, c, o are on the last axis, as in Keras's LSTM. Inputs are
``[batch, time, *spatial, channels]`` (``data_format="channels_last"``, the default) or
``[batch, time, channels, *spatial]``; the states ``h`` and ``c`` are ``[batch, *spatial_out,
filters]`` (or channels first), ``spatial_out`` the input convolution's output size.

The layers are ``RNN``s: masks, ``go_backwards``, ``stateful``, ``initial_state`` and
``return_state`` work as for the LSTM. A mask may also be per position, ``[batch, time,
*spatial]``, as Keras's ``Masking`` makes it over channels-last frames (a pixel zero in every
channel): Keras then holds that position's state and repeats its output, and so does rnnkit.

The loop runs channels first (torch's convolution layout; channels-last inputs stay channels
last in memory, which torch's convolutions prefer), two convolutions a step
(``ConvWeights.products``, ``rnnkit.cells.equations.conv_lstm``). No fast path serves a
ConvLSTM (``rnnkit.fast.explain`` says so): its time goes into torch's convolutions.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from rnnkit.activations import Activation
from rnnkit.cells import equations as eq
from rnnkit.cells.base import LSTMStateTuple, RNNCell
from rnnkit.layers.base import check_rank
from rnnkit.layers.cells import KerasCell, gate_views, set_forget_bias
from rnnkit.layers.recurrent import _KerasRNN

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_AXES = {1: "steps", 2: "rows, cols", 3: "dim1, dim2, dim3"}


def _tuple(value, rank: int, argname: str) -> tuple[int, ...]:
    """An int or ``rank`` ints, each positive, as a tuple (Keras's ``standardize_tuple``)."""
    values = (value,) * rank if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != rank or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                      for v in values):
        raise ValueError(f"{argname} must be a positive int or {rank} positive ints, got "
                         f"{value!r}")
    return values


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's ``"same"`` padding of one axis: ``ceil(size / stride)`` outputs, the
    padding split evenly with the odd one after (an even kernel pads one more at the end)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              strides: tuple[int, ...], dilation: tuple[int, ...],
              pads: list[tuple[int, int]], groups: int) -> torch.Tensor:
    """A convolution of ``x`` ``[N, C, *spatial]`` with TF-style padding ``pads`` per axis."""
    conv = _CONV[len(strides)]
    if all(lo == hi for lo, hi in pads):
        return conv(x, weight, bias, strides, [lo for lo, _ in pads], dilation, groups)
    flat = [p for lo, hi in reversed(pads) for p in (lo, hi)]  # F.pad: the last axis first
    return conv(F.pad(x, flat), weight, bias, strides, 0, dilation, groups)


def _per_gate(v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``v`` ``[B, C, ...]`` as four copies side by side, ``[B, 4 * C, ...]``, dropped by
    ``mask`` ``[B, 4, C, ...]`` if any."""
    copies = v.unsqueeze(1) * mask if mask is not None else v.unsqueeze(1).expand(-1, 4,
                                                                                 *v.shape[1:])
    return copies.flatten(1, 2)


@dataclasses.dataclass(frozen=True)
class ConvWeights:
    """A ConvLSTM cell's weights for one unroll, in torch's convolution layout (channels first),
    with its options and this sequence's dropout masks."""

    W: torch.Tensor  # [4F, C, *kernel_size]
    U: torch.Tensor  # [4F, F, *kernel_size]
    b: torch.Tensor | None  # [4F]
    activation: Activation
    recurrent_activation: Activation
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: str  # "valid" | "same" (the inputs'; the state's is always "same", stride 1)
    x_mask: torch.Tensor | None = None  # input dropout, one mask per gate: [B, 4, C, *spatial]
    h_mask: torch.Tensor | None = None  # recurrent dropout: [B, 4, F, *spatial_out]

    def products(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``x ∗ W + b + h ∗ U`` for one step, ``x`` ``[B, C, *spatial]`` and ``h`` ``[B, F,
        *spatial_out]``. With dropout each gate's block reads its own dropped copies (a grouped
        convolution of the four). Per step, not for the whole sequence at once as the LSTM's
        ``x W``: a step's output stays in the caches, where the sequence's went through memory
        (a training step measured 1.4x slower so, a one-channel input's convolution 8x; one
        convolution of ``[x, h]`` with ``[W, U]`` per step gained nothing measurable)."""
        rank, per_gate = len(self.strides), self.x_mask is not None or self.h_mask is not None
        ones, groups = (1,) * rank, 4 if per_gate else 1
        if per_gate:  # [B, 4 * C, *spatial]: gate g's copy at channels g*C:(g+1)*C
            x, h = _per_gate(x, self.x_mask), _per_gate(h, self.h_mask)
        pads = self._pads(x.shape[-rank:], self.strides, self.dilation, self.padding)
        same = self._pads(h.shape[-rank:], ones, ones, "same")
        z = _convolve(x, self.W, self.b, self.strides, self.dilation, pads, groups)
        # in place: a convolution's backward needs not its output (no 8 MB temporary a step)
        return z.add_(_convolve(h, self.U, None, ones, ones, same, groups))

    def _pads(self, spatial, strides, dilation, padding: str) -> list[tuple[int, int]]:
        if padding == "valid":
            return [(0, 0)] * len(spatial)
        return [same_pads(n, k, s, d) for n, k, s, d in zip(spatial, self.W.shape[2:], strides,
                                                          dilation, strict=True)]


class ConvLSTMCell(KerasCell):
    """Keras's ``ConvLSTMCell``: one step of a convolutional LSTM (see the module docstring).

    Args:
        rank: 1, 2 or 3, the convolution's.
        filters: channels of ``h`` and ``c``.
        kernel_size, strides, dilation_rate: an int or ``rank`` ints (strides and dilation
            above 1 together are refused, as Keras does).
        padding: ``"valid"`` or ``"same"`` (TensorFlow's: the odd padding goes last), of the
            inputs' convolution.
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.
        unit_forget_bias: the forget block of ``bias`` starts at 1.
        activation, recurrent_activation, use_bias, the initializers ("glorot_uniform",
        "orthogonal", "zeros"), regularizers, constraints, dropout, recurrent_dropout, seed,
        name, trainable: as ``rnnkit.layers.LSTMCell``; dropout draws one mask per gate over
        the whole step input (channels and positions), as Keras's.

    Raises:
        ValueError: an argument out of its range, named.
    """

    gates_count = 4

    def __init__(self, rank: int, filters: int, kernel_size, strides=1, padding: str = "valid",
                 data_format: str | None = None, dilation_rate=1, unit_forget_bias: bool = True,
                 **kwargs):
        if rank not in _CONV:
            raise ValueError(f"rank must be 1, 2 or 3, got {rank!r}")
        super().__init__(filters, **kwargs)
        self.rank = rank
        self.kernel_size = _tuple(kernel_size, rank, "kernel_size")
        self.strides = _tuple(strides, rank, "strides")
        self.dilation_rate = _tuple(dilation_rate, rank, "dilation_rate")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"strides {self.strides} and dilation_rate {self.dilation_rate}: "
                             "one of them must be 1 (Keras refuses both above 1)")
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.data_format = data_format or "channels_last"
        if self.data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got "
                             f"{data_format!r}")
        self.unit_forget_bias = bool(unit_forget_bias)
        self.input_spatial: tuple[int, ...] | None = None  # the last inputs' (read_inputs)

    @property
    def filters(self) -> int:
        return self.units

    @property
    def state_size(self) -> LSTMStateTuple:
        return LSTMStateTuple(self.units, self.units)

    # -- shapes ----------------------------------------------------------------------------
    @property
    def _first(self) -> bool:
        return self.data_format == "channels_first"

    def _layout(self, lead: str) -> str:
        axes = _AXES[self.rank]
        return f"[{lead}, channels, {axes}]" if self._first else f"[{lead}, {axes}, channels]"

    def read_inputs(self, x: torch.Tensor, lead: str = "batch, time") -> int:
        """Check inputs ``[batch, time, ...]`` (or one step's, ``lead="batch"``), note their
        spatial shape (the states' follows from it) and return their channels."""
        rank = self.rank + 1 + lead.count(",") + 1
        check_rank(x, rank, "inputs", self._layout(lead))
        channel = rank - self.rank - 1 if self._first else rank - 1
        spatial = tuple(x.shape[channel + 1:] if self._first else x.shape[channel - self.rank:
                                                                          channel])
        self._spatial_out(spatial)  # raises if the kernel does not fit
        self.input_spatial = spatial
        return x.shape[channel]

    def _spatial_out(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        out = []
        for n, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate,
                              strict=True):
            size = -(-n // s) if self.padding == "same" else (n - (k - 1) * d - 1) // s + 1
            if size <= 0:
                raise ValueError(f"inputs' spatial shape {list(spatial)} is smaller than the "
                                 f"kernel's reach (kernel_size {self.kernel_size}, "
                                 f"dilation_rate {self.dilation_rate}, padding 'valid')")
            out.append(size)
        return tuple(out)

    def read_mask(self, mask, batch: int, steps: int, time_major: bool = False):
        """``[batch, time]``, or Keras's Masking over channels-last inputs: ``[batch, time,
        *spatial]``, which Keras applies per position (a position's ``h`` and ``c`` held, its
        output the previous one), where the states have the inputs' spatial shape."""
        if not (torch.is_tensor(mask) and mask.dim() == self.rank + 2):
            return super().read_mask(mask, batch, steps, time_major)
        want = (batch, steps, *self._spatial_out(self.input_spatial))
        if self._first or tuple(mask.shape) != want or tuple(want[2:]) != self.input_spatial:
            raise ValueError(f"mask must have shape [batch, time] = [{batch}, {steps}], or per "
                             f"position [batch, time, {_AXES[self.rank]}] = {list(want)} for "
                             "channels-last inputs whose states keep their spatial shape "
                             f"(Keras's Masking), got {list(mask.shape)}")
        return mask.bool()

    @property
    def step_shape(self) -> list[int] | None:
        """``[*spatial, channels]`` (or channels first) of the last inputs read, once built."""
        if self.input_depth is None or self.input_spatial is None:
            return None
        spatial = list(self.input_spatial)
        return [self.input_depth, *spatial] if self._first else [*spatial, self.input_depth]

    def state_shape(self, batch: int) -> tuple:
        out = (self._spatial_out(self.input_spatial) if self.input_spatial is not None
               else (None,) * self.rank)
        return (batch, self.units, *out) if self._first else (batch, *out, self.units)

    @property
    def state_layout(self) -> str:
        return self._layout("batch").replace("channels", "filters")

    def zero_state(self, batch_size: int, dtype: torch.dtype = torch.float32, device=None):
        """Zeros ``[batch, *spatial_out, filters]`` for ``c`` and ``h``, for the spatial shape
        of the last inputs read."""
        self.require_built("zero_state")
        shape, device = self.state_shape(batch_size), device or self.kernel.device
        return LSTMStateTuple(*(torch.zeros(shape, dtype=dtype, device=device) for _ in "ch"))

    def weight_count(self, depth: int) -> int:
        volume, n = math.prod(self.kernel_size), 4 * self.units
        return volume * n * (depth + self.units) + (n if self.use_bias else 0)

    # -- weights ---------------------------------------------------------------------------
    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        k, n = list(self.kernel_size), 4 * self.units
        self._weight("kernel", [*k, input_depth, n], dtype)
        self._weight("recurrent_kernel", [*k, self.units, n], dtype)
        if self.use_bias:
            self._weight("bias", [n], dtype)
            if self.unit_forget_bias:
                set_forget_bias(self)

    def canonical(self):
        raise TypeError(f"{type(self).__name__} has no Canonical (matrix) weights: its products "
                        "are convolutions, which torch.nn, cuDNN's RNNs and ONNX's RNN "
                        "operators do not have")

    def sequence_params(self) -> ConvWeights:
        # Keras [*k, in, out] -> torch [out, in, *k]: views, no copy
        axes = (self.rank + 1, self.rank, *range(self.rank))
        return ConvWeights(self.kernel.permute(axes), self.recurrent_kernel.permute(axes),
                           self._bias_or_none(), self.activation, self.recurrent_activation,
                           self.strides, self.dilation_rate, self.padding,
                           self._masks.get("input"), self._masks.get("recurrent"))

    def gates(self) -> dict[str, torch.Tensor]:
        """Views per gate: ``W_i, W_f, W_c, W_o`` ``[*kernel_size, channels, filters]``,
        ``U_*`` ``[*kernel_size, filters, filters]``, ``b_*``."""
        self.require_built("gates")
        return gate_views(self, "ifco")

    # -- the step and the loop ---------------------------------------------------------------
    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device,
                       training: bool | None = None) -> None:
        """Draw this sequence's dropout masks, one per gate over a whole step input (inputs:
        the last inputs' spatial shape), none outside training."""
        self._masks = {}
        if not (self.training if training is None else training):
            return
        out = self._spatial_out(self.input_spatial)
        for kind, rate, shape in (("input", self.dropout, (self.input_depth, *self.input_spatial)),
                                  ("recurrent", self.recurrent_dropout, (self.units, *out))):
            if rate > 0:
                self._masks[kind] = self.draw_mask((batch_size, 4, *shape), rate, dtype, device)

    def _to_first(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._first else x.movedim(-1, -(self.rank + 1))

    def _to_last(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._first else x.movedim(-(self.rank + 1), -1)

    def prepare_inputs(self, inputs: torch.Tensor, params: ConvWeights) -> torch.Tensor:
        return inputs  # the inputs' convolution is each step's (ConvWeights.products)

    def step(self, x: torch.Tensor, state: LSTMStateTuple, params: ConvWeights):
        c, h = eq.conv_lstm(x, state.c, state.h, params.products, params.activation,
                            params.recurrent_activation)
        return h, LSTMStateTuple(c, h)

    loop = RNNCell.loop  # the step is the cell's own, with no per-step masks of FusedCell's

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        """``RNNCell.unroll`` over ``[T, B, ...]`` inputs and states in ``data_format``; the
        loop runs channels first."""
        state = LSTMStateTuple(*map(self._to_first, state))
        outputs, final = RNNCell.unroll(self, self._to_first(inputs), state, mask, masked_output,
                                        chunk, fast)
        return self._to_last(outputs), LSTMStateTuple(*map(self._to_last, final))

    def forward(self, inputs: torch.Tensor, state: LSTMStateTuple):
        """One step: ``inputs`` ``[batch, *spatial, channels]`` (in ``data_format``) and
        ``LSTMStateTuple(c, h)`` to ``(h, LSTMStateTuple(c', h'))``."""
        self.ensure_built(self.read_inputs(inputs, "batch"), inputs.dtype)
        want = self.state_shape(inputs.shape[0])
        if not isinstance(state, LSTMStateTuple) or any(
                not torch.is_tensor(s) or tuple(s.shape) != want for s in state):
            raise ValueError(f"state must be an LSTMStateTuple(c, h) of tensors of shape "
                             f"{self.state_layout} = {list(want)}")
        params = self.sequence_params()
        h, new = self.step(self.prepare_inputs(self._to_first(inputs), params),
                           LSTMStateTuple(*map(self._to_first, state)), params)
        return self._to_last(h), LSTMStateTuple(*map(self._to_last, new))

    def keras_call(self, inputs: torch.Tensor, states: list[torch.Tensor]):
        self.read_inputs(inputs, "batch")  # the states' shape follows the inputs'
        return super().keras_call(inputs, states)

    def get_config(self) -> dict:
        config = super().get_config()
        config["filters"] = config.pop("units")
        return {"rank": self.rank, **config, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "data_format": self.data_format,
                "dilation_rate": self.dilation_rate, "unit_forget_bias": self.unit_forget_bias}

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, filters={self.units}, kernel_size={self.kernel_size}, "
                f"path={self.path!r}")


class ConvLSTM(_KerasRNN):
    """The ConvLSTM layers' base: an ``RNN`` of a ``ConvLSTMCell`` of rank ``rank``."""

    rank = 0
    cell_class = ConvLSTMCell
    cell_attrs = _KerasRNN.cell_attrs | {"filters", "kernel_size", "strides", "padding",
                                         "data_format", "dilation_rate"}

    def __init__(self, filters: int, kernel_size, strides=1, padding: str = "valid",
                 data_format: str | None = None, dilation_rate=1, **kwargs):
        if kwargs.get("time_major"):
            raise TypeError(f"{type(self).__name__} takes no time_major (Keras's ConvLSTM "
                            "layers read [batch, time, ...] inputs)")
        super().__init__(filters, kernel_size=kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate, **kwargs)

    def make_cell(self, units: int, **kwargs) -> ConvLSTMCell:
        return ConvLSTMCell(self.rank, units, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["rank"]
        return config


class ConvLSTM1D(ConvLSTM):
    """1D convolutional LSTM, as ``keras.layers.ConvLSTM1D``: inputs ``[batch, time, steps,
    channels]``.

    Args:
        filters, kernel_size, strides, padding, data_format, dilation_rate, unit_forget_bias
        and the cell's other arguments: see ``ConvLSTMCell``.
        return_sequences, return_state, go_backwards, stateful, unroll, zero_output_for_mask,
        activity_regularizer, name, trainable, fast, mask_with_initial_state: see ``RNN``.
    """

    rank = 1


class ConvLSTM2D(ConvLSTM):
    """2D convolutional LSTM, as ``keras.layers.ConvLSTM2D``: inputs ``[batch, time, rows, cols,
    channels]``; arguments as ``ConvLSTM1D``.

    Example:
        >>> y = ConvLSTM2D(8, 3, padding="same")(torch.randn(2, 5, 16, 16, 3))  # doctest: +SKIP
    """

    rank = 2


class ConvLSTM3D(ConvLSTM):
    """3D convolutional LSTM, as ``keras.layers.ConvLSTM3D``: inputs ``[batch, time, dim1, dim2,
    dim3, channels]``; arguments as ``ConvLSTM1D``."""

    rank = 3
