"""Masks on RNN calls with ``initial_state`` (a sequence-to-sequence decoder behind ``Masking``):
Keras 3 passes such a call no mask unless ``mask=`` is given (its layers look only for
``<argument>_mask`` when a call has two tensor arguments), though the outputs still carry the
mask; tf.keras applies it. rnnkit's layers follow Keras 3, and layers loaded from tf.keras files
(whose graphs list the initial states as inputs) follow tf.keras. Checked against both."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tf_oracle import requires_tf, run_tf

import rnnkit as rk
from rnnkit import layers as L


def _x() -> np.ndarray:
    x = np.random.RandomState(3).uniform(-1, 1, (3, 6, 4)).astype(np.float32)
    x[0, [0, 3]] = 0.0  # masked steps: at the start, in the middle ...
    x[2, 4:] = 0.0  # ... and at the end
    return x


# the same program for Keras 3 (K = keras) and rnnkit (K = rnnkit.layers)
SEQ2SEQ = """
inp = K.Input((6, 4))
h = K.Masking()(inp)
_, sh, sc = K.LSTM(3, return_state=True, name="enc")(h)
dec = K.LSTM(3, return_sequences=True, name="dec")(h, initial_state=[sh, sc])
explicit = K.LSTM(3, return_sequences=True, name="dec_masked")(h, initial_state=[sh, sc], mask=MASK)
after = K.GRU(2, return_sequences=True, name="after")(dec)
_, *bst = K.Bidirectional(K.GRU(2, return_state=True), name="benc")(h)
bdec = K.Bidirectional(K.GRU(2, return_sequences=True), name="bdec")(h, initial_state=bst)
model = K.Model([inp, MASK_IN], [dec, explicit, after, bdec])
"""


def _keras3_side() -> str:
    return """
import keras
K = keras.layers
K.Input, K.Model = keras.Input, keras.Model
MASK_IN = keras.Input((6,), dtype="bool")
MASK = MASK_IN
exec(SRC)
rs = np.random.RandomState(0)
for w in model.weights:
    w.assign((rs.standard_normal(w.shape) * 0.5).astype("float32"))
    RESULT["w:" + w.path] = np.asarray(w)
x = INPUTS["x"]
for k, y in enumerate(model([x, np.any(x != 0, axis=-1)])):
    RESULT[f"out:{k}"] = np.asarray(y)
""".replace("exec(SRC)", "exec(" + repr(SEQ2SEQ) + ")")


@pytest.mark.oracle
@requires_tf
def test_keras3_rule_matches_keras3():
    x = _x()
    result = run_tf(_keras3_side(), {"x": x}, legacy_keras=False)
    L.clear_session()  # layer names counted from zero, as in the fresh Keras process
    mask_in = L.Input((6,), dtype=torch.bool)
    env = {"K": L, "MASK_IN": mask_in, "MASK": mask_in}
    exec(SEQ2SEQ, env)
    model = env["model"]
    xt = torch.from_numpy(x)
    mask = xt.ne(0).any(-1)
    with pytest.warns(UserWarning, match="'dec' is called with initial_state: as in Keras 3"):
        model([xt, mask])  # built
    assert sorted(w.op_name for w in model.weights) == sorted(k[2:] for k in result if k[:2] == "w:")
    with torch.no_grad():
        for w in model.weights:
            w.copy_(torch.from_numpy(result["w:" + w.op_name]))
    outs = model([xt, mask])
    for k, y in enumerate(outs):
        np.testing.assert_allclose(y.detach().numpy(), result[f"out:{k}"], atol=1e-5, rtol=1e-5,
                                   err_msg=f"output {k}")
    # the call dropped the mask, the outputs still carry it: the GRU after the decoder is masked
    dec, explicit, after = (y.detach().numpy() for y in outs[:3])
    assert not np.allclose(dec[0, 0], 0) and np.allclose(explicit[0, 0], 0)
    np.testing.assert_array_equal(after[0, 3], after[0, 2])  # a masked step repeats


def test_warned_once_per_layer_and_not_with_an_explicit_mask():
    x = torch.from_numpy(_x())
    h = L.Masking()(x)
    layer = L.GRU(2)
    state = [torch.zeros(3, 2)]
    with pytest.warns(UserWarning, match="mask= to apply it"):
        layer(h, initial_state=state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(h, initial_state=state)  # once per layer
        L.GRU(2)(h, initial_state=state, mask=x.ne(0).any(-1))
        L.GRU(2)(h)  # no other tensor argument: the carried mask applies, silently
    unmasked = L.GRU(2, name="u")
    unmasked(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(unmasked(h, initial_state=state).detach(),
                                   unmasked(x, initial_state=state).detach())


def test_rule_is_a_config_option_and_keras3_files_refuse_it(tmp_path):
    x = torch.from_numpy(_x())
    layer = L.LSTM(3, mask_with_initial_state=True, return_sequences=True)
    assert layer.get_config()["mask_with_initial_state"] is True
    assert "mask_with_initial_state" not in L.LSTM(3).get_config()
    state = [torch.zeros(3, 3), torch.zeros(3, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer(L.Masking()(x), initial_state=state)
    torch.testing.assert_close(y, layer(x, initial_state=state, mask=x.ne(0).any(-1)))
    again = L.deserialize(L.serialize(layer))
    assert again.mask_with_initial_state
    bi = L.Bidirectional(L.GRU(2), mask_with_initial_state=True)
    assert L.deserialize(L.serialize(bi)).mask_with_initial_state
    model = L.Sequential([L.Input((6, 4)), layer])
    with pytest.raises(ValueError, match="mask_with_initial_state = False"):
        rk.io.save_keras(model, tmp_path / "m.keras")


TF_KERAS = """
import tf_keras as keras
L = keras.layers
inp = keras.Input((6, 4))
h = L.Masking()(inp)
_, sh, sc = L.LSTM(3, return_state=True)(h)
dec = L.LSTM(3, return_sequences=True)(h, initial_state=[sh, sc])
_, *st = L.RNN([L.GRUCell(2), L.LSTMCell(3)], return_state=True)(h)
stack = L.RNN([L.GRUCell(2), L.LSTMCell(3)], return_sequences=True)(dec, initial_state=st)
model = keras.Model(inp, [dec, stack])
rs = np.random.RandomState(1)
for w in model.weights:
    w.assign((rs.standard_normal(w.shape) * 0.5).astype("float32"))
