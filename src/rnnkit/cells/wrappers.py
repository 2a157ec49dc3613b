"""Cells made of cells: ``MultiRNNCell`` (stacking), ``ResidualWrapper``, ``DeviceWrapper``,
and the base of the wrappers (``DropoutWrapper`` is in ``rnnkit.cells.dropout``).

Wrappers add no variable-scope level (their cell's variables keep the cell's own names);
``MultiRNNCell`` puts layer ``k`` under ``cell_k``, as TF does.

A wrapper whose work needs no state from one step to the next (dropout on inputs and outputs, a
residual sum) does it on the whole sequence around its cell's own unroll, so the cell keeps its
fast path (``rnnkit.fast.dispatch``); it runs step by step only where it must (``per_step``
says why), with the same numbers either way: the same masks, drawn in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch.utils import _pytree as pytree

from rnnkit.cells.base import RNNCell, State
from rnnkit.scope import variable_scope

WHOLE_SEQUENCE = True  # False: every wrapper runs step by step (the tests compare the two)


def _check_cell(cell, argname: str = "cell") -> None:
    if not isinstance(cell, RNNCell):
        raise TypeError(f"{argname} must be an rnnkit RNNCell, got {type(cell).__name__}")


class MultiRNNCell(RNNCell):
    """Stack of cells: layer k's output is layer k+1's input; the state is a tuple of states.

    Unrolled layer by layer (the same result as step by step: each layer depends only on the
    layer below at the same time step), so each layer gets its hoisted input projection.
    With ``state_is_tuple=False`` (TF's deprecated form) the state is the layers' states side by
    side in one tensor, which needs every layer's state to be one tensor (an LSTM's only with
    its own ``state_is_tuple=False``).
    """

    base_name = "multi_rnn_cell"

    def __init__(self, cells: Sequence[RNNCell], state_is_tuple: bool = True):
        if not cells:
            raise ValueError("MultiRNNCell: cells must be a non-empty list of cells")
        for k, cell in enumerate(cells):
            _check_cell(cell, f"cells[{k}]")
        self.state_is_tuple = bool(state_is_tuple)
        if not self.state_is_tuple and not all(isinstance(c.state_size, int) for c in cells):
            raise ValueError("MultiRNNCell: some cells return tuples of states, but "
                             "state_is_tuple=False; state sizes are "
                             f"{[c.state_size for c in cells]}")
        super().__init__()
        self.cells = torch.nn.ModuleList(cells)

    @property
    def state_size(self) -> tuple | int:
        sizes = tuple(cell.state_size for cell in self.cells)
        return sizes if self.state_is_tuple else sum(sizes)

    def _split(self, state: State) -> State:
        """The layers' states: a concatenated state taken apart (a tuple stays as it is)."""
        if self.state_is_tuple:
            return state
        return tuple(state.split([cell.state_size for cell in self.cells], -1))

    def _join(self, states: tuple) -> State:
        return states if self.state_is_tuple else torch.cat(states, -1)

    @property
    def output_size(self) -> int:
        return self.cells[-1].output_size

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        for k, cell in enumerate(self.cells):
            with variable_scope(f"cell_{k}"):
                cell.ensure_built(input_depth, dtype)
            input_depth = cell.output_size

    def sequence_params(self) -> list:
        return [cell.sequence_params() for cell in self.cells]

    def prepare_inputs(self, inputs: torch.Tensor, params) -> torch.Tensor:
        return self.cells[0].prepare_inputs(inputs, params[0])

    def step(self, prepared: torch.Tensor, state: State, params) -> tuple[torch.Tensor, State]:
        new_states, out, state = [], prepared, self._split(state)
        for k, cell in enumerate(self.cells):
            x = out if k == 0 else cell.prepare_inputs(out, params[k])
            out, new = cell.step(x, state[k], params[k])
            new_states.append(new)
        return out, self._join(tuple(new_states))

    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step of the stack: ``step``'s, except that a layer whose call is its step
        (``calls_are_steps``) is called, computing it its own way (a GRU's on its variables as
        stored, without the weights' gather that ``sequence_params`` makes for an unroll)."""
        self.begin_step(inputs, state)
        new_states, out = [], inputs
        for cell, layer_state in zip(self.cells, self._split(state), strict=True):
            if cell.calls_are_steps():
                out, new = cell(out, layer_state)
            else:
                params = cell.sequence_params()
                out, new = cell.step(cell.prepare_inputs(out, params), layer_state, params)
            new_states.append(new)
        return out, self._join(tuple(new_states))

    def calls_are_steps(self) -> bool:
        return True  # forward is step, layer by layer

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        finals, x = [], inputs
        for cell, layer_state in zip(self.cells, self._split(state), strict=True):
            x, final = cell.unroll(x, layer_state, mask, masked_output, chunk, fast)
            finals.append(final)
        return x, self._join(tuple(finals))

    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device) -> None:
        for cell in self.cells:  # each layer's variational masks are drawn anew per sequence
            cell.begin_sequence(batch_size, dtype, device)

    def whole_sequence(self):
        return self.cells[0].whole_sequence()


