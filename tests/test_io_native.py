"""The native format: cells rebuilt with identical outputs, provenance kept, bad files refused."""

import json
import struct

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnkit as rk
from rnnkit.io import FormatError, load, native, read_native, save, save_native, write_tf_checkpoint
from rnnkit.io import atomic as atomic_mod

CELLS = {
    "basic_rnn": lambda: rk.BasicRNNCell(3, activation="relu"),
    "gru": lambda: rk.GRUCell(3, kernel_initializer=rk.init.orthogonal(seed=1)),
    "gru_reset_after": lambda: rk.GRUCell(3, reset_after=True, bias_initializer="ones"),
    "basic_lstm": lambda: rk.BasicLSTMCell(3, forget_bias=0.5),
    "lstm": lambda: rk.LSTMCell(4, use_peepholes=True, num_proj=2, cell_clip=0.8, proj_clip=0.3,
                                forget_bias=0.7, initializer=rk.init.glorot_normal(seed=2)),
    "layer_norm_lstm": lambda: rk.LayerNormLSTMCell(3, norm_gain=0.9, norm_shift=0.1),
    "layer_norm_lstm_off": lambda: rk.LayerNormLSTMCell(3, layer_norm=False),
    "multi": lambda: rk.MultiRNNCell([rk.GRUCell(3), rk.LSTMCell(2, use_peepholes=True),
                                      rk.BasicRNNCell(4)]),
    "dropout": lambda: rk.DropoutWrapper(rk.BasicLSTMCell(3), output_keep_prob=0.5,
                                         variational_recurrent=True),
    "residual": lambda: rk.ResidualWrapper(rk.LSTMCell(3, use_peepholes=True)),
    "multi_residual_concat": lambda: rk.MultiRNNCell(
        [rk.GRUCell(3), rk.ResidualWrapper(rk.BasicLSTMCell(3, state_is_tuple=False))],
        state_is_tuple=False),
}


def _outputs(cell, x):
    cell.eval()
    with rk.variable_scope("model"):
        out, state = rk.dynamic_rnn(cell, x, dtype=x.dtype)
    return [out, *torch.utils._pytree.tree_leaves(state)]


def _provenances():
    return {v.op_name: (repr(v.provenance.initializer), v.provenance.origin, v.provenance.scope,
                        v.provenance.note) for v in rk.global_variables()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_round_trip_identical_outputs(tmp_path, name, dtype):
    x = torch.randn(2, 5, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
    with rk.variable_scope("outer", initializer=rk.init.random_uniform(-0.5, 0.5, seed=3)):
        cell = CELLS[name]()
        want = _outputs(cell, x)
    names = [v.op_name for v in rk.global_variables()]
    provenance = _provenances()
    save(tmp_path / "cell.safetensors", cell, format="native")

    rk.reset_default_graph()
    loaded = load(tmp_path / "cell.safetensors")
    assert type(loaded) is type(cell)
    assert [v.op_name for v in rk.global_variables()] == names
    assert _provenances() == provenance
    with rk.variable_scope("outer"):
        got = _outputs(loaded, x)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)


def test_load_under_scope_and_trainability(tmp_path):
    cell = rk.GRUCell(2, input_size=3)
    cell.get_parameter("gates/bias").requires_grad_(False)
    cell.get_parameter("gates/bias").is_trainable = False
    save_native(tmp_path / "g.safetensors", cell)
    loaded = load(tmp_path / "g.safetensors", scope="pretrained")
    names = [v.op_name for v in rk.global_variables()]
    assert names[4:] == [f"pretrained/{n}" for n in names[:4]]
    assert not loaded.get_parameter("gates/bias").requires_grad
    assert not loaded.get_parameter("gates/bias").trainable
    assert loaded.get_parameter("gates/kernel").requires_grad
    # a second load in the same graph is numbered as TF numbers a second cell
    load(tmp_path / "g.safetensors")
    assert rk.global_variables()[-1].op_name == "gru_cell_1/candidate/bias"


def test_variables_without_a_cell(tmp_path):
    a = rk.get_variable("a", [2, 3], initializer=rk.init.random_normal(seed=4))
    b = rk.get_variable("b", [4], dtype=torch.int64)
    save_native(tmp_path / "v.safetensors", [a, b])
    tensors, meta = read_native(tmp_path / "v.safetensors")
    assert np.array_equal(tensors["a"], a.detach().numpy()) and tensors["b"].dtype == np.int64
    assert meta["model"] is None
    assert meta["variables"]["a"]["provenance"]["initializer"]["class_name"] == "random_normal"
    with pytest.raises(FormatError, match="no model to rebuild"):
        load(tmp_path / "v.safetensors")


def test_unsavable_cells_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="registered name"):
        save_native(tmp_path / "x", rk.BasicRNNCell(2, activation=lambda t: t * 2, input_size=2))
    with pytest.raises(RuntimeError, match="no variables yet"):
        save_native(tmp_path / "x", rk.GRUCell(2))
    with pytest.raises(ValueError, match="residual_fn of your own"):
        save_native(tmp_path / "x", rk.ResidualWrapper(rk.GRUCell(2, input_size=2),
                                                       residual_fn=lambda i, o: i - o))
    assert not list(tmp_path.iterdir())


