"""Cells and unroll without TensorFlow: float64 gradcheck, closed forms, path equivalence, errors."""

import contextlib

import numpy as np
import pytest
import torch

import rnnkit as rk
from rnnkit.cells import gru as gru_cells
from rnnkit.unroll import reverse_sequence

CELLS = {
    "basic_rnn": lambda: rk.BasicRNNCell(3),
    "basic_rnn_relu": lambda: rk.BasicRNNCell(3, activation="relu"),
    "gru": lambda: rk.GRUCell(3),
    "gru_reset_after": lambda: rk.GRUCell(3, reset_after=True),
    "basic_lstm": lambda: rk.BasicLSTMCell(3, forget_bias=0.5),
    "lstm_peep_proj_clip": lambda: rk.LSTMCell(3, use_peepholes=True, num_proj=2, cell_clip=0.8,
                                              proj_clip=0.3),
    "layer_norm_lstm": lambda: rk.LayerNormLSTMCell(3),
    "layer_norm_lstm_off": lambda: rk.LayerNormLSTMCell(3, layer_norm=False),
    "multi": lambda: rk.MultiRNNCell([rk.GRUCell(3), rk.BasicLSTMCell(2)]),
    "residual": lambda: rk.ResidualWrapper(rk.GRUCell(4)),
}


def _leaves(state):
    return torch.utils._pytree.tree_leaves(state)


