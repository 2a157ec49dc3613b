"""Wrappers on the whole sequence: ``DropoutWrapper``'s input and output dropout and
``ResidualWrapper``'s sum done around the wrapped cell's own unroll (which keeps its fast path)
and variational state dropout (the wrapped cell's unroll with a state mask), against the same
wrappers run step by step (``wrappers.WHOLE_SEQUENCE = False``): the same masks from the same
seed, so outputs, final states and gradients are as close to a float64 run step by step as
the float32 one is. Also: where
a wrapper must run step by step, ``explain`` and ``fast=True`` say why; a stack's variational
masks are drawn anew for every sequence."""

from __future__ import annotations

import re

import pytest
import torch
from fast_checks import decisions, perturb, random_state
from torch.utils import _pytree as pytree

import rnnkit as rk
from rnnkit.cells import dropout as cell_dropout
from rnnkit.cells import wrappers
from rnnkit.fast import compiled, onednn

pytestmark = pytest.mark.skipif(onednn.load_error() is not None or compiled.load_error() is not None,
                                reason="needs oneDNN and the fused kernels")

INNER = {
    "lstm": lambda: rk.BasicLSTMCell(6, forget_bias=0.5),
    "gru": lambda: rk.GRUCell(6),
    "lstm_clip_proj": lambda: rk.LSTMCell(6, cell_clip=0.8, num_proj=6),
    "lstm_peep_proj": lambda: rk.LSTMCell(6, use_peepholes=True, num_proj=4),
    "rnn": lambda: rk.BasicRNNCell(6),
    "gru_after": lambda: rk.GRUCell(6, reset_after=True, activation="softsign"),
    "layer_norm": lambda: rk.LayerNormLSTMCell(6),
    "stack": lambda: rk.MultiRNNCell([rk.LSTMCell(5, num_proj=4), rk.GRUCell(6)]),
    # TF's concatenated states: state dropout drops them whole (an LSTM's c too), step by step
    "lstm_concat": lambda: rk.LSTMCell(6, use_peepholes=True, num_proj=4, state_is_tuple=False),
    "stack_concat": lambda: rk.MultiRNNCell([rk.BasicLSTMCell(5, state_is_tuple=False),
                                             rk.GRUCell(6)], state_is_tuple=False),
}
DROPOUT = {
    "output": {"output_keep_prob": 0.6},
    "input_output": {"input_keep_prob": 0.7, "output_keep_prob": 0.6},
    "variational": {"input_keep_prob": 0.7, "output_keep_prob": 0.6,
                    "variational_recurrent": True},
    "seeded": {"output_keep_prob": 0.5, "input_keep_prob": 0.8, "seed": 11},
    "none": {},
    "state": {"state_keep_prob": 0.6, "variational_recurrent": True},
    "all_three": {"input_keep_prob": 0.8, "output_keep_prob": 0.7, "state_keep_prob": 0.6,
                  "variational_recurrent": True, "seed": 5},
    "state_every_step": {"state_keep_prob": 0.6},  # a mask per step
    "state_output_every_step": {"state_keep_prob": 0.6, "output_keep_prob": 0.7, "seed": 2},
}
LENGTHS = {"full": None, "varied": [5, 0, 7, 3, 7]}


def _run(make, whole: bool, monkeypatch, lengths=None, swap_memory=False, seed=3, steps=7,
         dtype=torch.float32):
    """``make()``'s cell (variables perturbed) unrolled over a fixed batch from a fixed seed,
    whole-sequence wrappers or step by step, in ``dtype`` (the masks drawn in float32 either
    way); returns (outputs, state) and the tensors whose gradients are compared."""
    monkeypatch.setattr(wrappers, "WHOLE_SEQUENCE", whole)
    noise = cell_dropout.DropoutWrapper._noise
    monkeypatch.setattr(cell_dropout.DropoutWrapper, "_noise", lambda self, like, keep, global_rng:
                        noise(self, like.float(), keep, global_rng).to(like.dtype))
    rk.reset_default_graph()
    torch.manual_seed(0)
    with rk.variable_scope(f"w{int(whole)}"):
        cell = make()
        x = torch.randn(5, steps, 6)
        cell.ensure_built(6, torch.float32)
    perturb(cell, scale=0.3)
    state = pytree.tree_map(lambda s: s.to(dtype).requires_grad_(), random_state(cell, 5))
    cell, x = cell.to(dtype), x.to(dtype).requires_grad_()
    torch.manual_seed(seed)
    out = rk.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=state,
                         swap_memory=swap_memory, fast=None if whole else False)
    return out, [x, *pytree.tree_leaves(state), *cell.parameters()]


