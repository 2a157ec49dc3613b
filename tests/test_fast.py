"""The oneDNN fast path against the reference loop (``fast=False``): outputs, final states and
gradients with respect to inputs, initial states and every variable, to 1e-5, over cells,
options, lengths and directions; the dispatch's decisions, explanations and errors."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from fast_checks import FUSED_CELLS, TOL
from fast_checks import compare as _compare
from fast_checks import decisions as _decisions
from fast_checks import perturb as _perturb
from fast_checks import random_state as _state
from torch.utils import _pytree as pytree

import rnnkit as rk
from rnnkit.fast import compiled, dispatch, library, onednn
from rnnkit.fast.autograd import Weights
from rnnkit.fast.fused import pack
from rnnkit.fast.varlen import hold_last, plan, roll_to_front, take_tokens
from rnnkit.unroll import length_mask

needs_onednn = pytest.mark.skipif(onednn.load_error() is not None,
                                  reason=f"oneDNN does not load: {onednn.load_error()}")


@pytest.fixture(autouse=True)
def _onednn_for_small_cells(monkeypatch):
    """These tests use cells of a few units (and peephole LSTMs), which the dispatch would give
    to the fused kernels (faster there); here they exercise oneDNN's path."""
    monkeypatch.setattr(dispatch, "SMALL_BATCH", 0)
    monkeypatch.setattr(dispatch, "SMALL_UNITS", dict.fromkeys(dispatch.SMALL_UNITS, 0))
    monkeypatch.setattr(dispatch, "FUSED_PEEPHOLES", False)


def _skip_without_kernels(name: str) -> None:
    """The ``fused_`` cells have no fast path where rnnkit's C kernels do not build."""
    if name.startswith("fused_") and compiled.load_error() is not None:
        pytest.skip(compiled.load_error())

CELLS = {
    "rnn_tanh": lambda: rk.BasicRNNCell(6),
    "rnn_relu": lambda: rk.BasicRNNCell(6, activation="relu"),
    "rnn_sigmoid": lambda: rk.BasicRNNCell(6, activation="sigmoid"),
    "gru_tf1": lambda: rk.GRUCell(6),
    "gru_reset_after": lambda: rk.GRUCell(6, reset_after=True),
    "basic_lstm": lambda: rk.BasicLSTMCell(6, forget_bias=0.5),
    "lstm_peephole": lambda: rk.LSTMCell(6, use_peepholes=True),
    "lstm_proj": lambda: rk.LSTMCell(6, num_proj=4),
    "lstm_peephole_proj": lambda: rk.LSTMCell(6, use_peepholes=True, num_proj=3),
    **FUSED_CELLS,  # the fused kernel's LSTMs
}
LENGTHS = {"full": None, "varied": [5, 0, 7, 3, 7], "one_short": [7, 7, 6, 7, 7]}


@needs_onednn
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("name", list(CELLS))
def test_dynamic_rnn_matches_reference(name, lengths):
    _skip_without_kernels(name)
    torch.manual_seed(0)
    cell = CELLS[name]()
    x = torch.randn(5, 7, 4, requires_grad=True)
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    h0 = _state(cell, 5)

    def run(fast):
        return rk.dynamic_rnn(cell, x, sequence_length=LENGTHS[lengths], initial_state=h0,
                              fast=fast)

    _compare(run, [x, *pytree.tree_leaves(h0), *cell.parameters()])


@needs_onednn
@pytest.mark.parametrize("lengths", ["full", "varied"])
@pytest.mark.parametrize("name", ["gru_tf1", "gru_reset_after", "lstm_peephole_proj",
                                  "rnn_tanh", "fused_all_options", "fused_layer_norm"])
def test_bidirectional_matches_reference(name, lengths):
    _skip_without_kernels(name)
    torch.manual_seed(0)
    fw, bw = CELLS[name](), CELLS[name]()
    x = torch.randn(7, 5, 4, requires_grad=True)  # time major
    for cell in (fw, bw):
        cell.ensure_built(4, torch.float32)
    _perturb(fw, bw)
    s_fw, s_bw = _state(fw, 5), _state(bw, 5)

    def run(fast):
        return rk.bidirectional_dynamic_rnn(fw, bw, x, LENGTHS[lengths], s_fw, s_bw,
                                            time_major=True, fast=fast)

    params = [*fw.parameters(), *bw.parameters()]
    _compare(run, [x, *pytree.tree_leaves((s_fw, s_bw)), *params])


