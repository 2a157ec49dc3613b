"""The native format for Keras layers and models: rebuilt with identical outputs, configs,
provenance and trainability, including what a Keras file cannot hold; bad files refused."""

import importlib
import json

import pytest
import torch
from test_io_native import _rewrite_doc

import rnnkit as rk
from rnnkit import layers as L
from rnnkit.io import FormatError, load, native, read_native, save_keras, save_native
from rnnkit.io.inspect import inspect_file


def _functional():
    inp = L.Input((None, 5))
    seq, h, c = L.LSTM(4, return_sequences=True, return_state=True,
                       bias_initializer=rk.init.chrono(20))(inp)
    out = L.Dense(3, activation="softmax", kernel_regularizer=L.L1L2(l2=0.01))(seq)
    return L.Model(inp, [out, h, c], name="encoder"), torch.randn(2, 7, 5)


def _tokens():
    x = torch.randint(1, 10, (2, 6))
    x[0, 4:] = 0
    return x


MODELS = {
    # rnnkit-only initializers and a stateful layer: no Keras file can hold this model
    "sequential": lambda: (L.Sequential([
        L.LSTM(8, return_sequences=True, kernel_initializer=rk.init.per_gate(rk.init.orthogonal(), 4)),
        L.GRU(4, stateful=True, recurrent_activation="hard_sigmoid_keras2"),
        L.Dense(2, kernel_constraint=L.MaxNorm(2.0))]), torch.randn(3, 5, 6)),
    "embedding_bidirectional_stack": lambda: (L.Sequential([
        L.Embedding(10, 4, mask_zero=True),
        L.Bidirectional(L.SimpleRNN(3, return_sequences=True), merge_mode="sum"),
        L.RNN([L.GRUCell(3), L.LSTMCell(2)], return_sequences=True, go_backwards=True),
        L.TimeDistributed(L.Dense(2))]), _tokens()),
    "functional": _functional,
    "layer": lambda: (L.GRU(3, reset_after=False, fast=False, trainable=False),
                      torch.randn(2, 4, 5)),
}


def _reset(model):
    """Stateful layers back to zero states (a rebuilt model starts there)."""
    for m in model.modules():
        if isinstance(m, L.RNN):
            m.reset_states()


def _build(name):
    model, x = MODELS[name]()
    model.eval()
    model(x)
    _reset(model)
    return model, x, model(x)


