"""ONNX export on ONNX's own ``RNN``/``GRU``/``LSTM`` operators (no tracing of the Python loop).

ONNX keeps per node ``W [dirs, G*H, in]``, ``R [dirs, G*H, H]``, ``B [dirs, 2*G*H]`` (input
biases then recurrent biases), gate orders LSTM (i, o, f, c) and GRU (z, r, h), peepholes
``P [dirs, 3H]`` in order (i, o, f), and ``linear_before_reset`` for the GRU: 1 is the reset
gate after the recurrent matmul (cuDNN, Keras, torch), 0 before it (TF1 ``GRUCell``) — so both
GRUs export. With ``sequence_lens`` the outputs past each length are zero, the final state is
the last valid step's, and the backward direction reads each sequence reversed within its own
length: TF's ``dynamic_rnn`` / ``bidirectional_dynamic_rnn`` semantics.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from rnnkit import activations
from rnnkit.cells.equations import Canonical
from rnnkit.io.atomic import atomic_write
from rnnkit.io.layouts import ONNX_PEEPHOLE_ORDER, Layer, layers_of, to_rows

__all__ = ["export_onnx", "onnx_unsupported"]

_OPS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
# rnnkit activation name -> (ONNX activation name, alpha, beta) (None: the operator's default)
_ACTIVATIONS = {
    "tanh": ("Tanh", None, None), "sigmoid": ("Sigmoid", None, None), "relu": ("Relu", None, None),
    "softsign": ("Softsign", None, None), "softplus": ("Softplus", None, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),  # Keras 3: relu6(x + 3) / 6
    "hard_sigmoid_keras2": ("HardSigmoid", 0.2, 0.5),  # Keras 2: clip(0.2 x + 0.5, 0, 1)
    "linear": ("Affine", 1.0, 0.0),
}


def onnx_unsupported(p: Canonical) -> list[str]:
    """Why a cell's math cannot be an ONNX RNN operator (empty when it can)."""
    if p.kind == "layer_norm_lstm":
        return ["ONNX has no layer-normalized LSTM operator"]
    reasons = []
    for role, fn in (("activation", p.activation), ("recurrent_activation", p.recurrent_activation)):
        name = activations.name_of(fn) if fn is not None else None
        if fn is not None and name not in _ACTIVATIONS:
            reasons.append(f"ONNX {_OPS[p.kind]} activations are {sorted(_ACTIVATIONS)} in rnnkit "
                           f"names; {role} is {name!r}")
    if p.cell_clip is not None:
        reasons.append(f"ONNX LSTM's clip bounds the gate pre-activations, it has no cell-state "
                       f"clipping (cell_clip={p.cell_clip})")
    if p.P is not None:
        reasons.append("ONNX LSTM has no output projection (num_proj)")
    if p.proj_clip is not None:
        reasons.append(f"ONNX LSTM has no projection clipping (proj_clip={p.proj_clip})")
    return reasons


def _onnx():
    try:
        import onnx
    except ImportError as e:  # the optional extra is missing
        raise ImportError("export_onnx needs the 'onnx' package: pip install 'rnnkit[onnx]'") from e
    return onnx


