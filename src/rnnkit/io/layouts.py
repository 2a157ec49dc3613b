"""Gate orders and weight layouts of TF1, Keras, PyTorch, cuDNN and ONNX, in one place.

Gate letters follow Keras: LSTM ``i, f, c, o`` (``c`` is the candidate: TF1's ``j``, torch's
``g``); GRU ``z, r, h`` (``h`` is the candidate: TF1's ``c``, torch's ``n``; TF1 calls ``z``
``u``). Keras order is rnnkit's canonical order (``cells.equations.Canonical``); every other
layout is derived from it here and nowhere else. See ``docs/CONVERSIONS.md`` for the table.

"Rows" is the layout torch, cuDNN and ONNX share: ``W [G*H, in]``, ``R [G*H, H_out]`` (the
transposes of Keras's ``kernel`` and ``recurrent_kernel``) and two biases, one on the input side
and one on the recurrent side; only the gate order differs between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rnnkit import activations
from rnnkit.cells.base import RNNCell
from rnnkit.cells.equations import Canonical
from rnnkit.cells.fused import FusedCell
from rnnkit.cells.wrappers import MultiRNNCell
from rnnkit.scope import Provenance

# Gate blocks in each framework's fused tensors, in Keras letters.
GATE_ORDERS: dict[str, dict[str, str]] = {
    "keras": {"rnn": "h", "gru": "zrh", "lstm": "ifco"},  # = rnnkit's Canonical
    "tf1": {"rnn": "h", "gru": "rzh", "lstm": "icfo"},  # GRU: gates/kernel (r, u) + candidate
    "torch": {"rnn": "h", "gru": "rzh", "lstm": "ifco"},
    "cudnn": {"rnn": "h", "gru": "rzh", "lstm": "ifco"},
    "onnx": {"rnn": "h", "gru": "zrh", "lstm": "iofc"},
}
ONNX_PEEPHOLE_ORDER = "iof"  # ONNX LSTM input P: [p_i, p_o, p_f]
# The letter each framework's own docs use for a Keras letter (for messages and docs).
TF1_LETTERS = {"rnn": {"h": "h"}, "gru": {"z": "u", "r": "r", "h": "c"},
               "lstm": {"i": "i", "f": "f", "c": "j", "o": "o"}}
TORCH_LETTERS = {"gru": {"h": "n"}, "lstm": {"c": "g"}}  # the others as Keras names them
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def reorder(t: torch.Tensor, kind: str, src: str, dst: str, dim: int = 0) -> torch.Tensor:
    """Reorder the gate blocks of ``t`` along ``dim`` from framework ``src``'s order to ``dst``'s."""
    src_order, dst_order = GATE_ORDERS[src][kind], GATE_ORDERS[dst][kind]
    if src_order == dst_order:
        return t
    parts = dict(zip(src_order, t.chunk(len(src_order), dim=dim), strict=True))
    return torch.cat([parts[g] for g in dst_order], dim=dim)


@dataclass(frozen=True)
class Rows:
    """One layer and direction in the rows layout, gates in ``order``'s framework order.

    ``W [G*H, in]``, ``R [G*H, H_out]``, ``b_in``/``b_rec [G*H]``; LSTM extras: ``peepholes``
    ``(p_i, p_f, p_o)`` and ``P [H_out, H]`` (torch's ``weight_hr``, the transposed projection).
    """

    kind: str
    order: str
    W: torch.Tensor
    R: torch.Tensor
    b_in: torch.Tensor
    b_rec: torch.Tensor
    peepholes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    P: torch.Tensor | None = None

    @property
    def num_units(self) -> int:
        return self.W.shape[0] // GATES[self.kind]


def to_rows(p: Canonical, order: str) -> Rows:
    """A cell's ``Canonical`` weights in the rows layout of framework ``order`` (detached copies).

    The canonical bias ``b`` (TF1's forget_bias already folded in) goes to the input side; the
    reset-after GRU's recurrent bias ``b_h`` to the recurrent side (zeros where a cell has none).
    """
    kind = p.kind
    W = p.W.detach().T
    zeros = W.new_zeros(W.shape[0])
    b_in = zeros if p.b is None else p.b.detach()
    b_rec = zeros if p.b_h is None else p.b_h.detach()
    peep = tuple(t.detach().clone() for t in p.peepholes) if p.peepholes is not None else None
    return Rows(kind, order, reorder(W, kind, "keras", order).clone(),
                reorder(p.U.detach().T, kind, "keras", order).clone(),
                reorder(b_in, kind, "keras", order).clone(), reorder(b_rec, kind, "keras", order).clone(),
                peep, p.P.detach().T.clone() if p.P is not None else None)


def canonical_parts(rows: Rows) -> tuple[torch.Tensor, ...]:
    """``(W [in, G*H], U [H_out, G*H], b, b_h)`` in Keras order from rows (inverse of ``to_rows``)."""
    k, o = rows.kind, rows.order
    return (reorder(rows.W, k, o, "keras").T, reorder(rows.R, k, o, "keras").T,
            reorder(rows.b_in, k, o, "keras"), reorder(rows.b_rec, k, o, "keras"))


def _bias_targets(kind: str, views: dict, tf1: bool, g: str, n: str) -> tuple[str, str | None]:
    """Where gate ``g``'s input and recurrent biases go: (input key, recurrent key or None to sum)."""
    if kind != "gru":
        return f"b_{n}", None
    if tf1:  # TF1 reset-after GRU: z and r have one bias; the candidate keeps its recurrent one
        return f"b_{n}", ("b_hc" if g == "h" and "b_hc" in views else None)
    return f"b_{n}", (f"b_h{n}" if f"b_h{n}" in views else None)  # Keras reset_after row 2


@torch.no_grad()
def assign(cell: FusedCell, rows: Rows, source: str) -> None:
    """Copy one layer's weights into a built cell of the matching kind, through ``cell.gates()``.

    Where the cell has one bias and the rows two, they are summed (exact: both add before the
    nonlinearity), except the reset-after GRU's recurrent biases that sit inside
    ``r ⊙ (h U + b)``, which keep their own variable. A TF1 LSTM's run-time ``forget_bias`` is
    subtracted from the stored forget bias. Every variable's provenance becomes ``restored``.

    Raises:
        ValueError: a Keras cell built with ``use_bias=False`` and weights with a nonzero bias.
    """
    kind, H = rows.kind, rows.num_units
    W, U, b, b_h = canonical_parts(rows)
    views = cell.gates()
    tf1 = "W_u" in views or "W_j" in views
    names = TF1_LETTERS[kind] if tf1 else {g: g for g in GATE_ORDERS["keras"][kind]}
    for k, g in enumerate(GATE_ORDERS["keras"][kind]):
        block, n = slice(k * H, (k + 1) * H), names[g]
        views[f"W_{n}"].copy_(W[:, block])
        views[f"U_{n}"].copy_(U[:, block])
        in_key, rec_key = _bias_targets(kind, views, tf1, g, n)
        if in_key not in views:  # a Keras cell with use_bias=False
            if bool((b[block] != 0).any() or (b_h[block] != 0).any()):
                raise ValueError(f"{type(cell).__name__} was built with use_bias=False but the "
                                 f"weights from {source} have a nonzero bias")
            continue
        if rec_key is not None:
            views[in_key].copy_(b[block])
            views[rec_key].copy_(b_h[block])
        else:
            total = b[block] + b_h[block]
            if g == "f" and tf1:
                total = total - cell.forget_bias
            views[in_key].copy_(total)
    if rows.peepholes is not None:
        for g, value in zip("ifo", rows.peepholes, strict=True):
            views[f"p_{g}"].copy_(value)
    if rows.P is not None:
        views["P"].copy_(rows.P.T)
    for var in cell.parameters():
        if hasattr(var, "provenance"):
            var.provenance = Provenance(None, "restored", note=source)


@dataclass(frozen=True)
class Layer:
    """One layer of a model: its cells (forward, or forward and backward) and their weights."""

    cells: tuple[FusedCell, ...]
    params: tuple[Canonical, ...]

    @property
    def kind(self) -> str:
        return self.params[0].kind

    @property
    def input_size(self) -> int:
        return self.params[0].W.shape[0]

    @property
    def num_units(self) -> int:
        return self.params[0].U.shape[1] // GATES.get(self.kind, 4)

    @property
    def output_size(self) -> int:
        return self.params[0].U.shape[0]


_FORMS = ("a built cell (BasicRNNCell, GRUCell, BasicLSTMCell, LSTMCell, a Keras cell or a Keras "
          "RNN layer), a MultiRNNCell of such cells (or a Keras RNN layer over a stack of them), "
          "a (cell_fw, cell_bw) pair or a Keras Bidirectional layer, or a list of pairs (stacked "
          "bidirectional layers, as TF's stack_bidirectional_dynamic_rnn)")


def _fused(cell, argname: str) -> FusedCell:
    inner = getattr(cell, "cell", None)
    if not isinstance(cell, RNNCell) and isinstance(inner, FusedCell):  # a Keras RNN layer
        if getattr(cell, "go_backwards", False):
            raise ValueError(f"{argname}: a Keras layer with go_backwards=True alone has no "
                             "equivalent; export it inside a Bidirectional layer")
        cell = inner
    if isinstance(cell, MultiRNNCell):
        raise ValueError(f"{argname}: a MultiRNNCell inside a bidirectional pair is not supported: "
                         "torch, cuDNN and ONNX stacks feed both directions' outputs to the next "
                         "layer; pass a list of (cell_fw, cell_bw) pairs instead")
    if not isinstance(cell, FusedCell):
        raise TypeError(f"{argname} must be {_FORMS}; got {type(cell).__name__}")
    cell.require_built("export")
    return cell


def _is_pair(item) -> bool:
    """A Keras Bidirectional layer, or two cells (not two pairs)."""
    if hasattr(item, "backward_layer"):
        return True
    return (isinstance(item, (tuple, list)) and len(item) == 2
            and not any(isinstance(c, (tuple, list)) or hasattr(c, "backward_layer") for c in item))


def _pair(item, argname: str) -> tuple[FusedCell, FusedCell]:
    if hasattr(item, "backward_layer"):  # a Keras Bidirectional layer
        if getattr(item, "merge_mode", "concat") != "concat":
            raise ValueError(f"{argname}: only merge_mode='concat' has an equivalent, got "
                             f"{item.merge_mode!r}")
        return _fused(item.forward_layer.cell, f"{argname}.forward_layer"), \
            _fused(item.backward_layer.cell, f"{argname}.backward_layer")
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"{argname} must be a (cell_fw, cell_bw) pair, got {item!r:.80}")
    return _fused(item[0], f"{argname}[0]"), _fused(item[1], f"{argname}[1]")


def layers_of(model) -> list[Layer]:
    """Split a model into layers and check the layers chain (each layer's input is the last's output).

    Raises:
        TypeError: ``model`` is none of the accepted forms.
        ValueError: unbuilt cells, mixed cell kinds, or sizes that do not chain.
    """
    stack = getattr(model, "cell", None)  # a Keras RNN layer over a stack of cells
    if isinstance(stack, MultiRNNCell) and not isinstance(model, RNNCell):
        if getattr(model, "go_backwards", False):
            raise ValueError("model: a Keras layer with go_backwards=True alone has no "
                             "equivalent; export it inside a Bidirectional layer")
        model = stack
    if isinstance(model, MultiRNNCell):
        groups = [(_fused(c, f"model.cells[{k}]"),) for k, c in enumerate(model.cells)]
    elif _is_pair(model):
        groups = [_pair(model, "model")]
    elif isinstance(model, (list, tuple)) and model:
        groups = [_pair(item, f"model[{k}]") for k, item in enumerate(model)]
    else:
        groups = [(_fused(model, "model"),)]
    layers = [Layer(g, tuple(c.canonical() for c in g)) for g in groups]
    _check_chain(layers)
    return layers


def _signature(p: Canonical) -> tuple:
    return (p.kind, tuple(p.W.shape), tuple(p.U.shape), p.reset_after, p.peepholes is not None,
            p.cell_clip, p.P is not None and tuple(p.P.shape), p.proj_clip,
            activations.name_of(p.activation),
            p.recurrent_activation and activations.name_of(p.recurrent_activation))


def _check_chain(layers: Sequence[Layer]) -> None:
    first = layers[0]
    for k, layer in enumerate(layers):
        if len(layer.params) == 2 and _signature(layer.params[0]) != _signature(layer.params[1]):
            raise ValueError(f"layer {k}: the forward and backward cells must have the same kind, "
                             f"sizes and options, got {_signature(layer.params[0])} and "
                             f"{_signature(layer.params[1])}")
        if layer.kind != first.kind:
            raise ValueError(f"all layers must be of one kind, got {first.kind!r} in layer 0 and "
                             f"{layer.kind!r} in layer {k}")
        if k:
            prev = layers[k - 1]
            want = prev.output_size * len(prev.params)
            if layer.input_size != want:
                raise ValueError(f"layer {k} takes inputs of depth {layer.input_size}, but layer "
                                 f"{k - 1} gives {want}")
        if len(layer.params) != len(first.params):
            raise ValueError("every layer must have the same number of directions")
