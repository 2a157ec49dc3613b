"""``raw_rnn`` and ``TensorArray`` without TensorFlow: against ``dynamic_rnn`` (the same cell
and lengths give the same numbers), float64 gradcheck, and the errors. The comparison with real
TF1 is in ``test_rnn_oracle.py`` (programs ``raw_rnn_*``)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils import _pytree as pytree

import rnnkit as rk

B, T, D = 4, 6, 3
LENGTHS = torch.tensor([6, 2, 0, 4])


def _reader(cell, inputs_tm, lengths, initial=None):
    """The documented loop_fn: read the inputs while an entry's length lasts."""
    def loop_fn(time, cell_output, cell_state, loop_state):
        state = (initial if initial is not None else cell.zero_state(B, inputs_tm.dtype)) \
            if cell_output is None else cell_state
        finished = time >= lengths
        x = torch.zeros_like(inputs_tm[0]) if bool(finished.all()) else inputs_tm[int(time)]
        return finished, x, state, cell_output, None

    return loop_fn


@pytest.mark.parametrize("make", [lambda: rk.GRUCell(5), lambda: rk.LSTMCell(4, num_proj=2),
                                  lambda: rk.MultiRNNCell([rk.BasicLSTMCell(3), rk.GRUCell(2)])])
def test_reading_the_inputs_equals_dynamic_rnn_with_lengths(make):
    x = torch.randn(T, B, D, generator=torch.Generator().manual_seed(1))
    cell = make()
    want_out, want_state = rk.dynamic_rnn(cell, x, sequence_length=LENGTHS, dtype=torch.float32,
                                          time_major=True)
    emit_ta, state, loop_state = rk.raw_rnn(cell, _reader(cell, x, LENGTHS))
    assert loop_state is None
    torch.testing.assert_close(emit_ta.stack(), want_out[:int(LENGTHS.max())], rtol=0, atol=1e-6)
    for a, b in zip(torch.utils._pytree.tree_leaves(state),
                    torch.utils._pytree.tree_leaves(want_state), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_gradcheck_float64():
    cell = rk.LSTMCell(3, use_peepholes=True, input_size=D, dtype=torch.float64)
    x = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, 3, dtype=torch.float64, requires_grad=True)

    def run(x, c0):
        initial = rk.LSTMStateTuple(c0, torch.zeros_like(c0))
        emit_ta, state, _ = rk.raw_rnn(cell, _reader(cell, x, LENGTHS, initial))
        return emit_ta.stack(), state.c, state.h

    assert torch.autograd.gradcheck(run, (x, c0))


def test_all_finished_at_time_zero_runs_no_step():
    cell = rk.GRUCell(5)
    start = torch.randn(B, 5)

    def loop_fn(time, cell_output, cell_state, loop_state):
        return torch.ones(B, dtype=torch.bool), torch.zeros(B, D), start, None, {"n": 0}

    emit_ta, state, loop_state = rk.raw_rnn(cell, loop_fn)
    assert emit_ta.stack().shape == (0, B, 5) and state is start and loop_state == {"n": 0}
    # built all the same, as TF1 builds it tracing the loop's body
    assert [v.op_name for v in rk.global_variables()][0] == "rnn/gru_cell/gates/kernel"


def test_variational_dropout_keeps_its_masks_for_one_call_only():
    torch.manual_seed(0)
    cell = rk.DropoutWrapper(rk.BasicRNNCell(6), input_keep_prob=0.5, variational_recurrent=True)
    x = torch.ones(T, B, D)
    emit_ta, _, _ = rk.raw_rnn(cell, _reader(cell, x, LENGTHS))
    again, _, _ = rk.raw_rnn(cell, _reader(cell, x, LENGTHS))
    dropped = [ta.stack() for ta in (emit_ta, again)]
    assert not torch.equal(*dropped)  # a new sequence, new masks
    # one mask for the whole call: with U = 0, h' = tanh(x W + b) and the inputs constant, every
    # step gives the same output (a new mask each step would not)
    with torch.no_grad():
        cell.cell.get_parameter("kernel")[D:] = 0
    out = rk.raw_rnn(cell, _reader(cell, x, LENGTHS))[0].stack()
    torch.testing.assert_close(out[1, 0], out[4, 0], rtol=0, atol=1e-6)


def test_loop_state_and_emitted_structure_follow_loop_fn():
    cell = rk.BasicRNNCell(2)
    steps = torch.tensor([1, 3])

    def loop_fn(time, cell_output, cell_state, loop_state):
        finished = time >= steps
        if cell_output is None:
            return finished, torch.ones(2, 2), cell.zero_state(2), {"o": torch.zeros(2),
                                                                   "t": torch.zeros(())}, 0
        emit = {"o": cell_output, "t": torch.full((2,), float(time))}
        return finished, cell_output, cell_state, emit, loop_state + 1

    emit_ta, _, count = rk.raw_rnn(cell, loop_fn)
    assert count == 3  # loop_fn ran after each of the three steps
    # entry 0 finished after its first step: zeros from then on
    assert emit_ta["t"].stack().tolist() == [[1.0, 1.0], [0.0, 2.0], [0.0, 3.0]]
    assert emit_ta["o"].stack().shape == (3, 2, 2)
    assert torch.count_nonzero(emit_ta["o"].stack()[1:, 0]) == 0


