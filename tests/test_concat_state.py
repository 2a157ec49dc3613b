"""TF1's deprecated concatenated states (``state_is_tuple=False``): an LSTM's ``[c, h]`` in one
tensor, a stack's states side by side. Against the tuple form (the same numbers), on every
path, step by step, in files. The comparison with real TF1 is in ``test_rnn_oracle.py``
(cells ``lstm_concat`` and ``multi_concat``)."""

import pytest
import torch
from torch.utils import _pytree as pytree

import rnnkit as rk
from rnnkit.io import load, save_native

LENGTHS = torch.tensor([7, 0, 4, 1])


def _pair(make):
    """The same cell twice, tuple state then concatenated, with the same variables."""
    with rk.variable_scope("a"):
        a = make(True)
        a.ensure_built(3, torch.float32)
    with rk.variable_scope("b"):
        b = make(False)
        b.ensure_built(3, torch.float32)
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            q.copy_(p)
    return a, b


CELLS = {
    "basic_lstm": lambda t: rk.BasicLSTMCell(5, forget_bias=0.5, state_is_tuple=t),
    "lstm": lambda t: rk.LSTMCell(5, use_peepholes=True, num_proj=2, cell_clip=0.4,
                                  state_is_tuple=t),
    "stack": lambda t: rk.MultiRNNCell([rk.LSTMCell(4, state_is_tuple=t), rk.GRUCell(3),
                                        rk.BasicLSTMCell(2, state_is_tuple=t)], state_is_tuple=t),
}


def _joined(state) -> torch.Tensor:
    return torch.cat(pytree.tree_leaves(state), -1)


@pytest.mark.parametrize("fast", ["auto", False])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_the_same_numbers_as_the_tuple_form_on_every_path(name, fast):
    tuple_cell, concat_cell = _pair(CELLS[name])
    assert concat_cell.state_size == sum(pytree.tree_leaves(tuple_cell.state_size))
    x = torch.randn(4, 7, 3, requires_grad=True)
    state = torch.randn(4, concat_cell.state_size, requires_grad=True)
    leaves = state.split(pytree.tree_leaves(tuple_cell.state_size), -1)
    tuple_state = pytree.tree_unflatten(list(leaves), pytree.tree_structure(tuple_cell.zero_state(1)))
    want = rk.dynamic_rnn(tuple_cell, x, sequence_length=LENGTHS, initial_state=tuple_state,
                          fast=fast)
    got = rk.dynamic_rnn(concat_cell, x, sequence_length=LENGTHS, initial_state=state, fast=fast)
    assert torch.is_tensor(got[1]) and got[1].shape == state.shape
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], _joined(want[1]), rtol=0, atol=1e-6)
    grads = [torch.autograd.grad(out[0].sum() + _joined(out[1]).square().sum(),
                                 [x, state, *cell.parameters()])
             for out, cell in ((want, tuple_cell), (got, concat_cell))]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_a_step_reads_and_returns_the_concatenated_state(name):
    tuple_cell, concat_cell = _pair(CELLS[name])
    x, state = torch.randn(4, 3), concat_cell.zero_state(4) + 0.3
    assert state.shape == (4, concat_cell.state_size)
    out, new = concat_cell(x, state)
    split = pytree.tree_unflatten(list(state.split(pytree.tree_leaves(tuple_cell.state_size), -1)),
                                  pytree.tree_structure(tuple_cell.zero_state(1)))
    want_out, want_new = tuple_cell(x, split)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(new, _joined(want_new))
    with pytest.raises(ValueError, match="must have the structure of"):
        concat_cell(x, split)


def test_state_dropout_drops_the_memory_too():
    """TF's default filter spares an LSTMStateTuple's c; a concatenated state is one tensor to
    it, so the dropped final state has zeros in c as well as in h."""
    torch.manual_seed(0)
    cells = {t: rk.DropoutWrapper(rk.BasicLSTMCell(50, state_is_tuple=t), state_keep_prob=0.5)
             for t in (True, False)}
    x = torch.randn(8, 4, 3)
    _, kept = rk.dynamic_rnn(cells[True], x, dtype=torch.float32, scope="kept")
    _, dropped = rk.dynamic_rnn(cells[False], x, dtype=torch.float32, scope="dropped")
    assert not bool((kept.c == 0).any()) and bool((kept.h == 0).any())
    assert bool((dropped[:, :50] == 0).any()) and bool((dropped[:, 50:] == 0).any())


def test_a_concatenated_stack_needs_single_tensor_states():
    with pytest.raises(ValueError, match="some cells return tuples of states"):
        rk.MultiRNNCell([rk.GRUCell(2), rk.BasicLSTMCell(2)], state_is_tuple=False)


def test_native_files_keep_the_form(tmp_path):
    cell = CELLS["stack"](False)
    out, state = rk.dynamic_rnn(cell, torch.randn(2, 3, 3), dtype=torch.float32)
    save_native(tmp_path / "c.safetensors", cell)
    rk.reset_default_graph()
    loaded = load(tmp_path / "c.safetensors")
    assert not loaded.state_is_tuple and not loaded.cells[0].state_is_tuple
    assert loaded.state_size == cell.state_size == 4 + 4 + 3 + 2 + 2