def _random_state(cell, batch, dtype, gen):
    return torch.utils._pytree.tree_map(
        lambda n: torch.randn(batch, n, dtype=dtype, generator=gen), cell.state_size)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_gradcheck_float64(name):
    """Analytic gradients of outputs and final state w.r.t. inputs, state and every weight."""
    gen = torch.Generator().manual_seed(0)
    cell = CELLS[name]()
    x = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    rk.dynamic_rnn(cell, x, dtype=torch.float64)  # build in float64
    state0 = [t.requires_grad_() for t in _leaves(_random_state(cell, 2, torch.float64, gen))]
    spec = torch.utils._pytree.tree_structure(cell.state_size)
    params = list(cell.parameters())

    def f(x, *flat):
        state = torch.utils._pytree.tree_unflatten(list(flat[:len(state0)]), spec)
        out, final = rk.dynamic_rnn(cell, x, sequence_length=[3, 1], initial_state=state,
                                    scope="rnn")
        return (out, *_leaves(final))

    with rk.variable_scope("", reuse=True):
        assert torch.autograd.gradcheck(f, (x, *state0, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_step_calls_equal_the_unrolled_loop(name):
    """A hand-written Python loop of cell(x_t, state) gives dynamic_rnn's outputs and state."""
    gen = torch.Generator().manual_seed(1)
    cell = CELLS[name]()
    x = torch.randn(3, 5, 4, generator=gen)
    out, final = rk.dynamic_rnn(cell, x)
    state = cell.zero_state(3)
    for t in range(5):
        y, state = cell(x[:, t], state)
        torch.testing.assert_close(y, out[:, t], atol=1e-5, rtol=1e-5)
    for a, b in zip(_leaves(state), _leaves(final), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gru", "lstm_peep_proj_clip", "multi"])
def test_zero_state_is_made_where_the_variables_are(name):
    """A cell moved to another device makes its zero state there (the CPU before it is built);
    an explicit device wins."""
    cell = CELLS[name]()
    assert all(s.device.type == "cpu" for s in _leaves(cell.zero_state(2)))
    rk.dynamic_rnn(cell, torch.randn(2, 3, 4))
    cell.to("meta")
    assert all(s.device.type == "meta" for s in _leaves(cell.zero_state(2)))
    assert all(s.device.type == "cpu" for s in _leaves(cell.zero_state(2, device="cpu")))


@pytest.mark.parametrize("name", ["gru", "lstm_peep_proj_clip", "multi"])
def test_padded_equals_each_sequence_alone(name):
    gen = torch.Generator().manual_seed(2)
    cell = CELLS[name]()
    x = torch.randn(3, 6, 4, generator=gen)
    lengths = [6, 2, 4]
    out, final = rk.dynamic_rnn(cell, x, sequence_length=lengths)
    for b, n in enumerate(lengths):
        alone, st = _run_again(cell, x[b:b + 1, :n])
        torch.testing.assert_close(out[b:b + 1, :n], alone, atol=1e-6, rtol=1e-6)
        assert torch.count_nonzero(out[b, n:]) == 0
        for a, c in zip(_leaves(final), _leaves(st), strict=True):
            torch.testing.assert_close(a[b:b + 1], c, atol=1e-6, rtol=1e-6)


def _run_again(cell, x):
    """Unroll an already-built cell (no new variables are made)."""
    out, state = cell.unroll(x.transpose(0, 1), cell.zero_state(x.shape[0]))
    return out.transpose(0, 1), state


def test_backward_direction_reverses_within_length():
    gen = torch.Generator().manual_seed(3)
    fw, bw = rk.GRUCell(3), rk.GRUCell(3)
    x = torch.randn(2, 5, 4, generator=gen)
    lengths = torch.tensor([5, 3])
    (_, out_bw), (_, st_bw) = rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths)
    for b, n in enumerate(lengths.tolist()):
        rev, st = _run_again(bw, x[b:b + 1, :n].flip(1))
        torch.testing.assert_close(out_bw[b:b + 1, :n], rev.flip(1), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(st_bw[b:b + 1], st, atol=1e-6, rtol=1e-6)


def test_reverse_sequence_matches_numpy():
    x = torch.arange(2 * 5, dtype=torch.float32).reshape(5, 2, 1)
    lengths = torch.tensor([3, 0])
    got = reverse_sequence(x, lengths)[..., 0].T.numpy()
    np.testing.assert_array_equal(got, [[4, 2, 0, 6, 8], [1, 3, 5, 7, 9]])


@pytest.mark.parametrize("name", ["gru", "basic_lstm", "multi"])
def test_swap_memory_equals_plain_unroll(name):
    gen = torch.Generator().manual_seed(4)
    cell = CELLS[name]()
    x = torch.randn(2, 17, 4, generator=gen, requires_grad=True)
    # the reference loop, plain and chunked (tests/test_fast.py covers the fast path's chunks)
    out, _ = rk.dynamic_rnn(cell, x, sequence_length=[17, 9], fast=False)
    g_plain = torch.autograd.grad(out.square().sum(), [x, *cell.parameters()])
    with rk.variable_scope("", reuse=True):
        out2, _ = rk.dynamic_rnn(cell, x, sequence_length=[17, 9], swap_memory=True, scope="rnn",
                                 fast=False)
    g_swap = torch.autograd.grad(out2.square().sum(), [x, *cell.parameters()])
    torch.testing.assert_close(out, out2, atol=0, rtol=0)
    for a, b in zip(g_plain, g_swap, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_gru_closed_form_and_gate_views():
    """h' = u h + (1-u) c written out from cell.gates() equals the cell's step."""
    cell = rk.GRUCell(3, input_size=2)
    g = cell.gates()
    assert g["W_r"].shape == (2, 3) and g["U_c"].shape == (3, 3)
    assert g["W_r"].data_ptr() == cell.get_parameter("gates/kernel").data_ptr()  # a view
    assert torch.equal(g["b_r"], torch.ones(3)) and torch.equal(g["b_c"], torch.zeros(3))
    x, h = torch.randn(4, 2), torch.randn(4, 3)
    r = torch.sigmoid(x @ g["W_r"] + h @ g["U_r"] + g["b_r"])
    u = torch.sigmoid(x @ g["W_u"] + h @ g["U_u"] + g["b_u"])
    c = torch.tanh(x @ g["W_c"] + (r * h) @ g["U_c"] + g["b_c"])
    torch.testing.assert_close(cell(x, h)[0], u * h + (1 - u) * c)


@pytest.mark.parametrize("reset_after", [False, True])
def test_tf1_gru_canonical_is_one_joint_kernel_with_exact_gradients(reset_after):
    """A TF1 GRU's ``Canonical``: ``W`` and ``U`` are the row blocks of one ``[depth+H, 3H]``
    matrix, the gate views of ``gates()`` in Keras order (u, r, c), and ``b_h`` is
    ``[0, 0, b_hc]`` (reset after); its gradients, and their own gradients, reach the kernels
    and biases exactly (float64 gradcheck and gradgradcheck against finite differences)."""
    cell = rk.GRUCell(3, input_size=2, dtype=torch.float64, reset_after=reset_after)
    names = [n for n, _ in cell.named_parameters()]
    with torch.no_grad():
        for n in names:
            cell.get_parameter(n).copy_(torch.randn_like(cell.get_parameter(n)))
    p, g = cell.canonical(), cell.gates()
    assert p.W._base is p.U._base and p.W._base.shape == (5, 9)
    assert p.U.data_ptr() == p.W.data_ptr() + 2 * 9 * 8  # rows 2.. of the same buffer
    exact = {"rtol": 0, "atol": 0}
    torch.testing.assert_close(p.W, torch.cat([g["W_u"], g["W_r"], g["W_c"]], 1), **exact)
    torch.testing.assert_close(p.U, torch.cat([g["U_u"], g["U_r"], g["U_c"]], 1), **exact)
    torch.testing.assert_close(p.b, torch.cat([g["b_u"], g["b_r"], g["b_c"]]), **exact)
    if reset_after:
        torch.testing.assert_close(p.b_h, torch.cat([torch.zeros(6, dtype=torch.float64),
                                                     g["b_hc"]]), **exact)
    else:
        assert p.b_h is None

    def joint(*weights):
        return tuple(t for t in gru_cells._Joint.apply(2, *weights) if t is not None)

    order = ["gates/kernel", "gates/bias", *([
        "candidate/input_projection/kernel", "candidate/input_projection/bias",
        "candidate/hidden_projection/kernel", "candidate/hidden_projection/bias"]
        if reset_after else ["candidate/kernel", "candidate/bias"])]
    inputs = [cell.get_parameter(n).detach().clone().requires_grad_() for n in order]
    assert torch.autograd.gradcheck(joint, inputs)
    assert torch.autograd.gradgradcheck(joint, inputs)
    # with no gradient to record (no_grad, or variables that need none), the same tensors
    # gathered without the autograd node
    for quiet in (torch.no_grad(), _frozen(cell)):
        with quiet:
            again = cell.canonical()
        assert again.W.grad_fn is None and again.W._base.shape == (5, 9)
        for name in ("W", "U", "b", "b_h"):
            torch.testing.assert_close(getattr(again, name), getattr(p, name), **exact)
    assert p.W.grad_fn is not None


@pytest.mark.parametrize("make", [
    lambda: rk.GRUCell(4, input_size=3, dtype=torch.float64),
    lambda: rk.GRUCell(4, input_size=3, dtype=torch.float64, reset_after=True),
    lambda: rk.GRUCell(4, input_size=3, dtype=torch.float64, activation="relu"),
    lambda: rk.GRUBlockCell(4, input_size=3, dtype=torch.float64),
], ids=["reset_before", "reset_after", "relu", "block"])
def test_a_lone_gru_step_is_the_unrolls_step(make):
    """``cell(x, h)`` computes TF1's formula on the variables as stored (no joint kernel): the
    ``Canonical`` step's numbers and gradients (float64, to 1e-12), and float64 gradcheck."""
    cell = make()
    with torch.no_grad():
        for t in cell.parameters():
            t.copy_(torch.randn_like(t))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    params = cell.sequence_params()
    want, _ = cell.step(cell.prepare_inputs(x, params), h, params)
    got, state = cell(x, h)
    assert state is got
    close = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(got, want, **close)
    weights = [x, h, *cell.parameters()]
    for a, b in zip(torch.autograd.grad(got.sin().sum(), weights),
                    torch.autograd.grad(want.sin().sum(), weights), strict=True):
        torch.testing.assert_close(a, b, **close)
    assert torch.autograd.gradcheck(lambda x, h: cell(x, h)[0], (x, h))


@pytest.mark.parametrize("state_is_tuple", [True, False])
def test_a_stacks_lone_step_calls_its_gru_layers(state_is_tuple):
    """``MultiRNNCell``'s call: each layer whose call is its step is called (a GRU's step on
    its variables as stored); the numbers and gradients of the stack's ``step``."""
    cells = [rk.GRUCell(4), rk.GRUCell(3, reset_after=True),
             rk.LSTMCell(2, state_is_tuple=state_is_tuple)]
    stack = rk.MultiRNNCell(cells, state_is_tuple=state_is_tuple)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    stack.ensure_built(3, torch.float64)
    with torch.no_grad():
        for t in stack.parameters():
            t.copy_(torch.randn_like(t))
    state = stack.zero_state(5, torch.float64)
    state = (torch.randn_like(state) if not state_is_tuple else
             tuple(rk.LSTMStateTuple(*map(torch.randn_like, s)) if isinstance(s, tuple)
                   else torch.randn_like(s) for s in state))
    assert stack.calls_are_steps() and all(c.calls_are_steps() for c in cells)
    params = stack.sequence_params()
    want = stack.step(stack.prepare_inputs(x, params), state, params)
    got = stack(x, state)
    close = {"rtol": 1e-12, "atol": 1e-12}
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want),
                    strict=True):
        torch.testing.assert_close(a, b, **close)
    weights = [x, *stack.parameters()]

    def loss(out):
        return sum(t.sin().sum() for t in torch.utils._pytree.tree_leaves(out))

    for a, b in zip(torch.autograd.grad(loss(got), weights), torch.autograd.grad(loss(want), weights),
                    strict=True):
        torch.testing.assert_close(a, b, **close)


@contextlib.contextmanager
def _frozen(module):
    """``module``'s parameters with ``requires_grad`` off inside the block."""
    params = list(module.parameters())
    for t in params:
        t.requires_grad_(False)
    try:
        yield
    finally:
        for t in params:
            t.requires_grad_(True)


def test_lstm_forget_bias_is_added_at_run_time_not_stored():
    cell = rk.BasicLSTMCell(2, forget_bias=3.0, input_size=1)
    assert torch.count_nonzero(cell.get_parameter("bias")) == 0
    with torch.no_grad():
        cell.get_parameter("kernel").zero_()
    state = rk.LSTMStateTuple(torch.ones(1, 2), torch.zeros(1, 2))
    _, new = cell(torch.zeros(1, 1), state)
    torch.testing.assert_close(new.c, torch.full((1, 2), float(torch.sigmoid(torch.tensor(3.0)))))


@pytest.mark.parametrize("make", [
    lambda: rk.BasicLSTMCell(3, forget_bias=0.5, input_size=2),
    lambda: rk.LSTMCell(3, use_peepholes=True, num_proj=2, input_size=2),
    lambda: rk.LayerNormLSTMCell(3, input_size=2),
])
def test_tf1_lstm_unrolls_read_the_kernel_in_place(make):
    """The unroll's weights are views of the TF1 kernel (its i, j, f, o blocks where they are);
    canonical() is the same weights in Keras order i, f, g(j), o, with forget_bias on f."""
    cell = make()
    kernel, H = cell.get_parameter("kernel"), 3
    with torch.no_grad():
        kernel.copy_(torch.randn_like(kernel))
    native, keras = cell.sequence_params(), cell.canonical()
    assert native.gate_order == (0, 2, 1, 3) and keras.gate_order is None
    assert native.W.data_ptr() == kernel.data_ptr() and native.U._base is kernel
    for k, letter in enumerate("ifjo"):  # Keras block k holds TF1 gate `letter`
        tf1 = "ijfo".index(letter)
        torch.testing.assert_close(keras.W[:, k * H:(k + 1) * H], kernel[:2, tf1 * H:(tf1 + 1) * H])
        torch.testing.assert_close(keras.U[:, k * H:(k + 1) * H], kernel[2:, tf1 * H:(tf1 + 1) * H])
    if keras.b is not None:
        expected = torch.zeros(4, H)
        expected[1] = cell.forget_bias  # Keras block 1 is f
        torch.testing.assert_close(keras.b, expected.flatten())
    v = torch.randn(5, 4 * H)
    keras_v = v.unflatten(-1, (4, H))[:, [0, 2, 1, 3]]
    for a, b in zip(native.lstm_gates(v), keras_v.unbind(1), strict=True):
        torch.testing.assert_close(a, b)


def test_linear_rnn_with_ones_kernel_sums_inputs():
    """A linear BasicRNNCell with kernel [[1], [1]] and zero bias accumulates its inputs."""
    cell = rk.BasicRNNCell(1, activation="linear", input_size=1)
    with torch.no_grad():
        cell.get_parameter("kernel").fill_(1.0)
    x = torch.arange(1.0, 6.0).reshape(1, 5, 1)
    out, state = rk.dynamic_rnn(cell, x)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 3.0, 6.0, 10.0, 15.0]))