@pytest.mark.parametrize("bad, match", [
    (lambda t, o, s, ls: (torch.zeros(B, dtype=torch.bool), torch.zeros(B, D), None, None, None),
     "must return the initial cell state"),
    (lambda t, o, s, ls: (torch.zeros(B), torch.zeros(B, D), torch.zeros(B, 2), None, None),
     r"elements_finished as a bool tensor of shape \[batch\] = \[4\]"),
    (lambda t, o, s, ls: (torch.zeros(B, dtype=torch.bool), torch.zeros(B, D),
                          torch.zeros(B, 2) if o is None else (s, s),
                          None, None), "next_cell_state of another structure"),
    (lambda t, o, s, ls: (torch.zeros(B, dtype=torch.bool), torch.zeros(B, D if o is None else 5),
                          torch.zeros(B, 2) if o is None else s, o, None),
     r"at time 1 must return next_input as a tensor \[batch, depth\] = \[4, 3\], got \[4, 5\]"),
    (lambda t, o, s, ls: (torch.zeros(B, dtype=torch.bool), torch.zeros(B, D), torch.zeros(B, 3),
                          None, None), r"next_cell_state must have shapes \[4, 2\]"),
    (lambda t, o, s, ls: (torch.zeros(B, dtype=torch.bool), torch.zeros(B, D),
                          torch.zeros(B, 2) if o is None else s, None, None),
     "an emit_output of another structure"),
])
def test_bad_loop_fn_results_are_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        rk.raw_rnn(rk.GRUCell(2), bad)


def test_bad_arguments_are_type_errors():
    with pytest.raises(TypeError, match="cell must be an rnnkit RNNCell"):
        rk.raw_rnn(torch.nn.GRUCell(2, 2), lambda *a: None)
    with pytest.raises(TypeError, match="loop_fn must be callable"):
        rk.raw_rnn(rk.GRUCell(2), None)


def test_tensor_array():
    ta = rk.TensorArray(torch.float32, size=2)
    ta = ta.write(1, torch.ones(3)).write(0, torch.zeros(3, dtype=torch.float64))
    assert ta.read(0).dtype == torch.float32 and int(ta.size()) == 2 and len(ta) == 2
    assert ta.stack().tolist() == [[0.0] * 3, [1.0] * 3]
    assert ta.gather([1, 1]).shape == (2, 3)
    with pytest.raises(IndexError, match="not dynamic_size"):
        ta.write(2, torch.ones(3))
    with pytest.raises(ValueError, match="has shape \\[2\\], the array holds \\[3\\]"):
        ta.write(0, torch.ones(2))
    grow = rk.TensorArray(torch.float32, dynamic_size=True, element_shape=[2])
    assert grow.stack().shape == (0, 2)
    grow.write(2, torch.ones(2))
    with pytest.raises(ValueError, match="element 0 was never written"):
        grow.stack()
    assert rk.TensorArray(torch.float32, size=4).unstack(torch.arange(8.0).view(4, 2)).read(3) \
        .tolist() == [6.0, 7.0]
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        rk.TensorArray("float32")


RAW_CELLS = {
    "rnn_relu": lambda: rk.BasicRNNCell(4, activation="relu"),
    "gru": lambda: rk.GRUCell(4),
    "gru_after": lambda: rk.GRUCell(4, reset_after=True),
    "lstm_clip_proj": lambda: rk.LSTMCell(5, use_peepholes=True, cell_clip=0.7, num_proj=3),
    "layer_norm": lambda: rk.LayerNormLSTMCell(4),
    "concat": lambda: rk.BasicLSTMCell(4, state_is_tuple=False),
    "stack": lambda: rk.MultiRNNCell([rk.GRUCell(3), rk.ResidualWrapper(rk.GRUCell(3))]),
    "dropout_eval": lambda: rk.DropoutWrapper(rk.LSTMCell(4), state_keep_prob=0.5).eval(),
}


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(RAW_CELLS)), batch=st.integers(1, 6), steps=st.integers(1, 6),
       data=st.data())
def test_raw_rnn_reading_its_inputs_is_dynamic_rnn(kind, batch, steps, data):
    """Any cell, any lengths (0 included): outputs, final state and gradients of dynamic_rnn."""
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, steps), min_size=batch,
                                              max_size=batch)))
    rk.reset_default_graph()
    torch.manual_seed(0)
    cell = RAW_CELLS[kind]()
    x = torch.randn(steps, batch, D, requires_grad=True)
    state = pytree.tree_map(lambda n: torch.randn(batch, n, requires_grad=True), cell.state_size)

    def loop_fn(time, cell_output, cell_state, loop_state):
        finished = time >= lengths
        step = x[min(int(time), steps - 1)]
        return finished, step, state if cell_output is None else cell_state, cell_output, None

    emit_ta, final, _ = rk.raw_rnn(cell, loop_fn)
    want_out, want_final = rk.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=state,
                                          time_major=True)
    got = [emit_ta.stack(), *pytree.tree_leaves(final)]
    want = [want_out[:int(lengths.max())], *pytree.tree_leaves(want_final)]
    wrt = [x, *pytree.tree_leaves(state), *cell.parameters()]
    grads = [torch.autograd.grad(sum((t * (k + 1)).sum() for k, t in enumerate(side)), wrt,
                                 allow_unused=True, materialize_grads=True)
             for side in (got, want)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
