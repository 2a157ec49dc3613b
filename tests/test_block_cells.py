"""``tf.contrib.rnn``'s block cells against TensorFlow's own fused ops (``LSTMBlockCell``,
``BlockLSTM``, ``GRUBlockCell``, which TF 2 still has as raw ops), and their variable names,
defaults and files (contrib's Python classes are gone from TF 2: the names are TF 1.15's
documented ones)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tf_oracle import requires_tf, run_tf

import rnnkit as rk
from rnnkit.io import load, save_native

B, T, D, H = 3, 5, 4, 6
LSTM_CASES = [(1.0, -1.0, False), (1.0, -1.0, True), (0.5, 0.3, True), (0.0, 0.4, False)]

SCRIPT = """
x, h0, c0 = INPUTS["x"], INPUTS["h0"], INPUTS["c0"]
K, b, wci, wcf, wco = (INPUTS[k] for k in ("K", "b", "wci", "wcf", "wco"))
for k, (forget_bias, clip, peep) in enumerate(INPUTS["cases"].tolist()):
    out = tf.raw_ops.LSTMBlockCell(x=x[0], cs_prev=c0, h_prev=h0, w=K, wci=wci, wcf=wcf, wco=wco,
                                   b=b, forget_bias=forget_bias, cell_clip=clip,
                                   use_peephole=bool(peep))
    RESULT[f"cell{k}:h"], RESULT[f"cell{k}:c"] = out.h.numpy(), out.cs.numpy()
seq = tf.raw_ops.BlockLSTM(seq_len_max=np.int64(x.shape[0]), x=x, cs_prev=c0, h_prev=h0, w=K,
                           wci=wci, wcf=wcf, wco=wco, b=b, forget_bias=1.0, cell_clip=0.5,
                           use_peephole=True)
RESULT["seq:h"], RESULT["seq:c"] = seq.h.numpy(), seq.cs.numpy()
g = tf.raw_ops.GRUBlockCell(x=x[0], h_prev=h0, w_ru=INPUTS["w_ru"], w_c=INPUTS["w_c"],
                            b_ru=INPUTS["b_ru"], b_c=INPUTS["b_c"])