def test_dropout_wrapper_variational_masks_repeat_over_time():
    torch.manual_seed(0)
    cell = rk.DropoutWrapper(rk.BasicRNNCell(50, activation="linear"), output_keep_prob=0.5,
                             variational_recurrent=True, seed=3)
    out, _ = rk.dynamic_rnn(cell, torch.ones(2, 4, 3))
    zeros = out == 0
    assert torch.equal(zeros[:, 0], zeros[:, 3]) and 0 < zeros.float().mean() < 1
    cell.eval()
    with rk.variable_scope("", reuse=True):
        out_eval, _ = rk.dynamic_rnn(cell, torch.ones(2, 4, 3), scope="rnn")
    assert torch.count_nonzero(out_eval == 0) == 0


@pytest.mark.parametrize("make", [
    lambda: rk.GRUCell(4), lambda: rk.GRUCell(4, reset_after=True), lambda: rk.BasicLSTMCell(4),
    lambda: rk.LSTMCell(4, use_peepholes=True, num_proj=3), lambda: rk.BasicRNNCell(4),
    lambda: rk.LayerNormLSTMCell(4),
], ids=["gru", "gru_reset_after", "basic_lstm", "lstm_peep_proj", "rnn", "layer_norm_lstm"])
def test_functional_call_swaps_a_cells_variables(make):
    """``torch.func.functional_call`` runs a TF1 cell on the tensors it is given (the cells read
    their variables through ``get_parameter``, which takes the swapped-in plain tensors): the
    same outputs as the cell holding those values, gradients to the given tensors, on the
    reference loop and on the fast path alike."""
    cell, x = make(), torch.randn(2, 5, 3)
    rk.dynamic_rnn(cell, x)  # build

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x, fast):
            return rk.dynamic_rnn(self.cell, x, fast=fast)[0]

    model = Model()
    given = {k: (v.detach() * 1.5).requires_grad_() for k, v in model.named_parameters()}
    runs = []
    for fast in (False, "auto"):
        y = torch.func.functional_call(model, given, (x, fast))
        runs.append((y, torch.autograd.grad(y.sin().sum(), list(given.values()))))
    with torch.no_grad():
        for p in cell.parameters():
            p.mul_(1.5)
    torch.testing.assert_close(runs[0][0], model(x, False), rtol=0, atol=0)
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in cell.parameters())


