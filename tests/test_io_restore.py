"""save/restore: whole and partial restore, renames, freezing, the report, strictness."""

import re

import numpy as np
import pytest
import torch

import rnnkit as rk
from rnnkit.io import RestoreReport, read_checkpoint, restore, save, write_tf_checkpoint

X = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))


def _model(decoder_cell, seed: int | None = None):
    """An encoder GRU (scope ``encoder``) feeding a decoder cell (scope ``decoder``), all kernels
    and biases uniform in [-1, 1] when ``seed`` is given; returns both cells and the outputs."""
    init = rk.init.random_uniform(-1, 1, seed=seed) if seed is not None else None
    with rk.variable_scope("encoder"):
        encoder = rk.GRUCell(5, kernel_initializer=init, bias_initializer=init)
        enc_out, _ = rk.dynamic_rnn(encoder, X, dtype=torch.float32)
    with rk.variable_scope("decoder", initializer=init):
        dec_out, _ = rk.dynamic_rnn(decoder_cell, enc_out, dtype=torch.float32)
    return encoder, decoder_cell, dec_out


def _values(module) -> dict[str, torch.Tensor]:
    return {p.op_name: p.detach().clone() for p in module.parameters()}


@pytest.mark.parametrize("fmt, path", [("tf", "ckpt/model"), ("native", "model.safetensors")])
def test_pretrained_encoder_reused_in_new_model(tmp_path, fmt, path):
    """Train-free transfer: save encoder+decoder, build a new model with another decoder, restore
    only ``encoder/*``: the encoder equals the saved one, the new decoder keeps its own init."""
    encoder, _, _ = _model(rk.BasicLSTMCell(3), seed=1)
    saved = _values(encoder)
    save(tmp_path / path, format=fmt)
    saved_names = sorted(read_checkpoint(tmp_path / path) if fmt == "tf"
                         else rk.io.read_native(tmp_path / path)[0])

    rk.reset_default_graph()
    new_encoder, new_decoder, _ = _model(rk.GRUCell(6), seed=2)
    fresh_decoder = _values(new_decoder)
    assert not any(torch.equal(v, saved[k]) for k, v in _values(new_encoder).items())
    report = restore(tmp_path / path, include="encoder/*", strict=True)

    assert isinstance(report, RestoreReport)
    assert sorted(report.matched) == sorted(saved) == sorted(_values(new_encoder))
    for name, value in _values(new_encoder).items():
        assert torch.equal(value, saved[name]), name
    for name, value in _values(new_decoder).items():
        assert torch.equal(value, fresh_decoder[name]), name
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert set(report.skipped) == ({n for n in saved_names if n.startswith("decoder/")}
                                   | set(fresh_decoder))
    assert all(v.provenance.origin == "restored" for v in new_encoder.parameters())
    assert "4 matched, 0 missing, 0 unexpected, 0 mismatched" in str(report)


def test_restore_whole_model_gives_equal_outputs(tmp_path):
    _, _, out = _model(rk.LSTMCell(4, use_peepholes=True))
    save(tmp_path / "m")
    rk.reset_default_graph()
    _, _, before = _model(rk.LSTMCell(4, use_peepholes=True))
    assert not torch.equal(before, out)
    report = restore(tmp_path / "m", strict=True)
    assert len(report.matched) == len(rk.global_variables())
    rk_out = _rerun_outputs()
    torch.testing.assert_close(rk_out, out, rtol=0, atol=0)


def _rerun_outputs():
    with rk.variable_scope("encoder", reuse=True):
        enc_out, _ = rk.dynamic_rnn(rk.GRUCell(5, reuse=True), X, dtype=torch.float32)
    with rk.variable_scope("decoder", reuse=True):
        out, _ = rk.dynamic_rnn(rk.LSTMCell(4, use_peepholes=True, reuse=True), enc_out,
                                dtype=torch.float32)
    return out


def test_missing_unexpected_and_mismatched_are_reported_and_strict_raises(tmp_path):
    _model(rk.GRUCell(3))
    save(tmp_path / "m")
    rk.reset_default_graph()
    encoder, decoder, _ = _model(rk.GRUCell(4))  # decoder kernels change shape
    rk.get_variable("extra", [2])
    before = {**_values(encoder), **_values(decoder)}
    with pytest.raises(ValueError, match="nothing was assigned") as err:
        restore(tmp_path / "m", strict=True)
    assert "mismatched" in str(err.value) and "extra" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in {**_values(encoder), **_values(decoder)}.items())

    report = restore(tmp_path / "m", exclude=re.compile(r"candidate"))
    assert report.missing == ["extra"]
    assert {m.name for m in report.mismatched} == {"decoder/rnn/gru_cell/gates/kernel",
                                                  "decoder/rnn/gru_cell/gates/bias"}
    mismatch = next(m for m in report.mismatched if m.name.endswith("gates/kernel"))
    assert mismatch.checkpoint == "[8, 6] float32" and mismatch.model == "[9, 8] float32"
    assert sorted(report.matched) == ["encoder/rnn/gru_cell/gates/bias",
                                      "encoder/rnn/gru_cell/gates/kernel"]
    assert all("candidate" in n for n in report.skipped)
    text = str(report)
    assert "decoder/rnn/gru_cell/gates/kernel: checkpoint [8, 6] float32, model [9, 8] float32" in text


