"""TensorFlow checkpoints in pure Python: round trips with real TensorFlow, corruption, atomicity."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tf_oracle import requires_tf, run_tf

import rnnkit as rk
from rnnkit.io import (
    FormatError,
    list_variables,
    load_variable,
    read_checkpoint,
    restore,
    save,
    write_tf_checkpoint,
)
from rnnkit.io import _proto as pb
from rnnkit.io import _sstable as sst
from rnnkit.io import tf_checkpoint as tfc

RNG = np.random.default_rng(7)
GRID = {  # name -> value; every dtype rnnkit writes, odd shapes, a scalar, an empty tensor
    "grid/f16": RNG.standard_normal((3, 2)).astype(np.float16),
    "grid/f32": RNG.standard_normal((4, 5)).astype(np.float32),
    "grid/f64": RNG.standard_normal((2, 3, 2)),
    "grid/i32": RNG.integers(-9, 9, (7,)).astype(np.int32),
    "grid/i64": np.array(2**40 + 3, dtype=np.int64),
    "grid/bool": np.array([[True, False], [False, True]]),
    "grid/empty": np.zeros((0, 3), np.float32),
    "grid/bf16": torch.tensor([[1.5, -2.25], [3.0, 1e-3]]).to(torch.bfloat16),
    "grid/u8": np.arange(5, dtype=np.uint8),
}
STRINGS = np.array([b"abc", "wörld".encode(), b""], dtype=object)
X = RNG.standard_normal((2, 5, 3)).astype(np.float32)


def _expected(value) -> np.ndarray:
    return value.float().numpy() if torch.is_tensor(value) else value


def _rnnkit_model():
    """A GRU and a peephole/projection LSTM, as in the TF graph of the oracle script."""
    cells = {"gru": rk.GRUCell(4), "lstm": rk.LSTMCell(5, use_peepholes=True, num_proj=3)}
    return cells, _run(cells)


def _run(cells):
    x, outs = torch.from_numpy(X), []
    for scope, cell in cells.items():
        with rk.variable_scope(scope):
            outs.append(rk.dynamic_rnn(cell, x, dtype=torch.float32)[0].detach().numpy())
    return outs


_TF_SCRIPT = """
import os
ours_grid, ours_rnn, tf1_dir, tf2_dir = (INPUTS[k].item() for k in
                                         ("ours_grid", "ours_rnn", "tf1_dir", "tf2_dir"))
x = INPUTS["x"]

def as_np(v):
    return v.astype(np.float32) if v.dtype.name == "bfloat16" else v

# TF reads the checkpoint rnnkit wrote
reader = tf.train.load_checkpoint(ours_grid)
RESULT["ours_list"] = tf.train.list_variables(ours_grid)
for name, _ in RESULT["ours_list"]:
    v = reader.get_tensor(name)
    if v.dtype == object:
        RESULT["ours_strings"] = [s.decode("utf-8") for s in v.tolist()]
    else:
        RESULT["ours/" + name] = as_np(v)

def rnn_graph():
    xin = tf1.constant(x)
    with tf1.variable_scope("gru"):
        og, _ = tf1.nn.dynamic_rnn(tf1.nn.rnn_cell.GRUCell(4), xin, dtype=tf.float32)
    with tf1.variable_scope("lstm"):
        ol, _ = tf1.nn.dynamic_rnn(tf1.nn.rnn_cell.LSTMCell(5, use_peepholes=True, num_proj=3),
                                   xin, dtype=tf.float32)
    return og, ol

# tf1.train.Saver restores rnnkit's RNN checkpoint into a TF1 graph
with tf1.Graph().as_default():
    og, ol = rnn_graph()
    with tf1.Session() as sess:
        tf1.train.Saver().restore(sess, ours_rnn)
        RESULT["ours_rnn_gru"], RESULT["ours_rnn_lstm"] = sess.run([og, ol])