def _agree(make, monkeypatch, **kwargs) -> None:
    """The whole-sequence wrappers' outputs, final states and gradients are as close to a
    float64 run step by step (the same masks) as the float32 run step by step is: within 10x
    its error plus 1e-5 of the largest entry, the property tests' rule (a state mask's scale,
    compounded over the steps, leaves some cells ill-conditioned in float32 on every path)."""
    runs = [_run(make, whole, monkeypatch, dtype=dtype, **kwargs)
            for whole, dtype in ((True, torch.float32), (False, torch.float32),
                                 (False, torch.float64))]
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64)
               for t in pytree.tree_leaves(runs[0][0])]

    def values(outs, wrt):
        leaves = pytree.tree_leaves(outs)
        loss = sum((t * w.to(t.dtype)).sum() for t, w in zip(leaves, weights, strict=True))
        return [t.detach().double() for t in (*leaves, *torch.autograd.grad(loss, wrt))]

    fast, ref, truth = (values(*run) for run in runs)
    for k, (a, b, t) in enumerate(zip(fast, ref, truth, strict=True)):
        err_fast, err_ref = (a - t).abs().max(), (b - t).abs().max()
        assert err_fast <= 10 * err_ref + 1e-5 * (1 + t.abs().max()), (k, err_fast, err_ref)


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("dropout", DROPOUT)
@pytest.mark.parametrize("inner", INNER)
def test_dropout_wrapper_whole_sequence_matches_its_steps(inner, dropout, lengths, monkeypatch):
    _agree(lambda: rk.DropoutWrapper(INNER[inner](), **DROPOUT[dropout]), monkeypatch,
           lengths=LENGTHS[lengths])


@pytest.mark.parametrize("variational", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 7])
@pytest.mark.parametrize("inner", ["lstm", "lstm_peep_proj", "lstm_clip_proj", "rnn", "gru",
                                   "gru_after", "layer_norm", "stack"])
def test_state_dropout_runs_fused_and_matches_its_steps(inner, steps, variational, monkeypatch):
    """State dropout as the wrapped cell's state mask (one, or one per step): the fused kernels
    run it (steps after the first), with the initial state read as it is and kept where a
    sequence is empty; with swap_memory's chunks too."""
    def make():
        return rk.DropoutWrapper(INNER[inner](), state_keep_prob=0.5, output_keep_prob=0.8,
                                 variational_recurrent=variational)
    lengths = [min(n, steps) for n in (5, 0, 7, 1, 2)]
    seen = decisions(monkeypatch)
    whole, _ = _run(make, True, monkeypatch, lengths=lengths, steps=steps)
    assert "reference" not in seen and (steps == 1 or "fused" in seen), seen
    _agree(make, monkeypatch, lengths=lengths, steps=steps)
    _agree(make, monkeypatch, swap_memory=True, steps=steps)
    x = torch.randn(5, steps, 6)
    with rk.variable_scope("explain"):
        cell = make()
        cell.ensure_built(6, torch.float32)
    monkeypatch.setattr(wrappers, "WHOLE_SEQUENCE", True)
    decision = rk.fast.explain(cell, x)
    assert decision.path == "fused" and "state dropout (state_mask)" in str(decision), decision


