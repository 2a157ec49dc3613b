"""rnnkit.layers against real Keras 3 (TensorFlow backend): one subprocess computes the whole
grid; rnnkit builds the same layers, copies Keras's weights by name (the names must match) and
must reproduce every output and state to 1e-5."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from tf_oracle import RECORD_LAYER, check_keras_layer, requires_tf, run_tf

from rnnkit import layers as L

pytestmark = [pytest.mark.oracle, requires_tf]

B, T, F = 3, 6, 4
MASKS = {
    "right": [[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]],
    "holes": [[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 0]],
    "allmasked": [[1] * 6, [0] * 6, [1, 1, 0, 0, 1, 0]],
}
KINDS = {"simple": ("SimpleRNN", {}), "gru": ("GRU", {"reset_after": True}),
         "gru_rb": ("GRU", {"reset_after": False}), "lstm": ("LSTM", {})}

RNN_CASES = [
    {"kind": k, "rs": rs, "st": st, "gb": gb, "mask": m, "init": False}
    for k, rs, st, gb, m in itertools.product(KINDS, (False, True), (False, True), (False, True),
                                              ("none", *MASKS))
] + [{"kind": k, "rs": True, "st": True, "gb": False, "mask": "holes", "init": True} for k in KINDS]
BI_CASES = [{"kind": "lstm", "merge": mm, "rs": rs, "mask": m, "st": False}
            for mm, rs, m in itertools.product(("concat", "sum", "mul", "ave", None), (False, True),
                                               ("none", "holes", "allmasked"))]
BI_CASES += [{"kind": k, "merge": "concat", "rs": True, "mask": "right", "st": True}
             for k in ("gru", "gru_rb", "simple")]

SCRIPT = RECORD_LAYER + """
import keras
from keras import layers as KL
RNN_CASES, BI_CASES, KINDS = json.loads(INPUTS["spec"].item())
X = INPUTS["x"]

def rnn(kind, name, **kw):
    cls, extra = KINDS[kind]
    return getattr(KL, cls)(5, name=name, **extra, **kw)

for i, c in enumerate(RNN_CASES):
    layer = rnn(c["kind"], "r", return_sequences=c["rs"], return_state=c["st"], go_backwards=c["gb"])
    kw = {}
    if c["mask"] != "none":
        kw["mask"] = INPUTS["mask_" + c["mask"]].astype(bool)
    if c["init"]:
        n = 2 if c["kind"] == "lstm" else 1
        kw["initial_state"] = [INPUTS["s0"], INPUTS["s1"]][:n]
    record(f"rnn{i}", layer(X, **kw), layer)

for i, c in enumerate(BI_CASES):
    layer = KL.Bidirectional(rnn(c["kind"], "r", return_sequences=c["rs"], return_state=c["st"]),
                             merge_mode=c["merge"], name="bi")
    kw = {"mask": INPUTS["mask_" + c["mask"]].astype(bool)} if c["mask"] != "none" else {}
    record(f"bi{i}", layer(X, **kw), layer)

# stacked layers behind Masking, in a Sequential
stack = keras.Sequential([keras.Input((6, 4)), KL.Masking(0.0, name="mk"),
                          KL.LSTM(5, return_sequences=True, name="l1"),
                          KL.GRU(4, return_sequences=True, reset_after=False, name="g2"),
                          KL.SimpleRNN(3, name="s3")], name="stack")
record("stack", stack(INPUTS["x_holes"]), stack)

# functional: Embedding(mask_zero) -> Bidirectional GRU -> LSTM -> Dense
inp = keras.Input((6,), dtype="int32")
e = KL.Embedding(12, 4, mask_zero=True, name="emb")(inp)
b = KL.Bidirectional(KL.GRU(4, return_sequences=True, name="g"), name="bi")(e)
o = KL.Dense(2, name="d")(KL.LSTM(3, name="l")(b))
model = keras.Model(inp, o)
record("func", model(INPUTS["ids"]), model)

# stateful: two batches in a row, then reset and the first batch again
for kind in ("lstm", "gru"):
    layer = rnn(kind, "st", stateful=True, return_sequences=True, return_state=True)
    outs = [*layer(X), *layer(INPUTS["x2"])]
    layer.reset_states()
    outs += list(layer(X))
    record(f"stateful_{kind}", outs, layer)

# a linear SimpleRNN with kernel ones: one-step sequences give 0, 5, 10, ..., 95
for steps in (1, 2):
    for rec in ("zeros", "ones"):
        layer = KL.SimpleRNN(1, activation=None, kernel_initializer="ones",
                             recurrent_initializer=rec, bias_initializer="zeros", name="lin")
        record(f"doc{steps}{rec}", layer(INPUTS[f"doc{steps}"]), layer)
