"""cuDNN's canonical RNN weight layout and TF's ``CudnnLSTM``/``CudnnGRU`` checkpoint names.

cuDNN's canonical parameters, per layer and direction (forward before backward): one input
matrix ``[H, in]`` per gate, one recurrent matrix ``[H, H]`` per gate, one input bias ``[H]``
per gate, one recurrent bias ``[H]`` per gate. Gate order: LSTM (i, f, g, o), GRU (r, z, n)
with the reset gate applied after the recurrent matmul (``linear_before_reset``); vanilla RNN
one gate. This is exactly ``torch.nn.LSTM``/``GRU``/``RNN``'s math and layout.

cuDNN has no run-time ``forget_bias``: whatever forget bias a model needs is in its stored
biases. Imports therefore build ``forget_bias=0`` cells; exports fold a TF1 cell's
``forget_bias`` into the stored bias.

TF saved the layers of ``tf.contrib.cudnn_rnn.CudnnLSTM``/``CudnnGRU``/``CudnnRNNTanh`` in
checkpoints under the names of their "Cudnn-compatible" cells, with the two biases summed
(except the GRU candidate's): ``<prefix>/rnn/multi_rnn_cell/cell_<k>/<cell>/...`` or, when
bidirectional, ``<prefix>/stack_bidirectional_rnn/cell_<k>/bidirectional_rnn/{fw,bw}/<cell>/...``
with ``<cell>`` ``cudnn_compatible_lstm_cell`` (``kernel [in+H, 4H]`` in TF1 order i, j, f,
o; ``bias``), ``cudnn_compatible_gru_cell`` (``gates/kernel`` r, u; ``gates/bias``;
``candidate/{input,hidden}_projection/{kernel,bias}``) or ``basic_rnn_cell``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import torch

from rnnkit.cells.base import check_units
from rnnkit.io.errors import FormatError
from rnnkit.io.layouts import GATES, Layer, Rows, layers_of, reorder, to_rows
from rnnkit.io.torch_interop import cells_from_rows, torch_unsupported

__all__ = ["to_cudnn", "from_cudnn", "to_cudnn_checkpoint", "from_cudnn_checkpoint"]

_KINDS = {"lstm": ("lstm", "tanh"), "gru": ("gru", "tanh"), "rnn_tanh": ("rnn", "tanh"),
          "rnn_relu": ("rnn", "relu")}
_CELL_NAMES = {"lstm": "cudnn_compatible_lstm_cell", "gru": "cudnn_compatible_gru_cell",
               "rnn": "basic_rnn_cell"}


def _cudnn_layers(model) -> list[Layer]:
    layers = layers_of(model)
    p = layers[0].params[0]
    reasons = [r.replace("torch.nn.", "cuDNN's ") for r in torch_unsupported(p)]
    if p.P is not None:
        reasons.append("rnnkit's cuDNN layout has no projection (num_proj)")
    if reasons:
        raise ValueError("cannot express the model in cuDNN's layout: " + "; ".join(reasons))
    return layers


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def to_cudnn(model, split: bool = False):
    """cuDNN's canonical weights and biases of a model.

    Args:
        model: as ``to_torch`` (a cell, a ``MultiRNNCell``, a ``(fw, bw)`` pair or a list of
            pairs) without projection.
        split: return TF's two lists ``(weights, biases)`` (the arguments of
            ``CudnnRNN.canonical_to_params``) instead of one list.

    Returns:
        One list, per layer and direction: ``G`` input matrices ``[H, in]``, ``G`` recurrent
        matrices ``[H, H]``, ``G`` input biases, ``G`` recurrent biases (numpy arrays); or, with
        ``split``, all the matrices then all the biases in the same order.

    Raises:
        ValueError: the model's math is not cuDNN's (see ``to_torch``).
    """
    weights, biases = [], []
    layers = _cudnn_layers(model)
    for layer in layers:
        for p in layer.params:
            rows = to_rows(p, "cudnn")
            G = GATES[rows.kind]
            weights += [_np(t) for t in (*rows.W.chunk(G), *rows.R.chunk(G))]
            biases += [_np(t) for t in (*rows.b_in.chunk(G), *rows.b_rec.chunk(G))]
    if split:
        return weights, biases
    G = 2 * GATES[layers[0].kind]
    return [a for k in range(0, len(weights), G) for a in (*weights[k:k + G], *biases[k:k + G])]


def _check_kind(kind: str) -> tuple[str, str]:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    return _KINDS[kind]


def from_cudnn(params, kind: str, num_units: int, input_size: int, num_layers: int = 1,
               bidirectional: bool = False, source: str = "cuDNN canonical parameters"):
    """rnnkit cells from cuDNN's canonical weights, built under the current variable scope.

    LSTM becomes ``BasicLSTMCell(forget_bias=0)`` (cuDNN adds no forget bias at run time; the
    stored biases already hold it), GRU ``GRUCell(reset_after=True)``, RNN ``BasicRNNCell``.

    Args:
        params: the list ``to_cudnn`` returns, or TF's ``(weights, biases)`` pair; matrices may be
            ``[H, in]`` or flat; numpy arrays or tensors.
        kind: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        num_units: H.
        input_size: the depth of the first layer's inputs.
        num_layers: number of stacked layers.
        bidirectional: two directions per layer (each layer after the first reads ``2H``).
        source: recorded in the variables' provenance.

    Returns:
        As ``from_torch``: a cell, a ``MultiRNNCell``, a ``(fw, bw)`` pair or a list of pairs.

    Raises:
        ValueError: an unknown kind, or a parameter count or shape that does not match.
    """
    torch_kind, activation = _check_kind(kind)
    for arg, value in (("num_units", num_units), ("input_size", input_size), ("num_layers", num_layers)):
        check_units(value, arg)
    G, H, dirs = GATES[torch_kind], num_units, 2 if bidirectional else 1
    if isinstance(params, tuple) and len(params) == 2 and isinstance(params[0], (list, tuple)):
        weights, biases = params
        per = 2 * G
        params = [a for k in range(0, len(weights), per)
                  for a in (*weights[k:k + per], *biases[k:k + per])]
    want = num_layers * dirs * 4 * G
    if len(params) != want:
        raise ValueError(f"params must hold {want} arrays for {num_layers} layer(s), {dirs} "
                         f"direction(s) of {kind} ({4 * G} each), got {len(params)}")
    layer_rows, k = [], 0
    for layer in range(num_layers):
        depth = input_size if layer == 0 else H * dirs
        directions = []
        for _ in range(dirs):
            shapes = [(H, depth)] * G + [(H, H)] * G + [(H,)] * (2 * G)
            parts = [_tensor(params[k + j], shape, f"params[{k + j}]") for j, shape in enumerate(shapes)]
            k += 4 * G
            W, R = torch.cat(parts[:G]), torch.cat(parts[G:2 * G])
            directions.append(Rows(torch_kind, "cudnn", W, R, torch.cat(parts[2 * G:3 * G]),
                                   torch.cat(parts[3 * G:])))
        layer_rows.append(directions)
    return cells_from_rows(layer_rows, activation, source)


def _tensor(value, shape: tuple[int, ...], argname: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    if t.numel() != int(np.prod(shape)):
        raise ValueError(f"{argname} must have shape {list(shape)} ({int(np.prod(shape))} values), "
                         f"got {list(t.shape)}")
    return t.detach().reshape(shape).clone()


def to_cudnn_checkpoint(model, prefix: str = "") -> dict[str, np.ndarray]:
    """The variables TF's ``CudnnLSTM``/``CudnnGRU``/``CudnnRNNTanh`` saveables write for a model.

    Args:
        model: as ``to_cudnn``.
        prefix: the cuDNN layer's scope (e.g. ``"cudnn_lstm"``); names start with it.

    Returns:
        ``{name: array}`` with the Cudnn-compatible cells' names and TF1 layouts (see the module
        docstring); biases are summed as TF saves them.
    """
    layers = _cudnn_layers(model)
    out = {}
    for k, layer in enumerate(layers):
        for d, p in enumerate(layer.params):
            rows = to_rows(p, "torch")
            base = _name_prefix(prefix, k, d, len(layer.params) == 2, rows.kind)
            out.update(_tf_tensors(base, rows))
    return out


def _name_prefix(prefix: str, layer: int, direction: int, bidirectional: bool, kind: str) -> str:
    head = f"{prefix}/" if prefix else ""
    if bidirectional:
        path = f"stack_bidirectional_rnn/cell_{layer}/bidirectional_rnn/{('fw', 'bw')[direction]}"
    else:
        path = f"rnn/multi_rnn_cell/cell_{layer}"
    return f"{head}{path}/{_CELL_NAMES[kind]}"


def _tf_tensors(base: str, rows: Rows) -> dict[str, np.ndarray]:
    """One layer's TF canonical variables from rows (TF1 kernels act on ``concat([x, h])``)."""
    kind, H = rows.kind, rows.num_units
    kernel = torch.cat([rows.W, rows.R], dim=1).T  # [in + H, G*H], torch gate order
    bias = rows.b_in + rows.b_rec
    if kind != "gru":
        return {f"{base}/kernel": _np(reorder(kernel, kind, "torch", "tf1", dim=1)),
                f"{base}/bias": _np(reorder(bias, kind, "torch", "tf1"))}
    depth = rows.W.shape[1]
    return {f"{base}/gates/kernel": _np(kernel[:, :2 * H]),  # torch's r, z is TF's r, u
            f"{base}/gates/bias": _np(bias[:2 * H]),
            f"{base}/candidate/input_projection/kernel": _np(kernel[:depth, 2 * H:]),
            f"{base}/candidate/input_projection/bias": _np(rows.b_in[2 * H:]),
            f"{base}/candidate/hidden_projection/kernel": _np(kernel[depth:, 2 * H:]),
            f"{base}/candidate/hidden_projection/bias": _np(rows.b_rec[2 * H:])}