@pytest.fixture
def saved(tmp_path):
    cell = rk.MultiRNNCell([rk.GRUCell(2), rk.BasicLSTMCell(2)])
    rk.dynamic_rnn(cell, torch.zeros(1, 2, 3), dtype=torch.float32)
    path = save_native(tmp_path / "m.safetensors", cell)
    rk.reset_default_graph()
    return path


def _assert_refused(path):
    with pytest.raises(FormatError):
        read_native(path)
    with pytest.raises(FormatError):
        load(path)
    assert rk.global_variables() == []  # no partial model left behind


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_file_raises_format_error(saved, cut):
    original = saved.read_bytes()
    try:
        saved.write_bytes(original[:int(cut * len(original))])
        _assert_refused(saved)
    finally:
        saved.write_bytes(original)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_flipped_bit_raises_format_error(saved, where, bit):
    original = saved.read_bytes()
    corrupt = bytearray(original)
    corrupt[int(where * len(original))] ^= 1 << bit
    try:
        saved.write_bytes(bytes(corrupt))
        _assert_refused(saved)
    finally:
        saved.write_bytes(original)


def _rewrite_doc(path, edit):
    """Re-save with edited metadata and a valid checksum: only the meaning is wrong."""
    tensors, doc = native._parse(path)
    edit(doc)
    text = json.dumps(doc)
    path.write_bytes(safetensors.torch.save(tensors, {
        "rnnkit": text, "rnnkit_crc32c": str(native.crc32c(text.encode()))}))


@pytest.mark.parametrize("edit", [
    lambda d: d["model"].update({"class": "Evil"}),
    lambda d: d["model"]["cells"][0]["config"].update({"num_units": 3}),
    lambda d: d["model"]["cells"][0]["config"].update({"exec": "os.system"}),
    lambda d: d["model"]["cells"][0].update({"dtype": "load"}),
    lambda d: d["model"]["cells"][1].update({"dtype": "float64"}),
    lambda d: d["model"]["cells"][0]["variables"].pop("gates/bias"),
    lambda d: d.update({"version": 99}),
])
def test_bad_metadata_raises_format_error_and_leaves_no_variables(saved, edit):
    _rewrite_doc(saved, edit)
    with pytest.raises(FormatError):
        load(saved)
    assert rk.global_variables() == []


def test_foreign_files_raise_format_error(tmp_path):
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, plain)
    write_tf_checkpoint(tmp_path / "tf", {"w": np.zeros(2)})
    huge_header = tmp_path / "huge.safetensors"
    huge_header.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    for path in (plain, tmp_path / "tf.index", huge_header, tmp_path / "absent", tmp_path):
        with pytest.raises(FormatError):
            read_native(path)
    with pytest.raises(TypeError, match="read_native: path must be"):
        read_native(0)


def test_from_callable_initializer_is_never_imported_on_load(saved):
    name = "rnn/multi_rnn_cell/cell_0/gru_cell/gates/kernel"

    def edit(doc):
        doc["variables"][name]["provenance"].update(
            initializer={"class_name": "from_callable", "config": {"fn": "os:system"}},
            repr="from_callable('os:system')")

    _rewrite_doc(saved, edit)
    load(saved)
    prov = {v.op_name: v.provenance for v in rk.global_variables()}[name]
    assert prov.initializer is None and "from_callable('os:system') is not re-imported" in prov.note


def test_failed_save_leaves_previous_file_intact(saved, monkeypatch):
    before = saved.read_bytes()

    def boom(fd):  # fails after the new bytes reached the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(atomic_mod.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_native(saved, rk.BasicRNNCell(5, input_size=2))
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    assert isinstance(load(saved), rk.MultiRNNCell)


def test_a_file_never_imports_code_even_nested_in_per_gate(tmp_path):
    """A provenance or cell config naming importable code (from_callable, also inside per_gate)
    is not imported: the initializer reads back as unknown instead."""
    from rnnkit._initializer import names_code

    nested = {"class_name": "per_gate", "config": {"num_gates": 2, "init": {
        "class_name": "from_callable", "config": {"fn": "os.system"}}}}
    assert names_code(nested) and not names_code({"class_name": "zeros", "config": {}})
    from rnnkit.io._native_model import _safe_init

    assert _safe_init(nested) is None
