"""Keras model files: Keras 3 saves and rnnkit loads, rnnkit saves and Keras 3 loads (one Keras 3
subprocess does both directions), legacy tf.keras files (one tf_keras subprocess; the programs
are in keras_programs.py), and unsafe, corrupt or mismatched files raising ``FormatError``.
Outputs agree with Keras's to 1e-5."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keras_programs import KERAS3, LEGACY
from tf_oracle import requires_tf, run_tf

from rnnkit import layers as L
from rnnkit.io import FormatError, load_keras, save_keras
from rnnkit.io._keras_graph import KerasAny, KerasNotEqual

KERAS_MODELS = ["simple", "gru", "lstm", "bidir", "timedist", "cells", "func_emb", "func_state",
                "no_input"]
RNNKIT_MODELS = ["r_seq", "r_func", "r_state", "r_emb"]


def _inputs(tmp) -> dict:
    rng = np.random.default_rng(7)
    holes = np.array([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 0]], np.float32)
    x = rng.standard_normal((3, 6, 4)).astype(np.float32) * holes[..., None]
    ids = np.array([[3, 5, 0, 0, 0, 0], [1, 0, 2, 0, 4, 9], [7, 7, 7, 7, 7, 7]], np.int32)
    return {"dir": np.array(str(tmp)), "x_holes": x, "ids": ids}


def _randomize(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.weights:
            w.copy_(torch.randn(w.shape, generator=gen) * 0.5)


def _r_seq():
    return L.Sequential([L.Masking(name="mk"), L.LSTM(5, return_sequences=True, name="l1"),
                         L.Bidirectional(L.GRU(3, return_sequences=True, name="g"), name="bi"),
                         L.TimeDistributed(L.Dense(2, name="d"), name="td"),
                         L.Dropout(0.2, name="dr"), L.SimpleRNN(3, name="s")], name="r_seq")


def _r_func():
    """Two LSTMs on parallel branches (Keras's layer order names their weights) and the explicit
    not_equal mask Keras 3 itself writes for Embedding(mask_zero=True)."""
    inp = L.Input((6,), dtype=torch.int64, name="ids")
    e = L.Embedding(10, 4, mask_zero=True, name="emb")(inp)
    a = L.LSTM(4, return_sequences=True, name="la")(e, mask=KerasNotEqual(name="ne")(inp, 0))
    b = L.LSTM(3, go_backwards=True, name="lb")(e)
    out = [L.Dense(2, name="d")(a), b, L.GRU(2, reset_after=False, name="gg")(a)]
    return L.Model(inp, out, name="r_func")


def _r_state():
    """Return states, and a Masking mask spelled as Keras 3's explicit any(not_equal(x, 0))."""
    inp = L.Input((6, 4), name="x")
    mask = KerasAny(axis=-1, name="any")(KerasNotEqual(name="ne")(inp, 0.0))
    o, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="ls")(inp, mask=mask)
    return L.Model(inp, [o, L.Dense(2, name="dc")(c), h], name="r_state")


def _r_emb():
    return L.Sequential([L.Embedding(10, 3, mask_zero=True, name="e"), L.GRU(3, name="g")], name="r_emb")


def _outs(model, feed) -> list[np.ndarray]:
    with torch.no_grad():
        y = model(torch.from_numpy(feed).long() if feed.dtype.kind == "i" else torch.from_numpy(feed))
    return [t.numpy() for t in (y if isinstance(y, list) else [y])]


def _assert_outputs(outs, result, prefix) -> None:
    assert len(outs) == len([k for k in result if k.startswith(f"{prefix}:out:")])
    for k, o in enumerate(outs):
        np.testing.assert_allclose(o, result[f"{prefix}:out:{k}"], atol=1e-5, rtol=1e-5,
                                   err_msg=f"{prefix} output {k}")


@pytest.fixture(scope="module")
def keras3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keras3")
    inputs = _inputs(tmp)
    mine = {}
    makers = {"r_seq": _r_seq, "r_func": _r_func, "r_state": _r_state, "r_emb": _r_emb}
    for k, (name, make) in enumerate(makers.items()):
        model = make()
        feed = inputs["ids"] if name in ("r_func", "r_emb") else inputs["x_holes"]
        _outs(model, feed)
        _randomize(model, k)
        mine[name] = _outs(model.eval(), feed)
        inputs[f"feed_{name}"] = feed
        save_keras(model, tmp / f"{name}.keras")
        if name == "r_seq":
            save_keras(model, tmp / "r_seq.weights.h5")
    inputs["rnnkit_names"] = np.array(json.dumps(RNNKIT_MODELS))
    return tmp, inputs, mine, run_tf(KERAS3, inputs, legacy_keras=False)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("legacy")
    inputs = _inputs(tmp)
    return tmp, inputs, run_tf(LEGACY, inputs, legacy_keras=True)