@needs_onednn
def test_multi_rnn_cell_layers_run_fast():
    cell = rk.MultiRNNCell([rk.GRUCell(6), rk.BasicLSTMCell(5)])
    x = torch.randn(3, 6, 4, requires_grad=True)
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    assert rk.fast.explain(cell, x).path == "onednn"
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=[6, 2, 4], fast=fast),
             [x, *cell.parameters()])


@needs_onednn
@pytest.mark.parametrize("name", ["gru_reset_after", "basic_lstm"])
def test_previous_output_masks_match_reference(name):
    """Keras masks (prefix form): outputs past the length repeat the last valid output."""
    cell = CELLS[name]()
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    x = torch.randn(6, 4, 4, requires_grad=True)
    mask = length_mask(torch.tensor([6, 1, 0, 4]), 6)
    state = _state(cell, 4)
    _compare(lambda fast: cell.unroll(x, state, mask, "previous", fast=fast),
             [x, *pytree.tree_leaves(state), *cell.parameters()])


@needs_onednn
@pytest.mark.parametrize("name", ["gru_tf1", "lstm_peephole_proj", "fused_all_options",
                                  "fused_layer_norm", "fused_gru_after_softsign"])
def test_inference_without_grad_matches_reference(name):
    _skip_without_kernels(name)
    cell = CELLS[name]()
    x = torch.randn(3, 8, 4)
    with torch.no_grad():
        fast = rk.dynamic_rnn(cell, x, sequence_length=[8, 3, 5], fast=True)
        ref = rk.dynamic_rnn(cell, x, sequence_length=[8, 3, 5], fast=False)
    for a, b in zip(pytree.tree_leaves(fast), pytree.tree_leaves(ref), strict=True):
        torch.testing.assert_close(a, b, **TOL)


def _why(cell, x, **kw) -> str:
    with pytest.raises(ValueError) as info:
        rk.dynamic_rnn(cell, x, fast=True, **kw)
    return str(info.value)


def test_fast_true_lists_every_unmet_requirement():
    cell = rk.LSTMCell(4, cell_clip=1.0, activation="relu", dtype=torch.float64, input_size=3)
    msg = _why(cell, torch.randn(2, 5, 3, dtype=torch.float64), swap_memory=True)
    for needed in ("cell_clip", "activation is relu", "float64", "not cudnn", "not fused"):
        assert needed in msg, (needed, msg)


@pytest.mark.parametrize("make, needed", [
    (lambda: rk.LayerNormLSTMCell(4, activation="elu"), "layer normalization"),
    (lambda: rk.LayerNormLSTMCell(4, activation="elu"), "not fused: activation is elu"),
    (lambda: rk.LSTMCell(4, num_proj=2, proj_clip=0.5, activation="gelu"), "proj_clip"),
    (lambda: rk.GRUCell(4, activation="gelu"), "activation is gelu"),
    (lambda: rk.DropoutWrapper(rk.MultiRNNCell([rk.GRUCell(4), rk.ResidualWrapper(rk.GRUCell(4))]),
                               state_keep_prob=0.5), "not onednn: DropoutWrapper: state"),
])
def test_fast_true_names_the_reason(make, needed):
    assert needed in _why(make(), torch.randn(2, 5, 3))


def test_fast_argument_is_checked():
    with pytest.raises(ValueError, match="fast must be 'auto', True or False, got 'yes'"):
        rk.dynamic_rnn(rk.GRUCell(4), torch.randn(2, 5, 3), fast="yes")
    with pytest.raises(ValueError, match="got 1"):
        rk.bidirectional_dynamic_rnn(rk.GRUCell(4), rk.GRUCell(4), torch.randn(2, 5, 3), fast=1)