def _flat(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _weights(model):
    return {k: (v.detach().clone(), v.requires_grad, repr(getattr(v, "provenance", None)))
            for k, v in model.state_dict(keep_vars=True).items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_identical(tmp_path, name, dtype):
    model, x, _ = _build(name)
    model.to(dtype)
    x = x.to(dtype) if x.is_floating_point() else x
    _reset(model)
    want = _flat(model(x))
    save_native(tmp_path / "m.safetensors", model)
    loaded = load(tmp_path / "m.safetensors")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.get_config() == model.get_config()
    got, before = _weights(loaded), _weights(model)
    assert got.keys() == before.keys()
    for key, (value, grad, prov) in before.items():
        assert torch.equal(got[key][0], value) and got[key][0].dtype == dtype
        assert got[key][1:] == (grad, prov), key
    for a, b in zip(_flat(loaded(x)), want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert rk.global_variables() == []  # Keras layers stay out of the TF1 graph


def test_the_file_keeps_what_a_keras_file_cannot(tmp_path):
    L.clear_session()  # the layers' default names start again
    model, x, want = _build("sequential")
    with pytest.raises(ValueError, match="no Keras equivalent"):
        save_keras(model, tmp_path / "m.keras")
    save_native(tmp_path / "m.safetensors", model)
    loaded = load(tmp_path / "m.safetensors")
    kernel = loaded.model_layers[0].cell.kernel
    assert repr(kernel.provenance.initializer) == "per_gate(orthogonal(), 4)"
    assert loaded.model_layers[1].cell.recurrent_activation is rk.activations.get("hard_sigmoid_keras2")
    assert torch.equal(loaded(x), want)
    text = inspect_file(tmp_path / "m.safetensors").notes[0]
    assert text == "model: Sequential 'sequential'(LSTM 'lstm', GRU 'gru', Dense 'dense')"


def test_unsavable_layers_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        save_native(tmp_path / "x", L.Sequential([L.LSTM(2)]))
    odd = L.SimpleRNN(2, activation=lambda t: t * 2)
    odd(torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="registered name"):
        save_native(tmp_path / "x", odd)
    assert not list(tmp_path.iterdir())


def test_code_naming_initializer_is_saved_and_read_as_the_default(tmp_path, monkeypatch):
    layer = L.LSTM(3, kernel_initializer=rk.init.from_callable(ones))
    layer(torch.zeros(1, 2, 3))
    save_native(tmp_path / "m.safetensors", layer)
    model = read_native(tmp_path / "m.safetensors")[1]["model"]
    assert model["config"]["config"]["kernel_initializer"] is None

    def no_import(*args, **kwargs):
        raise AssertionError("a file made rnnkit import code")

    monkeypatch.setattr(importlib, "import_module", no_import)
    loaded = load(tmp_path / "m.safetensors")
    assert torch.equal(loaded.cell.kernel, torch.ones(3, 12))
    assert loaded.cell.kernel.provenance.initializer is None
    assert "is not re-imported from a file" in loaded.cell.kernel.provenance.note


def ones(shape, dtype):
    """An initializer function a file can name (``test_io_native_layers:ones``)."""
    return torch.ones(shape, dtype=dtype)


def _layer_config(doc, k):
    return doc["model"]["config"]["config"]["layers"][k]["config"]


@pytest.mark.parametrize("edit, why", [
    (lambda d: d["model"]["config"].update(class_name="Evil"), "class_name"),
    (lambda d: _layer_config(d, 0).update(units=10**9), "more weights than the file holds"),
    (lambda d: _layer_config(d, 0).update(units=7), "the file has"),
    (lambda d: _layer_config(d, 0).update(exec="os.system"), "exec"),
    (lambda d: _layer_config(d, 1).update(activation="os.system"), "os.system"),
    (lambda d: _layer_config(d, 0).update(kernel_regularizer={
        "class_name": "from_callable", "config": {"fn": "os:system"}}), "names code"),
    (lambda d: d["model"]["variables"].popitem(), "has variables"),
    (lambda d: d["model"]["inputs"][0].update(dtype="load"), "dtype"),
    (lambda d: d["model"].pop("inputs"), "inputs"),
])
def test_bad_layer_metadata_raises_format_error(tmp_path, edit, why):
    model, _, _ = _build("sequential")
    path = save_native(tmp_path / "m.safetensors", model)
    _rewrite_doc(path, edit)
    with pytest.raises(FormatError, match="the saved layer does not rebuild") as err:
        load(path)
    assert why in str(err.value)


def test_scope_is_refused_for_a_layer(tmp_path):
    model, _, _ = _build("layer")
    path = save_native(tmp_path / "m.safetensors", model)
    with pytest.raises(ValueError, match="scope applies to TF1 cells"):
        load(path, scope="pretrained")


@pytest.mark.parametrize("header", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_metadata_is_a_format_error(tmp_path, header):
    path = tmp_path / "deep.safetensors"
    meta = {"rnnkit": header.decode(), "rnnkit_crc32c": str(native.crc32c(header))}
    for head in (header, json.dumps({"__metadata__": meta}).encode()):
        path.write_bytes(len(head).to_bytes(8, "little") + head)
        with pytest.raises(FormatError):
            read_native(path)
        with pytest.raises(FormatError):
            inspect_file(path)


def test_convert_keras_to_native_and_back(tmp_path, capsys):
    from rnnkit.cli import main
    from rnnkit.io import load_keras

    model = L.Sequential([L.GRU(3, return_sequences=True), L.LSTM(2)])
    x = torch.randn(2, 5, 4)
    model.eval()
    want = model(x)
    save_keras(model, tmp_path / "m.keras")
    for src, dst in (("m.keras", "m.safetensors"), ("m.safetensors", "back.keras")):
        assert main(["convert", str(tmp_path / src), str(tmp_path / dst)]) == 0
        assert "): ok" in capsys.readouterr().out
    assert torch.equal(load(tmp_path / "m.safetensors")(x), want)
    assert torch.equal(load_keras(tmp_path / "back.keras")(x), want)
