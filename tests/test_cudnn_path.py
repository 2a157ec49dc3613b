"""The ``cudnn`` path (``rnnkit.fast.cudnn``: torch's fused RNN ops, cuDNN on a GPU) against the
reference loop: outputs, final states and gradients to 1e-5, over the cells it serves, lengths
(zero included), directions, Keras masks and ``swap_memory``.

There is no GPU here or in CI, so the path is run on torch's CPU implementation of the same ops
(``cudnn.DEVICE = "cpu"``, oneDNN and the fused kernels switched off): that checks everything of
ours (weight transposes and gate orders, packing, states, masks). ``test_gpu.py`` runs the
same checks on cuDNN itself where there is a CUDA device."""

from __future__ import annotations

import pytest
import torch
from fast_checks import CUDNN_CELLS, CUDNN_LENGTHS, TOL, compare_masked_keras_layer
from fast_checks import compare as _compare
from fast_checks import decisions as _decisions
from fast_checks import perturb as _perturb
from fast_checks import random_state as _random_state

import rnnkit as rk
from rnnkit.fast import compiled, cudnn, dispatch, onednn

CELLS, LENGTHS = CUDNN_CELLS, CUDNN_LENGTHS


@pytest.fixture
def on_cpu(monkeypatch):
    """The cudnn path on torch's CPU ops, the only fast path eligible."""
    monkeypatch.setattr(cudnn, "DEVICE", "cpu")
    monkeypatch.setattr(onednn, "load_error", lambda: "oneDNN switched off for this test")
    monkeypatch.setattr(compiled, "load_error", lambda *family: "kernels switched off")
    return _decisions(monkeypatch)


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("name", list(CELLS))
def test_cells_match_reference(name, lengths, time_major, on_cpu):
    cell = CELLS[name]()
    x = torch.randn(*((7, 5) if time_major else (5, 7)), 4, requires_grad=True)
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    state = _random_state(cell, 5)
    leaves = torch.utils._pytree.tree_leaves(state)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=LENGTHS[lengths],
                                         initial_state=state, time_major=time_major, fast=fast),
             [x, *leaves, *cell.parameters()])
    assert on_cpu == ["cudnn"]



@pytest.mark.parametrize("lengths", ["full", "varied"])
def test_a_cudnn_refusal_falls_back_to_the_reference_loop(lengths, on_cpu, monkeypatch):
    """cuDNN's run-time refusals become ``CuDNNError``: the reference loop under "auto" (one
    warning), the error under ``fast=True``; other errors, out-of-memory included, propagate."""
    cell = CELLS["basic_lstm"]()
    x = torch.randn(5, 7, 4)
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    lens = LENGTHS[lengths]
    want = rk.dynamic_rnn(cell, x, sequence_length=lens, fast=False)

    def fails_with(err):
        def op(*args):
            raise err
        monkeypatch.setattr(torch, "lstm", op)

    fails_with(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if "
                            "you passed in a non-contiguous input."))
    monkeypatch.setattr(dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"the cudnn path failed \(torch\.op failed in "
                                            r"cuDNN: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"):
        got = rk.dynamic_rnn(cell, x, sequence_length=lens)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want),
                    strict=True):
        torch.testing.assert_close(a, b, **TOL)
    with pytest.raises(cudnn.CuDNNError, match="CUDNN_STATUS_NOT_SUPPORTED"):
        rk.dynamic_rnn(cell, x, sequence_length=lens, fast=True)
    fails_with(RuntimeError("input.size(-1) must be equal to input_size"))
    with pytest.raises(RuntimeError, match="must be equal") as raised:
        rk.dynamic_rnn(cell, x, sequence_length=lens)
    assert not isinstance(raised.value, cudnn.CuDNNError)
    fails_with(torch.OutOfMemoryError("CUDA out of memory (cudnn workspace)"))
    with pytest.raises(torch.OutOfMemoryError):
        rk.dynamic_rnn(cell, x, sequence_length=lens)

@pytest.mark.parametrize("name", ["basic_lstm", "gru_reset_after"])
def test_float64_and_swap_memory(name, on_cpu):
    cell = CELLS[name]()
    x = torch.randn(5, 9, 4, dtype=torch.float64, requires_grad=True)
    cell.ensure_built(4, torch.float64)
    _perturb(cell)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=[9, 2, 0, 5, 8], dtype=torch.float64,
                                         swap_memory=True, fast=fast),
             [x, *cell.parameters()])
    assert set(on_cpu) == {"cudnn"}


