"""cuDNN's canonical layout and TF's CudnnLSTM/CudnnGRU checkpoint names, against torch.nn
modules (which compute exactly cuDNN's canonical math) with variable lengths; on a CUDA machine
also against cuDNN itself through torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_io_torch import LENGTHS, B, D, T, assert_same, randomize, run_rnnkit, run_torch

import rnnkit
from rnnkit.cells import BasicLSTMCell, BasicRNNCell, GRUCell, LSTMCell, MultiRNNCell
from rnnkit.io import FormatError, from_cudnn, to_cudnn
from rnnkit.io.cudnn import from_cudnn_checkpoint, to_cudnn_checkpoint

H = 6
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN,
         "rnn_relu": lambda *a, **kw: torch.nn.RNN(*a, nonlinearity="relu", **kw)}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
CONFIGS = [(1, False), (2, False), (1, True), (2, True)]


def torch_module(kind: str, layers: int, bidirectional: bool, seed: int = 0):
    torch.manual_seed(seed)
    module = TORCH[kind](D, H, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    randomize(module, seed)
    return module


def _suffixes(module):
    dirs = 2 if module.bidirectional else 1
    return [f"_l{k}" + ("_reverse" if d else "") for k in range(module.num_layers) for d in range(dirs)]


def cudnn_params_of(module) -> list[np.ndarray]:
    """cuDNN's canonical list read off a torch module: per layer and direction, the per-gate
    input matrices, recurrent matrices, input biases, recurrent biases (torch's gate order is
    cuDNN's)."""
    G = GATES[{"LSTM": "lstm", "GRU": "gru"}.get(module.mode, "rnn_tanh")]
    out = []
    for sfx in _suffixes(module):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            out += [t.detach().numpy().copy() for t in getattr(module, name + sfx).chunk(G)]
    return out


def load_cudnn_params(module, params) -> None:
    """The inverse of ``cudnn_params_of``: write a canonical list into a torch module."""
    G = len(params) // (4 * len(_suffixes(module)))
    it = iter(params)
    with torch.no_grad():
        for sfx in _suffixes(module):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(module, name + sfx).copy_(torch.cat([torch.as_tensor(next(it)) for _ in range(G)]))


@pytest.mark.parametrize("layers,bidirectional", CONFIGS)
@pytest.mark.parametrize("kind", TORCH)
def test_from_cudnn_matches_torch(kind, layers, bidirectional):
    module = torch_module(kind, layers, bidirectional)
    model = from_cudnn(cudnn_params_of(module), kind, H, D, num_layers=layers,
                       bidirectional=bidirectional)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    for lengths in LENGTHS.values():
        assert_same(run_rnnkit(model, x, lengths), run_torch(module, x, lengths))


@pytest.mark.parametrize("make,kind", [
    (lambda: BasicLSTMCell(H, forget_bias=1.0), "lstm"), (lambda: LSTMCell(H), "lstm"),
    (lambda: GRUCell(H, reset_after=True), "gru"), (lambda: BasicRNNCell(H), "rnn_tanh"),
    (lambda: BasicRNNCell(H, activation="relu"), "rnn_relu")])
@pytest.mark.parametrize("layers,bidirectional", CONFIGS)
def test_to_cudnn_runs_in_torch_as_rnnkit(make, kind, layers, bidirectional):
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2))
    if bidirectional:
        model = [(make(), make()) for _ in range(layers)]
    else:
        model = MultiRNNCell([make() for _ in range(layers)])
    run_rnnkit(model, x, None)
    for k, m in enumerate(model if bidirectional else [model]):
        for c in (m if bidirectional else [m]):
            randomize(c, k + 7)
    params = to_cudnn(model)
    assert len(params) == layers * (1 + bidirectional) * 4 * GATES[kind]
    assert params[0].shape == (H, D) and params[GATES[kind]].shape == (H, H)
    module = torch_module(kind, layers, bidirectional)
    load_cudnn_params(module, params)
    assert_same(run_torch(module, x, LENGTHS["ragged"]), run_rnnkit(model, x, LENGTHS["ragged"]))
    weights, biases = to_cudnn(model, split=True)
    assert len(weights) == len(biases) == len(params) // 2
    again = from_cudnn((weights, biases), kind, H, D, num_layers=layers, bidirectional=bidirectional)
    assert_same(run_rnnkit(again, x, LENGTHS["ragged"]), run_rnnkit(model, x, LENGTHS["ragged"]))