def test_state_dropout_keeps_its_mask_over_time_and_drops_the_final_state(monkeypatch):
    """A closed form: a linear vanilla RNN with U = I and W = 0 carries its initial state, so
    each step's output is h0 times the state mask to the power of the steps before it (the
    first step reads h0 as it is), and the final state is that, dropped once more."""
    monkeypatch.setattr(wrappers, "WHOLE_SEQUENCE", True)
    cell = rk.DropoutWrapper(rk.BasicRNNCell(16, activation="linear", input_size=3),
                             state_keep_prob=0.5, variational_recurrent=True)
    with torch.no_grad():
        cell.cell.kernel.zero_()
        cell.cell.kernel[3:] = torch.eye(16)
    h0 = torch.rand(8, 16) + 0.5
    out, final = rk.dynamic_rnn(cell, torch.randn(8, 4, 3), initial_state=h0,
                                sequence_length=[4, 4, 4, 4, 2, 1, 0, 4])
    keep = out[:5, 1] / out[:5, 0]  # the mask where a sequence has two steps
    assert set(keep.unique().tolist()) == {0.0, 2.0}
    for t in range(4):
        torch.testing.assert_close(out[:4, t], h0[:4] * keep[:4] ** t)
    torch.testing.assert_close(final[:4], h0[:4] * keep[:4] ** 4)
    torch.testing.assert_close(final[4], h0[4] * keep[4] ** 2)
    torch.testing.assert_close(out[5, 0], h0[5])
    assert set((final[5] / h0[5]).unique().tolist()) == {0.0, 2.0}  # one step: dropped once
    torch.testing.assert_close(final[6], h0[6])  # length 0: the initial state, not dropped


@pytest.mark.parametrize("lengths", LENGTHS)
def test_residual_wrapper_whole_sequence_matches_its_steps(lengths, monkeypatch):
    _agree(lambda: rk.ResidualWrapper(rk.BasicLSTMCell(6)), monkeypatch, lengths=LENGTHS[lengths])
    _agree(lambda: rk.ResidualWrapper(rk.LSTMCell(6, num_proj=6, cell_clip=0.5)), monkeypatch,
           lengths=LENGTHS[lengths])


def test_a_stack_of_wrapped_layers_matches_its_steps_and_runs_fast(monkeypatch):
    """TF1's usual language model: each layer an LSTM with output dropout (GNMT's adds a
    residual sum above the first layer)."""
    def stack():
        return rk.MultiRNNCell([
            rk.DropoutWrapper(rk.BasicLSTMCell(6), input_keep_prob=0.8, output_keep_prob=0.5),
            rk.ResidualWrapper(rk.DropoutWrapper(rk.BasicLSTMCell(6), output_keep_prob=0.5)),
        ])
    _agree(stack, monkeypatch, lengths=[5, 0, 7, 3, 7])
    _agree(stack, monkeypatch, swap_memory=True)
    seen = decisions(monkeypatch)
    _run(stack, True, monkeypatch)
    assert seen and "reference" not in seen


def test_dropout_is_still_random_and_scaled(monkeypatch):
    """The whole-sequence output dropout drops about 1 - keep of the values, scales the rest by
    1/keep, and draws new masks each call."""
    monkeypatch.setattr(wrappers, "WHOLE_SEQUENCE", True)
    cell = rk.DropoutWrapper(rk.BasicRNNCell(64, activation="linear"), output_keep_prob=0.25)
    plain = cell.cell
    x = torch.randn(32, 20, 8)
    a, _ = rk.dynamic_rnn(cell, x, dtype=torch.float32)
    b, _ = rk.dynamic_rnn(cell, x, dtype=torch.float32)
    with rk.variable_scope("rnn", reuse=True):
        ref, _ = rk.dynamic_rnn(plain, x, dtype=torch.float32)
    kept = a != 0
    assert 0.2 < kept.float().mean() < 0.3
    torch.testing.assert_close(a[kept], 4 * ref[kept])
    assert not torch.equal(kept, b != 0)