# TF1 writes a real GRU/LSTM graph's variables plus a dtype grid and a string
with tf1.Graph().as_default():
    tf1.set_random_seed(3)
    og, ol = rnn_graph()
    for dt in ("float16", "float64", "int32", "int64", "bool", "bfloat16"):
        init = np.arange(6).reshape(2, 3) % 2 if dt == "bool" else np.arange(6.).reshape(2, 3) - 2.5
        tf1.get_variable("grid/" + dt, initializer=tf.constant(init, dtype=dt))
    tf1.get_variable("grid/scalar", initializer=tf.constant(1.25, tf.float32))
    tf1.get_variable("grid/strings", initializer=tf.constant(["abc", "wörld", ""]))
    with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        tf1.train.Saver().save(sess, os.path.join(tf1_dir, "model.ckpt"), global_step=7)
        RESULT["tf1_gru"], RESULT["tf1_lstm"] = sess.run([og, ol])
        for v in tf1.global_variables():
            if v.dtype.base_dtype != tf.string:
                RESULT["tf1/" + v.op.name] = as_np(sess.run(v))

# TF2 object-based checkpoint
class Block(tf.Module):
    def __init__(self):
        self.kernel = tf.Variable(np.arange(12.).reshape(3, 4).astype(np.float32),
                                  name="block/dense/kernel")
        self.steps = tf.Variable(np.int64(5))
        self.half = tf.Variable(np.ones(3, np.float16))
root = tf.train.Checkpoint(model=Block(), extra=tf.Variable([True, False]))
prefix = root.save(os.path.join(tf2_dir, "ckpt"))
RESULT["tf2_prefix"] = prefix
RESULT["tf2_list"] = tf.train.list_variables(tf2_dir)
tf2_reader = tf.train.load_checkpoint(tf2_dir)
for name, _ in RESULT["tf2_list"]:
    if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
        RESULT["tf2/" + name] = tf2_reader.get_tensor(name)
