"""PyTorch interop: rnnkit cells to and from ``torch.nn.RNN`` / ``GRU`` / ``LSTM``.

torch keeps ``weight_ih_l{k}[_reverse] [G*H, in]``, ``weight_hh [G*H, H_out]`` and two biases
(``bias_ih``, ``bias_hh``) per layer and direction, gates LSTM (i, f, g, o) and GRU (r, z, n)
with the reset gate applied after the recurrent matmul; ``weight_hr [proj, H]`` for
``proj_size``. TF cells have one bias, so ``from_torch`` sums the two wherever both add before
the nonlinearity (exact). States differ in order: torch LSTM returns ``(h_n, c_n)``, rnnkit
``LSTMStateTuple(c, h)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, contextmanager, nullcontext

import torch

from rnnkit import activations
from rnnkit.cells.basic import BasicRNNCell
from rnnkit.cells.equations import Canonical
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import BasicLSTMCell, LSTMCell
from rnnkit.cells.wrappers import MultiRNNCell
from rnnkit.io.layouts import Rows, assign, layers_of, to_rows
from rnnkit.scope import variable_scope

__all__ = ["to_torch", "from_torch", "cells_from_rows", "torch_unsupported"]

_TORCH_CLASS = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
_KIND_OF_MODE = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "GRU": ("gru", "tanh"),
                 "LSTM": ("lstm", "tanh")}


def torch_unsupported(p: Canonical) -> list[str]:
    """Why a cell's math cannot be a ``torch.nn`` RNN module (empty when it can)."""
    if p.kind == "layer_norm_lstm":
        return ["torch.nn.LSTM has no layer normalization"]
    act = activations.name_of(p.activation)
    module = _TORCH_CLASS[p.kind].__name__
    reasons = []
    if p.kind == "rnn":
        if act not in ("tanh", "relu"):
            reasons.append(f"torch.nn.RNN supports nonlinearity 'tanh' or 'relu', the cell uses {act!r}")
        return reasons
    if act != "tanh":
        reasons.append(f"torch.nn.{module} uses tanh for the candidate, the cell uses {act!r}")
    gate_act = activations.name_of(p.recurrent_activation)
    if gate_act != "sigmoid":
        reasons.append(f"torch.nn.{module} uses sigmoid gates, the cell uses {gate_act!r}")
    if p.kind == "gru" and not p.reset_after:
        reasons.append("torch.nn.GRU applies the reset gate after the recurrent matmul; TF1 "
                       "GRUCell (like Keras reset_after=False) applies it before — use "
                       "GRUCell(reset_after=True)")
    if p.peepholes is not None:
        reasons.append("torch.nn.LSTM has no peephole connections (use_peepholes=True)")
    if p.cell_clip is not None:
        reasons.append(f"torch.nn.LSTM does not clip the cell state (cell_clip={p.cell_clip})")
    if p.proj_clip is not None:
        reasons.append(f"torch.nn.LSTM does not clip the projection (proj_clip={p.proj_clip})")
    return reasons