def test_decisions_explain_each_path():
    x = torch.randn(2, 5, 3)
    gru = rk.GRUCell(4, input_size=3)
    text = str(rk.fast.explain(gru, x))
    first = "path: onednn" if onednn.load_error() is None else "path: reference"
    assert text.splitlines()[0] == first
    assert "not cudnn: devices are cpu; cuda only" in text
    assert "not fused: can run it, but onednn comes first" in text
    holes = torch.tensor([[True, True], [False, True], [True, True]])
    p = gru.sequence_params()
    decision = dispatch.decide(p, x.transpose(0, 1)[:3], torch.zeros(2, 4), holes)
    assert decision.path == "reference"
    assert any("mask has holes" in r for r in decision.unmet["onednn"])
    dropped = dataclasses.replace(p, h_mask=torch.ones(2, 4))
    assert "recurrent dropout (h_mask) between steps" in \
        dispatch.decide(dropped, x.transpose(0, 1), torch.zeros(2, 4)).unmet["onednn"]
    assert str(rk.fast.explain(gru, x, swap_memory=True)).splitlines()[0] == first
    mask = length_mask(torch.tensor([2, 3]), 3)
    keras = dispatch.decide(p, x.transpose(0, 1)[:3], torch.zeros(2, 4), mask, "previous", 2)
    assert "swap_memory with Keras masks (outputs held across chunks)" in keras.unmet["onednn"]