def test_bidirectional_and_multi_layer(on_cpu):
    fw, bw = rk.MultiRNNCell([rk.BasicLSTMCell(5), rk.GRUCell(4, reset_after=True)]), \
        rk.BasicLSTMCell(3)
    x = torch.randn(4, 6, 3, requires_grad=True)
    lengths = [6, 1, 0, 4]
    rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths, dtype=torch.float32)
    _perturb(fw, bw)
    _compare(lambda fast: rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths,
                                                       dtype=torch.float32, fast=fast),
             [x, *fw.parameters(), *bw.parameters()])
    assert set(on_cpu) == {"cudnn"}


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("layer, kwargs", [
    ("LSTM", {}), ("GRU", {}), ("SimpleRNN", {"activation": "relu"}),
])
def test_keras_layers_with_masks_match_reference(layer, kwargs, go_backwards, on_cpu,
                                                 monkeypatch):
    assert compare_masked_keras_layer(layer, go_backwards, monkeypatch, **kwargs) == ["cudnn"]


@pytest.mark.parametrize("make, why", [
    (lambda: rk.GRUCell(4), "resets before the recurrent product"),
    (lambda: rk.LSTMCell(4, use_peepholes=True), "peepholes"),
    (lambda: rk.LSTMCell(4, cell_clip=1.0), "cell_clip/proj_clip set"),
    (lambda: rk.LayerNormLSTMCell(4), "layer normalization has no cuDNN cell"),
    (lambda: rk.BasicLSTMCell(4, activation="relu"), "activations are relu/sigmoid"),
    (lambda: rk.BasicRNNCell(4, activation="sigmoid"), "activation is sigmoid"),
])
def test_explain_says_why_not_cudnn(make, why, on_cpu):
    cell = make()
    cell.ensure_built(3, torch.float32)
    decision = rk.fast.explain(cell, torch.randn(2, 5, 3))
    assert decision.path == "reference"
    assert why in " ".join(decision.unmet["cudnn"])


def test_cpu_tensors_do_not_take_it():
    cell = rk.BasicLSTMCell(4, input_size=3)
    text = str(rk.fast.explain(cell, torch.randn(2, 5, 3)))
    assert "not cudnn: devices are cpu; cuda only" in text


def test_dtypes_each_path_takes(on_cpu):
    cell = rk.BasicLSTMCell(4, input_size=3)
    x = torch.randn(2, 5, 3)
    decision = rk.fast.explain(cell.double(), x.double())
    assert decision.path == "cudnn"  # float64 too (float32 only on the CPU paths)
    assert "dtype is float64; float32 only" in " ".join(decision.unmet["fused"])
    mixed = rk.fast.explain(cell, x.float())
    assert "dtypes are mixed (float32, float64)" in " ".join(mixed.unmet["cudnn"])
    half = rk.fast.explain(cell.half(), x.half())
    assert "dtype is float16; float32 or float64 only" in " ".join(half.unmet["cudnn"])


@pytest.mark.parametrize("name", list(CELLS))
def test_weights_reach_torch_as_one_buffer_in_its_layout(name):
    """cuDNN reads the weights in place only as views of one buffer, back to back in torch's
    order (``w_ih, w_hh, b_ih, b_hh, w_hr``); the values are ``rk.io.to_torch``'s (an
    independent conversion)."""
    cell = CELLS[name]()
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    weights = cudnn._weights(cell.sequence_params())
    module = rk.io.to_torch(cell)
    expected = [t for _, t in module.named_parameters()]
    assert [tuple(w.shape) for w in weights] == [tuple(t.shape) for t in expected]
    for w, t in zip(weights, expected, strict=True):
        torch.testing.assert_close(w, t, rtol=0, atol=0)
    start = weights[0].data_ptr()
    for w in weights:
        assert w.is_contiguous() and w.data_ptr() == start
        start += w.numel() * w.element_size()


@pytest.mark.parametrize("frozen", ["kernel", "bias"])
def test_frozen_variables_get_no_gradient(frozen, on_cpu):
    """A frozen kernel or bias: the weight buffer's backward makes only the gradients asked
    for, and they match the reference loop's."""
    cell = rk.BasicLSTMCell(5, forget_bias=0.5, input_size=3)
    _perturb(cell)
    getattr(cell, frozen).requires_grad_(False)
    x = torch.randn(2, 4, 3)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, dtype=torch.float32, fast=fast),
             [p for p in cell.parameters() if p.requires_grad])
    assert on_cpu == ["cudnn"]