def tf_names_by_hand(module, prefix: str) -> dict[str, np.ndarray]:
    """TF's CudnnLSTM/CudnnGRU saveable variables built from a torch module, written out from
    TF's documented layout independently of rnnkit: kernels act on concat([x, h]); LSTM kernel
    columns in TF1 order i, c, f, o with one summed bias; GRU gates r, u then the candidate's
    input and hidden projections, each with its own bias."""
    out = {}
    for k in range(module.num_layers):
        for d in range(2 if module.bidirectional else 1):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            w_ih, w_hh, b_ih, b_hh = (getattr(module, n + sfx).detach().numpy()
                                      for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            if module.bidirectional:
                base = f"{prefix}/stack_bidirectional_rnn/cell_{k}/bidirectional_rnn/{'fb'[d]}w"
            else:
                base = f"{prefix}/rnn/multi_rnn_cell/cell_{k}"
            kernel = np.concatenate([w_ih, w_hh], axis=1).T
            if module.mode == "LSTM":
                i, f, g, o = np.split(kernel, 4, axis=1)
                bi, bf, bg, bo = np.split(b_ih + b_hh, 4)
                out[f"{base}/cudnn_compatible_lstm_cell/kernel"] = np.concatenate([i, g, f, o], 1)
                out[f"{base}/cudnn_compatible_lstm_cell/bias"] = np.concatenate([bi, bg, bf, bo])
            else:
                c = f"{base}/cudnn_compatible_gru_cell"
                out[f"{c}/gates/kernel"] = kernel[:, :2 * H]
                out[f"{c}/gates/bias"] = (b_ih + b_hh)[:2 * H]
                out[f"{c}/candidate/input_projection/kernel"] = w_ih[2 * H:].T
                out[f"{c}/candidate/input_projection/bias"] = b_ih[2 * H:]
                out[f"{c}/candidate/hidden_projection/kernel"] = w_hh[2 * H:].T
                out[f"{c}/candidate/hidden_projection/bias"] = b_hh[2 * H:]
    return out


@pytest.mark.parametrize("layers,bidirectional", CONFIGS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_tf_cudnn_checkpoint_names(kind, layers, bidirectional):
    module = torch_module(kind, layers, bidirectional, seed=3)
    tensors = tf_names_by_hand(module, "cudnn_" + kind)
    tensors["global_step"] = np.array(7)  # other variables in the file are ignored
    with rnnkit.variable_scope("cudnn_" + kind):
        model = from_cudnn_checkpoint(tensors)
    names = {v.op_name for v in rnnkit.global_variables()}
    assert names == set(tensors) - {"global_step"}  # rnnkit's variables carry TF's names
    cells = [c for pair in model for c in pair] if bidirectional else list(model.cells)
    assert all(getattr(c, "forget_bias", 0.0) == 0.0 for c in cells)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(4))
    for lengths in LENGTHS.values():
        assert_same(run_rnnkit(model, x, lengths), run_torch(module, x, lengths))
    exported = to_cudnn_checkpoint(model, "cudnn_" + kind)
    assert set(exported) == set(tensors) - {"global_step"}
    for name, value in exported.items():
        np.testing.assert_allclose(value, tensors[name], atol=1e-6, err_msg=name)


def test_tf_checkpoint_forget_bias_is_folded_on_export():
    cell = BasicLSTMCell(3, forget_bias=1.0, input_size=2)
    randomize(cell)
    tensors = to_cudnn_checkpoint(cell, "m")
    bias = tensors["m/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell/bias"]
    np.testing.assert_allclose(bias[6:9], cell.get_parameter("bias").detach().numpy()[6:9] + 1.0)


def test_checkpoint_errors():
    module = torch_module("gru", 2, False)
    tensors = tf_names_by_hand(module, "a")
    with pytest.raises(FormatError, match="no variables of a TF cuDNN layer"):
        from_cudnn_checkpoint({"x/kernel": np.zeros(2)})
    with pytest.raises(FormatError, match="several cuDNN layers"):
        from_cudnn_checkpoint({**tensors, **tf_names_by_hand(module, "b")})
    broken = dict(tensors)
    del broken["a/rnn/multi_rnn_cell/cell_1/cudnn_compatible_gru_cell/gates/bias"]
    with pytest.raises(FormatError, match="layer 1: missing variables \\['gates/bias'\\]"):
        from_cudnn_checkpoint(broken, prefix="a")
    broken = dict(tensors)
    broken["a/rnn/multi_rnn_cell/cell_0/cudnn_compatible_gru_cell/gates/bias"] = np.zeros(5)
    with pytest.raises(FormatError, match="inconsistent shapes"):
        from_cudnn_checkpoint(broken)


def test_from_cudnn_argument_errors():
    params = cudnn_params_of(torch_module("lstm", 1, False))
    with pytest.raises(ValueError, match="kind must be one of"):
        from_cudnn(params, "lstm2", H, D)
    with pytest.raises(ValueError, match="params must hold 16 arrays"):
        from_cudnn(params[:-1], "lstm", H, D)
    with pytest.raises(ValueError, match=r"params\[0\] must have shape \[6, 4\]"):
        from_cudnn(params, "lstm", H, D - 1)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        from_cudnn(params, "lstm", H, D, num_layers=0)
    with pytest.raises(ValueError, match="cuDNN's GRU applies the reset gate after"):
        to_cudnn(GRUCell(3, input_size=2))
    with pytest.raises(ValueError, match="no projection"):
        to_cudnn(LSTMCell(3, num_proj=2, input_size=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (cuDNN)")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_itself(kind, monkeypatch):
    """On a GPU torch runs these modules through cuDNN: the imported cells must agree."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    module = torch_module(kind, 2, True)
    model = from_cudnn(cudnn_params_of(module), kind, H, D, num_layers=2, bidirectional=True)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(6))
    assert torch.backends.cudnn.is_available()
    want = [None if t is None else t.cpu()
            for t in run_torch(module.cuda(), x.cuda(), LENGTHS["ragged"])]
    assert_same(run_rnnkit(model, x, LENGTHS["ragged"]), want, tol=1e-4)