for k, y in enumerate(model(INPUTS["x"])):
    RESULT[f"out:{k}"] = np.asarray(y)
one = keras.Model(inp, dec)
RESULT["one"] = np.asarray(one(INPUTS["x"]))
D = str(INPUTS["dir"])
model.save(D + "/s2s.h5")
model.save(D + "/s2s.keras")
one.save(D + "/one.h5")
"""


@pytest.mark.oracle
@requires_tf
def test_tf_keras_seq2seq_files_load_with_tf_keras_masks(tmp_path):
    x = _x()
    result = run_tf(TF_KERAS, {"x": x, "dir": np.array(str(tmp_path))})
    for suffix in ("h5", "keras"):
        model = rk.io.load_keras(tmp_path / f"s2s.{suffix}")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # tf.keras's rule: the mask applies, no warning
            outs = model(torch.from_numpy(x))
        for k, y in enumerate(outs):
            np.testing.assert_allclose(y.detach().numpy(), result[f"out:{k}"], atol=1e-5,
                                       rtol=1e-5, err_msg=f"{suffix} output {k}")
        flagged = [m.name for m in model.modules() if getattr(m, "mask_with_initial_state", False)]
        assert len(flagged) == 2, flagged  # the two layers called with initial states
        path = tmp_path / f"native_{suffix}.rnnkit"
        rk.io.save_native(path, model)
        again = rk.io.load(path)
        for a, b in zip(again(torch.from_numpy(x)), outs, strict=True):
            torch.testing.assert_close(a, b)
    one = rk.io.load_keras(tmp_path / "one.h5")
    y = one(torch.from_numpy(x))
    assert torch.is_tensor(y)  # one output, returned alone as tf.keras does
    np.testing.assert_allclose(y.detach().numpy(), result["one"], atol=1e-5, rtol=1e-5)


NESTED = """
import keras
model = keras.models.load_model(str(INPUTS["path"]))
out = model(INPUTS["x"])
RESULT["structure"] = str([type(o).__name__ if not isinstance(o, list) else len(o) for o in out])
for k, y in enumerate(keras.tree.flatten(out)):
    RESULT[f"out:{k}"] = np.asarray(y)
"""


@pytest.mark.oracle
@requires_tf
def test_nested_outputs_round_trip_through_keras3(tmp_path):
    """A model returning a stack's states, nested one list per cell, as Keras 3 nests them."""
    inp = L.Input((6, 4))
    outs = L.RNN([L.GRUCell(4), L.LSTMCell(2)], return_state=True)(L.Masking()(inp))
    model = L.Model(inp, outs)
    x = _x()
    got = model(torch.from_numpy(x))
    assert torch.is_tensor(got[1]) and isinstance(got[2], list) and len(got[2]) == 2
    rk.io.save_keras(model, tmp_path / "nested.keras")
    result = run_tf(NESTED, {"x": x, "path": np.array(str(tmp_path / "nested.keras"))},
                    legacy_keras=False)
    assert result["structure"] == "['EagerTensor', 'EagerTensor', 2]"
    for k, y in enumerate([got[0], got[1], *got[2]]):
        np.testing.assert_allclose(y.detach().numpy(), result[f"out:{k}"], atol=1e-5, rtol=1e-5)
    back = rk.io.load_keras(tmp_path / "nested.keras")
    for a, b in zip(back(torch.from_numpy(x))[2], got[2], strict=True):
        torch.testing.assert_close(a, b)


def test_one_item_output_list_returns_the_tensor():
    inp = L.Input((6, 4))
    model = L.Model(inp, [L.GRU(2)(inp)])
    assert torch.is_tensor(model(torch.from_numpy(_x())))
    again = L.Model.from_config(model.get_config())
    assert torch.is_tensor(again(torch.from_numpy(_x())))


def test_input_takes_keras_batch_shapes_and_dtype_names():
    x = L.Input(batch_shape=(2, 6, 4))
    assert x.shape == (2, 6, 4) and L.Input((6,), "int32", batch_size=3).shape == (3, 6)
    model = L.Model(x, L.LSTM(3, stateful=True)(x))
    assert L.Model.from_config(model.get_config())._inputs[0].shape == (2, 6, 4)
    ids = L.Sequential([L.Input((6,), dtype="int32"), L.Embedding(9, 2, mask_zero=True), L.GRU(3)])
    assert len(ids.weights) == 4  # built by the Input, as Keras builds it
    for bad in ({}, {"shape": (3,), "batch_shape": (1, 3)}, {"shape": (3,), "dtype": "floaty"}):
        with pytest.raises(ValueError):
            L.Input(**bad)