def test_reference_runs_with_one_warning_where_onednn_cannot_load(monkeypatch):
    monkeypatch.setattr(library, "_state", {})
    monkeypatch.setattr(compiled, "_state", {})  # the fused kernels need oneDNN's sgemm too
    monkeypatch.setattr(library, "_candidates", lambda: [Path("/nonexistent/libdnnl.so.3")])
    monkeypatch.setattr(dispatch, "_warned", set())
    cell = rk.GRUCell(4, input_size=3)
    x = torch.randn(2, 5, 3)
    with pytest.warns(RuntimeWarning, match="libdnnl.so.3 .* could not be loaded"):
        out, _ = rk.dynamic_rnn(cell, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = rk.dynamic_rnn(cell, x)
    torch.testing.assert_close(out, rk.dynamic_rnn(cell, x, fast=False)[0])
    torch.testing.assert_close(again, out)
    assert "/nonexistent/libdnnl.so.3: no such file" in _why(cell, x)


@needs_onednn
def test_the_fused_kernels_are_built_only_for_a_call_they_would_run(monkeypatch):
    built = []

    def build(family):
        built.append(family)
        raise OSError("no compiler in this test")

    monkeypatch.setattr(compiled, "_state", {})
    monkeypatch.setattr(compiled, "_build", build)
    monkeypatch.setattr(dispatch, "_warned", set())
    cell = rk.LSTMCell(4, input_size=3)
    x = torch.randn(2, 5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rk.dynamic_rnn(cell, x)
        wide = rk.LSTMCell(4, input_size=3, dtype=torch.float64)
        rk.dynamic_rnn(wide, x.double())  # the loop: the fast paths serve float32
        assert "not fused: can run it, but onednn comes first" in str(rk.fast.explain(cell, x))
        assert not built
        out, _ = rk.dynamic_rnn(cell, x, sequence_length=[5, 2])  # the fused kernels' rule
    assert built == ["lstm"]  # the cell's family only
    assert "rnnkit's fused kernels are not available: no compiler in this test" in \
        str(rk.fast.explain(cell, x, [5, 2]))
    torch.testing.assert_close(out, rk.dynamic_rnn(cell, x, sequence_length=[5, 2],
                                                   fast=False)[0])


@pytest.fixture
def without_fused_kernel(monkeypatch):
    """Variable lengths on oneDNN's segments (the fused kernel, which they would otherwise
    take, reported missing)."""
    monkeypatch.setattr(compiled, "_state", {("error", family): "the fused kernel is off in this test"
                                             for family in compiled.FAMILIES})


@needs_onednn
def test_evicted_primitives_are_rebuilt_and_retained_graphs_backprop_twice(
        monkeypatch, without_fused_kernel):
    monkeypatch.setattr(onednn, "CACHE_SIZE", 2)
    cell = rk.BasicLSTMCell(5, input_size=3)
    x = torch.randn(4, 6, 3, requires_grad=True)
    out, _ = rk.dynamic_rnn(cell, x, sequence_length=[6, 1, 3, 5])  # four segment shapes
    loss = out.square().sum()
    first = torch.autograd.grad(loss, [x, *cell.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *cell.parameters()])
    assert len(onednn._cache) <= 2
    ref, _ = rk.dynamic_rnn(cell, x, sequence_length=[6, 1, 3, 5], fast=False)
    want = torch.autograd.grad(ref.square().sum(), [x, *cell.parameters()])
    for a, b, c in zip(first, second, want, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(a, c, **TOL)


def test_plan_cuts_at_every_length_unless_told_to_merge():
    lens = [30, 30, 28, 17, 16, 9, 3, 0]
    assert plan(lens, False) == [(0, 3), (3, 9), (9, 16), (16, 17), (17, 28), (28, 30)]
    merged = plan(lens, True, waste=0.125)
    assert merged[0][0] == 0 and merged[-1][1] == 30 and len(merged) < 6
    for (_, end), (start, _) in zip(merged, merged[1:], strict=False):
        assert end == start
    for start, end in merged:
        alive = [n for n in lens if n > start]
        useful = sum(min(n, end) - start for n in alive)
        assert len(alive) * (end - start) - useful <= 0.125 * useful or \
            end == min(n for n in lens if n > start)


def test_varlen_helpers_equal_their_loops_and_pass_gradcheck():
    """``take_tokens``, ``roll_to_front`` and ``hold_last`` have backward passes of their own
    (writes and permutations instead of accumulating scatters): checked against plain loops
    and float64 ``gradcheck``."""
    T, B = 6, 4
    lengths = torch.tensor([6, 0, 2, 5])
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    _, _, t_idx, b_idx = pack(lengths, T)
    taken = take_tokens(x, t_idx, b_idx)
    assert torch.equal(taken, torch.stack([x[t, b] for t, b in zip(t_idx, b_idx, strict=True)]))
    rolled = roll_to_front(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(rolled[:, b], torch.cat([x[T - n:, b], x[:T - n, b]]))
    assert torch.equal(roll_to_front(rolled, T - lengths), x)
    held = hold_last(x, lengths)
    for t in range(T):
        for b, n in enumerate(lengths.tolist()):
            want = x[min(t, n - 1), b] if n else torch.zeros(3, dtype=x.dtype)
            assert torch.equal(held[t, b], want)
    for fn in (lambda v: take_tokens(v, t_idx, b_idx), lambda v: roll_to_front(v, lengths),
               lambda v: hold_last(v, lengths)):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@needs_onednn
@pytest.mark.parametrize("name", ["gru_tf1", "rnn_relu", "lstm_proj"])
def test_many_segments_match_reference(name):
    cell = CELLS[name]()
    cell.ensure_built(4, torch.float32)
    _perturb(cell, seed=3)
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 31, (12,), generator=g)
    x = torch.randn(12, 30, 4, generator=g).requires_grad_()
    h0 = _state(cell, 12)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, lengths, h0, fast=fast),
             [x, *pytree.tree_leaves(h0), *cell.parameters()])


@needs_onednn
def test_a_failing_primitive_falls_back_under_auto_and_raises_under_true(monkeypatch):
    def broken(shape):
        raise onednn.OneDNNError(f"no primitive for {shape.cell}")

    monkeypatch.setattr(onednn, "primitives", broken)
    monkeypatch.setattr(dispatch, "_warned", set())
    cell = rk.GRUCell(4, input_size=3)
    x = torch.randn(2, 5, 3)
    with pytest.warns(RuntimeWarning, match="the onednn path failed .no primitive for gru"):
        out, _ = rk.dynamic_rnn(cell, x)
    torch.testing.assert_close(out, rk.dynamic_rnn(cell, x, fast=False)[0])
    with pytest.raises(onednn.OneDNNError, match="no primitive for gru"):
        rk.dynamic_rnn(cell, x, fast=True)


def test_explain_sees_wrappers_and_layers():
    x = torch.randn(2, 5, 3)
    wrapped = rk.DropoutWrapper(rk.GRUCell(4), output_keep_prob=0.5)
    wrapped.ensure_built(3, torch.float32)
    assert rk.fast.explain(wrapped, x) == rk.fast.explain(wrapped.cell, x)  # the GRU's path
    wrapped = rk.DropoutWrapper(rk.GRUCell(4), state_keep_prob=0.5)  # a state mask per step
    wrapped.ensure_built(3, torch.float32)
    decision = rk.fast.explain(wrapped, x)
    assert decision.path == ("fused" if compiled.load_error() is None else "reference")
    assert "state dropout (state_mask) between steps" in decision.unmet["onednn"]
    wrapped = rk.DropoutWrapper(rk.MultiRNNCell([rk.GRUCell(4), rk.ResidualWrapper(rk.GRUCell(4))]),
                                state_keep_prob=0.5)
    wrapped.ensure_built(3, torch.float32)
    assert rk.fast.explain(wrapped, x).path == "reference"
    stack = rk.MultiRNNCell([rk.LSTMCell(4, cell_clip=2.0), rk.GRUCell(5, activation="elu")])
    stack.ensure_built(3, torch.float32)
    decision = rk.fast.explain(stack, x)
    text = str(decision)
    first = "path: fused" if compiled.load_error() is None else "path: reference"
    assert "cell_clip" in text and text.startswith(first)
    # every layer's decision, the second on the first's outputs (depth 4)
    second = rk.fast.explain(stack.cells[1], torch.zeros(2, 5, 4))
    assert decision.layers[1:] == (second,) and decision.layers[0] == decision
    assert [f"layer 1: {line}" for line in str(second).splitlines()] == \
        text.splitlines()[-len(str(second).splitlines()):]
    assert "layer 1: not onednn: activation elu" in text or "layer 1: path: reference" in text


KERAS = {
    "simple_rnn": lambda: rk.layers.SimpleRNN(5, return_sequences=True, return_state=True),
    "gru_reset_after": lambda: rk.layers.GRU(5, return_sequences=True, return_state=True),
    "gru_reset_before": lambda: rk.layers.GRU(5, return_sequences=True, return_state=True,
                                              reset_after=False),
    "lstm": lambda: rk.layers.LSTM(5, return_sequences=True, return_state=True),
    "lstm_backwards_no_bias": lambda: rk.layers.LSTM(5, return_sequences=True, use_bias=False,
                                                     go_backwards=True),
    "bidirectional_gru": lambda: rk.layers.Bidirectional(rk.layers.GRU(5, return_sequences=True)),
    "lstm_wide": lambda: rk.layers.LSTM(37, return_sequences=True, return_state=True),
}


@needs_onednn
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", list(KERAS))
def test_keras_layers_match_reference(name, masked):
    """Keras layers reach the same dispatch (trailing masks: outputs hold the last valid one)."""
    layer = KERAS[name]()
    x = torch.randn(3, 6, 4, requires_grad=True)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 4 + [0] * 2]).bool() if masked else None
    layer(x)  # build
    _perturb(layer)

    def run(fast):
        with rk.fast.fast_mode(fast):
            return layer(x, mask=mask)

    _compare(run, [x, *layer.parameters()])


