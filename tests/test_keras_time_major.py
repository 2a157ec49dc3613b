"""tf.keras's (Keras 2's) ``time_major=True`` on the recurrent layers: ``[time, batch, ...]``
inputs and sequences, in legacy ``.h5`` files against tf.keras itself, and rnnkit's own rules
(masks time-major as tf.keras's, no Keras 3 form)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tf_oracle import requires_tf, run_tf

from rnnkit import layers as L
from rnnkit.io import load, load_keras, save_keras, save_native

SCRIPT = """
K = tf.keras
D = str(INPUTS["dir"])
model = K.Sequential([
    K.layers.LSTM(4, time_major=True, return_sequences=True, input_shape=(None, 5)),
    K.layers.Bidirectional(K.layers.GRU(3, time_major=True, return_sequences=True)),
    K.layers.SimpleRNN(2, time_major=True, go_backwards=True)])
rng = np.random.default_rng(0)
for w in model.weights:
    w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
model.save(f"{D}/time_major.h5")
RESULT["out"] = model(INPUTS["x"]).numpy()
states = K.layers.GRU(3, time_major=True, return_sequences=True, return_state=True)
states.build((None, None, 5))
for w in states.weights:
    w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
seq, h = states(INPUTS["x"])
RESULT["seq"], RESULT["h"] = seq.numpy(), h.numpy()
RESULT["gru_weights"] = np.concatenate([w.numpy().ravel() for w in states.weights])
"""


@pytest.mark.oracle
@requires_tf
def test_time_major_layers_match_tf_keras(tmp_path):
    x = np.random.default_rng(1).standard_normal((6, 3, 5)).astype(np.float32)  # [time, batch]
    result = run_tf(SCRIPT, {"x": x, "dir": np.array(str(tmp_path))})
    model = load_keras(tmp_path / "time_major.h5")
    assert all(m.time_major for m in model.modules() if isinstance(m, L.RNN))
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), result["out"],
                               rtol=1e-5, atol=1e-5)
    gru = L.GRU(3, time_major=True, return_sequences=True, return_state=True)
    gru(torch.from_numpy(x))
    flat, at = torch.from_numpy(result["gru_weights"]), 0
    with torch.no_grad():
        for w in gru.weights:
            w.copy_(flat[at:at + w.numel()].view_as(w))
            at += w.numel()
    seq, h = gru(torch.from_numpy(x))
    assert seq.shape == (6, 3, 3) and h.shape == (3, 3)
    np.testing.assert_allclose(seq.detach().numpy(), result["seq"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h.detach().numpy(), result["h"], rtol=1e-5, atol=1e-5)


def test_time_major_is_the_batch_major_layer_transposed(tmp_path):
    torch.manual_seed(0)
    batch_major = L.Bidirectional(L.LSTM(4, return_sequences=True, return_state=True))
    x = torch.randn(3, 6, 5)
    want = batch_major(x)
    time_major = L.Bidirectional(L.LSTM(4, return_sequences=True, return_state=True,
                                        time_major=True))
    time_major(x.transpose(0, 1))
    time_major.set_weights(batch_major.get_weights())
    got = time_major(x.transpose(0, 1))
    torch.testing.assert_close(got[0], want[0].transpose(0, 1))
    for a, b in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(a, b)
    config = time_major.get_config()
    assert config["layer"]["config"]["time_major"] is True
    assert "time_major" not in L.LSTM(4).get_config()
    model = L.Sequential([L.GRU(3, time_major=True, return_sequences=True)])
    model(x.transpose(0, 1))
    with pytest.raises(ValueError, match="time_major=True has no Keras 3 equivalent"):
        save_keras(model, tmp_path / "m.keras")
    save_native(tmp_path / "m.safetensors", model)
    torch.testing.assert_close(load(tmp_path / "m.safetensors")(x.transpose(0, 1)),
                               model.eval()(x.transpose(0, 1)))


MASKED = """
K = tf.keras
D = str(INPUTS["dir"])
model = K.Sequential([
    K.layers.Masking(input_shape=(None, 5)),
    K.layers.LSTM(4, time_major=True, return_sequences=True),
    K.layers.Bidirectional(K.layers.GRU(3, time_major=True, return_sequences=True)),
    K.layers.SimpleRNN(2, time_major=True)])
rng = np.random.default_rng(2)
for w in model.weights:
    w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
model.save(f"{D}/masked.h5")
RESULT["out"] = model(INPUTS["x"]).numpy()
"""


@pytest.mark.oracle
@requires_tf
def test_time_major_masks_are_time_major_as_in_tf_keras(tmp_path):
    """tf.keras reads a time-major layer's mask as [time, batch], which a Masking layer over
    time-major inputs makes: steps masked anywhere (here in the middle and at either end)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)  # [time, batch]
    x[[1, 4], 0] = 0.0
    x[:2, 1] = 0.0
    x[5, 2] = 0.0
    result = run_tf(MASKED, {"x": x, "dir": np.array(str(tmp_path))})
    model = load_keras(tmp_path / "masked.h5")
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), result["out"],
                               rtol=1e-5, atol=1e-5)


def test_a_time_major_mask_is_time_by_batch():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2)  # [time, batch]
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    layer = L.LSTM(2, time_major=True, return_sequences=True)
    got = layer(x, mask=mask)
    batch_major = L.LSTM(2, return_sequences=True)
    batch_major(x.transpose(0, 1))
    batch_major.set_weights(layer.get_weights())
    torch.testing.assert_close(got, batch_major(x.transpose(0, 1), mask=mask.T).transpose(0, 1))
    with pytest.raises(ValueError, match=r"mask must have shape \[time, batch\] = \[4, 3\]"):
        layer(x, mask=mask.T)
