"""``tf.contrib.rnn``'s block cells: ``LSTMBlockCell``, ``LSTMBlockFusedCell``,
``GRUBlockCell`` and ``GRUBlockCellV2``, TF1's cells on fused ops, with their TF names, arguments
and defaults.

Their math is the plain cells' (TF's ``LSTMBlockCell`` / ``BlockLSTM`` ops: the i, j, f, o
blocks of one ``[depth + H, 4H]`` kernel, ``forget_bias`` added at run time, optional peepholes
and cell clipping; ``GRUBlockCell``: reset before the recurrent product), so they are the plain
cells under other names: the same equations, fast paths and files. The LSTMs' variables are
``LSTMCell``'s (``kernel``, ``bias``, ``w_i_diag``...) and so are ``GRUBlockCellV2``'s
(``GRUCell``'s); ``GRUBlockCell`` names its ``w_ru``, ``b_ru``, ``w_c`` and ``b_c``.
"""

from __future__ import annotations

import torch

from rnnkit.cells.base import State
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import LSTMCell

__all__ = ["GRUBlockCell", "GRUBlockCellV2", "LSTMBlockCell", "LSTMBlockFusedCell"]


class LSTMBlockCell(LSTMCell):
    """``tf.contrib.rnn.LSTMBlockCell``: ``LSTMCell`` without projection, its variables named as
    ``LSTMCell``'s (scope ``lstm_cell``), so either restores the other's checkpoint.

    Args:
        num_units: H.
        forget_bias: added to the forget gate at run time (not stored).
        cell_clip: clip c' to ±cell_clip; None or a value not above 0: no clipping (TF's -1).
        use_peephole: peepholes ``w_i_diag``, ``w_f_diag``, ``w_o_diag``.
        dtype, reuse, name, input_size: as ``LSTMCell``.
    """

    def __init__(self, num_units: int, forget_bias: float = 1.0, cell_clip: float | None = None,
                 use_peephole: bool = False, dtype: torch.dtype | None = None,
                 reuse: bool | None = None, name: str | None = None, input_size: int | None = None):
        clip = cell_clip if cell_clip is not None and cell_clip > 0 else None
        super().__init__(num_units, use_peepholes=use_peephole, cell_clip=clip,
                         forget_bias=forget_bias, reuse=reuse, name=name, dtype=dtype,
                         input_size=input_size)

    @property
    def use_peephole(self) -> bool:
        return self.use_peepholes


class LSTMBlockFusedCell(LSTMBlockCell):
    """``tf.contrib.rnn.LSTMBlockFusedCell``: an LSTM called on a whole time-major sequence,
    ``cell(inputs, initial_state=None, dtype=None, sequence_length=None, scope=None)``, on the
    fast paths ``dynamic_rnn`` takes. Variables as ``LSTMBlockCell``'s, under scope
    ``lstm_fused_cell``.

    Call args:
        inputs: ``[time, batch, depth]``, or a list of ``time`` tensors ``[batch, depth]``.
        initial_state: ``(c, h)`` (an ``LSTMStateTuple``); default zeros of ``dtype``.
        dtype: the zero state's dtype (default: the inputs').
        sequence_length: ``[batch]`` lengths: outputs past a length are zero and the state is
            the one at the last valid step (as ``dynamic_rnn``).
        scope: a variable scope to build under.

    Returns:
        ``(outputs, LSTMStateTuple(c, h))``, outputs ``[time, batch, H]`` (a list if ``inputs``
        is one).

    Not an ``RNNCell`` for TF (a ``FusedRNNCell``): ``dynamic_rnn`` and the wrappers refuse it.
    """

    base_name = "lstm_fused_cell"

    def forward(self, inputs, initial_state: State | None = None, dtype=None,
                sequence_length=None, scope=None):
        from rnnkit import rnn  # imported here: rnn imports the cells

        listed = isinstance(inputs, (list, tuple))
        x = rnn._stack_static(inputs) if listed else rnn._check_inputs(inputs, time_major=True)
        lengths = rnn._check_lengths(sequence_length, x.shape[1], x.shape[0], x.device)
        if scope is None:
            outputs, state = rnn._run(self, x, initial_state, dtype, lengths, False)
        else:
            with rnn.variable_scope(scope):
                outputs, state = rnn._run(self, x, initial_state, dtype, lengths, False)
        return (list(outputs.unbind(0)) if listed else outputs), state


class GRUBlockCell(GRUCell):
    """``tf.contrib.rnn.GRUBlockCell``: TF1's GRU (reset before the recurrent product) with
    variables ``w_ru [depth + H, 2H]`` (r then u), ``b_ru`` (ones), ``w_c [depth + H, H]``,
    ``b_c`` (zeros), scope ``gru_cell``.

    Args:
        num_units: H (``cell_size`` is its deprecated name; give one of them).
        reuse, name, dtype, input_size: as ``GRUCell``.

    Raises:
        ValueError: both or neither of ``num_units`` and ``cell_size``.
    """

    variable_names = {"gates/kernel": "w_ru", "gates/bias": "b_ru", "candidate/kernel": "w_c",
                      "candidate/bias": "b_c"}

    def __init__(self, num_units: int | None = None, cell_size: int | None = None,
                 reuse: bool | None = None, name: str | None = None,
                 dtype: torch.dtype | None = None, input_size: int | None = None):
        if (num_units is None) == (cell_size is None):
            raise ValueError(f"give one of num_units and cell_size (its deprecated name), got "
                             f"num_units={num_units!r}, cell_size={cell_size!r}")
        super().__init__(num_units if num_units is not None else cell_size, reuse=reuse,
                         name=name, dtype=dtype, input_size=input_size)


class GRUBlockCellV2(GRUBlockCell):
    """``tf.contrib.rnn.GRUBlockCellV2``: ``GRUBlockCell`` with ``GRUCell``'s variable names
    (``gates/kernel``...), so either restores the other's checkpoint."""

    variable_names: dict[str, str] = {}