def to_torch(model) -> torch.nn.RNNBase:
    """A ``torch.nn.RNN``/``GRU``/``LSTM`` (``batch_first=True``) computing what ``model`` computes.

    Args:
        model: a built cell (``BasicRNNCell`` tanh/relu, ``GRUCell(reset_after=True)``,
            ``BasicLSTMCell``, ``LSTMCell`` with ``num_proj`` -> ``proj_size``, or a Keras cell),
            a Keras RNN layer, a ``MultiRNNCell`` of such cells (``num_layers``), a
            ``(cell_fw, cell_bw)`` pair or a Keras ``Bidirectional`` layer with
            ``merge_mode="concat"`` (``bidirectional=True``, as ``bidirectional_dynamic_rnn``
            with outputs concatenated), or a list of pairs (stacked bidirectional layers, as
            TF's ``stack_bidirectional_dynamic_rnn``).

    Returns:
        The torch module, weights copied (TF1's ``forget_bias`` folded into ``bias_ih``), in the
        dtype of the cells. Its outputs equal ``dynamic_rnn``'s; pass variable lengths as a
        ``PackedSequence`` (torch's padded outputs are zero past each length, as TF's).

    Raises:
        ValueError: math torch does not have (TF1 GRU's reset-before, peepholes, clipping, layer
            norm, other activations), each reason named; unbuilt cells; sizes that do not chain.
        TypeError: ``model`` is not one of the forms above.

    Example:
        >>> module = to_torch(GRUCell(8, reset_after=True, input_size=4))  # doctest: +SKIP
    """
    layers = layers_of(model)
    first = layers[0].params[0]
    reasons = torch_unsupported(first)
    if reasons:
        name = _TORCH_CLASS.get(first.kind, torch.nn.LSTM).__name__
        raise ValueError(f"cannot convert to torch.nn.{name}: " + "; ".join(reasons))
    kwargs = {}
    if first.kind == "rnn":
        kwargs["nonlinearity"] = activations.name_of(first.activation)
    if first.P is not None:
        kwargs["proj_size"] = first.P.shape[1]
    module = _TORCH_CLASS[first.kind](
        layers[0].input_size, layers[0].num_units, num_layers=len(layers), batch_first=True,
        bidirectional=len(layers[0].params) == 2, dtype=first.W.dtype, device=first.W.device, **kwargs)
    with torch.no_grad():
        for k, layer in enumerate(layers):
            for d, p in enumerate(layer.params):
                rows, sfx = to_rows(p, "torch"), f"_l{k}" + ("_reverse" if d else "")
                getattr(module, f"weight_ih{sfx}").copy_(rows.W)
                getattr(module, f"weight_hh{sfx}").copy_(rows.R)
                getattr(module, f"bias_ih{sfx}").copy_(rows.b_in)
                getattr(module, f"bias_hh{sfx}").copy_(rows.b_rec)
                if rows.P is not None:
                    getattr(module, f"weight_hr{sfx}").copy_(rows.P)
    return module


def from_torch(module: torch.nn.Module):
    """rnnkit cells with the weights of a ``torch.nn.RNN``/``GRU``/``LSTM`` (or ``RNNCell``,
    ``GRUCell``, ``LSTMCell``), built under the current variable scope.

    RNN (tanh or relu) becomes ``BasicRNNCell``; GRU becomes ``GRUCell(reset_after=True)``
    (the gate biases ``b_ih + b_hh`` in ``gates/bias``, the candidate's two biases in
    ``candidate/input_projection/bias`` and ``candidate/hidden_projection/bias``); LSTM becomes
    ``BasicLSTMCell``, or ``LSTMCell(num_proj=proj_size)``, with ``forget_bias=0`` (torch adds
    no forget bias at run time) and ``bias = b_ih + b_hh``. torch's dropout between layers is
    a training-time option and is not carried over.

    Args:
        module: the torch module (any ``batch_first``; ``bias=False`` gives zero biases).

    Returns:
        As ``cells_from_rows``: a cell, a ``MultiRNNCell`` (``num_layers > 1``), a
        ``(cell_fw, cell_bw)`` pair (bidirectional, under ``bidirectional_rnn/fw|bw``), or a list of
        pairs (bidirectional, several layers; run them as TF's stack_bidirectional_dynamic_rnn).

    Raises:
        TypeError: ``module`` is not one of torch's RNN modules.
    """
    if isinstance(module, torch.nn.RNNBase):
        kind, activation = _KIND_OF_MODE[module.mode]
        directions = 2 if module.bidirectional else 1
        suffixes = [[f"_l{k}" + ("_reverse" if d else "") for d in range(directions)]
                    for k in range(module.num_layers)]
    elif isinstance(module, torch.nn.RNNCellBase):
        kind = {torch.nn.LSTMCell: "lstm", torch.nn.GRUCell: "gru"}.get(type(module), "rnn")
        activation = getattr(module, "nonlinearity", "tanh")
        suffixes = [[""]]
    else:
        raise TypeError("module must be a torch.nn.RNN, GRU or LSTM (or RNNCell, GRUCell, "
                        f"LSTMCell), got {type(module).__name__}")

    def rows(sfx: str) -> Rows:
        weight = getattr(module, f"weight_ih{sfx}").detach()
        zeros = weight.new_zeros(weight.shape[0])
        biases = [getattr(module, f"bias_{s}{sfx}", None) for s in ("ih", "hh")]
        b_in, b_rec = (zeros if b is None else b.detach() for b in biases)
        proj = getattr(module, f"weight_hr{sfx}", None)
        return Rows(kind, "torch", weight, getattr(module, f"weight_hh{sfx}").detach(), b_in, b_rec,
                    P=None if proj is None else proj.detach())

    source = f"torch.nn.{type(module).__name__}"
    return cells_from_rows([[rows(sfx) for sfx in layer] for layer in suffixes], activation, source)