KERAS_DROPOUT = {"input": {"dropout": 0.4}, "recurrent": {"recurrent_dropout": 0.3},
                 "both": {"dropout": 0.4, "recurrent_dropout": 0.3}}


@needs_onednn
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dropout", list(KERAS_DROPOUT))
@pytest.mark.parametrize("name", list(KERAS))
def test_keras_dropout_runs_fast_with_the_same_masks(name, dropout, masked, monkeypatch):
    """``dropout`` alone is one input mask for every step: the layer drops the whole sequence
    and takes any fast path. With ``recurrent_dropout`` (a mask per gate on ``h``, and on the
    inputs too) the fused kernels, which have the masks. The same masks and numbers as the
    loop's ``(x ⊙ mask) W`` and ``(h ⊙ mask) U``."""
    _skip_without_kernels("fused_" if "recurrent_dropout" in KERAS_DROPOUT[dropout] else name)
    layer = KERAS[name]()
    cells = [m for m in layer.modules() if isinstance(m, rk.layers.cells.KerasCell)]
    for cell in cells:
        for arg, rate in KERAS_DROPOUT[dropout].items():
            setattr(cell, arg, rate)
    x = torch.randn(3, 6, 4, requires_grad=True)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 4 + [0] * 2]).bool() if masked else None
    layer(x)  # build
    _perturb(layer)
    seen = _decisions(monkeypatch)
    recurrent = "recurrent_dropout" in KERAS_DROPOUT[dropout]

    def run(fast):
        for k, cell in enumerate(cells):
            cell._generator = torch.Generator().manual_seed(7 + k)  # the same masks each run
        with rk.fast.fast_mode(fast):
            return layer(x, mask=mask, training=True)

    _compare(run, [x, *layer.parameters()])
    assert seen and "reference" not in seen and (not recurrent or set(seen) == {"fused"})
    with torch.no_grad():  # it does drop: in training the outputs differ from inference's
        first = pytree.tree_leaves(run(True))[0]
        assert not torch.equal(first, pytree.tree_leaves(layer(x, mask=mask))[0])


