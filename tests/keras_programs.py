"""Keras programs for tests/test_io_keras.py, run by ``tf_oracle.run_tf`` in a subprocess.

``KERAS3`` (Keras 3): builds and saves Keras models with random weights and records their
outputs; saves a Lambda and a custom-class model; loads the files rnnkit wrote and records
their outputs. ``LEGACY`` (tf_keras): saves whole models as ``.h5`` and ``.keras`` and weights
alone as ``.h5``. Files go to ``INPUTS["dir"]``; outputs are ``RESULT["<model>:out:<k>"]``.
"""

KERAS3 = """
import keras
from keras import layers as KL
D = str(INPUTS["dir"])
X, IDS = INPUTS["x_holes"], INPUTS["ids"]
rng = np.random.default_rng(0)

def seq(*layers, shape=(6, 4)):
    return keras.Sequential([keras.Input(shape), *layers])

def func_emb():
    inp = keras.Input((6,), dtype="int32")
    b = KL.Bidirectional(KL.GRU(4, return_sequences=True))(KL.Embedding(12, 4, mask_zero=True)(inp))
    return keras.Model(inp, KL.Dense(2, activation="softmax")(KL.LSTM(3)(b)))

def func_state():
    inp = keras.Input((6, 4))
    y, h, c = KL.LSTM(5, return_sequences=True, return_state=True)(KL.Masking()(inp))
    return keras.Model(inp, [KL.Dense(2)(h), KL.SimpleRNN(2)(y), KL.LSTM(3)(inp), c])

MODELS = {
    "simple": lambda: seq(KL.SimpleRNN(5, return_sequences=True), KL.SimpleRNN(3, activation="relu")),
    "gru": lambda: seq(KL.GRU(5, return_sequences=True),
                       KL.GRU(3, reset_after=False, recurrent_activation="hard_sigmoid")),
    "lstm": lambda: seq(KL.Masking(), KL.LSTM(5, return_sequences=True, go_backwards=True),
                        KL.LSTM(3, use_bias=False)),
    "bidir": lambda: seq(KL.Masking(), KL.Bidirectional(KL.LSTM(4, return_sequences=True), merge_mode="sum"),
                         KL.Bidirectional(KL.GRU(3)), KL.Dense(2, activation="tanh")),
    "timedist": lambda: seq(KL.SimpleRNN(5, return_sequences=True), KL.TimeDistributed(KL.Dense(3)),
                            KL.Dropout(0.5), KL.LSTM(2)),
    "cells": lambda: seq(KL.RNN(KL.LSTMCell(4), return_sequences=True), KL.RNN(KL.GRUCell(3))),
    "func_emb": func_emb, "func_state": func_state,
}

def no_input():
    model = keras.Sequential([KL.LSTM(3, return_sequences=True), KL.SimpleRNN(2)])
    model.build((None, 6, 4))
    return model

MODELS["no_input"] = no_input

def record(prefix, outs):
    for k, o in enumerate(outs if isinstance(outs, (list, tuple)) else [outs]):
        RESULT[f"{prefix}:out:{k}"] = np.asarray(o)

for name, make in MODELS.items():
    model = make()
    for w in model.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
    record(name, model(IDS if name == "func_emb" else X))
    model.save(f"{D}/{name}.keras")
    if name == "timedist":
        model.save_weights(f"{D}/timedist.weights.h5")
    if name == "gru":
        model.save(f"{D}/gru_k3.h5")

@keras.saving.register_keras_serializable(package="my_pkg")
class Twice(KL.Layer):
    def call(self, x):
        return 2 * x

seq(KL.Lambda(lambda x: x * 2, name="lam"), KL.LSTM(2)).save(f"{D}/lambda.keras")
seq(Twice(name="twice"), KL.LSTM(2)).save(f"{D}/custom.keras")

for name in json.loads(str(INPUTS["rnnkit_names"])):
    record(f"rk:{name}", keras.saving.load_model(f"{D}/{name}.keras")(INPUTS[f"feed_{name}"]))
model = seq(KL.Masking(), KL.LSTM(5, return_sequences=True),
            KL.Bidirectional(KL.GRU(3, return_sequences=True)), KL.TimeDistributed(KL.Dense(2)),
            KL.Dropout(0.2), KL.SimpleRNN(3))
model.load_weights(f"{D}/r_seq.weights.h5")
record("rkw", model(X))
"""

LEGACY = """
keras = tf.keras
KL = keras.layers
D = str(INPUTS["dir"])
rng = np.random.default_rng(1)
seq = keras.Sequential([keras.Input((6, 4)), KL.Masking(),
                        KL.LSTM(5, return_sequences=True, recurrent_activation="hard_sigmoid"),
                        KL.Bidirectional(KL.GRU(3, return_sequences=True)),
                        KL.TimeDistributed(KL.Dense(2)), KL.SimpleRNN(3)])
inp = keras.Input((6,), dtype="int32")
b = KL.Bidirectional(KL.GRU(4, return_sequences=True))(KL.Embedding(12, 4, mask_zero=True)(inp))
func = keras.Model(inp, KL.Dense(2)(KL.LSTM(3, recurrent_activation="hard_sigmoid")(b)))
for name, model, feed in (("lg_seq", seq, INPUTS["x_holes"]), ("lg_func", func, INPUTS["ids"])):
    for w in model.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
    RESULT[f"{name}:out:0"] = model(feed).numpy()
    model.save(f"{D}/{name}.h5")
    model.save(f"{D}/{name}.keras")
seq.save_weights(f"{D}/lg_seq_w.h5")
no_input = keras.Sequential([KL.GRU(3, return_sequences=True, input_shape=(6, 4)), KL.Dense(2)])
RESULT["lg_no_input:out:0"] = no_input(INPUTS["x_holes"]).numpy()
no_input.save(f"{D}/lg_no_input.h5")
"""