class _Wrapper(RNNCell):
    """A cell around a cell, sharing its variables, scope and sizes."""

    def __init__(self, cell: RNNCell):
        _check_cell(cell)
        super().__init__()
        self.cell = cell

    @property
    def state_size(self):
        return self.cell.state_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    @property
    def scope_name(self) -> str | None:
        return self.cell.scope_name

    def ensure_built(self, input_depth: int, dtype: torch.dtype) -> None:
        self.cell.ensure_built(input_depth, dtype)
        self.input_depth = input_depth

    def sequence_params(self):
        return self.cell.sequence_params()

    def gates(self) -> dict[str, torch.Tensor]:
        return self.cell.gates()

    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device) -> None:
        self.cell.begin_sequence(batch_size, dtype, device)

    def per_step(self, mask: torch.Tensor | None, masked_output: str) -> tuple[str, ...]:
        """Why this wrapper must run step by step for an unroll with ``mask`` and
        ``masked_output`` (as ``rnnkit.unroll.scan``), rather than do its work on the whole
        sequence around its cell's unroll (``around``); empty where it need not."""
        return ()

    def around(self, inputs: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor | None
               ) -> torch.Tensor:
        """The wrapper's work on the whole sequence: ``outputs`` ``[T, B, out]`` of its cell's
        unroll over ``inputs`` to what its own steps would have given."""
        return outputs

    def _step_by_step(self, mask: torch.Tensor | None, masked_output: str) -> tuple[str, ...]:
        return self.per_step(mask, masked_output) if WHOLE_SEQUENCE else ("WHOLE_SEQUENCE is False",)

    def whole_sequence(self):
        why = self._step_by_step(None, "zero")
        return (self, why) if why else self.cell.whole_sequence()

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        from rnnkit.fast import dispatch  # imported here: rnnkit.fast imports the cells

        why = self._step_by_step(mask, masked_output)
        if why:
            if dispatch.mode_of(fast) is True:
                raise dispatch.refuse(dispatch.step_by_step(why))
            return super().unroll(inputs, state, mask, masked_output, chunk, fast)
        outputs, final = self.inner_unroll(inputs, state, mask, masked_output, chunk, fast)
        return self.around(inputs, outputs, mask), final

    def inner_unroll(self, inputs, state, mask, masked_output, chunk, fast):
        """The wrapped cell's unroll, for a wrapper that does its work around it."""
        return self.cell.unroll(inputs, state, mask, masked_output, chunk, fast)


class ResidualWrapper(_Wrapper):
    """Adds the cell's input to its output: ``residual_fn(inputs, output)``, default a sum.

    The default sum is added to the whole sequence's outputs after the cell's unroll (the cell
    keeps its fast path); a ``residual_fn`` of your own is called step by step, on ``[B, n]``
    inputs and outputs, as in TF.
    """

    def __init__(self, cell: RNNCell, residual_fn: Callable | None = None):
        super().__init__(cell)
        self.custom = residual_fn is not None
        self.residual_fn = residual_fn or (lambda x, y: x + y)

    def ensure_built(self, input_depth: int, dtype: torch.dtype) -> None:
        super().ensure_built(input_depth, dtype)
        if input_depth != self.cell.output_size:
            raise ValueError(f"ResidualWrapper: inputs must have depth {self.cell.output_size} "
                             f"(the cell's output size) to be added, got {input_depth}")

    def per_step(self, mask, masked_output):
        why = []
        if self.custom:
            why.append("ResidualWrapper: a residual_fn of your own is called step by step")
        if mask is not None and masked_output != "zero":
            why.append("ResidualWrapper: masked steps hold the previous output")
        return tuple(why)

    def around(self, inputs, outputs, mask):
        summed = inputs + outputs
        if mask is None:
            return summed
        return torch.where(mask.unsqueeze(-1), summed, torch.zeros_like(summed))

    def prepare_inputs(self, inputs: torch.Tensor, params) -> torch.Tensor:
        # The raw input rides along with the prepared one so each step can add it back.
        return torch.cat([inputs, self.cell.prepare_inputs(inputs, params)], dim=-1)

    def step(self, prepared: torch.Tensor, state: State, params) -> tuple[torch.Tensor, State]:
        x, rest = prepared[..., : self.input_depth], prepared[..., self.input_depth:]
        out, new = self.cell.step(rest, state, params)
        return self.residual_fn(x, out), new


