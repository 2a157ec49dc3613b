"""ConvLSTM layers in Keras files, against Keras itself: Keras 3's ``.keras`` and
``.weights.h5`` read by rnnkit, rnnkit's read by Keras 3, and tf.keras's legacy ``.h5``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tf_oracle import requires_tf, run_tf

from rnnkit import layers as L
from rnnkit.io import load, load_keras, save_keras, save_native

pytestmark = [pytest.mark.oracle, requires_tf]

KERAS3 = """
import keras
from keras import layers as KL
D = str(INPUTS["dir"])
rng = np.random.default_rng(5)

def fill(model):
    for w in model.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32") * 0.3)
    return model

models = {
    "k2d": keras.Sequential([keras.Input((4, 7, 6, 3)),
                             KL.ConvLSTM2D(4, 3, padding="same", return_sequences=True),
                             KL.ConvLSTM2D(2, (2, 3), strides=(2, 1), go_backwards=True,
                                           recurrent_activation="hard_sigmoid")]),
    "k1d": keras.Sequential([keras.Input((4, 3, 9)),
                             KL.ConvLSTM1D(3, 2, data_format="channels_first", dilation_rate=2,
                                           return_sequences=True),
                             KL.TimeDistributed(KL.Dense(2))]),
    "k3d": keras.Sequential([keras.Input((4, 5, 4, 6, 3)),
                             KL.ConvLSTM3D(2, 2, padding="same", use_bias=False)]),
}
for name, model in models.items():
    fill(model)
    RESULT[f"{name}:out"] = np.asarray(model(INPUTS[f"x_{name}"]))
    model.save(f"{D}/{name}.keras")
models["k2d"].save_weights(f"{D}/k2d.weights.h5")
for name in json.loads(str(INPUTS["rnnkit_names"])):
    model = keras.saving.load_model(f"{D}/rk_{name}.keras")
    RESULT[f"rk_{name}:out"] = np.asarray(model(INPUTS[f"x_{name}"]))
"""

LEGACY = """
K = tf.keras
D = str(INPUTS["dir"])
rng = np.random.default_rng(6)
model = K.Sequential([K.layers.ConvLSTM2D(4, 3, padding="same", return_sequences=True,
                                          input_shape=(4, 7, 6, 3)),
                      K.layers.ConvLSTM2D(2, 2, strides=2, recurrent_activation="hard_sigmoid")])
for w in model.weights:
    w.assign(rng.standard_normal(w.shape).astype("float32") * 0.3)
RESULT["out"] = model(INPUTS["x_k2d"]).numpy()
model.save(f"{D}/legacy.h5")
RESULT["names"] = [w.name for w in model.weights]
"""


def _inputs(tmp_path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(12)
    return {"dir": np.array(str(tmp_path)),
            "x_k2d": rng.standard_normal((2, 4, 7, 6, 3)).astype(np.float32),
            "x_k1d": rng.standard_normal((2, 4, 3, 9)).astype(np.float32),
            "x_k3d": rng.standard_normal((2, 4, 5, 4, 6, 3)).astype(np.float32)}


def _rnnkit_models(inputs) -> dict:
    torch.manual_seed(0)
    models = {
        "k2d": L.Sequential([L.ConvLSTM2D(4, 3, padding="same", return_sequences=True),
                             L.ConvLSTM2D(2, (2, 3), strides=(2, 1), go_backwards=True,
                                          recurrent_activation="hard_sigmoid")]),
        "k1d": L.Sequential([L.ConvLSTM1D(3, 2, data_format="channels_first", dilation_rate=2,
                                          return_sequences=True), L.TimeDistributed(L.Dense(2))]),
        "k3d": L.Sequential([L.ConvLSTM3D(2, 2, padding="same", use_bias=False)]),
    }
    for name, model in models.items():
        model(torch.from_numpy(inputs[f"x_{name}"]))
    return models


def test_keras3_files_round_trip_with_keras(tmp_path):
    inputs = _inputs(tmp_path)
    ours = _rnnkit_models(inputs)
    for name, model in ours.items():
        save_keras(model, tmp_path / f"rk_{name}.keras")
    result = run_tf(KERAS3, {**inputs, "rnnkit_names": np.array(json.dumps(list(ours)))},
                    legacy_keras=False)
    for name in ("k2d", "k1d", "k3d"):
        x = torch.from_numpy(inputs[f"x_{name}"])
        model = load_keras(tmp_path / f"{name}.keras")
        np.testing.assert_allclose(model(x).detach().numpy(), result[f"{name}:out"], rtol=1e-5,
                                   atol=2e-5, err_msg=name)
        with torch.no_grad():
            mine = ours[name](x).numpy()
        np.testing.assert_allclose(result[f"rk_{name}:out"], mine, rtol=1e-5, atol=2e-5,
                                   err_msg=f"Keras reading rnnkit's {name}")
    # weights alone, into a model rnnkit builds
    model = _rnnkit_models(inputs)["k2d"]
    load_keras(tmp_path / "k2d.weights.h5", model=model)
    np.testing.assert_allclose(model(torch.from_numpy(inputs["x_k2d"])).detach().numpy(),
                               result["k2d:out"], rtol=1e-5, atol=2e-5)
    # and the native format keeps the loaded model whole
    save_native(tmp_path / "k2d.safetensors", model)
    np.testing.assert_allclose(load(tmp_path / "k2d.safetensors")(
        torch.from_numpy(inputs["x_k2d"])).detach().numpy(), result["k2d:out"], rtol=1e-5,
        atol=2e-5)


def test_legacy_tf_keras_h5_loads(tmp_path):
    inputs = _inputs(tmp_path)
    result = run_tf(LEGACY, inputs)
    model = load_keras(tmp_path / "legacy.h5")
    convs = [m for m in model.modules() if isinstance(m, L.ConvLSTM2D)]
    assert [c.filters for c in convs] == [4, 2]
    np.testing.assert_allclose(model(torch.from_numpy(inputs["x_k2d"])).detach().numpy(),
                               result["out"], rtol=1e-5, atol=2e-5)