@needs_onednn
def test_keras_mask_with_holes_and_dropout_take_the_reference_path():
    layer = rk.layers.LSTM(5, return_sequences=True)
    x = torch.randn(2, 4, 3)
    holes = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]).bool()
    with rk.fast.fast_mode(True), pytest.raises(ValueError, match="mask has holes"):
        layer(x, mask=holes)
    dropped = rk.layers.GRU(5, recurrent_dropout=0.5)
    with rk.fast.fast_mode(True), pytest.raises(ValueError, match="holes.*recurrent dropout"):
        dropped(x, training=True, mask=holes)
    torch.testing.assert_close(layer(x, mask=holes), layer(x, mask=holes))


@needs_onednn
@pytest.mark.parametrize("lengths", [None, [9, 2, 0, 7]])
@pytest.mark.parametrize("name", ["basic_lstm", "gru_tf1"])
def test_swap_memory_runs_fast_in_recomputed_chunks(name, lengths, without_fused_kernel):
    cell = CELLS[name]()
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    x = torch.randn(4, 9, 4, requires_grad=True)
    h0 = _state(cell, 4)
    assert rk.fast.explain(cell, x, lengths, swap_memory=True).path == "onednn"
    _compare(lambda fast: rk.dynamic_rnn(cell, x, lengths, h0, swap_memory=True, fast=fast),
             [x, *pytree.tree_leaves(h0), *cell.parameters()])


UNROLLS = {
    "dynamic_rnn": lambda cell, x, **kw: rk.dynamic_rnn(cell, x, **kw),
    "bidirectional_dynamic_rnn": lambda cell, x, **kw: rk.bidirectional_dynamic_rnn(
        cell, cell, x, **kw),
    "static_rnn": lambda cell, x, **kw: rk.static_rnn(cell, list(x.unbind(1)), **kw),
    "static_bidirectional_rnn": lambda cell, x, **kw: rk.static_bidirectional_rnn(
        cell, cell, list(x.unbind(1)), **kw),
}


@needs_onednn
@pytest.mark.parametrize("name", list(UNROLLS))
def test_unroll_functions_inherit_the_fast_mode_block(name, monkeypatch):
    unroll, x, gru = UNROLLS[name], torch.randn(2, 5, 3), rk.GRUCell(4)
    seen = _decisions(monkeypatch)
    with rk.fast.fast_mode(False):
        unroll(gru, x)
    assert seen == []
    with rk.fast.fast_mode(False):
        unroll(gru, x, fast="auto")  # an explicit argument wins over the block
    assert seen and set(seen) == {"onednn"}
    with rk.fast.fast_mode(True), pytest.raises(ValueError, match="cell_clip"):
        unroll(rk.LSTMCell(4, cell_clip=1.0, activation="elu"), x)
    with pytest.raises(ValueError, match="fast must be 'auto', True or False, got 'no'"):
        unroll(gru, x, fast="no")


@needs_onednn
def test_multi_rnn_cell_unroll_takes_fast(monkeypatch):
    cell = rk.MultiRNNCell([rk.GRUCell(4), rk.LSTMCell(4, cell_clip=1.0, activation="elu")])
    cell.ensure_built(3, torch.float32)
    x, state = torch.randn(5, 2, 3), cell.zero_state(2)
    seen = _decisions(monkeypatch)
    cell.unroll(x, state, fast=False)
    assert seen == []
    with pytest.raises(ValueError, match="cell_clip"):
        cell.unroll(x, state, fast=True)
    assert seen == ["onednn", "reference"]


@needs_onednn
def test_keras_layers_take_fast_and_keep_it_in_their_config(monkeypatch):
    x = torch.randn(2, 5, 3)
    seen = _decisions(monkeypatch)
    forced = rk.layers.LSTM(4, return_sequences=True, fast=False)
    with rk.fast.fast_mode(True):
        out = forced(x)
    assert seen == []
    assert out.shape == (2, 5, 4) and forced.get_config()["fast"] is False
    assert rk.layers.LSTM.from_config(forced.get_config()).get_config() == forced.get_config()
    assert "fast" not in rk.layers.LSTM(4).get_config()
    again = rk.layers.deserialize(rk.layers.serialize(rk.layers.RNN(rk.layers.GRUCell(4),
                                                                    fast="auto")))
    assert again.fast == "auto"
    both = rk.layers.Bidirectional(rk.layers.GRU(4, fast=True))
    assert both.forward_layer.fast is True and both.backward_layer.fast is True
    holes = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 1, 1]]).bool()
    with pytest.raises(ValueError, match="mask has holes"):
        both(x, mask=holes)
    rk.layers.GRU(4)(x)  # None: inherits the default "auto"
    assert seen[-1] == "onednn"
    with pytest.raises(ValueError, match="fast must be 'auto', True or False, got 'on'"):
        rk.layers.SimpleRNN(4, fast="on")