def _make_cell(rows: Rows, activation: str, name: str | None):
    H = rows.num_units
    if rows.kind == "rnn":
        return BasicRNNCell(H, activation=activation, name=name)
    if rows.kind == "gru":
        return GRUCell(H, reset_after=True, name=name)
    if rows.P is not None:
        return LSTMCell(H, num_proj=rows.P.shape[0], forget_bias=0.0, name=name)
    return BasicLSTMCell(H, forget_bias=0.0, name=name)


def _built(rows: Rows, activation: str, name: str | None, source: str):
    cell = _make_cell(rows, activation, name)
    cell.ensure_built(rows.W.shape[1], rows.W.dtype)
    assign(cell, rows, source)
    return cell


def cells_from_rows(layer_rows: Sequence[Sequence[Rows]], activation: str = "tanh",
                    source: str = "", name: str | None = None, checkpoint_layout: bool = False):
    """rnnkit cells holding the given weights, built under the current variable scope.

    Args:
        layer_rows: per layer, one ``Rows`` (forward) or two (forward, backward).
        activation: for vanilla RNNs, ``"tanh"`` or ``"relu"``.
        source: where the weights came from, recorded in each variable's provenance.
        name: the cells' scope name (default: the cell's own, e.g. ``gru_cell``).
        checkpoint_layout: name scopes as TF's cuDNN saveables do: ``rnn/multi_rnn_cell/cell_k``
            (a ``MultiRNNCell`` even for one layer), or a list of pairs even for one layer.

    Returns:
        One layer forward: a cell (or a ``MultiRNNCell`` with ``checkpoint_layout``); several:
        a ``MultiRNNCell``; bidirectional: a ``(cell_fw, cell_bw)`` pair for one layer, under
        ``bidirectional_rnn/{fw,bw}`` (the scopes ``bidirectional_dynamic_rnn`` would open),
        else a list of pairs under ``stack_bidirectional_rnn/cell_k/bidirectional_rnn/{fw,bw}``
        (TF's ``stack_bidirectional_dynamic_rnn``). Scopes opened here are numbered
        (``bidirectional_rnn_1``...) when taken, so repeated imports never collide.
    """
    first = layer_rows[0][0]
    if len(layer_rows[0]) == 1:
        if len(layer_rows) == 1 and not checkpoint_layout:
            return _built(first, activation, name, source)
        cells = [_make_cell(rows[0], activation, name) for rows in layer_rows]
        multi = MultiRNNCell(cells)
        with variable_scope(None, default_name="rnn") if checkpoint_layout else nullcontext():
            multi.ensure_built(first.W.shape[1], first.W.dtype)
        for cell, rows in zip(cells, layer_rows, strict=True):
            assign(cell, rows[0], source)
        return multi
    stacked = len(layer_rows) > 1 or checkpoint_layout
    pairs = []
    with variable_scope(None, default_name="stack_bidirectional_rnn" if stacked else "bidirectional_rnn"):
        for k, (fw, bw) in enumerate(layer_rows):
            prefix = f"cell_{k}/bidirectional_rnn/" if stacked else ""
            pairs.append(tuple(_built_in(prefix + d, rows, activation, name, source)
                               for d, rows in (("fw", fw), ("bw", bw))))
    return pairs if stacked else pairs[0]


@contextmanager
def _scopes(path: str):
    """Open the variable scopes of a ``a/b/c`` path (none for ``""``)."""
    with ExitStack() as stack:
        for part in filter(None, path.split("/")):
            stack.enter_context(variable_scope(part))
        yield


def _built_in(path: str, rows: Rows, activation: str, name: str | None, source: str):
    with _scopes(path):
        return _built(rows, activation, name, source)