@pytest.mark.parametrize("where", ["alone", "in_a_stack", "under_a_residual"])
def test_variational_masks_are_drawn_for_every_sequence(where):
    """TF draws a variational mask per run; a wrapper inside a stack or another wrapper kept
    the first one for good before begin_sequence reached it."""
    def wrapped():
        return rk.DropoutWrapper(rk.BasicLSTMCell(8), output_keep_prob=0.5,
                                 variational_recurrent=True)
    cell = {"alone": wrapped, "in_a_stack": lambda: rk.MultiRNNCell([wrapped(), wrapped()]),
            "under_a_residual": lambda: rk.ResidualWrapper(wrapped())}[where]()
    x = torch.ones(16, 5, 8)
    residual = x if where == "under_a_residual" else 0  # the dropped outputs are then x
    a = rk.dynamic_rnn(cell, x, dtype=torch.float32)[0] - residual
    b = rk.dynamic_rnn(cell, x, dtype=torch.float32)[0] - residual
    assert torch.equal(a[:, 0] == 0, a[:, -1] == 0)  # one mask over time ...
    assert not torch.equal(a == 0, b == 0)  # ... and another for the next sequence


def test_what_must_run_step_by_step_says_why():
    x = torch.randn(4, 6, 5)
    cases = [
        (rk.DropoutWrapper(rk.MultiRNNCell([rk.GRUCell(5), rk.ResidualWrapper(rk.GRUCell(5))]),
                           state_keep_prob=0.5),
         "state dropout .* not a cell with rnnkit's own step or a stack of them"),
        (rk.DropoutWrapper(rk.BasicLSTMCell(5), state_keep_prob=0.5, variational_recurrent=True,
                           dropout_state_filter_visitor=lambda s: rk.LSTMStateTuple(True, True)),
         "a state filter other than"),
        (rk.DropoutWrapper(rk.BasicLSTMCell(5, state_is_tuple=False), state_keep_prob=0.5),
         "a state_is_tuple=False state"),
        (rk.DropoutWrapper(rk.DropoutWrapper(rk.GRUCell(5), output_keep_prob=0.5),
                           output_keep_prob=0.5), "draws dropout masks of its own"),
        (rk.ResidualWrapper(rk.GRUCell(5), residual_fn=lambda i, o: i - o),
         "residual_fn of your own"),
    ]
    for k, (cell, why) in enumerate(cases):
        with rk.variable_scope(f"case{k}"):
            rk.dynamic_rnn(cell, x, dtype=torch.float32)
            decision = rk.fast.explain(cell, x)
            assert decision.path == "reference" and re.search(why, str(decision)), str(decision)
            with pytest.raises(ValueError, match=why):
                rk.dynamic_rnn(cell, x, dtype=torch.float32, fast=True)
    # in eval mode a DropoutWrapper does nothing: the wrapped cell's path
    cell = cases[0][0].eval()
    with rk.variable_scope("case0"):
        assert rk.fast.explain(cell, x).path != "reference"
        rk.dynamic_rnn(cell, x, dtype=torch.float32, fast=True)


@pytest.mark.parametrize("whole", [True, False])
def test_recomputed_chunks_keep_their_own_sequences_masks(whole, monkeypatch):
    """swap_memory recomputes a chunk in the backward pass; by then the same wrapper may have
    run another sequence (a second call, or the other direction of a bidirectional run with
    one cell) and drawn new variational masks: the chunk must use its own sequence's."""
    monkeypatch.setattr(wrappers, "WHOLE_SEQUENCE", whole)
    torch.manual_seed(0)
    cell = rk.DropoutWrapper(rk.BasicRNNCell(4), output_keep_prob=0.5, state_keep_prob=0.7,
                             variational_recurrent=True,
                             dropout_state_filter_visitor=lambda s: True)
    cell.ensure_built(3, torch.float32)
    x = torch.randn(2, 6, 3)

    def grads(swap_memory):
        torch.manual_seed(5)
        xs = x.clone().requires_grad_()
        (fw, bw), _ = rk.bidirectional_dynamic_rnn(cell, cell, xs, dtype=torch.float32,
                                                   swap_memory=swap_memory)
        second, _ = rk.dynamic_rnn(cell, xs, dtype=torch.float32, swap_memory=swap_memory)
        return torch.autograd.grad((fw + 2 * bw + 3 * second).sum(), [xs, *cell.parameters()])

    for a, b in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(a, b)
