"""Property tests of the unroll (hypothesis): random batch, time, depth, lengths and cell kinds.

Every property compares two ways of computing the same thing in float64: a padded batch against
each sequence alone, the backward direction against a forward pass over the reversed sequence,
the chunked-recompute path (``swap_memory``) against the plain one, time-major against
batch-major, ``static_rnn`` against ``dynamic_rnn`` and one unroll against two halves chained
through ``initial_state``. ``RNNKIT_PROPERTY_EXAMPLES`` sets the examples per property (default
25; the suite stays fast, a longer local run raises it).
"""

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils import _pytree as pytree

import rnnkit as rk

CELLS = {
    "basic_rnn": lambda n: rk.BasicRNNCell(n),
    "gru": lambda n: rk.GRUCell(n),
    "gru_reset_after": lambda n: rk.GRUCell(n, reset_after=True),
    "basic_lstm": lambda n: rk.BasicLSTMCell(n, forget_bias=0.5),
    "lstm_peep_proj_clip": lambda n: rk.LSTMCell(n, use_peepholes=True, num_proj=max(1, n - 1),
                                                 cell_clip=0.8, proj_clip=0.3),
    "layer_norm_lstm": lambda n: rk.LayerNormLSTMCell(n),
    "multi": lambda n: rk.MultiRNNCell([rk.GRUCell(n), rk.BasicLSTMCell(n + 1), rk.BasicRNNCell(n)]),
}
ATOL = 1e-10  # float64: two orders of summation differ by a few ulps, never by more

PROPERTY = settings(max_examples=int(os.environ.get("RNNKIT_PROPERTY_EXAMPLES", "25")),
                    deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def problems(draw, min_time: int = 1, max_time: int = 9):
    """A cell kind and a float64 batch ``[B, T, D]`` with per-sequence lengths in ``[0, T]``."""
    kind = draw(st.sampled_from(sorted(CELLS)))
    units = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 4))
    steps = draw(st.integers(min_time, max_time))
    depth = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, depth, dtype=torch.float64, generator=gen)
    rk.reset_default_graph()
    torch.manual_seed(seed)
    cell = CELLS[kind](units)
    cell.ensure_built(depth, torch.float64)
    return cell, x, torch.tensor(lengths)


def _leaves(state) -> list[torch.Tensor]:
    return pytree.tree_leaves(state)


def _close(a, b, atol: float = ATOL) -> None:
    for u, v in zip(_leaves(a), _leaves(b), strict=True):
        torch.testing.assert_close(u, v, atol=atol, rtol=0)


def _rows(state, lo: int, hi: int):
    return pytree.tree_map(lambda t: t[lo:hi], state)


@PROPERTY
@given(problems())
def test_padded_equals_each_sequence_alone(problem):
    """Per sequence: the padded batch's outputs and final state equal the sequence run alone; the
    outputs past its length are exactly zero and the padding gets exactly zero gradient."""
    cell, x, lengths = problem
    x.requires_grad_(True)
    out, final = rk.dynamic_rnn(cell, x, sequence_length=lengths)
    weights = torch.randn(out.shape, dtype=out.dtype)
    (grad,) = torch.autograd.grad((out * weights).sum() + sum(s.sum() for s in _leaves(final)), [x])
    zero = cell.zero_state(1, torch.float64)
    for b, n in enumerate(lengths.tolist()):
        assert torch.count_nonzero(out[b, n:]) == 0
        assert torch.count_nonzero(grad[b, n:]) == 0
        if n == 0:
            _close(_rows(final, b, b + 1), zero, atol=0)
            continue
        alone, st_alone = rk.dynamic_rnn(cell, x[b:b + 1, :n].detach())
        _close(out[b:b + 1, :n], alone)
        _close(_rows(final, b, b + 1), st_alone)


@PROPERTY
@given(problems())
def test_backward_direction_is_forward_over_each_reversed_sequence(problem):
    """bidirectional_dynamic_rnn's backward output at step t equals the same cell's forward pass
    over the sequence reversed within its length, read at step n-1-t; its forward half is
    dynamic_rnn."""
    cell, x, lengths = problem
    (out_fw, out_bw), (st_fw, st_bw) = rk.bidirectional_dynamic_rnn(cell, cell, x,
                                                                   sequence_length=lengths)
    plain, st_plain = rk.dynamic_rnn(cell, x, sequence_length=lengths)
    _close(out_fw, plain)
    _close(st_fw, st_plain)
    for b, n in enumerate(lengths.tolist()):
        assert torch.count_nonzero(out_bw[b, n:]) == 0
        if n == 0:
            continue
        rev, st_rev = rk.dynamic_rnn(cell, x[b:b + 1, :n].flip(1))
        _close(out_bw[b:b + 1, :n], rev.flip(1))
        _close(_rows(st_bw, b, b + 1), st_rev)


