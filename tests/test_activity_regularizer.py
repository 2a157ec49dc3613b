"""``activity_regularizer`` on Dense, Embedding and the recurrent layers: the penalties Keras 3
adds to ``losses`` (each output over its batch size, dropped at the next call), its configs in
``.keras`` files both ways, and rnnkit's own properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tf_oracle import requires_tf, run_tf

from rnnkit import layers as L
from rnnkit.io import load_keras, save_keras

SCRIPT = """
import keras
from keras import layers as KL
D = str(INPUTS["dir"])

inp = keras.Input((6,), dtype="int32")
e = KL.Embedding(12, 4, mask_zero=True, activity_regularizer="l2", name="emb")(inp)
b = KL.Bidirectional(KL.GRU(3, return_sequences=True, activity_regularizer="l1"), name="bi")(e)
y, h, c = KL.LSTM(4, return_sequences=True, return_state=True, name="lstm",
                  activity_regularizer=keras.regularizers.L1L2(l1=0.1, l2=0.2))(b)
out = KL.Dense(2, activity_regularizer="l2", kernel_regularizer="l2", name="d")(h)
model = keras.Model(inp, [out, c])
rng = np.random.default_rng(0)
for w in model.weights:
    w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
model.save(f"{D}/keras.keras")
for k, ids in enumerate((INPUTS["ids"], INPUTS["ids2"])):
    model(ids)
    RESULT[f"keras:losses:{k}"] = np.array(sorted(float(v) for v in model.losses))
mine = keras.saving.load_model(f"{D}/rnnkit.keras")
mine(INPUTS["ids"])
RESULT["rnnkit_file:losses"] = np.array(sorted(float(v) for v in mine.losses))
"""


def _ids():
    return {"ids": np.array([[3, 5, 0, 0, 0, 0], [1, 0, 2, 0, 4, 11], [7, 7, 7, 7, 7, 7]], np.int32),
            "ids2": np.array([[1, 2, 3, 4, 5, 6], [9, 9, 0, 0, 0, 0]], np.int32)}


def _losses(model) -> np.ndarray:
    return np.array(sorted(float(v.detach()) for v in model.losses))


@pytest.mark.oracle
@requires_tf
def test_losses_match_keras_and_files_carry_the_regularizers(tmp_path):
    inputs = _ids()
    inp = L.Input((6,), dtype=torch.int64)
    e = L.Embedding(12, 4, mask_zero=True, activity_regularizer="l2", name="emb")(inp)
    b = L.Bidirectional(L.GRU(3, return_sequences=True, activity_regularizer="l1"), name="bi")(e)
    _, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="lstm",
                     activity_regularizer=L.L1L2(l1=0.1, l2=0.2))(b)
    mine = L.Model(inp, [L.Dense(2, activity_regularizer="l2", kernel_regularizer="l2", name="d")(h),
                         c])
    mine(torch.from_numpy(inputs["ids"]))
    save_keras(mine, tmp_path / "rnnkit.keras")
    own = _losses(mine)
    result = run_tf(SCRIPT, {**inputs, "dir": np.array(str(tmp_path))}, legacy_keras=False)

    model = load_keras(tmp_path / "keras.keras")
    for k, ids in enumerate((inputs["ids"], inputs["ids2"])):
        model(torch.from_numpy(ids))
        # the Embedding's, both directions' GRUs', three LSTM outputs', the Dense's and its kernel's
        assert len(model.losses) == 8
        np.testing.assert_allclose(_losses(model), result[f"keras:losses:{k}"], rtol=1e-5)
    np.testing.assert_allclose(result["rnnkit_file:losses"], own, rtol=1e-5)  # Keras, our file


def test_each_output_over_its_batch_size_until_the_next_call():
    layer = L.SimpleRNN(3, return_sequences=True, return_state=True,
                        activity_regularizer=L.L1L2(l2=0.5))
    x = torch.randn(4, 5, 2)
    seq, h = layer(x)
    want = [0.5 * (seq ** 2).sum() / 4, 0.5 * (h ** 2).sum() / 4]
    assert all(torch.allclose(a, b) for a, b in zip(layer.losses, want, strict=True))
    layer(x[:2])
    assert len(layer.losses) == 2  # the last call's only
    layer.losses[0].backward()  # a penalty takes part in training
    assert layer.cell.kernel.grad is not None


def test_a_layer_called_twice_in_one_model_call_adds_both():
    shared = L.Dense(3, activity_regularizer="l1")
    inp = L.Input((3,))
    model = L.Model(inp, shared(shared(inp)))
    model(torch.randn(5, 3))
    assert len(model.losses) == 2
    model(torch.randn(5, 3))
    assert len(model.losses) == 2


def test_configs_round_trip_and_layers_without_one_refuse_it():
    for layer in (L.Dense(2, activity_regularizer="l2"), L.Embedding(3, 2, activity_regularizer="l1"),
                  L.GRU(2, activity_regularizer="l2"), L.RNN(L.LSTMCell(2), activity_regularizer="l2")):
        config = layer.get_config()
        again = type(layer).from_config(config)
        assert again.get_config() == config and again.activity_regularizer is not None
    assert L.LSTM(2).get_config()["activity_regularizer"] is None
    with pytest.raises(TypeError):
        L.Masking(activity_regularizer="l2")


@pytest.mark.oracle
@requires_tf
def test_a_layer_under_time_distributed_is_penalized_as_tf_keras_does():
    """tf.keras calls the wrapped layer once on ``[batch*time, ...]``: its penalty is over
    batch*time rows. (Keras 3's TimeDistributed calls the layer's ``call``, which skips the
    penalty; rnnkit keeps tf.keras's, the one the layer's argument asks for.)"""
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)
    result = run_tf("""
keras = tf.keras
td = keras.layers.TimeDistributed(keras.layers.Dense(
    2, kernel_initializer="ones", bias_initializer="zeros",
    activity_regularizer=keras.regularizers.L1L2(l1=0.3, l2=0.1)))
td(INPUTS["x"])
RESULT["losses"] = np.array([float(v) for v in td.losses])
""", {"x": x})
    td = L.TimeDistributed(L.Dense(2, kernel_initializer="ones", bias_initializer="zeros",
                                   activity_regularizer=L.L1L2(l1=0.3, l2=0.1)))
    td(torch.from_numpy(x))
    np.testing.assert_allclose([float(v.detach()) for v in td.losses], result["losses"], rtol=1e-5)