"""


@pytest.fixture(scope="module")
def tf_run(tmp_path_factory):
    """One TensorFlow subprocess for the whole module; rnnkit writes its files first."""
    root = tmp_path_factory.mktemp("tfckpt")
    ours_grid = root / "ours_grid" / "ck"
    write_tf_checkpoint(ours_grid, {**GRID, "grid/strings": STRINGS}, block_size=64)
    rk.reset_default_graph()
    _, ours_out = _rnnkit_model()
    ours_rnn = save(root / "ours_rnn" / "model")
    rk.reset_default_graph()
    dirs = {k: root / k for k in ("tf1_dir", "tf2_dir")}
    for d in dirs.values():
        d.mkdir()
    inputs = {"x": X, "ours_grid": np.array(str(ours_grid)), "ours_rnn": np.array(str(ours_rnn)),
              **{k: np.array(str(v)) for k, v in dirs.items()}}
    result = run_tf(_TF_SCRIPT, inputs)
    return result, ours_out, dirs


@pytest.mark.oracle
@requires_tf
def test_tf_reads_what_rnnkit_writes(tf_run):
    result, _, _ = tf_run
    assert sorted(map(tuple, result["ours_list"])) == sorted(
        [(k, list(np.shape(_expected(v)))) for k, v in GRID.items()] + [("grid/strings", [3])])
    for name, value in GRID.items():
        got, want = result["ours/" + name], _expected(value)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert result["ours_strings"] == [s.decode("utf-8") for s in STRINGS]


@pytest.mark.oracle
@requires_tf
def test_tf1_saver_restores_rnnkit_rnn_checkpoint(tf_run):
    """rnnkit saves a GRU and an LSTM; TF1 restores them into its own graph: same outputs."""
    result, (out_gru, out_lstm), _ = tf_run
    np.testing.assert_allclose(result["ours_rnn_gru"], out_gru, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["ours_rnn_lstm"], out_lstm, rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
@requires_tf
def test_rnnkit_reads_tf1_saver_checkpoint(tf_run):
    result, _, dirs = tf_run
    got = read_checkpoint(dirs["tf1_dir"])  # the folder: its 'checkpoint' file names model.ckpt-7
    want = {k[4:]: v for k, v in result.items() if k.startswith("tf1/")}
    assert set(got) == set(want) | {"grid/strings"}
    for name, value in want.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
    assert got["grid/strings"].tolist() == [b"abc", "wörld".encode(), b""]
    assert dict(list_variables(dirs["tf1_dir"] / "model.ckpt-7"))["gru/rnn/gru_cell/gates/kernel"] \
        == [7, 8]


@pytest.mark.oracle
@requires_tf
def test_tf1_gru_lstm_checkpoint_restores_into_rnnkit_cells(tf_run):
    """TF1 trained-graph variables restored into the same rnnkit model give TF's outputs."""
    result, _, dirs = tf_run
    rk.reset_default_graph()
    cells, _ = _rnnkit_model()
    report = restore(dirs["tf1_dir"], strict=True)
    assert sorted(report.matched) == sorted(v.op_name for v in rk.global_variables())
    assert sorted(report.unexpected) == sorted(k for k in read_checkpoint(dirs["tf1_dir"])
                                               if k.startswith("grid/"))
    out_gru, out_lstm = _run(cells)
    np.testing.assert_allclose(out_gru, result["tf1_gru"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_lstm, result["tf1_lstm"], rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
@requires_tf
def test_rnnkit_reads_tf2_object_checkpoint(tf_run):
    result, _, dirs = tf_run
    got = read_checkpoint(dirs["tf2_dir"])
    tf_names = {name for name, _ in result["tf2_list"]}
    assert tfc.OBJECT_GRAPH_KEY in tf_names and tfc.OBJECT_GRAPH_KEY not in got
    assert set(got) == tf_names - {tfc.OBJECT_GRAPH_KEY}
    assert "model/kernel/.ATTRIBUTES/VARIABLE_VALUE" in got
    for name, value in got.items():
        want = result["tf2/" + name]
        assert value.dtype == want.dtype and np.array_equal(value, want), name
    assert list_variables(result["tf2_prefix"]) == [
        (n, s) for n, s in map(tuple, result["tf2_list"]) if n != tfc.OBJECT_GRAPH_KEY]
    kernel = load_variable(dirs["tf2_dir"] / "ckpt-1.index", "model/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    full = tfc.object_graph_names(dirs["tf2_dir"])
    assert set(full) == set(got) and full["model/kernel/.ATTRIBUTES/VARIABLE_VALUE"] == \
        "block/dense/kernel"
    assert tfc.object_graph_names(dirs["tf1_dir"]) == {}
    assert np.array_equal(kernel, np.arange(12.0).reshape(3, 4))
    # restore() matches TF2 keys by their path without the /.ATTRIBUTES/VARIABLE_VALUE suffix
    target = {"model/kernel": torch.zeros(3, 4), "model/steps": torch.zeros((), dtype=torch.int64)}
    report = restore(dirs["tf2_dir"], target, include=["model/kernel", "model/steps"])
    assert sorted(report.matched) == ["model/kernel", "model/steps"]
    assert int(target["model/steps"]) == 5


def test_no_tensorflow_import():
    """Reading and writing checkpoints never imports TensorFlow."""
    code = ("import sys, rnnkit.io.tf_checkpoint, rnnkit.io.saving, rnnkit.io.native;"
            "assert not any(m.split('.')[0] in ('tensorflow', 'google.protobuf') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the wire format, the table, and bad files ---------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_varint_round_trip(value):
    decoded, end = pb.decode_varint(pb.encode_varint(value), 0)
    assert end == len(pb.encode_varint(value))
    assert (pb.as_int64(decoded) if value < 0 else decoded) == value


def test_table_round_trip_many_blocks():
    entries = [(f"k{i:04d}/{'x' * (i % 7)}".encode(), bytes([i % 256]) * (i % 13))
               for i in range(300)]
    for block_size, restart in ((64, 1), (512, 16), (1 << 20, 16)):
        assert sst.read_table(sst.write_table(entries, block_size, restart)) == entries


def test_crc_mask_round_trip():
    for crc in (0, 1, 0xFFFFFFFF, 0x12345678):
        assert sst.unmask(sst.mask(crc)) == crc


@pytest.fixture
def ckpt(tmp_path):
    prefix = tmp_path / "m" / "model"
    write_tf_checkpoint(prefix, {**GRID, "grid/strings": STRINGS})
    return prefix


def test_round_trip_in_rnnkit(ckpt):
    got = read_checkpoint(ckpt.parent)
    for name, value in GRID.items():
        assert np.array_equal(got[name], _expected(value)), name
    assert got["grid/strings"].tolist() == STRINGS.tolist()
    assert load_variable(ckpt, "grid/f32:0").shape == (4, 5)
    with pytest.raises(KeyError, match="grid/f32"):
        load_variable(ckpt, "nothing/f32")


_FILES = ("index", "data-00000-of-00001")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(_FILES), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_files_raise_format_error(ckpt, which, cut):
    path = ckpt.parent / f"model.{which}"
    original = path.read_bytes()
    try:
        path.write_bytes(original[:int(cut * len(original))])
        with pytest.raises(FormatError):
            read_checkpoint(ckpt)
    finally:
        path.write_bytes(original)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(_FILES), where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7))
def test_flipped_bits_raise_format_error(ckpt, which, where, bit):
    path = ckpt.parent / f"model.{which}"
    original = path.read_bytes()
    corrupt = bytearray(original)
    corrupt[int(where * len(original))] ^= 1 << bit
    try:
        path.write_bytes(bytes(corrupt))
        with pytest.raises(FormatError):
            read_checkpoint(ckpt)
    finally:
        path.write_bytes(original)


def _index_with(tmp_path, entry: pb.BundleEntry) -> os.PathLike:
    header = pb.encode_header(1)
    prefix = tmp_path / "crafted"
    (tmp_path / "crafted.index").write_bytes(sst.write_table(
        [(b"", header), (b"w", pb.encode_entry(entry))]))
    (tmp_path / "crafted.data-00000-of-00001").write_bytes(b"\0" * 64)
    return prefix


def test_declared_size_beyond_file_fails_before_allocating(tmp_path):
    huge = pb.BundleEntry(1, (2**30, 2**10), 0, 0, 2**42, 0)  # 4 TiB of float32, consistent with shape
    with pytest.raises(FormatError, match="the file has 64"):
        read_checkpoint(_index_with(tmp_path, huge))


@pytest.mark.parametrize("entry, message", [
    (pb.BundleEntry(8, (2,), 0, 0, 16, 0), "complex64"),
    (pb.BundleEntry(1, (4,), 0, 0, 12, 0), "needs 16 bytes"),
    (pb.BundleEntry(1, (2,), 3, 0, 8, 0), "shard 3"),
    (pb.BundleEntry(1, (2,), 0, 0, 8, 0), "checksum"),
    (pb.BundleEntry(7, (100,), 0, 0, 50, 0), "cannot fit"),
])
def test_mislabeled_entries_raise_format_error(tmp_path, entry, message):
    with pytest.raises(FormatError, match=message):
        read_checkpoint(_index_with(tmp_path, entry))


def test_missing_and_foreign_files_raise_format_error(tmp_path, ckpt):
    with pytest.raises(FormatError, match="cannot read"):
        read_checkpoint(tmp_path / "nothing")
    with pytest.raises(FormatError, match="'checkpoint' file"):
        list_variables(tmp_path)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "gone"\n')
    with pytest.raises(FormatError, match="gone.index"):
        read_checkpoint(tmp_path)
    (tmp_path / "foreign.index").write_bytes(json.dumps({"not": "a table"}).encode() * 4)
    with pytest.raises(FormatError, match="magic"):
        read_checkpoint(tmp_path / "foreign")
    # a data shard given where the index belongs
    (tmp_path / "swapped.index").write_bytes((ckpt.parent / "model.data-00000-of-00001").read_bytes())
    with pytest.raises(FormatError):
        read_checkpoint(tmp_path / "swapped")


def test_write_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="complex"):
        write_tf_checkpoint(tmp_path / "c", {"z": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError, match="dict"):
        write_tf_checkpoint(tmp_path / "c", [np.zeros(2)])
    with pytest.raises(ValueError, match="non-empty"):
        write_tf_checkpoint(tmp_path / "c", {"": np.zeros(2)})
    assert not list(tmp_path.iterdir())


def test_failed_save_leaves_previous_checkpoint_intact(ckpt, monkeypatch):
    folder = ckpt.parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def boom(*args, **kwargs):  # fails after the new data shard was written
        raise OSError("disk full")

    monkeypatch.setattr(tfc.sst, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_tf_checkpoint(ckpt, {"other": np.ones(3)})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()
    assert np.array_equal(read_checkpoint(ckpt)["grid/f32"], GRID["grid/f32"])


def test_a_data_shard_path_names_its_checkpoint(tmp_path):
    from rnnkit.io import read_checkpoint, write_tf_checkpoint

    write_tf_checkpoint(tmp_path / "model", {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    via_shard = read_checkpoint(tmp_path / "model.data-00000-of-00001")
    np.testing.assert_array_equal(via_shard["w"], read_checkpoint(tmp_path / "model")["w"])