def _keras_lstm():
    layer = rk.layers.LSTM(5, return_sequences=True)
    return layer, layer, lambda: layer.cell.kernel


def _tf1_lstm():
    cell = rk.BasicLSTMCell(5, forget_bias=0.5)
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    return cell, lambda x: rk.dynamic_rnn(cell, x)[0], lambda: cell.get_parameter("kernel")


@needs_onednn
@pytest.mark.parametrize("make", [_keras_lstm, _tf1_lstm], ids=["keras", "tf1_gate_order"])
def test_weights_laid_out_once_follow_in_place_updates(make):
    """Layouts cached per weight tensor and ``_version`` (for a TF1 kernel, with the gather into
    oneDNN's gate order): an optimizer step (in place) between calls must reach the next call,
    in training and in inference primitives, and so must a kernel in new memory."""
    module, layer, kernel = make()
    x = torch.randn(3, 6, 4, requires_grad=True)
    layer(x)
    for step in range(2):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.3 * (step + 1))
        with torch.no_grad():
            inference = layer(x)

        def run(fast):
            with rk.fast.fast_mode(fast):
                return layer(x)

        _compare(run, [x, *module.parameters()])
        with rk.fast.fast_mode(False):
            torch.testing.assert_close(inference, layer(x), **TOL)
        kernel().data = torch.randn_like(kernel())  # new memory


@pytest.mark.parametrize("make, joint", [
    (lambda: rk.BasicLSTMCell(5), "kernel"),
    (lambda: rk.LSTMCell(5, num_proj=3), "kernel"),
    (lambda: rk.BasicRNNCell(5), "kernel"),
    (lambda: rk.GRUCell(5), "assembled"),  # two kernels, gathered per call into one
    (lambda: rk.GRUCell(5, reset_after=True), "assembled"),  # three, likewise
    (lambda: rk.layers.LSTM(5).cell, None),  # kernel and recurrent_kernel apart
], ids=["basic_lstm", "lstm_proj", "rnn", "gru_tf1", "gru_tf1_reset_after", "keras_lstm"])
def test_a_tf1_kernel_is_one_input_and_gets_one_gradient(make, joint):
    """Where ``W`` and ``U`` are the row blocks of one kernel, the oneDNN Functions take the
    kernel itself and make its gradient in one buffer (no zero-padded slice gradients summed by
    autograd); the numbers are checked by the comparisons above. A TF1 GRU's two kernels are
    gathered into one such matrix per call (``GRUCell.canonical``)."""
    cell = make()
    cell.ensure_built(4, torch.float32)
    p = cell.sequence_params()
    weights = Weights(p)
    if joint is None:
        assert weights.joint is None
        assert weights.inputs is weights.tensors
    elif joint == "assembled":
        assert weights.joint is p.W._base and weights.joint.shape == (9, 15)
        assert weights.inputs[0] is weights.joint and weights.inputs[1] is None
    else:
        assert weights.joint is cell.get_parameter(joint)
        assert weights.inputs[0] is weights.joint and weights.inputs[1] is None


@needs_onednn
@pytest.mark.parametrize("name", ["basic_lstm", "lstm_peephole_proj", "gru_tf1",
                                  "gru_reset_after", "rnn_relu"])
def test_segments_on_onednn_where_the_fused_kernel_is_missing(name, monkeypatch,
                                                              without_fused_kernel):
    cell = CELLS[name]()
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    x = torch.randn(5, 7, 4, requires_grad=True)
    h0 = _state(cell, 5)
    seen = _decisions(monkeypatch)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, LENGTHS["varied"], h0, fast=fast),
             [x, *pytree.tree_leaves(h0), *cell.parameters()])
    assert seen == ["onednn"]