@PROPERTY
@given(problems(min_time=2, max_time=30))
def test_swap_memory_equals_plain_in_outputs_and_gradients(problem):
    """The chunked-recompute path gives the outputs, states and gradients (with respect to
    inputs, initial state and every weight) of the plain one, to rounding: each chunk recomputes
    its own input projection, a smaller matmul that may round its last bit differently."""
    cell, x, lengths = problem
    x.requires_grad_(True)
    params = list(cell.parameters())
    init = pytree.tree_map(lambda t: torch.randn_like(t).requires_grad_(),
                           cell.zero_state(x.shape[0], torch.float64))
    wrt = [x, *_leaves(init), *params]
    results = []
    for swap in (False, True):
        out, final = rk.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=init,
                                    swap_memory=swap)
        loss = out.square().sum() + sum((s * s.detach().sign()).sum() for s in _leaves(final))
        results.append((out, final, torch.autograd.grad(loss, wrt, allow_unused=True)))
    (out_a, fin_a, g_a), (out_b, fin_b, g_b) = results
    _close(out_a, out_b)
    _close(fin_a, fin_b)
    for u, v in zip(g_a, g_b, strict=True):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, atol=ATOL, rtol=1e-9)


@PROPERTY
@given(problems())
def test_time_major_equals_batch_major(problem):
    cell, x, lengths = problem
    out, final = rk.dynamic_rnn(cell, x, sequence_length=lengths)
    out_tm, final_tm = rk.dynamic_rnn(cell, x.transpose(0, 1).contiguous(), sequence_length=lengths,
                                      time_major=True)
    _close(out, out_tm.transpose(0, 1))
    _close(final, final_tm)
    (bi, bi_st) = rk.bidirectional_dynamic_rnn(cell, cell, x, sequence_length=lengths)
    (bi_tm, bi_st_tm) = rk.bidirectional_dynamic_rnn(cell, cell, x.transpose(0, 1),
                                                     sequence_length=lengths, time_major=True)
    _close([t.transpose(0, 1) for t in bi_tm], bi)
    _close(bi_st_tm, bi_st)


@PROPERTY
@given(problems())
def test_static_rnn_equals_dynamic_rnn(problem):
    cell, x, lengths = problem
    steps = list(x.unbind(1))
    out, final = rk.dynamic_rnn(cell, x, sequence_length=lengths)
    out_s, final_s = rk.static_rnn(cell, steps, sequence_length=lengths)
    _close(torch.stack(out_s, 1), out)
    _close(final_s, final)
    (fw, bw), (st_fw, st_bw) = rk.bidirectional_dynamic_rnn(cell, cell, x, sequence_length=lengths)
    out_sb, sb_fw, sb_bw = rk.static_bidirectional_rnn(cell, cell, steps, sequence_length=lengths)
    _close(torch.stack(out_sb, 1), torch.cat([fw, bw], -1))
    _close([sb_fw, sb_bw], [st_fw, st_bw])


@PROPERTY
@given(problems(min_time=2), st.data())
def test_two_halves_chained_through_initial_state_equal_one_unroll(problem, data):
    """Unrolling steps [0, k) and then [k, T) from the first half's final state is one unroll."""
    cell, x, lengths = problem
    k = data.draw(st.integers(1, x.shape[1] - 1), label="split")
    out, final = rk.dynamic_rnn(cell, x, sequence_length=lengths)
    first, mid = rk.dynamic_rnn(cell, x[:, :k], sequence_length=lengths.clamp(max=k))
    second, last = rk.dynamic_rnn(cell, x[:, k:], sequence_length=(lengths - k).clamp(min=0),
                                  initial_state=mid)
    _close(torch.cat([first, second], 1), out)
    _close(last, final)


@PROPERTY
@given(problems(min_time=2, max_time=20), st.sampled_from([None, 0, 7]), st.booleans(),
       st.lists(st.sampled_from([0.5, 0.8, 1.0]), min_size=3, max_size=3))
def test_swap_memory_replays_dropout_masks(problem, seed, variational, keeps):
    """With dropout (seeded or not, variational or not) the recomputed chunks draw the masks of
    the forward pass: equal outputs and gradients. (A seeded wrapper once drew different masks in
    the recompute, giving wrong gradients.)"""
    cell, x, lengths = problem
    x.requires_grad_(True)
    results = []
    for swap in (False, True):
        wrapper = rk.DropoutWrapper(cell, *keeps, variational_recurrent=variational, seed=seed)
        torch.manual_seed(1)
        out, final = rk.dynamic_rnn(wrapper, x, sequence_length=lengths, swap_memory=swap)
        loss = out.square().sum() + sum(s.square().sum() for s in _leaves(final))
        results.append((out, torch.autograd.grad(loss, [x, *cell.parameters()], allow_unused=True)))
    (out_a, g_a), (out_b, g_b) = results
    _close(out_a, out_b)
    for u, v in zip(g_a, g_b, strict=True):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, atol=ATOL, rtol=1e-9)