def test_reuse_shares_parameters_between_towers():
    x = torch.randn(2, 3, 4)
    with rk.variable_scope("tower"):
        c1 = rk.GRUCell(3)
        rk.dynamic_rnn(c1, x)
    with rk.variable_scope("tower", reuse=True):
        c2 = rk.GRUCell(3)
        rk.dynamic_rnn(c2, x)
    assert [id(p) for p in c1.parameters()] == [id(p) for p in c2.parameters()]
    assert len(rk.global_variables()) == 4


@pytest.mark.parametrize("call, match", [
    (lambda c: rk.dynamic_rnn(c, torch.randn(2, 3)), r"\[batch, time, depth\]"),
    (lambda c: rk.dynamic_rnn(c, torch.randn(2, 3, 4), sequence_length=[1, 2, 3]),
     r"sequence_length must have shape \[batch\] = \[2\]"),
    (lambda c: rk.dynamic_rnn(c, torch.randn(2, 3, 4), sequence_length=[1, 4]),
     r"in \[0, 3\]"),
    (lambda c: rk.dynamic_rnn(c, torch.randn(2, 3, 4), sequence_length=[-1, 2]), r"in \[0, 3\]"),
    (lambda c: rk.dynamic_rnn(c, torch.randn(2, 3, 4), initial_state=torch.zeros(3, 3)),
     r"initial_state must have shapes \[2, 3\]"),
    (lambda c: rk.dynamic_rnn(c, torch.randn(2, 3, 4),
                              initial_state=(torch.zeros(2, 3), torch.zeros(2, 3))),
     "initial_state must have the structure"),
    (lambda c: rk.dynamic_rnn("gru", torch.randn(2, 3, 4)), "cell must be an rnnkit RNNCell"),
    (lambda c: c(torch.randn(2, 3, 4), torch.zeros(2, 3)), r"\[batch, depth\]"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(rk.GRUCell(3))


def test_depth_change_after_build_is_an_error():
    cell = rk.GRUCell(3)
    rk.dynamic_rnn(cell, torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="must have depth 4"):
        cell(torch.randn(2, 5), torch.zeros(2, 3))


@pytest.mark.parametrize("make, match", [
    (lambda: rk.GRUCell(0), "num_units must be a positive int"),
    (lambda: rk.LSTMCell(3, num_proj=-1), "num_proj must be a positive int"),
    (lambda: rk.LSTMCell(3, cell_clip=-1.0), "cell_clip must be a positive number"),
    (lambda: rk.DropoutWrapper(rk.GRUCell(2), input_keep_prob=0.0), "input_keep_prob"),
    (lambda: rk.MultiRNNCell([]), "non-empty"),
    (lambda: rk.MultiRNNCell([rk.GRUCell(2), "x"]), r"cells\[1\]"),
    (lambda: rk.GRUCell(2).gates(), "no variables yet"),
])
def test_bad_construction(make, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        make()


def test_describe_reports_peephole_fallback_under_orthogonal_scope():
    with rk.variable_scope("model", initializer=rk.init.orthogonal()):
        cell = rk.LSTMCell(4, use_peepholes=True)
        rk.dynamic_rnn(cell, torch.randn(2, 3, 5))
    table = rk.describe(cell)
    row = table["model/rnn/lstm_cell/w_f_diag:0"]
    assert row["initializer"] == "glorot_uniform()" and row["origin"].startswith("fallback")
    assert table["model/rnn/lstm_cell/kernel:0"]["initializer"] == "orthogonal()"
    assert "fallback" in str(table)


def test_layer_norm_lstm_matches_numpy_reference():
    """TF's LayerNormBasicLSTMCell equations written in NumPy (epsilon 1e-12, gain/shift per gate)."""
    cell = rk.LayerNormLSTMCell(3, forget_bias=0.7, norm_gain=1.3, norm_shift=0.2, input_size=2)
    g = {k: v.detach().double().numpy() for k, v in cell.gates().items()}
    x = np.random.RandomState(0).randn(4, 2)
    c, h = np.random.RandomState(1).randn(2, 4, 3)

    def ln(v, gamma, beta):
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-12) * gamma + beta

    def sig(v):
        return 1 / (1 + np.exp(-v))

    pre = {k: ln(x @ g[f"W_{k}"] + h @ g[f"U_{k}"], g[f"gamma_{k}"], g[f"beta_{k}"]) for k in "ijfo"}
    c_new = ln(c * sig(pre["f"] + 0.7) + sig(pre["i"]) * np.tanh(pre["j"]), g["gamma_c"], g["beta_c"])
    h_new = np.tanh(c_new) * sig(pre["o"])
    state = rk.LSTMStateTuple(torch.tensor(c, dtype=torch.float32), torch.tensor(h, dtype=torch.float32))
    out, new = cell(torch.tensor(x, dtype=torch.float32), state)
    np.testing.assert_allclose(new.c.detach().numpy(), c_new, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.detach().numpy(), h_new, rtol=1e-5, atol=1e-5)
    names = sorted(n for n, _ in cell.named_parameters())
    assert names == sorted(["kernel"] + [f"{s}/{p}" for s in ("input", "transform", "forget", "output",
                                                               "state") for p in ("gamma", "beta")])