# TF's device strings: an optional /job:.../replica:.../task:... prefix, then /device:CPU:0,
# /device:GPU:1 or the short /cpu:0, /gpu:1 (the index may be left out)
_TF_DEVICE = re.compile(r"(?:/job:[^/]+)?(?:/replica:\d+)?(?:/task:\d+)?"
                        r"/(?:device:)?(cpu|gpu)(?::(\d+))?", re.IGNORECASE)


def device_present(device: torch.device) -> bool:
    """Whether this machine has ``device`` (a CPU always; a CUDA device by its index)."""
    return device.type != "cuda" or (torch.cuda.is_available()
                                     and (device.index or 0) < torch.cuda.device_count())


def torch_device(device) -> torch.device:
    """A TF device string (``"/gpu:0"``, ``"/device:GPU:1"``,
    ``"/job:localhost/replica:0/task:0/device:CPU:0"``) or a torch one (``"cuda:1"``,
    ``torch.device``) as a ``torch.device``; TF's GPUs are CUDA devices.

    Raises:
        TypeError: ``device`` is not a string or a ``torch.device``.
        ValueError: a string that names no device.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a TF device string ('/gpu:0') or a torch device, got "
                        f"{type(device).__name__}")
    tf = _TF_DEVICE.fullmatch(device.strip())
    if tf:
        return torch.device("cpu") if tf.group(1).lower() == "cpu" else \
            torch.device("cuda", int(tf.group(2) or 0))
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be a TF device string ('/gpu:0', '/device:CPU:0') or a "
                         f"torch device ('cuda:1'), got {device!r}") from None


class DeviceWrapper(_Wrapper):
    """Runs the cell on ``device``, as ``tf.nn.rnn_cell.DeviceWrapper``: its inputs and state
    are moved there, and its outputs and final state stay there. Its variables are moved there
    when it is built (TF makes them under the wrapper's device scope on the first call; torch
    cannot read a variable on another device). The cell keeps its fast path on that device.

    Args:
        cell: the cell to run.
        device: a TF device string (``"/gpu:0"``, ``"/device:CPU:0"``) or a torch device.

    Raises:
        TypeError / ValueError: ``device`` names no device (``torch_device``).
        RuntimeError: at the first call, where the device is a GPU and torch has no such CUDA
            device.
    """

    def __init__(self, cell: RNNCell, device):
        super().__init__(cell)
        self.device = torch_device(device)

    def ensure_built(self, input_depth: int, dtype: torch.dtype) -> None:
        if not device_present(self.device):
            raise RuntimeError(f"DeviceWrapper: device {str(self.device)!r} is not available "
                               f"(torch sees {torch.cuda.device_count()} CUDA devices)")
        super().ensure_built(input_depth, dtype)
        if any(p.device != self.device for p in self.cell.parameters()):
            self.cell.to(self.device)

    def _here(self, tree):
        return pytree.tree_map(lambda t: t.to(self.device) if torch.is_tensor(t) else t, tree)

    def begin_sequence(self, batch_size: int, dtype: torch.dtype, device) -> None:
        self.cell.begin_sequence(batch_size, dtype, self.device)

    def unroll(self, inputs, state, mask=None, masked_output="zero", chunk=None, fast=None):
        return super().unroll(self._here(inputs), self._here(state), self._here(mask),
                              masked_output, chunk, fast)

    def prepare_inputs(self, inputs: torch.Tensor, params) -> torch.Tensor:
        return self.cell.prepare_inputs(self._here(inputs), params)

    def step(self, prepared: torch.Tensor, state: State, params) -> tuple[torch.Tensor, State]:
        return self.cell.step(self._here(prepared), self._here(state), params)

    def extra_repr(self) -> str:
        return f"device={str(self.device)!r}"
