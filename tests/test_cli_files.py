"""``rnnkit inspect`` and ``rnnkit convert``, run as subprocesses on real files.

Files are written by rnnkit's own writers, ``torch.save`` and h5py (Keras 3's layout); the
oracle test reads files written by real TensorFlow and Keras. Gate labels are checked against
numbers: a conversion whose numeric check passed (onnxruntime, torch.nn) must show the same
values under the same gate label in both files.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import subprocess
import sys
from typing import NamedTuple

import h5py
import numpy as np
import pytest
import safetensors.torch
import torch
from tf_oracle import requires_tf, run_tf

import rnnkit
from rnnkit import cells, scope
from rnnkit import io as rio

_PARSER = "import sys\nfrom rnnkit.cli import build_parser as parser\n"
_RUNNER = "import sys\nfrom rnnkit.cli import main\nsys.exit(main())\n"  # ``python -m rnnkit.cli``
# Many invocations in one process (each on a fresh variable graph, output captured), to pay
# for importing torch once: what a separate process per call would give, minus start-up time.
_BATCH = _PARSER + """
import contextlib, io, json, traceback
import rnnkit
results = []
for argv in json.load(open(sys.argv[1])):
    rnnkit.reset_default_graph()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            a = parser().parse_args(argv)
            rc = a.run(a)
        except SystemExit as e:
            rc = e.code
        except BaseException:
            traceback.print_exc()
            rc = -1
    results.append([rc, out.getvalue(), err.getvalue()])