@pytest.mark.oracle
@requires_tf
@pytest.mark.parametrize("name", KERAS_MODELS)
def test_keras3_file_loads_with_keras_outputs(keras3, name):
    tmp, inputs, _, result = keras3
    model = load_keras(tmp / f"{name}.keras")
    _assert_outputs(_outs(model, inputs["ids" if name == "func_emb" else "x_holes"]), result, name)


@pytest.mark.oracle
@requires_tf
@pytest.mark.parametrize("name,match", [("lambda", r"'lam' of class 'Lambda'.*Python code"),
                                        ("custom", r"'twice'.*my_pkg>Twice.*custom class")])
def test_keras3_lambda_and_custom_layers_are_refused(keras3, name, match):
    with pytest.raises(FormatError, match=match):
        load_keras(keras3[0] / f"{name}.keras")


@pytest.mark.oracle
@requires_tf
def test_keras3_weights_h5_into_rnnkit_model(keras3):
    tmp, inputs, _, result = keras3
    model = L.Sequential([L.SimpleRNN(5, return_sequences=True), L.TimeDistributed(L.Dense(3)),
                          L.Dropout(0.5), L.LSTM(2)])
    _outs(model, inputs["x_holes"])
    assert load_keras(tmp / "timedist.weights.h5", model=model) is model
    _assert_outputs(_outs(model.eval(), inputs["x_holes"]), result, "timedist")


@pytest.mark.oracle
@requires_tf
def test_keras3_written_legacy_h5_keeps_keras3_hard_sigmoid(keras3):
    tmp, inputs, _, result = keras3
    model = load_keras(tmp / "gru_k3.h5")
    assert model.model_layers[1].cell.recurrent_activation.__name__ == "hard_sigmoid"
    _assert_outputs(_outs(model, inputs["x_holes"]), result, "gru")


@pytest.mark.oracle
@requires_tf
@pytest.mark.parametrize("name", RNNKIT_MODELS)
def test_rnnkit_file_loads_in_keras3_with_same_outputs(keras3, name):
    _, _, mine, result = keras3
    _assert_outputs(mine[name], result, f"rk:{name}")


@pytest.mark.oracle
@requires_tf
def test_rnnkit_weights_h5_loads_in_keras3(keras3):
    _, _, mine, result = keras3
    _assert_outputs(mine["r_seq"], result, "rkw")


@pytest.mark.oracle
@requires_tf
@pytest.mark.parametrize("name,suffix", [("lg_seq", "h5"), ("lg_func", "h5"), ("lg_no_input", "h5"),
                                         ("lg_seq", "keras"), ("lg_func", "keras")])
def test_legacy_full_model_loads_with_keras2_hard_sigmoid(legacy, name, suffix):
    """tf.keras whole models, as .h5 and as its own .keras archive (metadata says Keras 2)."""
    tmp, inputs, result = legacy
    model = load_keras(tmp / f"{name}.{suffix}")
    _assert_outputs(_outs(model, inputs["ids" if name == "lg_func" else "x_holes"]), result, name)


@pytest.mark.oracle
@requires_tf
def test_legacy_weights_h5_into_rnnkit_model(legacy):
    tmp, inputs, result = legacy
    outs = {}
    for act in ("hard_sigmoid_keras2", "hard_sigmoid"):
        model = L.Sequential([L.Masking(), L.LSTM(5, return_sequences=True, recurrent_activation=act),
                              L.Bidirectional(L.GRU(3, return_sequences=True)),
                              L.TimeDistributed(L.Dense(2)), L.SimpleRNN(3)])
        _outs(model, inputs["x_holes"])
        load_keras(tmp / "lg_seq_w.h5", model=model)
        outs[act] = _outs(model, inputs["x_holes"])
    _assert_outputs(outs["hard_sigmoid_keras2"], result, "lg_seq")
    # the two hard_sigmoid conventions really differ: the legacy name must not map to Keras 3's
    assert np.abs(outs["hard_sigmoid"][0] - result["lg_seq:out:0"]).max() > 1e-3


# -- without Keras: round trips, unsafe and damaged files ------------------------------------


def _small_seq():
    model = L.Sequential([L.Masking(name="mk"), L.LSTM(3, return_sequences=True, name="l"),
                          L.Dense(2, name="d")], name="small")
    model(torch.zeros(1, 2, 4))
    _randomize(model, 5)
    return model