_NAME = re.compile(r"^(?P<prefix>.*?)/?(?:rnn/multi_rnn_cell/cell_(?P<uk>\d+)|stack_bidirectional_rnn/"
                   r"cell_(?P<bk>\d+)/bidirectional_rnn/(?P<dir>fw|bw))/(?P<cell>cudnn_compatible_"
                   r"lstm_cell|cudnn_compatible_gru_cell|basic_rnn_cell)/(?P<var>.+)$")


def from_cudnn_checkpoint(tensors: Mapping[str, np.ndarray], prefix: str | None = None,
                          kind: str | None = None, path: str = "<tensors>"):
    """rnnkit cells from the variables of TF's cuDNN layers (names as ``to_cudnn_checkpoint``).

    The cells are ``BasicLSTMCell(forget_bias=0, name="cudnn_compatible_lstm_cell")``,
    ``GRUCell(reset_after=True, name="cudnn_compatible_gru_cell")`` or ``BasicRNNCell``, built
    under the current variable scope plus the checkpoint's own path (``rnn/multi_rnn_cell/
    cell_k/...`` or ``stack_bidirectional_rnn/cell_k/bidirectional_rnn/fw/...``), so opening
    ``variable_scope(prefix)`` first reproduces the checkpoint's names exactly. ``forget_bias``
    is 0 because TF's ``CudnnCompatibleLSTMCell`` adds none: the forget bias is in the stored
    bias. Vanilla RNNs import as tanh (TF's names do not say tanh or relu; pass ``kind``).

    Args:
        tensors: ``{name: array}``, e.g. from ``rnnkit.io.read_checkpoint``.
        prefix: the cuDNN layer's scope; needed only when the tensors hold more than one.
        kind: ``"rnn_relu"`` to import a ``CudnnRNNRelu``; otherwise found from the names.
        path: the file the tensors came from, for error messages.

    Returns:
        A ``MultiRNNCell`` (unidirectional) or a list of ``(cell_fw, cell_bw)`` pairs.

    Raises:
        FormatError: no cuDNN-layer variables, several prefixes without ``prefix``, a missing
            variable, or shapes that do not fit together.
    """
    found: dict[str, dict] = {}
    for name, value in tensors.items():
        m = _NAME.match(name)
        if m:
            key = (int(m["uk"] or m["bk"]), ("fw", "bw").index(m["dir"]) if m["dir"] else 0)
            entry = found.setdefault(m["prefix"], {"cell": m["cell"], "bidi": m["dir"] is not None,
                                                   "vars": {}})
            entry["vars"].setdefault(key, {})[m["var"]] = np.asarray(value)
    if prefix is not None:
        found = {k: v for k, v in found.items() if k == prefix.rstrip("/")}
    if len(found) != 1:
        what = "no variables of a TF cuDNN layer" if not found else f"several cuDNN layers {sorted(found)}"
        raise FormatError(path, f"{what} (prefix={prefix!r}); expected names like "
                          "'<prefix>/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell/kernel'")
    (entry,) = found.values()
    torch_kind = next(k for k, v in _CELL_NAMES.items() if v == entry["cell"])
    activation = _check_kind(kind)[1] if kind is not None else "tanh"
    dirs = 2 if entry["bidi"] else 1
    layers = 1 + max(k for k, _ in entry["vars"])
    layer_rows = [[_rows_from_tf(torch_kind, entry["vars"].get((k, d)), path, f"layer {k}")
                   for d in range(dirs)] for k in range(layers)]
    _check_layer_chain(layer_rows, path)
    name = None if torch_kind == "rnn" else entry["cell"]
    return cells_from_rows(layer_rows, activation, f"TF cuDNN checkpoint {path}", name=name,
                           checkpoint_layout=True)


