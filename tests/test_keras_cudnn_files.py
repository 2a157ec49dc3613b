"""Keras 2's cuDNN-only layers (``CuDNNLSTM``, ``CuDNNGRU``) in legacy ``.h5`` files: rnnkit
loads them as ``LSTM`` and reset-after ``GRU``, their biases converted as Keras converts them.
The oracle is tf.keras itself: its cuDNN layers need a GPU to run, so the file's weights are
loaded into the CuDNN-free twins (Keras converts them) and those run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tf_oracle import requires_tf, run_tf

from rnnkit import layers as L
from rnnkit.io import FormatError, load_keras

pytestmark = [pytest.mark.oracle, requires_tf]

SCRIPT = """
K = tf.keras
C = tf.compat.v1.keras.layers
D = str(INPUTS["dir"])

def model(lstm, gru):
    inp = K.Input((6, 4))
    seq = lstm(5, return_sequences=True, name="l")(inp)
    out = K.layers.Bidirectional(gru(3, return_sequences=False), name="bi")(seq)
    return K.Model(inp, K.layers.Dense(2, name="d")(out))

cudnn = model(C.CuDNNLSTM, C.CuDNNGRU)
rng = np.random.default_rng(0)
for w in cudnn.weights:
    w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
cudnn.save(f"{D}/cudnn.h5")
cudnn.save_weights(f"{D}/cudnn_weights.h5")
RESULT["shapes"] = np.array([str(tuple(w.shape)) for w in cudnn.weights])
twin = model(K.layers.LSTM, lambda n, **kw: K.layers.GRU(n, reset_after=True,
                                                          recurrent_activation="sigmoid", **kw))
twin.load_weights(f"{D}/cudnn_weights.h5")
RESULT["out"] = twin(INPUTS["x"]).numpy()
"""


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cudnn")
    x = np.random.default_rng(1).standard_normal((3, 6, 4)).astype(np.float32)
    return tmp, x, run_tf(SCRIPT, {"x": x, "dir": np.array(str(tmp))})


def test_a_whole_model_file_loads_as_lstm_and_gru(oracle):
    tmp, x, result = oracle
    assert "(40,)" in result["shapes"] and "(18,)" in result["shapes"]  # cuDNN's two biases
    model = load_keras(tmp / "cudnn.h5")
    lstm, bi = model.model_layers[0], model.model_layers[1]
    assert isinstance(lstm, L.LSTM) and isinstance(bi.forward_layer, L.GRU)
    assert bi.forward_layer.reset_after and bi.forward_layer.cell.bias.shape == (2, 9)
    out = model(torch.from_numpy(x))
    out = out[0] if isinstance(out, list) else out  # a legacy config lists its one output
    np.testing.assert_allclose(out.detach().numpy(), result["out"], rtol=1e-5, atol=1e-5)


def test_its_weights_load_into_the_twin_model(oracle):
    tmp, x, result = oracle
    inp = L.Input((6, 4))
    seq = L.LSTM(5, return_sequences=True, name="l")(inp)
    out = L.Bidirectional(L.GRU(3, reset_after=True), name="bi")(seq)
    model = L.Model(inp, L.Dense(2, name="d")(out))
    model(torch.zeros(1, 6, 4))
    load_keras(tmp / "cudnn_weights.h5", model)
    np.testing.assert_allclose(model.eval()(torch.from_numpy(x)).detach().numpy(),
                               result["out"], rtol=1e-5, atol=1e-5)
    for lstm_units, reset_after in ((4, True), (5, False)):  # CuDNNGRU is a reset-after GRU
        inp = L.Input((6, 4))
        out = L.Bidirectional(L.GRU(3, reset_after=reset_after))(
            L.LSTM(lstm_units, return_sequences=True)(inp))
        wrong = L.Model(inp, L.Dense(2)(out))
        wrong(torch.zeros(1, 6, 4))
        with pytest.raises(FormatError, match="has shape"):
            load_keras(tmp / "cudnn_weights.h5", wrong)


def test_inspect_labels_the_cudnn_layout(oracle):
    from rnnkit.io.inspect import inspect_file

    text = str(inspect_file(oracle[0] / "cudnn.h5"))
    assert "Keras 2 CuDNNLSTM: bias [2*G*H] (input biases, then recurrent)" in text
    assert "Keras 2 CuDNNGRU: kernel [in, G*H] (each gate block in cuDNN's layout)" in text