def export_onnx(model, path: str | os.PathLike, *, sequence_lens: bool = True, opset: int = 17,
                graph_name: str = "rnnkit"):
    """Write ``model`` as an ONNX graph of ``RNN``/``GRU``/``LSTM`` nodes, one per layer.

    Graph inputs: ``input [batch, time, depth]`` (float32, batch-major like ``dynamic_rnn``) and,
    with ``sequence_lens``, ``sequence_lens [batch]`` (int32, each in ``[0, time]``). Outputs:
    ``output [batch, time, dirs*H]`` (zero past each length; forward and backward concatenated),
    ``h_n [layers*dirs, batch, H]`` and for LSTMs ``c_n`` (torch's order of layers and
    directions). Weights are stored as float32. The file is written atomically (a temporary file
    renamed over ``path``), so a failure leaves any previous file intact.

    Args:
        model: a built cell (``BasicRNNCell``, ``GRUCell`` with either reset convention,
            ``BasicLSTMCell``, ``LSTMCell`` with peepholes, a Keras cell or RNN layer), a
            ``MultiRNNCell`` of them (chained nodes), a ``(cell_fw, cell_bw)`` pair or a Keras
            ``Bidirectional`` layer (``direction="bidirectional"``), or a list of pairs (stacked
            bidirectional layers).
        path: the ``.onnx`` file to write.
        sequence_lens: add the ``sequence_lens`` input.
        opset: the ONNX opset to declare (RNN operators exist since 7; 14+ recommended).
        graph_name: the graph's name.

    Returns:
        The ``onnx.ModelProto`` written.

    Raises:
        ValueError: math ONNX lacks (cell clipping, projection, layer norm, other activations),
            each reason named; unbuilt cells; sizes that do not chain.
        TypeError: ``model`` is not one of the forms above.
        ImportError: the ``onnx`` package is not installed.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    layers = layers_of(model)
    first = layers[0].params[0]
    reasons = onnx_unsupported(first)
    if reasons:
        raise ValueError(f"cannot export to ONNX {_OPS.get(first.kind, 'LSTM')}: " + "; ".join(reasons))
    if not isinstance(opset, int) or opset < 7:
        raise ValueError(f"opset must be an int >= 7 (ONNX's RNN operators), got {opset!r}")
    nodes, inits = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    nodes.append(helper.make_node("Transpose", ["input"], ["x_0"], perm=[1, 0, 2]))
    const("flatten_dirs", np.array([0, 0, -1], dtype=np.int64))
    x, h_outs, c_outs = "x_0", [], []
    for k, layer in enumerate(layers):
        weights = _node_weights(layer)
        names = [const(f"{part}_{k}", weights[part]) for part in ("W", "R", "B")]
        inputs = [x, *names, "sequence_lens" if sequence_lens else "", "", ""]
        if "P" in weights:
            inputs.append(const(f"P_{k}", weights["P"]))
        outputs = [f"y_{k}", f"h_{k}"] + ([f"c_{k}"] if first.kind == "lstm" else [])
        nodes.append(helper.make_node(_OPS[first.kind], _trim(inputs), outputs, name=f"layer_{k}",
                                      **_attributes(layer)))
        nodes.append(helper.make_node("Transpose", [f"y_{k}"], [f"yt_{k}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"yt_{k}", "flatten_dirs"], [f"x_{k + 1}"]))
        x = f"x_{k + 1}"
        h_outs.append(f"h_{k}")
        c_outs += [f"c_{k}"] if first.kind == "lstm" else []
    nodes.append(helper.make_node("Transpose", [x], ["output"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Concat", h_outs, ["h_n"], axis=0))
    if c_outs:
        nodes.append(helper.make_node("Concat", c_outs, ["c_n"], axis=0))

    dirs, H = len(layers[0].params), layers[0].output_size
    f32 = TensorProto.FLOAT
    graph_inputs = [helper.make_tensor_value_info("input", f32, ["batch", "time", layers[0].input_size])]
    if sequence_lens:
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"]))
    state_shape = [len(layers) * dirs, "batch", H]
    graph_outputs = [helper.make_tensor_value_info("output", f32, ["batch", "time", dirs * H]),
                     helper.make_tensor_value_info("h_n", f32, state_shape)]
    if c_outs:
        graph_outputs.append(helper.make_tensor_value_info("c_n", f32, state_shape))
    graph = helper.make_graph(nodes, graph_name, graph_inputs, graph_outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="rnnkit")
    onnx.checker.check_model(proto)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return proto


def _trim(inputs: list[str]) -> list[str]:
    """Drop trailing empty (omitted) optional inputs."""
    while inputs and not inputs[-1]:
        inputs.pop()
    return inputs


def _node_weights(layer: Layer) -> dict[str, np.ndarray]:
    """W, R, B (and P) of one layer's node, directions stacked on axis 0, ONNX gate order."""
    rows = [to_rows(p, "onnx") for p in layer.params]

    def stack(tensors) -> np.ndarray:
        return torch.stack(list(tensors)).to(torch.float32).cpu().numpy()

    out = {"W": stack(r.W for r in rows), "R": stack(r.R for r in rows),
           "B": stack(torch.cat([r.b_in, r.b_rec]) for r in rows)}
    if rows[0].peepholes is not None:
        out["P"] = stack(torch.cat([dict(zip("ifo", r.peepholes, strict=True))[g]
                                    for g in ONNX_PEEPHOLE_ORDER]) for r in rows)
    return out


def _attributes(layer: Layer) -> dict:
    p = layer.params[0]
    roles = {"rnn": [p.activation], "gru": [p.recurrent_activation, p.activation],
             "lstm": [p.recurrent_activation, p.activation, p.activation]}[p.kind]
    names, alphas, betas = [], [], []
    for fn in roles * len(layer.params):
        name, alpha, beta = _ACTIVATIONS[activations.name_of(fn)]
        names.append(name)
        alphas += [alpha] if alpha is not None else []
        betas += [beta] if beta is not None else []
    attrs = {"hidden_size": layer.num_units, "activations": names,
             "direction": "bidirectional" if len(layer.params) == 2 else "forward"}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    if p.kind == "gru":
        attrs["linear_before_reset"] = int(p.reset_after)
    return attrs