def _rows_from_tf(kind: str, variables: dict | None, path: str, where: str) -> Rows:
    need = (("gates/kernel", "gates/bias", "candidate/input_projection/kernel",
             "candidate/input_projection/bias", "candidate/hidden_projection/kernel",
             "candidate/hidden_projection/bias") if kind == "gru" else ("kernel", "bias"))
    missing = [n for n in need if variables is None or n not in variables]
    if missing:
        raise FormatError(path, f"{where}: missing variables {missing}")
    v = {n: torch.as_tensor(variables[n]) for n in need}
    try:
        if kind != "gru":
            kernel = reorder(v["kernel"], kind, "tf1", "torch", dim=1)
            H = kernel.shape[1] // GATES[kind]
            W, R = kernel[:-H].T, kernel[-H:].T
            b_in, b_rec = reorder(v["bias"], kind, "tf1", "torch"), torch.zeros_like(v["bias"])
        else:
            gates, cand_in, cand_h = (v["gates/kernel"], v["candidate/input_projection/kernel"],
                                      v["candidate/hidden_projection/kernel"])
            depth, H = cand_in.shape
            W = torch.cat([gates[:depth], cand_in], dim=1).T
            R = torch.cat([gates[depth:], cand_h], dim=1).T
            zeros = torch.zeros(H, dtype=W.dtype)
            b_in = torch.cat([v["gates/bias"], v["candidate/input_projection/bias"]])
            b_rec = torch.cat([zeros, zeros, v["candidate/hidden_projection/bias"]])
    except (RuntimeError, ValueError, IndexError) as e:
        raise FormatError(path, f"{where}: variables of inconsistent shapes {_shapes(v)}: {e}") from None
    G = GATES[kind]
    if W.shape[1] < 1 or R.shape != (G * H, H) or b_in.shape != (G * H,) or b_rec.shape != (G * H,):
        raise FormatError(path, f"{where}: variables of inconsistent shapes {_shapes(v)}")
    return Rows(kind, "torch", W, R, b_in, b_rec)


def _shapes(v: dict) -> dict:
    return {n: list(t.shape) for n, t in v.items()}


def _check_layer_chain(layer_rows: list[list[Rows]], path: str) -> None:
    for k in range(1, len(layer_rows)):
        want = sum(r.num_units for r in layer_rows[k - 1])
        got = layer_rows[k][0].W.shape[1]
        if got != want or any(r.W.shape[1] != got for r in layer_rows[k]):
            raise FormatError(path, f"layer {k} takes inputs of depth {got}, but layer {k - 1} "
                              f"gives {want}")