def test_rename_prefix_and_regex_and_freeze(tmp_path):
    tensors = {"pretrained/enc/w": np.full((2, 2), 3.0, np.float32),
               "pretrained/enc/cell_0/b": np.full(2, 4.0, np.float32),
               "other/v": np.zeros(1, np.float32)}
    write_tf_checkpoint(tmp_path / "p", tensors)
    w = rk.get_variable("encoder/w", [2, 2])
    b = rk.get_variable("encoder/layer_0/b", [2])
    head = rk.get_variable("head/w", [2])
    report = restore(tmp_path / "p", [w, b, head],
                     rename={re.compile(r"^pretrained/enc/cell_(\d)"): r"encoder/layer_\1",
                             "pretrained/enc/": "encoder/"},
                     exclude="other", freeze="encoder")
    assert report.renamed == {"pretrained/enc/w": "encoder/w",
                              "pretrained/enc/cell_0/b": "encoder/layer_0/b"}
    assert sorted(report.matched) == ["encoder/layer_0/b", "encoder/w"]
    assert report.missing == ["head/w"] and report.skipped == ["other/v"]
    assert float(w[0, 0]) == 3.0 and float(b[1]) == 4.0
    assert not w.requires_grad and not b.requires_grad and head.requires_grad
    assert sorted(report.frozen) == ["encoder/layer_0/b", "encoder/w"]
    assert "encoder/w" in w.provenance.note or "pretrained/enc/w" in w.provenance.note


def test_plain_torch_module_uses_state_dict_keys_and_variable_names(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = rk.GRUCell(3, input_size=2)
            self.head = torch.nn.Linear(3, 1)
            self.register_buffer("steps", torch.tensor(7))

    net = Net()
    save(tmp_path / "net")
    names = set(read_checkpoint(tmp_path / "net"))
    assert "gru_cell/gates/kernel" in names  # rnnkit Variables keep their TF names
    save(tmp_path / "net", net)
    assert set(read_checkpoint(tmp_path / "net")) == {
        "gru_cell/gates/kernel", "gru_cell/gates/bias", "gru_cell/candidate/kernel",
        "gru_cell/candidate/bias", "head.weight", "head.bias", "steps"}
    rk.reset_default_graph()
    other = Net()
    with torch.no_grad():
        other.steps.fill_(0)
    report = restore(tmp_path / "net", other, strict=True)
    assert len(report.matched) == 7
    for (k, a), b in zip(net.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_dtype_is_cast_within_kind_and_refused_across(tmp_path):
    write_tf_checkpoint(tmp_path / "c", {"a": np.arange(3.0), "b": np.arange(3, dtype=np.int32),
                                         "s": np.array([b"x"], dtype=object)})
    a = rk.get_variable("a", [3])  # float32
    b = rk.get_variable("b", [3])
    s = rk.get_variable("s", [1])
    report = restore(tmp_path / "c", [a, b, s], include=["re:^a$", "b", "s"])
    assert report.matched == ["a"] and torch.equal(a.detach(), torch.arange(3.0))
    assert {m.name for m in report.mismatched} == {"b", "s"}


def test_dict_of_tensors_and_global_default(tmp_path):
    t = {"x:0": torch.ones(2), "y": torch.zeros(1, dtype=torch.bool)}
    save(tmp_path / "d", t)
    assert set(read_checkpoint(tmp_path / "d")) == {"x", "y"}
    target = {"x": torch.zeros(2), "y": torch.ones(1, dtype=torch.bool)}
    assert sorted(restore(tmp_path / "d", target).matched) == ["x", "y"]
    assert torch.equal(target["x"], torch.ones(2)) and not target["y"].item()


def test_argument_errors(tmp_path):
    write_tf_checkpoint(tmp_path / "c", {"a": np.zeros(1)})
    with pytest.raises(ValueError, match="format must be 'tf' or 'native'"):
        save(tmp_path / "x", format="h5")
    with pytest.raises(TypeError, match="variables_or_module"):
        restore(tmp_path / "c", 42)
    with pytest.raises(TypeError, match="restore: path must be a str or os.PathLike, got int"):
        restore(3, {})
    with pytest.raises(TypeError, match="rename"):
        restore(tmp_path / "c", {}, rename=[("a", "b")])
    with pytest.raises(TypeError, match="include"):
        restore(tmp_path / "c", {}, include=[3])
    with pytest.raises(TypeError, match="Variables"):
        restore(tmp_path / "c", [torch.zeros(1)])