RESULT["gru:h"] = g.h.numpy()
"""


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(9)

    def rand(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {"x": rand(T, B, D, scale=1.0), "h0": rand(B, H), "c0": rand(B, H, scale=1.0),
            "K": rand(D + H, 4 * H), "b": rand(4 * H), "wci": rand(H), "wcf": rand(H),
            "wco": rand(H), "w_ru": rand(D + H, 2 * H), "w_c": rand(D + H, H),
            "b_ru": rand(2 * H), "b_c": rand(H), "cases": np.array(LSTM_CASES, np.float32)}


@pytest.fixture(scope="module")
def oracle():
    inputs = _inputs()
    return inputs, run_tf(SCRIPT, inputs)


def _fill(cell, values: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(torch.from_numpy(values[name]))


_LSTM_VARS = {"kernel": "K", "bias": "b", "w_i_diag": "wci", "w_f_diag": "wcf", "w_o_diag": "wco"}


@pytest.mark.oracle
@requires_tf
@pytest.mark.parametrize("k", range(len(LSTM_CASES)))
def test_lstm_block_cell_matches_tf_op(oracle, k):
    inputs, result = oracle
    forget_bias, clip, peep = LSTM_CASES[k]
    cell = rk.LSTMBlockCell(H, forget_bias=forget_bias, cell_clip=clip, use_peephole=peep,
                            input_size=D)
    _fill(cell, {n: inputs[v] for n, v in _LSTM_VARS.items()})
    h, state = cell(torch.from_numpy(inputs["x"][0]),
                    rk.LSTMStateTuple(torch.from_numpy(inputs["c0"]), torch.from_numpy(inputs["h0"])))
    np.testing.assert_allclose(h.detach().numpy(), result[f"cell{k}:h"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.c.detach().numpy(), result[f"cell{k}:c"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.oracle
@requires_tf
@pytest.mark.parametrize("listed", [False, True])
def test_lstm_block_fused_cell_matches_block_lstm(oracle, listed):
    inputs, result = oracle
    cell = rk.LSTMBlockFusedCell(H, cell_clip=0.5, use_peephole=True)
    x = torch.from_numpy(inputs["x"])
    state0 = rk.LSTMStateTuple(torch.from_numpy(inputs["c0"]), torch.from_numpy(inputs["h0"]))
    cell(x, state0)  # builds
    _fill(cell, {n: inputs[v] for n, v in _LSTM_VARS.items()})
    outputs, state = cell(list(x.unbind(0)) if listed else x, state0)
    if listed:
        assert isinstance(outputs, list) and len(outputs) == T
        outputs = torch.stack(outputs)
    np.testing.assert_allclose(outputs.detach().numpy(), result["seq:h"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.h.detach().numpy(), result["seq:h"][-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.c.detach().numpy(), result["seq:c"][-1], rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
@requires_tf
def test_gru_block_cell_matches_tf_op(oracle):
    inputs, result = oracle
    for cls, names in ((rk.GRUBlockCell, ("w_ru", "b_ru", "w_c", "b_c")),
                       (rk.GRUBlockCellV2, ("gates/kernel", "gates/bias", "candidate/kernel",
                                            "candidate/bias"))):
        cell = cls(H, input_size=D)
        assert sorted(n for n, _ in cell.named_parameters()) == sorted(names)
        _fill(cell, dict(zip(names, (inputs[k] for k in ("w_ru", "b_ru", "w_c", "b_c")),
                             strict=True)))
        h, _ = cell(torch.from_numpy(inputs["x"][0]), torch.from_numpy(inputs["h0"]))
        np.testing.assert_allclose(h.detach().numpy(), result["gru:h"], rtol=1e-5, atol=1e-6)


def test_names_and_defaults_are_tf_1_15s():
    rk.reset_default_graph()
    x = torch.randn(2, 3, D)
    rk.dynamic_rnn(rk.LSTMBlockCell(H, use_peephole=True), x, scope="a")
    rk.dynamic_rnn(rk.LSTMCell(H, use_peepholes=True), x, scope="b")
    rk.dynamic_rnn(rk.GRUBlockCell(cell_size=H), x, scope="c")
    rk.dynamic_rnn(rk.GRUBlockCellV2(H), x, scope="d")
    rk.dynamic_rnn(rk.GRUCell(H), x, scope="e")
    fused = rk.LSTMBlockFusedCell(H)
    fused(x.transpose(0, 1), scope="f")
    names = {}
    for v in rk.global_variables():
        scope, _, rest = v.name.partition("/")
        names.setdefault(scope, []).append(rest)
    assert names["a"] == names["b"] == ["lstm_cell/kernel:0", "lstm_cell/bias:0",
                                        "lstm_cell/w_f_diag:0", "lstm_cell/w_i_diag:0",
                                        "lstm_cell/w_o_diag:0"]
    assert names["c"] == ["gru_cell/w_ru:0", "gru_cell/b_ru:0", "gru_cell/w_c:0",
                          "gru_cell/b_c:0"]
    assert names["d"] == names["e"]
    assert names["f"] == ["lstm_fused_cell/kernel:0", "lstm_fused_cell/bias:0"]
    b_ru = next(v for v in rk.global_variables() if v.name == "c/gru_cell/b_ru:0")
    torch.testing.assert_close(b_ru.detach(), torch.ones(2 * H))


def test_the_block_cells_are_the_plain_cells(tmp_path):
    """The same weights give the same numbers as LSTMCell / GRUCell, lengths included, and the
    cells survive a native file."""
    torch.manual_seed(0)
    x, lengths = torch.randn(3, 5, D), torch.tensor([5, 2, 0])
    plain = rk.LSTMCell(H, use_peepholes=True, cell_clip=0.5, forget_bias=0.7)
    want, want_state = rk.dynamic_rnn(plain, x, sequence_length=lengths)
    fused = rk.LSTMBlockFusedCell(H, forget_bias=0.7, cell_clip=0.5, use_peephole=True)
    fused(x.transpose(0, 1))
    with torch.no_grad():
        for (_, p), (_, q) in zip(fused.named_parameters(), plain.named_parameters(),
                                  strict=True):
            p.copy_(q)
    got, state = fused(x.transpose(0, 1), sequence_length=lengths)
    torch.testing.assert_close(got.transpose(0, 1), want)
    torch.testing.assert_close(state, want_state)
    save_native(tmp_path / "f.safetensors", fused)
    again = load(tmp_path / "f.safetensors")
    assert type(again) is rk.LSTMBlockFusedCell and again.cell_clip == 0.5
    torch.testing.assert_close(again(x.transpose(0, 1), sequence_length=lengths)[0], got)
    gru = rk.GRUBlockCell(H)
    out, _ = rk.dynamic_rnn(gru, x, sequence_length=lengths)
    save_native(tmp_path / "g.safetensors", gru)
    rk.reset_default_graph()
    torch.testing.assert_close(rk.dynamic_rnn(load(tmp_path / "g.safetensors"), x,
                                              sequence_length=lengths)[0], out)


def test_misuse_is_named():
    with pytest.raises(ValueError, match="give one of num_units and cell_size"):
        rk.GRUBlockCell(4, cell_size=4)
    with pytest.raises(ValueError, match="give one of num_units and cell_size"):
        rk.GRUBlockCell()
    with pytest.raises(TypeError, match="runs a whole sequence itself"):
        rk.dynamic_rnn(rk.LSTMBlockFusedCell(3), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"\[time, batch, depth\]"):
        rk.LSTMBlockFusedCell(3)(torch.randn(2, 4))
    assert rk.LSTMBlockCell(3, cell_clip=-1).cell_clip is None  # TF's -1: no clipping


def test_a_block_cell_checkpoint_converts_and_inspects(tmp_path):
    """``rnnkit convert`` rebuilds GRUBlockCell's ``w_ru``... as a GRUBlockCell (and the block
    LSTM as the LSTMCell it is), with a passing numeric check; ``inspect`` labels its gates."""
    import subprocess
    import sys

    rk.reset_default_graph()
    cell = rk.MultiRNNCell([rk.GRUBlockCell(3), rk.LSTMBlockCell(4, use_peephole=True)])
    rk.dynamic_rnn(cell, torch.randn(2, 4, 5))
    rk.io.save(tmp_path / "m.ckpt", rk.global_variables())
    runner = "import sys\nfrom rnnkit.cli import main\nsys.exit(main())\n"
    done = subprocess.run([sys.executable, "-c", runner, "convert", str(tmp_path / "m.ckpt"),
                           str(tmp_path / "m.safetensors")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "rebuilt GRUBlockCell 'rnn/multi_rnn_cell/cell_0/gru_cell'" in done.stdout
    assert ": ok" in done.stdout
    rk.reset_default_graph()
    back = load(tmp_path / "m.safetensors")
    assert type(back.cells[0]) is rk.GRUBlockCell
    shown = subprocess.run([sys.executable, "-c", runner, "inspect", str(tmp_path / "m.ckpt")],
                           capture_output=True, text=True, timeout=300).stdout
    assert "W_r=[0:5, 0:3]  W_u=[0:5, 3:6]  U_r=[5:8, 0:3]  U_u=[5:8, 3:6]" in shown
