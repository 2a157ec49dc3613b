"""ConvLSTM1D/2D/3D against real Keras 3 (TensorFlow backend): one subprocess runs a grid of
ranks, kernels, strides, dilations, paddings, data formats and RNN options; rnnkit copies
Keras's weights by name (the names must match) and must reproduce every output and state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tf_oracle import RECORD_LAYER, check_keras_layer, requires_tf, run_tf

from rnnkit import layers as L

pytestmark = [pytest.mark.oracle, requires_tf]

B, T, C = 2, 4, 3
SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 4, 6)}
HOLES = [[1, 0, 1, 1], [0, 1, 1, 0]]


def _case(rank, kernel, **kw):
    return {"rank": rank, "kernel_size": kernel, **kw}


CASES = [
    _case(2, 3),
    _case(2, 3, padding="same", return_sequences=True),
    _case(2, (2, 3), padding="same", return_state=True),  # even kernel: the state pads after
    _case(2, 3, padding="same", strides=2, return_sequences=True),
    _case(2, 2, strides=(2, 1), return_state=True),
    _case(2, 3, padding="same", dilation_rate=2),
    _case(2, (2, 2), dilation_rate=(1, 2), return_sequences=True),
    _case(2, 3, padding="same", data_format="channels_first", return_sequences=True,
          return_state=True),
    _case(2, 3, padding="same", go_backwards=True, return_sequences=True, mask="holes"),
    _case(2, 3, padding="same", return_state=True, mask="holes", zero_output_for_mask=True,
          return_sequences=True),
    _case(2, 3, padding="same", init=True, return_state=True),
    _case(2, 3, use_bias=False, activation="relu", recurrent_activation="hard_sigmoid",
          unit_forget_bias=False),
    _case(1, 3, padding="same", return_sequences=True, return_state=True),
    _case(1, 4, padding="same", strides=3),
    _case(1, 2, data_format="channels_first", dilation_rate=3, return_sequences=True),
    _case(3, 2, padding="same", return_state=True),
    _case(3, (1, 2, 3), return_sequences=True),
]
_LAYER_ARGS = ("padding", "strides", "dilation_rate", "data_format", "return_sequences",
               "return_state", "go_backwards", "zero_output_for_mask", "use_bias", "activation",
               "recurrent_activation", "unit_forget_bias")

SCRIPT = RECORD_LAYER + """
import keras
from keras import layers as KL
CASES, ARGS = json.loads(INPUTS["spec"].item())
rng = np.random.default_rng(3)

def make(c, **extra):
    kw = {a: c[a] for a in ARGS if a in c}
    return getattr(KL, f"ConvLSTM{c['rank']}D")(3, c["kernel_size"], name="r", **kw, **extra)

def randomize(layer):
    for w in layer.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32") * 0.3)

for i, c in enumerate(CASES):
    x = INPUTS[f"x{i}"]
    layer = make(c)
    layer.build(x.shape)
    randomize(layer)
    kw = {}
    if c.get("mask"):
        kw["mask"] = INPUTS["holes"].astype(bool)
    if c.get("init"):
        kw["initial_state"] = [INPUTS[f"h{i}"], INPUTS[f"c{i}"]]
    record(f"c{i}", layer(x, **kw), layer)

# Bidirectional over a ConvLSTM: concatenated on the last axis, the backward layer's own mask
layer = KL.Bidirectional(make(CASES[1], return_state=True), name="bi")
x = INPUTS["x1"]
layer.build(x.shape)
randomize(layer)
record("bi", layer(x, mask=INPUTS["holes"].astype(bool)), layer)

# Masking over the frames: a per-position mask, where pixels are zero in every channel
for k, rs in enumerate((True, False)):
    model = keras.Sequential([keras.Input(INPUTS["x_pix"].shape[1:]), KL.Masking(name="mk"),
                              KL.ConvLSTM2D(3, 3, padding="same", return_sequences=rs,
                                            name="r")], name="seq")
    randomize(model)
    record(f"pix{k}", model(INPUTS["x_pix"]), model)