json.dump(results, open(sys.argv[2], "w"))
"""
HAVE_KERAS_FILES = importlib.util.find_spec("rnnkit.io.keras_files") is not None


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def rnnkit_cli(*args) -> subprocess.CompletedProcess:
    """Run ``rnnkit ARGS`` (the inspect/convert verbs) in a subprocess of its own."""
    return subprocess.run([sys.executable, "-c", _RUNNER, *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def rnnkit_batch(argvs: list[list], tmp) -> list[Result]:
    """Run many ``rnnkit`` command lines in one subprocess, in order."""
    spec, out = tmp / "argvs.json", tmp / "results.json"
    spec.write_text(json.dumps([[str(a) for a in argv] for argv in argvs]))
    proc = subprocess.run([sys.executable, "-c", _BATCH, str(spec), str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [Result(*r) for r in json.loads(out.read_text())]


def inspect_json(path) -> dict:
    proc = rnnkit_cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _block(array: np.ndarray, slices: list) -> np.ndarray:
    return array[tuple(slice(*s) if isinstance(s, list) else slice(None) if s is None else s
                       for s in slices)]


def _blocks(report: dict, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
    """``{label: values}`` of a tensor's gate blocks, cut with the slices the JSON gives."""
    (var,) = [v for v in report["variables"] if v["name"] == name]
    return {b["label"]: _block(array, b["slices"]) for b in var["rnn"]["blocks"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real files of every format, and the arrays they were written from."""
    d = tmp_path_factory.mktemp("files")
    rnnkit.reset_default_graph()
    torch.manual_seed(0)
    with scope.variable_scope("rnn"):
        gru = cells.GRUCell(3, input_size=2)
    with scope.variable_scope("enc"):
        stack = cells.MultiRNNCell([cells.LSTMCell(4, use_peepholes=True, num_proj=3),
                                    cells.BasicLSTMCell(2)])
        stack.ensure_built(2, torch.float32)
    tensors = {v.op_name: v.detach().numpy().copy() for v in scope.global_variables()}
    rio.write_tf_checkpoint(d / "tf" / "model.ckpt", tensors)
    rio.save_native(d / "gru.safetensors", gru)
    lstm = torch.nn.LSTM(2, 3, num_layers=2, bidirectional=True)
    torch.save(lstm.state_dict(), d / "lstm.pt")
    torch_gru = torch.nn.GRU(2, 4)
    torch.save(torch_gru.state_dict(), d / "gru.pt")
    safetensors.torch.save_file({f"encoder.rnn.{k}": v.contiguous()
                                 for k, v in torch_gru.state_dict().items()}, d / "plain.safetensors")
    rio.export_onnx(cells.GRUCell(3, reset_after=True, input_size=2, name="g"), d / "gru.onnx")
    keras_lstm = {"kernel": np.random.default_rng(1).normal(size=(2, 12)).astype("f4"),
                  "recurrent_kernel": np.random.default_rng(2).normal(size=(3, 12)).astype("f4"),
                  "bias": np.arange(12, dtype="f4")}
    with h5py.File(d / "lstm.weights.h5", "w") as h5:  # Keras 3's layout of a Sequential([LSTM(3)])
        h5.create_group("layers/lstm/vars")
        for k, key in enumerate(("kernel", "recurrent_kernel", "bias")):
            h5[f"layers/lstm/cell/vars/{k}"] = keras_lstm[key]
    if HAVE_KERAS_FILES:
        from rnnkit import layers as L

        model = L.Sequential([L.Bidirectional(L.GRU(3))])
        model(torch.zeros(1, 2, 2))
        rio.save_keras(model, d / "bigru.keras")
    rnnkit.reset_default_graph()
    return {"dir": d, "tensors": tensors, "lstm": lstm, "torch_gru": torch_gru, "keras_lstm": keras_lstm}


_INSPECT = [("tf", "tf", 12), ("tf/model.ckpt.index", "tf", 12), ("gru.safetensors", "native", 4),
            ("lstm.pt", "torch", 16), ("plain.safetensors", "safetensors", 4), ("gru.onnx", "onnx", 4),
            ("lstm.weights.h5", "keras_h5", 3)]
_CONVERSIONS = [
    ("lstm.pt", "out.onnx", []), ("lstm.pt", "out/ckpt", ["--to", "tf"]), ("lstm.pt", "out.pt", []),
    ("gru.pt", "out.safetensors", []), ("gru.pt", "gru.onnx", []), ("plain.safetensors", "out.pt", []),
    ("tf/model.ckpt", "out.onnx", ["--scope", "rnn"]),
    ("tf/model.ckpt", "out.safetensors", ["--scope", "rnn"]),
    ("tf", "out.ckpt", ["--scope", "enc"]), ("tf", "out.safetensors", ["--scope", "enc/"]),
    ("gru.safetensors", "out.ckpt", []), ("gru.safetensors", "x.bin", ["--to", "onnx"]),
    ("bigru.keras", "out.pt", []), ("bigru.keras", "out.onnx", []), ("bigru.keras", "out.keras", []),
    ("bigru.keras", "out.safetensors", []),
]
_REFUSALS = [
    ("tf", "out.pt", ["--scope", "rnn"], "torch.nn.GRU applies the reset gate after"),
    ("tf", "out.onnx", ["--scope", "enc"], "ONNX LSTM has no output projection"),
    ("tf", "out.pt", [], "found 3 RNN cells that do not form one model"),
    ("tf", "out.pt", ["--scope", "nowhere"], "no TF1 RNN cell variables"),
    ("lstm.pt", "out.safetensors", [], "the native format holds one cell, MultiRNNCell or Keras model"),
    ("gru.onnx", "out.pt", [], "ONNX is an export target"),
    ("gru.pt", "out.keras", [], "TF1 cells have no Keras file form"),
    ("gru.pt", "out.xyz", [], "cannot tell the target format from the extension '.xyz'"),
    ("gru.pt", "out.pt", ["--tolerance", "-1"], "differs by"),
]
_BAD = [("missing", "no such file or directory"), ("empty", "the file is empty"),
        ("text", "unrecognized file format"), ("pickle", "Unsupported global"),
        ("folder", "without a TensorFlow 'checkpoint' file"), ("tf_data", "checksum mismatch"),
        ("safetensors", "corrupt safetensors header"), ("keras", "truncated"), ("onnx", "ONNX model"),
        ("pt", "corrupt zip archive")]


class _Evil:
    def __reduce__(self):
        return print, ("a pickle that runs code",)


def _corrupt(d, name):
    """Write a bad file (or pick a bad path) under ``d`` and return it."""
    simple = {"empty": ("empty.pt", b""), "text": ("notes.txt", b"hello\n"),
              "pickle": ("code.pt", pickle.dumps(_Evil(), protocol=2))}
    truncated = {"safetensors": ("gru.safetensors", 40), "keras": ("lstm.weights.h5", 600),
                 "onnx": ("gru.onnx", 100), "pt": ("lstm.pt", 300)}
    d.mkdir(exist_ok=True)
    if name == "missing":
        return d / "no" / "such.file"
    if name == "folder":
        (d / "folder").mkdir(exist_ok=True)
        return d / "folder"
    if name in simple:
        path = d / simple[name][0]
        path.write_bytes(simple[name][1])
        return path
    if name == "tf_data":  # one flipped byte in the tensor data
        (d / "ckpt").mkdir(exist_ok=True)
        for f in (d.parent / "tf").iterdir():
            raw = bytearray(f.read_bytes())
            if ".data-" in f.name:
                raw[8] ^= 0xFF
            (d / "ckpt" / f.name).write_bytes(bytes(raw))
        return d / "ckpt" / "model.ckpt"
    src, size = truncated[name]
    path = d / f"truncated_{src}"
    path.write_bytes((d.parent / src).read_bytes()[:size])
    return path


@pytest.fixture(scope="module")
def ran(files, tmp_path_factory):
    """Every inspect/convert command line of the tests below, run in one subprocess, by key."""
    d, out = files["dir"], tmp_path_factory.mktemp("out")
    runs: dict[tuple, list] = {("text", "tf"): ["inspect", d / "tf" / "model.ckpt"]}
    runs.update({("inspect", name): ["inspect", d / name, "--json"]
                 for name in [n for n, _, _ in _INSPECT] + ["gru.pt"]})
    for k, (src, dst, extra) in enumerate(_CONVERSIONS):
        if src.endswith(".keras") and not HAVE_KERAS_FILES:
            continue
        runs[("convert", k)] = ["convert", d / src, out / str(k) / dst, *extra]
        runs[("inspect dst", k)] = ["inspect", out / str(k) / dst, "--json"]
    runs.update({("refuse", k): ["convert", d / src, out / "refused" / dst, *extra]
                 for k, (src, dst, extra, _) in enumerate(_REFUSALS)})
    for case, _ in _BAD:
        path = _corrupt(d / "bad", case)
        runs[("bad", case, "inspect")] = ["inspect", path]
        runs[("bad", case, "convert")] = ["convert", path, out / "bad" / "out.onnx"]
    results = rnnkit_batch(list(runs.values()), out)
    return dict(zip(runs, results, strict=True)) | {"out": out}


def test_help_of_both_verbs_documents_formats_and_the_conversion_matrix():
    for verb, words in (("inspect", ["--json", "--no-stats", "weights_only=True", "W_<g>"]),
                        ("convert", ["--to", "source \\ target", "--forget-bias", "onnxruntime"])):
        proc = rnnkit_cli(verb, "--help")
        assert proc.returncode == 0 and proc.stderr == ""
        assert proc.stdout.startswith(f"usage: rnnkit {verb}")
        for word in words:
            assert word in proc.stdout, word


def test_usage_errors_exit_2():
    assert rnnkit_cli("inspect").returncode == 2
    proc = rnnkit_cli("convert", "a", "b", "--to", "caffe")
    assert proc.returncode == 2 and "invalid choice: 'caffe'" in proc.stderr


def test_each_verb_in_a_process_of_its_own(files, tmp_path):
    """Exit statuses and streams of real processes: success, and a file that needs code."""
    proc = rnnkit_cli("convert", files["dir"] / "gru.pt", tmp_path / "gru.onnx")
    assert proc.returncode == 0 and ": ok" in proc.stdout, proc.stderr
    proc = rnnkit_cli("inspect", tmp_path / "gru.onnx", "--no-stats")
    assert proc.returncode == 0 and "ONNX GRU (linear_before_reset=1)" in proc.stdout
    assert "mean=" not in proc.stdout
    evil = _corrupt(tmp_path, "pickle")
    for args in (("inspect", evil), ("convert", evil, tmp_path / "x.pt")):
        proc = rnnkit_cli(*args)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and "weights_only=True" in proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_inspect_tf_checkpoint_text_shows_names_stats_and_tf1_gates(files, ran):
    result = ran[("text", "tf")]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "TensorFlow checkpoint (V2), 12 tensors" in out
    assert "rnn/gru_cell/gates/kernel  [5, 6]  float32  mean=" in out
    assert "TF1 GRUCell (reset before): gates/kernel [in+H, 2H] on concat([x, h]); gate order r, u" in out
    assert "W_r=[0:2, 0:3]  W_u=[0:2, 3:6]  U_r=[2:5, 0:3]  U_u=[2:5, 3:6]" in out
    assert "W_c=[0:2, 0:3]  U_c=[2:5, 0:3]" in out  # candidate/kernel
    # LSTMCell with projection 3: kernel [2 + 3, 16], gates i, j, f, o
    assert "TF1 LSTMCell: kernel [in+H, G*H] on concat([x, h]); gate order i, j, f, o" in out
    assert "W_i=[0:2, 0:4]  W_j=[0:2, 4:8]  W_f=[0:2, 8:12]  W_o=[0:2, 12:16]  U_i=[2:5, 0:4]" in out
    assert "p_f=[:]" in out and "P=[:, :]" in out
    assert "TF1 BasicLSTMCell: bias (forget_bias is added at run time, not stored)" in out
    bias = files["tensors"]["rnn/gru_cell/gates/bias"]
    assert f"rnn/gru_cell/gates/bias  [6]  float32  mean={bias.mean():.4g}" in out


@pytest.mark.parametrize("name, fmt, count", _INSPECT)
def test_inspect_json_detects_each_format_and_its_statistics_are_numpy_s(files, ran, name, fmt, count):
    result = ran[("inspect", name)]
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == fmt and report["num_tensors"] == count
    expected = files["tensors"] if fmt in ("tf", "native") else None
    if fmt == "torch":
        expected = {k: v.detach().numpy() for k, v in files["lstm"].state_dict().items()}
    for var in report["variables"]:
        if expected is not None:
            ref = expected[var["name"]].astype(np.float64)
            assert var["shape"] == list(ref.shape) and var["dtype"] == "float32"
            got = var["stats"]
            np.testing.assert_allclose([got["mean"], got["std"], got["min"], got["max"]],
                                       [ref.mean(), ref.std(), ref.min(), ref.max()], rtol=1e-6,
                                       atol=1e-9)
    recognized = [v for v in report["variables"] if v["rnn"]]
    assert len(recognized) == {"onnx": 3}.get(fmt, count)
    if fmt == "native":
        inits = {v["name"]: v["initializer"] for v in report["variables"]}
        assert inits["rnn/gru_cell/gates/bias"].startswith("constant(value=1.0)")


def test_inspect_labels_keras_and_torch_gates_in_their_own_orders(files, ran):
    keras = json.loads(ran[("inspect", "lstm.weights.h5")].stdout)
    blocks = _blocks(keras, "layers/lstm/cell/vars/2", files["keras_lstm"]["bias"])
    assert list(blocks) == ["b_i", "b_f", "b_c", "b_o"]  # Keras LSTM: i, f, c, o
    np.testing.assert_array_equal(blocks["b_f"], [3, 4, 5])
    var = [v for v in keras["variables"] if v["name"] == "layers/lstm/cell/vars/1"][0]
    assert var["rnn"]["framework"] == "Keras LSTM" and var["rnn"]["gate_order"] == list("ifco")
    torch_report = json.loads(ran[("inspect", "lstm.pt")].stdout)
    var = [v for v in torch_report["variables"] if v["name"] == "weight_hh_l1_reverse"][0]
    assert var["rnn"]["framework"] == "PyTorch nn.LSTM (reverse direction)"
    assert [b["label"] for b in var["rnn"]["blocks"]] == ["U_i", "U_f", "U_g", "U_o"]
    assert var["rnn"]["blocks"][2]["index"] == "[6:9, :]"


def _conversion(ran, src, dst):
    k = next(k for k, c in enumerate(_CONVERSIONS) if c[:2] == (src, dst))
    assert ran[("convert", k)].returncode == 0, ran[("convert", k)].stderr
    return ran["out"] / str(k) / dst, json.loads(ran[("inspect dst", k)].stdout)


def test_same_gate_label_holds_the_same_numbers_across_a_checked_conversion(files, ran):
    """A conversion whose numeric check passed (onnxruntime, or rnnkit's TF1 cells against
    torch.nn) must show each gate's numbers under that gate's label in both reports."""
    import onnx
    from onnx import numpy_helper

    # torch GRU (r, z, n) -> ONNX (z, r, h)
    torch_gru = {k: v.detach().numpy() for k, v in files["torch_gru"].state_dict().items()}
    torch_blocks = _blocks(json.loads(ran[("inspect", "gru.pt")].stdout), "weight_ih_l0",
                           torch_gru["weight_ih_l0"])
    path, report = _conversion(ran, "gru.pt", "gru.onnx")
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    onnx_blocks = _blocks(report, "W_0", weights["W_0"])
    for torch_gate, onnx_gate in (("r", "r"), ("z", "z"), ("n", "h")):
        np.testing.assert_array_equal(onnx_blocks[f"W_{onnx_gate}"], torch_blocks[f"W_{torch_gate}"])
    # torch LSTM (i, f, g, o) -> TF1 BasicLSTMCell (i, j, f, o), forget_bias 1.0 taken off b_f
    prefix, report = _conversion(ran, "lstm.pt", "out/ckpt")
    ckpt = rio.read_checkpoint(prefix)
    kernel = "stack_bidirectional_rnn/cell_0/bidirectional_rnn/fw/basic_lstm_cell/kernel"
    bias = kernel.replace("kernel", "bias")
    tf_w, tf_b = _blocks(report, kernel, ckpt[kernel]), _blocks(report, bias, ckpt[bias])
    sd = {k: v.detach().numpy() for k, v in files["lstm"].state_dict().items()}
    src = json.loads(ran[("inspect", "lstm.pt")].stdout)
    ih = _blocks(src, "weight_ih_l0", sd["weight_ih_l0"])
    b_in, b_rec = _blocks(src, "bias_ih_l0", sd["bias_ih_l0"]), _blocks(src, "bias_hh_l0", sd["bias_hh_l0"])
    for tf_gate, torch_gate in (("i", "i"), ("j", "g"), ("f", "f"), ("o", "o")):
        np.testing.assert_array_equal(tf_w[f"W_{tf_gate}"], ih[f"W_{torch_gate}"].T)
        shift = 1.0 if tf_gate == "f" else 0.0
        np.testing.assert_allclose(tf_b[f"b_{tf_gate}"], b_in[f"bW_{torch_gate}"]
                                   + b_rec[f"bU_{torch_gate}"] - shift, atol=1e-6)


@pytest.mark.parametrize("k", range(len(_CONVERSIONS)),
                         ids=[f"{s}->{d}" for s, d, _ in _CONVERSIONS])
def test_convert_writes_the_target_and_reports_a_passing_numeric_check(ran, k):
    if ("convert", k) not in ran:
        pytest.skip("rnnkit.io.keras_files is not available")
    result = ran[("convert", k)]
    assert result.returncode == 0, result.stderr
    m = re.search(r"numeric check: max \|difference\| = (\S+) .* random input of shape "
                  r"\[3, 7, 2\] \(tolerance 1e-05\): ok", result.stdout)
    assert m and float(m[1]) <= 1e-5, result.stdout
    assert ran[("inspect dst", k)].returncode == 0


@pytest.mark.parametrize("k", range(len(_REFUSALS)), ids=[r[3] for r in _REFUSALS])
def test_convert_refuses_what_has_no_mapping_with_the_reason(ran, k):
    result = ran[("refuse", k)]
    assert result.returncode == 1
    assert _REFUSALS[k][3] in result.stderr and result.stderr.startswith("rnnkit convert: error: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("case, words", _BAD)
def test_bad_paths_and_corrupt_files_fail_with_one_clear_line(files, ran, case, words):
    for verb in ("inspect", "convert"):
        result = ran[("bad", case, verb)]
        assert result.returncode == 1, (verb, result.stdout)
        assert result.stderr.startswith(f"rnnkit {verb}: error: {files['dir']}"), result.stderr
        assert words in result.stderr and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (ran["out"] / "bad" / "out.onnx").exists()


_ORACLE = """
import os
out = os.environ["RNNKIT_ORACLE_DIR"]
if os.environ["TF_USE_LEGACY_KERAS"] == "1":
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 5, 2])
        cell = tf1.nn.rnn_cell.MultiRNNCell([tf1.nn.rnn_cell.GRUCell(3),
                                             tf1.nn.rnn_cell.BasicLSTMCell(4)])
        y, _ = tf1.nn.dynamic_rnn(cell, x, dtype=tf.float32)
        with tf1.Session() as s:
            s.run(tf1.global_variables_initializer())
            RESULT["y"] = s.run(y, {x: INPUTS["x"]})
            tf1.train.Saver().save(s, out + "/tf1/model.ckpt")
            RESULT.update({v.op.name: s.run(v) for v in tf1.global_variables()})
    model = tf.keras.Sequential([tf.keras.layers.GRU(3, input_shape=(5, 2), reset_after=False)])
    model.save(out + "/legacy.h5")