def _small_func():
    """The graph Keras 3 writes for Masking and Embedding masks, with its explicit mask ops."""
    inp = L.Input((None, 4), name="x")
    mask = KerasAny(axis=-1, name="any")(KerasNotEqual(name="ne")(inp, 0.0))
    y = L.GRU(3, return_sequences=True, name="g")(L.Masking(name="mk")(inp), mask=mask)
    model = L.Model(inp, [L.LSTM(2, name="l")(y, mask=mask), y], name="small_func")
    model(torch.zeros(1, 2, 4))
    _randomize(model, 6)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("files")
    save_keras(_small_seq(), tmp / "small.keras")
    save_keras(_small_seq(), tmp / "small.weights.h5")
    return tmp


def _x() -> torch.Tensor:
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(3))
    x[0, 2] = 0.0
    x[1, 3:] = 0.0
    return x


def _rezip(src, dst, config=None, extra=(), hollow=False):
    """Copy a .keras archive, replacing config.json with ``config``, adding ``extra`` members
    and, with ``hollow``, a weights dataset declared huge but with no bytes behind it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "config.json" and config is not None:
                data = json.dumps(config).encode()
            if info.filename == "model.weights.h5" and hollow:
                buf = io.BytesIO(data)
                with h5py.File(buf, "r+") as h5:
                    h5.create_dataset("hollow", shape=(10**6, 10**6), dtype="f4")
                data = buf.getvalue()
            zout.writestr(info.filename, data)
        for name in extra:
            zout.writestr(name, b"x")
    return dst


def _config(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("config.json"))


@pytest.mark.parametrize("make", [_small_seq, _small_func])
def test_save_then_load_is_the_identity(tmp_path, make):
    model = make().eval()
    save_keras(model, tmp_path / "m.keras")
    loaded = load_keras(tmp_path / "m.keras")
    assert [w.shape for w in loaded.weights] == [w.shape for w in model.weights]
    with torch.no_grad():
        want, got = model(_x()), loaded(_x())
    for a, b in zip(want if isinstance(want, list) else [want],
                    got if isinstance(got, list) else [got], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil", "assets/../../x", "C:/evil"])
def test_path_traversal_member_is_refused(files, tmp_path, member):
    bad = _rezip(files / "small.keras", tmp_path / "bad.keras", extra=[member])
    with pytest.raises(FormatError, match="path traversal"):
        load_keras(bad)


@pytest.mark.parametrize("entry,match", [
    ({"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
      "config": {"name": "lam", "function": {"class_name": "__lambda__",
                                             "config": {"code": "4wEAAAAAAAAA"}}}},
     r"'lam' of class 'Lambda'.*Python code"),
    ({"module": "my_pkg.layers", "class_name": "LSTM", "registered_name": "my_pkg>LSTM",
      "config": {"name": "mine", "units": 3}}, r"'mine'.*my_pkg.*custom class"),
    ({"module": "keras.layers", "class_name": "Dense", "registered_name": None,
      "config": {"name": "dd", "units": 2, "activation": {"module": "builtins",
                                                          "class_name": "function",
                                                          "config": "eval"}}},
     r"activation.*custom activations are refused"),
    ({"module": "keras.layers", "class_name": "Dense", "registered_name": None,
      "config": {"name": "dd", "units": 2, "kernel_initializer": {
          "class_name": "from_callable", "config": {"fn": "rnnkit_no_such_module:f"}}}},
     r"'from_callable'.*refused"),
    ({"module": "keras.layers", "class_name": "Dense", "registered_name": None,
      "config": {"name": "lo", "units": 3, "lora_rank": 4}}, "lora_rank=4 is not supported"),
])
def test_code_carrying_or_unknown_layers_are_refused(files, tmp_path, entry, match):
    config = _config(files / "small.keras")
    config["config"]["layers"].insert(2, entry)
    bad = _rezip(files / "small.keras", tmp_path / "bad.keras", config=config)
    with pytest.raises(FormatError, match=match):
        load_keras(bad)


@pytest.mark.parametrize("units,feature,hollow", [(10**9, 4, False), (3, 10**12, False),
                                                  (10**5, 4, True)])
def test_declared_sizes_beyond_the_weights_file_are_refused(files, tmp_path, units, feature, hollow):
    config = _config(files / "small.keras")
    config["config"]["layers"][0]["config"]["batch_shape"] = [None, None, feature]
    config["config"]["layers"][2]["config"]["units"] = units
    bad = _rezip(files / "small.keras", tmp_path / "bad.keras", config=config, hollow=hollow)
    with pytest.raises(FormatError, match="more weights than the file holds|too large"):
        load_keras(bad)


def test_weights_of_another_model_are_refused_and_leave_the_model_alone(files):
    for model, match in ((L.Sequential([L.LSTM(4, return_sequences=True), L.Dense(2)]), "shape"),
                         (L.Sequential([L.LSTM(3, return_sequences=True), L.Dense(2),
                                        L.Dense(1)]), "missing weight")):
        model(torch.zeros(1, 2, 4))
        before = [w.detach().clone() for w in model.weights]
        with pytest.raises(FormatError, match=match):
            load_keras(files / "small.weights.h5", model=model)
        for w, b in zip(model.weights, before, strict=True):
            torch.testing.assert_close(w.detach(), b, rtol=0, atol=0)
    extra = L.Sequential([L.LSTM(3, return_sequences=True)])
    extra(torch.zeros(1, 2, 4))
    with pytest.raises(FormatError, match="does not have"):
        load_keras(files / "small.weights.h5", model=extra)


@pytest.mark.parametrize("name", ["small.weights.h5", "small.keras"])
def test_weights_into_a_model_built_in_rnnkit(files, name):
    model = L.Sequential([L.Masking(), L.LSTM(3, return_sequences=True), L.Dense(2)])
    model(torch.zeros(1, 2, 4))
    assert load_keras(files / name, model=model) is model
    torch.testing.assert_close(model(_x()), _small_seq()(_x()), rtol=0, atol=0)


def test_not_a_keras_file(files, tmp_path):
    (tmp_path / "junk.keras").write_bytes(b"not a zip at all")
    (tmp_path / "empty.h5").write_bytes(b"")
    for path, match in ((tmp_path / "junk.keras", "not a Keras file"),
                        (tmp_path / "empty.h5", "not a Keras file"),
                        (tmp_path / "missing.keras", "cannot open the file: No such file"),
                        (files / "small.weights.h5", "pass it as model=")):
        with pytest.raises(FormatError, match=match):
            load_keras(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.999), name=st.sampled_from(["small.keras", "small.weights.h5"]))
def test_truncated_files_raise_format_error(files, cut, name):
    data = (files / name).read_bytes()
    damaged = files / f"cut_{name}"
    damaged.write_bytes(data[:int(cut * len(data))])
    model = None if name.endswith(".keras") else _small_seq()
    with pytest.raises(FormatError):
        load_keras(damaged, model=model)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0.0, 0.999), bits=st.integers(1, 255),
       name=st.sampled_from(["small.keras", "small.weights.h5"]))
def test_byte_flips_give_a_model_or_format_error(files, where, bits, name):
    data = bytearray((files / name).read_bytes())
    data[int(where * len(data))] ^= bits
    damaged = files / f"flip_{name}"
    damaged.write_bytes(bytes(data))
    model = None if name.endswith(".keras") else _small_seq()
    try:
        loaded = load_keras(damaged, model=model)
    except FormatError:
        return
    assert isinstance(loaded, L.Sequential)


def test_failed_save_leaves_the_previous_file(files, tmp_path, monkeypatch):
    target = tmp_path / "m.keras"
    save_keras(_small_seq(), target)
    before = target.read_bytes()

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(OSError, match="disk full"):
        save_keras(_small_func(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]


def test_save_refuses_what_keras3_cannot_hold(tmp_path):
    unbuilt = L.Sequential([L.LSTM(2)])
    with pytest.raises(ValueError, match="not built"):
        save_keras(unbuilt, tmp_path / "m.keras")
    with pytest.raises(ValueError, match="must end with"):
        save_keras(_small_seq(), tmp_path / "m.zip")
    with pytest.raises(TypeError, match="Sequential or Model"):
        save_keras(L.LSTM(2), tmp_path / "m.keras")
    legacy = L.Sequential([L.LSTM(2, recurrent_activation="hard_sigmoid_keras2")])
    legacy(torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="no Keras 3 equivalent"):
        save_keras(legacy, tmp_path / "m.keras")
    assert not list(tmp_path.iterdir())


def test_rnnkit_only_fast_option_is_not_written_to_keras_config(tmp_path):
    import json
    import zipfile

    from rnnkit import io as rio
    from rnnkit import layers as L

    model = L.Sequential([L.LSTM(3, fast=False), L.Dense(2)])
    model(torch.randn(2, 4, 5))
    rio.save_keras(model, tmp_path / "m.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    assert '"fast"' not in json.dumps(config)
    again = rio.load_keras(tmp_path / "m.keras")
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(again(x), model.eval()(x))
