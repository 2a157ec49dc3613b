"""TF1 LSTM cells: ``BasicLSTMCell``, ``LSTMCell`` (peepholes, clipping, projection) and
``LayerNormLSTMCell`` (TF's ``LayerNormBasicLSTMCell``). Gate order in TF1 kernels: i, j, f, o
(j is the candidate); ``forget_bias`` is added at run time and never stored."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import replace

import torch

from rnnkit import activations
from rnnkit import init as _init
from rnnkit.cells import equations as eq
from rnnkit.cells.base import LSTMStateTuple, check_units, join_state, split_state
from rnnkit.cells.dropout import keep_mask
from rnnkit.cells.fused import FusedCell, split_kernel

TF1_GATE_ORDER = (0, 2, 1, 3)  # where i, f, g, o sit in a TF1 kernel's i, j, f, o


def _forget_shift(units: int, forget_bias: float, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """``forget_bias`` on the f block of a TF1 kernel's i, j, f, o bias, zeros elsewhere (an
    unroll adds it in one op): made once per size, value, dtype and device, except while
    torch.compile traces (its cache wrapper would be ignored, with a warning)."""
    if torch.compiler.is_compiling():
        return _make_shift(units, forget_bias, dtype, device)
    return _cached_shift(units, forget_bias, dtype, device)


def _make_shift(units: int, forget_bias: float, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    shift = torch.zeros(4, units, dtype=dtype, device=device)
    shift[2] = forget_bias
    return shift.flatten()


_cached_shift = functools.lru_cache(maxsize=32)(_make_shift)  # only read, never written


class _TF1LSTMBase(FusedCell):
    num_units: int
    forget_bias: float
    state_is_tuple = True  # False: TF's deprecated concatenated state, [c, h] side by side

    def _state_sizes(self) -> LSTMStateTuple:
        return LSTMStateTuple(self.num_units, self.output_size)

    @property
    def state_size(self) -> LSTMStateTuple | int:
        sizes = self._state_sizes()
        return sizes if self.state_is_tuple else sum(sizes)

    def unroll_with(self, params, inputs, state, mask=None, masked_output="zero", chunk=None,
                    fast=None):
        # A concatenated state is taken apart for the unroll (every path runs the tuple) and
        # put back together after it; a step (FusedCell.step) reads either.
        if self.state_is_tuple:
            return super().unroll_with(params, inputs, state, mask, masked_output, chunk, fast)
        outputs, final = super().unroll_with(params, inputs, split_state(state, self.num_units),
                                             mask, masked_output, chunk, fast)
        return outputs, join_state(final)

    def _gate_views(self, kernel: torch.Tensor, bias: torch.Tensor | None) -> dict:
        H = self.num_units
        W, U = split_kernel(kernel, self.input_depth)
        out = {}
        for k, g in enumerate("ijfo"):
            out[f"W_{g}"], out[f"U_{g}"] = W[:, k * H:(k + 1) * H], U[:, k * H:(k + 1) * H]
            if bias is not None:
                out[f"b_{g}"] = bias[k * H:(k + 1) * H]
        return out

    def _stored(self, kernel: torch.Tensor, bias: torch.Tensor | None):
        """``W, U, b`` as the kernel stores them (i, j, f, o): views, and the bias plus
        ``forget_bias`` on its f block."""
        W, U = split_kernel(kernel, self.input_depth)
        if bias is not None and self.forget_bias != 0.0:
            bias = bias + _forget_shift(self.num_units, self.forget_bias, bias.dtype, bias.device)
        return W, U, bias

    def canonical(self) -> eq.Canonical:
        """``sequence_params()`` in Keras gate order (i, f, g, o): copies of the kernel's
        blocks."""
        return self.sequence_params().in_keras_order()


class BasicLSTMCell(_TF1LSTMBase):
    """LSTM without peepholes or projection, as ``tf.nn.rnn_cell.BasicLSTMCell``.

    i, j, f, o = [x, h] K + b;  c' = σ(f + forget_bias) ⊙ c + σ(i) ⊙ act(j);  h' = act(c') ⊙ σ(o).
    Variables: ``kernel [depth+H, 4H]`` (scope initializer, else glorot_uniform), ``bias [4H]``
    (zeros). State: ``LSTMStateTuple(c, h)``, or with ``state_is_tuple=False`` (deprecated in
    TF) one tensor ``[batch, 2H]``, c then h (every path runs either).
    """

    base_name = "basic_lstm_cell"

    def __init__(self, num_units: int, forget_bias: float = 1.0, state_is_tuple: bool = True,
                 activation=None, reuse: bool | None = None, name: str | None = None,
                 dtype: torch.dtype | None = None, input_size: int | None = None):
        check_units(num_units)
        self.num_units = num_units
        self.forget_bias = float(forget_bias)
        self.state_is_tuple = bool(state_is_tuple)
        self.activation = activations.get(activation)
        super().__init__(name=name, reuse=reuse, input_size=input_size, dtype=dtype)

    @property
    def output_size(self) -> int:
        return self.num_units

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        H = self.num_units
        self.add_variable("kernel", [input_depth + H, 4 * H], dtype)
        self.add_variable("bias", [4 * H], dtype, _init.zeros(), "cell default")

    def gates(self) -> dict[str, torch.Tensor]:
        """Views per gate: ``W_i, W_j, W_f, W_o``, ``U_*``, ``b_*`` (forget_bias not included)."""
        self.require_built("gates")
        return self._gate_views(self.get_parameter("kernel"), self.get_parameter("bias"))

    def sequence_params(self) -> eq.Canonical:
        W, U, b = self._stored(self.get_parameter("kernel"), self.get_parameter("bias"))
        return eq.Canonical("lstm", W, U, b, self.activation, torch.sigmoid,
                            gate_order=TF1_GATE_ORDER)


class LSTMCell(_TF1LSTMBase):
    """LSTM with optional peepholes, cell clipping and projection, as ``tf.nn.rnn_cell.LSTMCell``.

    Adds to ``BasicLSTMCell``: peepholes (``w_i_diag``, ``w_f_diag`` on c, ``w_o_diag`` on c'),
    ``cell_clip`` (c' clipped to ±cell_clip), ``num_proj`` (h' = m P with
    ``projection/kernel [H, num_proj]``) and ``proj_clip``. ``initializer`` applies to the
    kernel, peepholes and projection; where it comes from a scope and cannot make a vector
    (orthogonal), the peepholes fall back to glorot_uniform and ``provenance`` records it.
    ``state_is_tuple=False``: the state is one tensor ``[batch, H + out]``, c then h.
    """

    base_name = "lstm_cell"

    def __init__(self, num_units: int, use_peepholes: bool = False, cell_clip: float | None = None,
                 initializer=None, num_proj: int | None = None, proj_clip: float | None = None,
                 num_unit_shards=None, num_proj_shards=None, forget_bias: float = 1.0,
                 state_is_tuple: bool = True, activation=None, reuse: bool | None = None,
                 name: str | None = None, dtype: torch.dtype | None = None,
                 input_size: int | None = None):
        check_units(num_units)
        if num_proj is not None:
            check_units(num_proj, "num_proj")
        if num_unit_shards not in (None, 1) or num_proj_shards not in (None, 1):
            raise ValueError("num_unit_shards/num_proj_shards (deprecated in TF) must be None or 1")
        for arg, value in (("cell_clip", cell_clip), ("proj_clip", proj_clip)):
            if value is not None and not value > 0:
                raise ValueError(f"{arg} must be a positive number or None, got {value!r}")
        self.num_units = num_units
        self.use_peepholes = bool(use_peepholes)
        self.cell_clip = cell_clip
        self.initializer = _init.get(initializer)
        self.num_proj = num_proj
        self.proj_clip = proj_clip if num_proj is not None else None
        self.forget_bias = float(forget_bias)
        self.state_is_tuple = bool(state_is_tuple)
        self.activation = activations.get(activation)
        super().__init__(name=name, reuse=reuse, input_size=input_size, dtype=dtype)

    @property
    def output_size(self) -> int:
        return self.num_proj or self.num_units

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        H, init = self.num_units, self.initializer
        self.add_variable("kernel", [input_depth + self.output_size, 4 * H], dtype, init)
        self.add_variable("bias", [4 * H], dtype, _init.zeros(), "cell default")
        if self.use_peepholes:
            for name in ("w_f_diag", "w_i_diag", "w_o_diag"):
                self.add_variable(name, [H], dtype, init)
        if self.num_proj is not None:
            self.add_variable("projection/kernel", [H, self.num_proj], dtype, init)

    def gates(self) -> dict[str, torch.Tensor]:
        """Views per gate (``W_i, W_j, W_f, W_o``, ``U_*``, ``b_*``), plus peepholes ``p_i, p_f,
        p_o`` and the projection ``P`` where the cell has them."""
        self.require_built("gates")
        p = self.get_parameter
        out = self._gate_views(p("kernel"), p("bias"))
        if self.use_peepholes:
            out.update(p_i=p("w_i_diag"), p_f=p("w_f_diag"), p_o=p("w_o_diag"))
        if self.num_proj is not None:
            out["P"] = p("projection/kernel")
        return out

    def sequence_params(self) -> eq.Canonical:
        p = self.get_parameter
        W, U, b = self._stored(p("kernel"), p("bias"))
        peep = (p("w_i_diag"), p("w_f_diag"), p("w_o_diag")) if self.use_peepholes else None
        return eq.Canonical("lstm", W, U, b, self.activation, torch.sigmoid, peepholes=peep,
                            cell_clip=self.cell_clip,
                            P=p("projection/kernel") if self.num_proj is not None else None,
                            proj_clip=self.proj_clip, gate_order=TF1_GATE_ORDER)


class LayerNormLSTMCell(_TF1LSTMBase):
    """LSTM with layer normalization (Ba et al., 2016), as TF's ``LayerNormBasicLSTMCell``.

    i, j, f, o = LN([x, h] K) (each with its own gain and shift); c' = LN(σ(f + forget_bias) ⊙ c
    + σ(i) ⊙ act(j)); h' = act(c') ⊙ σ(o). Variables: ``kernel``, and ``{input, transform,
    forget, output, state}/{gamma, beta}`` (``norm_gain``, ``norm_shift``); with
    ``layer_norm=False``, a ``bias`` instead (TF gives it no initializer: scope's, else glorot).

    ``dropout_keep_prob < 1`` is TF's recurrent dropout on the candidate (Semeniuta et al., 2016):
    act(j) times a new mask every step, kept values scaled by 1/keep (``Canonical.g_mask``),
    in training mode only (``module.eval()`` turns it off; TF1 code feeds keep_prob=1
    instead). An unroll draws its sequence's masks at once, as its steps would one by one, and
    keeps its fast path (the fused kernels). ``dropout_prob_seed`` seeds the generator of this
    cell's own unrolls and steps (inside a wrapper that runs the steps itself, the masks come
    from torch's global generator, as a ``DropoutWrapper``'s).
    """

    base_name = "layer_norm_basic_lstm_cell"
    _NORMS = ("input", "forget", "transform", "output", "state")  # canonical i, f, g, o, c
    EPSILON = 1e-12

    def __init__(self, num_units: int, forget_bias: float = 1.0, activation=None,
                 layer_norm: bool = True, norm_gain: float = 1.0, norm_shift: float = 0.0,
                 dropout_keep_prob: float = 1.0, dropout_prob_seed: int | None = None,
                 reuse: bool | None = None, name: str | None = None,
                 dtype: torch.dtype | None = None, input_size: int | None = None):
        check_units(num_units)
        if isinstance(dropout_keep_prob, bool) or not isinstance(dropout_keep_prob, (int, float)) \
                or not 0.0 < dropout_keep_prob <= 1.0:
            raise ValueError(f"dropout_keep_prob must be a number in (0, 1], got "
                             f"{dropout_keep_prob!r}")
        self.num_units = num_units
        self.forget_bias = float(forget_bias)
        self.activation = activations.get(activation)
        self.layer_norm = bool(layer_norm)
        self.norm_gain, self.norm_shift = float(norm_gain), float(norm_shift)
        self.dropout_keep_prob = float(dropout_keep_prob)
        self._generator = None if dropout_prob_seed is None else \
            torch.Generator().manual_seed(int(dropout_prob_seed))
        super().__init__(name=name, reuse=reuse, input_size=input_size, dtype=dtype)

    @property
    def output_size(self) -> int:
        return self.num_units

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        H = self.num_units
        self.add_variable("kernel", [input_depth + H, 4 * H], dtype)
        if not self.layer_norm:
            self.add_variable("bias", [4 * H], dtype)
            return
        for scope in ("input", "transform", "forget", "output", "state"):
            self.add_variable(f"{scope}/gamma", [H], dtype, _init.constant(self.norm_gain),
                              "cell default")
            self.add_variable(f"{scope}/beta", [H], dtype, _init.constant(self.norm_shift),
                              "cell default")

    def gates(self) -> dict[str, torch.Tensor]:
        """Views per gate (``W_*``, ``U_*``; ``b_*`` without layer norm) plus the norms'
        ``gamma_*``/``beta_*`` for i, j, f, o and c."""
        self.require_built("gates")
        p = self.get_parameter
        out = self._gate_views(p("kernel"), None if self.layer_norm else p("bias"))
        if self.layer_norm:
            for letter, scope in zip("ijfoc", ("input", "transform", "forget", "output", "state"),
                                     strict=True):
                out[f"gamma_{letter}"], out[f"beta_{letter}"] = p(f"{scope}/gamma"), p(f"{scope}/beta")
        return out

    def sequence_params(self) -> eq.Canonical:
        p = self.get_parameter
        drop = self._candidate_noise if self.draws_masks() else None
        if not self.layer_norm:
            W, U, b = self._stored(p("kernel"), p("bias"))
            return eq.Canonical("lstm", W, U, b, self.activation, torch.sigmoid,
                                gate_order=TF1_GATE_ORDER, g_dropout=drop)
        W, U, _ = self._stored(p("kernel"), None)
        norms = tuple((p(f"{s}/gamma"), p(f"{s}/beta")) for s in self._NORMS)
        return eq.Canonical("layer_norm_lstm", W, U, None, self.activation, torch.sigmoid,
                            norms=(norms, self.EPSILON), forget_bias=self.forget_bias,
                            gate_order=TF1_GATE_ORDER, g_dropout=drop)

    def draws_masks(self) -> bool:
        return self.training and self.dropout_keep_prob < 1.0

    def _candidate_noise(self, shape: tuple, dtype: torch.dtype,
                         device: torch.device) -> torch.Tensor:
        """A candidate dropout mask: 1/keep with probability keep, else 0 (torch's generator,
        which ``_seeded`` seeds for this cell's own calls; the draws are float32's whatever
        ``dtype``, so a float64 copy of a cell drops the same values)."""
        return keep_mask(torch.rand(shape), self.dropout_keep_prob, dtype).to(device)

    @contextlib.contextmanager
    def _seeded(self) -> Iterator[None]:
        """With ``dropout_prob_seed``: torch's CPU generator forked, seeded from this cell's."""
        if self._generator is None or not self.draws_masks():
            yield
            return
        seed = int(torch.randint(2**62, (), generator=self._generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def forward(self, inputs: torch.Tensor, state: LSTMStateTuple
                ) -> tuple[torch.Tensor, LSTMStateTuple]:
        with self._seeded():
            return super().forward(inputs, state)

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        params = self.sequence_params()
        if params.g_dropout is not None:
            # the sequence's masks in one draw of [T, B, H]: the steps' T draws of [B, H], in
            # order, so a path that runs them all at once reads the masks the steps would
            with self._seeded():
                g_mask = params.g_dropout((*inputs.shape[:2], self.num_units), inputs.dtype,
                                          inputs.device)
            params = replace(params, g_mask=g_mask, g_dropout=None)
        return self.unroll_with(params, inputs, state, mask, masked_output, chunk, fast)

    def dispatch_params(self, batch: int, dtype: torch.dtype, device) -> tuple[object, bool]:
        params, own_step = super().dispatch_params(batch, dtype, device)
        if params.g_dropout is None:
            return params, own_step
        mask = torch.ones(1, batch, self.num_units, dtype=dtype, device=device)
        return replace(params, g_mask=mask, g_dropout=None), own_step