# stateful: two batches in a row, then reset and the first batch again
c = CASES[1]
layer = make(c, stateful=True, return_state=True)
x = INPUTS["x1"]
layer.build(x.shape)
randomize(layer)
outs = [*layer(x), *layer(x[:, ::-1])]
layer.reset_states()
outs += list(layer(x))
record("stateful", outs, layer)
"""


def _spatial_out(c: dict) -> tuple[int, ...]:
    rank, out = c["rank"], []
    ks = c["kernel_size"] if isinstance(c["kernel_size"], tuple) else (c["kernel_size"],) * rank
    for k, n, s, d in zip(ks, SPATIAL[rank], _per_axis(c, "strides"), _per_axis(c, "dilation_rate"),
                          strict=True):
        out.append(-(-n // s) if c.get("padding") == "same" else (n - (k - 1) * d - 1) // s + 1)
    return tuple(out)


def _per_axis(c: dict, key: str) -> tuple[int, ...]:
    v = c.get(key, 1)
    return v if isinstance(v, tuple) else (v,) * c["rank"]


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    out = {"spec": np.array(json.dumps([CASES, _LAYER_ARGS])), "holes": np.array(HOLES, np.int32)}
    pix = rng.standard_normal((B, T, 5, 4, C)).astype(np.float32)
    pix[rng.random((B, T, 5, 4)) < 0.3] = 0.0  # pixels zero in every channel: masked there
    pix[1, 2] = 0.0  # and a whole frame
    out["x_pix"] = pix
    for i, c in enumerate(CASES):
        first = c.get("data_format") == "channels_first"
        shape = (B, T, C, *SPATIAL[c["rank"]]) if first else (B, T, *SPATIAL[c["rank"]], C)
        out[f"x{i}"] = rng.standard_normal(shape).astype(np.float32)
        if c.get("init"):
            state = (B, *_spatial_out(c), 3)
            out[f"h{i}"] = rng.standard_normal(state).astype(np.float32)
            out[f"c{i}"] = rng.standard_normal(state).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def oracle():
    inputs = _inputs()
    return inputs, run_tf(SCRIPT, inputs, legacy_keras=False)


def _make(c: dict, **extra):
    kw = {a: c[a] for a in _LAYER_ARGS if a in c}
    return getattr(L, f"ConvLSTM{c['rank']}D")(3, c["kernel_size"], name="r", **kw, **extra)


def _id(c: dict) -> str:
    keys = [k for k in c if k not in ("rank", "kernel_size")]
    return f"{c['rank']}d-k{c['kernel_size']}-" + "-".join(keys)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[_id(c) for c in CASES])
def test_conv_lstm_matches_keras(oracle, i):
    inputs, result = oracle
    c = CASES[i]
    layer = _make(c)
    x = torch.from_numpy(inputs[f"x{i}"])
    kw = {}
    if c.get("mask"):
        kw["mask"] = torch.tensor(inputs["holes"], dtype=torch.bool)
    if c.get("init"):
        kw["initial_state"] = [torch.from_numpy(inputs[f"h{i}"]),
                               torch.from_numpy(inputs[f"c{i}"])]
    layer(x, **kw)  # builds
    check_keras_layer(f"c{i}", layer, lambda: layer(x, **kw), result, atol=2e-5)


def test_stateful_conv_lstm_matches_keras(oracle):
    inputs, result = oracle
    layer = _make(CASES[1], stateful=True, return_state=True)
    x = torch.from_numpy(inputs["x1"])
    layer(x)

    def run():
        layer.reset_states()
        outs = [*layer(x), *layer(x.flip(1))]
        layer.reset_states()
        return outs + list(layer(x))

    check_keras_layer("stateful", layer, run, result, atol=2e-5)


def test_bidirectional_conv_lstm_matches_keras(oracle):
    inputs, result = oracle
    layer = L.Bidirectional(_make(CASES[1], return_state=True), name="bi")
    x, mask = torch.from_numpy(inputs["x1"]), torch.tensor(inputs["holes"], dtype=torch.bool)
    layer(x, mask=mask)
    check_keras_layer("bi", layer, lambda: layer(x, mask=mask), result, atol=2e-5)


@pytest.mark.parametrize("k,return_sequences", [(0, True), (1, False)])
def test_masking_per_position_matches_keras(oracle, k, return_sequences):
    """Keras's Masking over frames masks positions, not steps: where a pixel is zero in every
    channel, that position's state is held and its output repeats (Keras's RNN loop broadcasts
    the [batch, rows, cols] mask of a step over the state's channels)."""
    inputs, result = oracle
    model = L.Sequential([L.Masking(name="mk"), L.ConvLSTM2D(3, 3, padding="same",
                                                             return_sequences=return_sequences,
                                                             name="r")], name="seq")
    x = torch.from_numpy(inputs["x_pix"])
    model(x)
    check_keras_layer(f"pix{k}", model, lambda: model(x), result, atol=2e-5)