else:
    import keras
    model = keras.Sequential([keras.Input((5, 2)), keras.layers.GRU(3), keras.layers.Dense(1)])
    model.save(out + "/model.keras")
    RESULT["gru_bias"] = model.layers[0].cell.bias.numpy()
"""


@pytest.mark.oracle
@requires_tf
def test_inspect_reads_files_written_by_tensorflow_and_keras(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_ORACLE_DIR", str(tmp_path))
    x = np.random.default_rng(0).normal(size=(2, 5, 2)).astype(np.float32)
    tf1 = run_tf(_ORACLE, {"x": x})
    keras3 = run_tf(_ORACLE, legacy_keras=False)
    report = inspect_json(tmp_path / "tf1")
    by_name = {v["name"]: v for v in report["variables"]}
    gates = by_name["rnn/multi_rnn_cell/cell_0/gru_cell/gates/kernel"]
    assert gates["rnn"]["framework"] == "TF1 GRUCell (reset before)"
    assert [b["index"] for b in gates["rnn"]["blocks"]] == ["[0:2, 0:3]", "[0:2, 3:6]", "[2:5, 0:3]",
                                                            "[2:5, 3:6]"]
    lstm = by_name["rnn/multi_rnn_cell/cell_1/basic_lstm_cell/kernel"]
    assert lstm["rnn"]["gate_order"] == ["i", "j", "f", "o"] and lstm["shape"] == [7, 16]
    for name, var in by_name.items():
        assert var["stats"]["max"] == pytest.approx(float(tf1[name].max()), abs=1e-7)
    legacy = inspect_json(tmp_path / "legacy.h5")
    bias = [v for v in legacy["variables"] if re.search(r"/bias(:0)?$", v["name"])][0]
    assert bias["rnn"]["framework"] == "Keras GRU" and bias["rnn"]["role"] == "bias [G*H]"
    k3 = inspect_json(tmp_path / "model.keras")
    assert k3["format"] == "keras" and "GRU" in k3["notes"][0]
    (bias,) = [v for v in k3["variables"] if v["rnn"] and v["rnn"]["role"].startswith("bias")]
    assert bias["shape"] == [2, 9] and bias["rnn"]["role"].startswith("bias [2, 3H] (reset_after")
    assert bias["stats"]["mean"] == pytest.approx(float(keras3["gru_bias"].mean()), abs=1e-7)
    proc = rnnkit_cli("convert", tmp_path / "tf1", tmp_path / "tf1.safetensors")
    assert proc.returncode == 0 and ": ok" in proc.stdout, proc.stderr
    converted = rio.load(tmp_path / "tf1.safetensors")  # TF1's GRU and LSTM, read and rewritten
    outputs, _ = rnnkit.dynamic_rnn(converted, torch.from_numpy(x), dtype=torch.float32)
    np.testing.assert_allclose(outputs.detach().numpy(), tf1["y"], rtol=0, atol=1e-5)