@needs_onednn
def test_variable_lengths_take_the_fused_kernel_and_say_why():
    cell = rk.BasicLSTMCell(4, input_size=3)
    x = torch.randn(2, 5, 3)
    assert rk.fast.explain(cell, x).path == "onednn"
    decision = rk.fast.explain(cell, x, [5, 2])
    wanted = "onednn" if compiled.load_error() else "fused"
    assert decision.path == wanted
    if wanted == "fused":
        assert "variable lengths run faster packed on the fused kernel" in decision.explain()
    assert rk.fast.explain(rk.GRUCell(4, input_size=3), x, [5, 2]).path == wanted


class _Unroll(torch.nn.Module):
    """A TF1 cell under ``dynamic_rnn``, as a module ``functional_call`` can swap weights in."""

    def __init__(self, cell, fast="auto"):
        super().__init__()
        self.cell, self.fast = cell, fast

    def forward(self, x):
        return rk.dynamic_rnn(self.cell, x, fast=self.fast)[0]


@pytest.mark.parametrize("make", [
    lambda: rk.layers.GRU(5, return_sequences=True),
    lambda: rk.layers.LSTM(5, return_sequences=True),
    lambda: _Unroll(rk.GRUCell(5)),
    lambda: _Unroll(rk.GRUCell(5, reset_after=True)),
    lambda: _Unroll(rk.BasicLSTMCell(5)),
    lambda: _Unroll(rk.LSTMCell(5, cell_clip=1.0, use_peepholes=True)),
], ids=["keras_gru", "keras_lstm", "gru_tf1", "gru_reset_after", "basic_lstm", "lstm_clip"])
def test_torch_func_grad_and_per_sample_grads(make):
    """``torch.func.grad`` and ``vmap(grad(...))`` (per-sample gradients) over a layer or an
    unrolled cell: inside a transform the fast paths step aside (they are autograd Functions
    for plain autograd), so the reference loop's ops are transformed; the numbers equal plain
    autograd's, sample by sample."""
    module, x = make(), torch.randn(3, 4, 2)
    module(x)  # build
    names = [n for n, _ in module.named_parameters()]
    given = {n: p.detach() for n, p in module.named_parameters()}

    def loss(params, xs):
        return torch.func.functional_call(module, params, (xs,)).sin().sum()

    grads = torch.func.grad(loss)(given, x)
    expected = torch.autograd.grad(module(x).sin().sum(), list(module.parameters()))
    for name, want in zip(names, expected, strict=True):
        torch.testing.assert_close(grads[name], want, **TOL)
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(given, x[:, None])
    for i in range(x.shape[0]):
        expected = torch.autograd.grad(module(x[i:i + 1]).sin().sum(), list(module.parameters()))
        for name, want in zip(names, expected, strict=True):
            torch.testing.assert_close(per_sample[name][i], want, **TOL)


def test_inside_a_torch_func_transform_the_reference_loop_runs_and_says_why():
    cell = rk.GRUCell(4, input_size=3)
    x, seen = torch.randn(2, 5, 3), []

    def probe(x):
        seen.append(rk.fast.explain(cell, x))
        return rk.dynamic_rnn(cell, x)[0].sum()

    torch.func.grad(probe)(x)
    assert seen[0].path == "reference"
    assert "inside a torch.func transform" in seen[0].explain()
    assert rk.fast.explain(cell, x).path != "reference"  # outside, a fast path
    with pytest.raises(ValueError, match="inside a torch.func transform"):
        torch.func.grad(lambda x: rk.dynamic_rnn(cell, x, fast=True)[0].sum())(x)


def test_cpu_autocast_runs_the_loop_whose_products_it_lowers():
    """Under CPU autocast the loop's products run in bfloat16; the float32 fast paths would
    give other numbers, so they step aside (and say so)."""
    cell = rk.BasicLSTMCell(8)
    x = torch.randn(3, 5, 8)
    rk.dynamic_rnn(cell, x, dtype=torch.float32)
    assert rk.fast.explain(cell, x).path != "reference"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decision = rk.fast.explain(cell, x)
        assert decision.path == "reference"
        assert "autocast is on (the loop's products run in bfloat16" in str(decision)
        with pytest.raises(ValueError, match="not onednn: autocast is on"):
            rk.dynamic_rnn(cell, x, dtype=torch.float32, fast=True)
        out = rk.dynamic_rnn(cell, x, dtype=torch.float32)[0]
    ref = rk.dynamic_rnn(cell, x, dtype=torch.float32)[0]  # float32 products
    assert 0 < float((out - ref).detach().abs().max()) < 0.1  # bfloat16's rounding, no more