"""


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    holes = np.array(MASKS["holes"], bool)
    ids = np.array([[3, 5, 0, 0, 0, 0], [1, 0, 2, 0, 4, 11], [7, 7, 7, 7, 7, 7]], np.int32)
    doc1 = np.repeat(np.arange(20, dtype=np.float32)[:, None, None], 5, axis=2)
    out = {"x": x, "x2": rng.standard_normal((B, T, F)).astype(np.float32),
           "x_holes": x * holes[..., None], "ids": ids, "doc1": doc1,
           "doc2": np.concatenate([doc1, doc1], axis=1),
           "s0": rng.standard_normal((B, 5)).astype(np.float32),
           "s1": rng.standard_normal((B, 5)).astype(np.float32),
           "spec": np.array(json.dumps([RNN_CASES, BI_CASES, KINDS]))}
    out.update({f"mask_{k}": np.array(v, np.int32) for k, v in MASKS.items()})
    return out


@pytest.fixture(scope="module")
def oracle():
    inputs = _inputs()
    return inputs, run_tf(SCRIPT, inputs, legacy_keras=False)


def _rnn(kind: str, name: str, **kw):
    cls, extra = KINDS[kind]
    return getattr(L, cls)(5, name=name, **extra, **kw)


def _lazy_build(layer, x, **kw):
    """Build (so weights exist) with a throwaway call, then return the real call."""
    layer(x, **kw)
    return lambda: layer(x, **kw)


@pytest.mark.parametrize("i", range(len(RNN_CASES)),
                         ids=[f"{c['kind']}-rs{c['rs']:d}-st{c['st']:d}-gb{c['gb']:d}-{c['mask']}"
                              f"{'-init' if c['init'] else ''}" for c in RNN_CASES])
def test_rnn_layers_match_keras(oracle, i):
    inputs, result = oracle
    c = RNN_CASES[i]
    layer = _rnn(c["kind"], "r", return_sequences=c["rs"], return_state=c["st"],
                 go_backwards=c["gb"])
    kw = {}
    if c["mask"] != "none":
        kw["mask"] = torch.tensor(inputs["mask_" + c["mask"]], dtype=torch.bool)
    if c["init"]:
        n = 2 if c["kind"] == "lstm" else 1
        kw["initial_state"] = [torch.from_numpy(inputs["s0"]), torch.from_numpy(inputs["s1"])][:n]
    check_keras_layer(f"rnn{i}", layer, _lazy_build(layer, torch.from_numpy(inputs["x"]), **kw), result)


@pytest.mark.parametrize("i", range(len(BI_CASES)),
                         ids=[f"{c['kind']}-{c['merge']}-rs{c['rs']:d}-st{c['st']:d}-{c['mask']}"
                              for c in BI_CASES])
def test_bidirectional_matches_keras(oracle, i):
    inputs, result = oracle
    c = BI_CASES[i]
    layer = L.Bidirectional(_rnn(c["kind"], "r", return_sequences=c["rs"], return_state=c["st"]),
                            merge_mode=c["merge"], name="bi")
    kw = {}
    if c["mask"] != "none":
        kw["mask"] = torch.tensor(inputs["mask_" + c["mask"]], dtype=torch.bool)
    check_keras_layer(f"bi{i}", layer, _lazy_build(layer, torch.from_numpy(inputs["x"]), **kw), result)


def test_stacked_sequential_with_masking_matches_keras(oracle):
    inputs, result = oracle
    stack = L.Sequential([L.Masking(0.0, name="mk"), L.LSTM(5, return_sequences=True, name="l1"),
                          L.GRU(4, return_sequences=True, reset_after=False, name="g2"),
                          L.SimpleRNN(3, name="s3")], name="stack")
    check_keras_layer("stack", stack, _lazy_build(stack, torch.from_numpy(inputs["x_holes"])), result)


def test_functional_embedding_mask_zero_matches_keras(oracle):
    inputs, result = oracle
    inp = L.Input((6,), dtype=torch.int64)
    e = L.Embedding(12, 4, mask_zero=True, name="emb")(inp)
    b = L.Bidirectional(L.GRU(4, return_sequences=True, name="g"), name="bi")(e)
    model = L.Model(inp, L.Dense(2, name="d")(L.LSTM(3, name="l")(b)))
    ids = torch.from_numpy(inputs["ids"]).long()
    check_keras_layer("func", model, _lazy_build(model, ids), result)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_stateful_batches_match_keras(oracle, kind):
    inputs, result = oracle
    layer = _rnn(kind, "st", stateful=True, return_sequences=True, return_state=True)
    x, x2 = torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["x2"])
    layer(x)

    def run():
        layer.reset_states()
        outs = [*layer(x), *layer(x2)]
        layer.reset_states()
        return outs + list(layer(x))

    check_keras_layer(f"stateful_{kind}", layer, run, result)


@pytest.mark.parametrize("steps,rec", [(1, "zeros"), (1, "ones"), (2, "zeros"), (2, "ones")])
def test_linear_simple_rnn_doc_example_matches_keras(oracle, steps, rec):
    inputs, result = oracle
    layer = L.SimpleRNN(1, activation=None, kernel_initializer="ones", recurrent_initializer=rec,
                        bias_initializer="zeros", name="lin")
    x = torch.from_numpy(inputs[f"doc{steps}"])
    keras_out = result[f"doc{steps}{rec}:out:0"]
    np.testing.assert_allclose(layer(x).detach().numpy(), keras_out, atol=1e-5)
    if steps == 1:  # the documented numbers: 0, 5, 10, ..., 95 whatever the recurrent init
        np.testing.assert_array_equal(keras_out[:, 0], np.arange(0, 100, 5))
