"""ONNX export on the LSTM/GRU/RNN operators, run in onnxruntime and compared with rnnkit's own
outputs and final states (1e-5, float32) over cells x model forms x lengths; errors for what
ONNX lacks; atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_io_torch import FORMS, B, D, T, assert_same, build, run_rnnkit

from rnnkit.cells import BasicLSTMCell, BasicRNNCell, GRUCell, LayerNormLSTMCell, LSTMCell
from rnnkit.io import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

try:
    from rnnkit.layers import cells as keras_cells
except ImportError:
    keras_cells = None

LENGTHS = {"full": None, "ragged": [6, 1, 4, 3], "short_and_empty": [2, 0, 1, 3]}
CELLS = {
    "rnn_tanh": lambda: BasicRNNCell(5),
    "rnn_relu": lambda: BasicRNNCell(5, activation="relu"),
    "gru_tf1_reset_before": lambda: GRUCell(5),
    "gru_reset_after": lambda: GRUCell(5, reset_after=True),
    "basic_lstm": lambda: BasicLSTMCell(5, forget_bias=1.0),
    "lstm_peepholes": lambda: LSTMCell(5, use_peepholes=True),
}
if keras_cells is not None:
    CELLS.update({
        "keras_gru_hard_sigmoid": lambda: keras_cells.GRUCell(5, recurrent_activation="hard_sigmoid"),
        "keras_gru_reset_before": lambda: keras_cells.GRUCell(5, reset_after=False),
        "keras_lstm_hard_sigmoid_keras2": lambda: keras_cells.LSTMCell(
            5, recurrent_activation="hard_sigmoid_keras2"),
        "keras_simple_rnn_softsign": lambda: keras_cells.SimpleRNNCell(5, activation="softsign"),
    })


def run_onnx(path, x: torch.Tensor, lengths):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input": x.numpy()}
    if "sequence_lens" in {i.name for i in session.get_inputs()}:
        lens = np.full(x.shape[0], x.shape[1]) if lengths is None else np.asarray(lengths)
        feeds["sequence_lens"] = lens.astype(np.int32)
    out = session.run(None, feeds)
    return out[0], out[1], out[2] if len(out) > 2 else None


@pytest.mark.parametrize("cell,form", [(c, f) for c in CELLS for f in FORMS
                                       if not (c.startswith("keras") and f == "multi")])
def test_onnxruntime_matches_rnnkit(cell, form, tmp_path):
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    model = build(CELLS[cell], form, x)
    path = tmp_path / "model.onnx"
    proto = export_onnx(model, path)
    assert proto.graph.node[1].op_type == _op_of(model)
    for name, lengths in LENGTHS.items():
        assert_same(run_onnx(path, x, lengths), run_rnnkit(model, x, lengths)), name


def _op_of(model) -> str:
    while isinstance(model, (list, tuple)):
        model = model[0]
    cell = getattr(model, "cells", [model])[0]
    return {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell.canonical().kind]


def _attribute(node, name):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_gate_orders_and_attributes(tmp_path):
    """ONNX LSTM W rows are i, o, f, c; GRU z, r, h; P is i, o, f; linear_before_reset as set."""
    lstm = LSTMCell(2, use_peepholes=True, input_size=1)
    with torch.no_grad():
        lstm.get_parameter("kernel")[0].copy_(torch.arange(8.0))  # x row, TF1 order i, j, f, o
        for k, name in enumerate(("w_i_diag", "w_f_diag", "w_o_diag")):
            lstm.get_parameter(name).fill_(k + 1)
    proto = export_onnx(lstm, tmp_path / "lstm.onnx")
    init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(init["W_0"][0, :, 0], [0, 1, 6, 7, 4, 5, 2, 3])  # i, o, f, c(j)
    np.testing.assert_array_equal(init["P_0"][0], [1, 1, 3, 3, 2, 2])  # i, o, f
    for reset_after in (False, True):
        gru = GRUCell(1, reset_after=reset_after, input_size=1)
        with torch.no_grad():
            gru.get_parameter("gates/kernel")[0].copy_(torch.tensor([1.0, 2.0]))  # r, u
        proto = export_onnx(gru, tmp_path / "gru.onnx", sequence_lens=False)
        node = proto.graph.node[1]
        assert _attribute(node, "linear_before_reset") == int(reset_after)
        assert _attribute(node, "direction") == b"forward"
        assert list(node.input)[4:] == []  # no sequence_lens input
        w = onnx.numpy_helper.to_array(proto.graph.initializer[1])
        assert w[0, :2, 0].tolist() == [2.0, 1.0]  # z(u), r


@pytest.mark.parametrize("make,message", [
    (lambda: LSTMCell(4, cell_clip=2.0), "no cell-state clipping (cell_clip=2.0)"),
    (lambda: LSTMCell(4, num_proj=2), "no output projection (num_proj)"),
    (lambda: LayerNormLSTMCell(4), "no layer-normalized LSTM operator"),
    (lambda: BasicRNNCell(4, activation="gelu"), "activation is 'gelu'"),
])
def test_refuses_what_onnx_lacks(make, message, tmp_path):
    cell = make()
    cell.ensure_built(3, torch.float32)
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="cannot export to ONNX") as info:
        export_onnx(cell, path)
    assert message in str(info.value)
    assert not path.exists()


def test_atomic_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    cell = GRUCell(3, input_size=2)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(cell, path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left behind
    monkeypatch.undo()
    export_onnx(cell, path)
    assert onnx.load(str(path)).graph.node[1].op_type == "GRU"


def test_argument_errors(tmp_path):
    cell = GRUCell(3, input_size=2)
    with pytest.raises(ValueError, match="opset must be an int >= 7"):
        export_onnx(cell, tmp_path / "m.onnx", opset=5)
    with pytest.raises(RuntimeError, match="no variables yet"):
        export_onnx(GRUCell(3), tmp_path / "m.onnx")


@pytest.mark.skipif(keras_cells is None, reason="rnnkit.layers is not available")
@pytest.mark.parametrize("kind", ["SimpleRNN", "GRU", "LSTM"])
def test_keras_layers(kind, tmp_path):
    """Stacked Keras Bidirectional layers on masked (right-padded) inputs."""
    import rnnkit.layers as keras_layers

    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(9))
    lengths = [6, 1, 4, 3]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    extra = {"GRU": {"reset_after": False}, "LSTM": {"recurrent_activation": "hard_sigmoid"}}
    bi = [keras_layers.Bidirectional(getattr(keras_layers, kind)(5, return_sequences=True,
                                                                 **extra.get(kind, {})))
          for _ in range(2)]
    with torch.no_grad():
        want = bi[1](bi[0](x, mask=mask), mask=mask)
    export_onnx(bi, tmp_path / "k.onnx")
    got = torch.as_tensor(run_onnx(tmp_path / "k.onnx", x, lengths)[0])
    assert torch.allclose(got[mask], want[mask], atol=1e-5, rtol=1e-5)
