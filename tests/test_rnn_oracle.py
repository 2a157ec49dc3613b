"""TF1 cells and unrolling against real TensorFlow: the same programs, the same weights (copied by
name from rnnkit into TF), then outputs, final states and the gradients of a loss with respect to
inputs, initial states and every variable compared to 1e-5 in float32."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from rnn_programs import PROGRAMS, B, D, T, inputs, loss_weights, state_arrays
from tf_oracle import requires_tf, run_tf
from torch.utils import _pytree as pytree

import rnnkit as rk

pytestmark = [pytest.mark.oracle, requires_tf]

RK = SimpleNamespace(
    **{n: getattr(rk, n) for n in (
        "BasicRNNCell", "GRUCell", "BasicLSTMCell", "LSTMCell", "MultiRNNCell", "DropoutWrapper",
        "ResidualWrapper", "dynamic_rnn", "bidirectional_dynamic_rnn", "static_rnn",
        "static_bidirectional_rnn", "stack_bidirectional_dynamic_rnn", "stack_bidirectional_rnn",
        "variable_scope", "raw_rnn", "TensorArray")},
    relu=torch.relu, orthogonal=rk.init.orthogonal, tanh=torch.tanh, reduce_all=torch.all,
    zeros=lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    cond=lambda pred, true_fn, false_fn: true_fn() if bool(pred) else false_fn())

COMPARED = sorted(p for p in PROGRAMS if p != "scoped_stack_with_orthogonal")


def run_rnnkit(src: str, arrays: dict) -> dict:
    """Run one program in rnnkit; return weights by name, outputs, states and gradients."""
    rk.reset_default_graph()
    x = torch.tensor(arrays["X"], requires_grad=True)
    state_leaves: list[torch.Tensor] = []

    def make_state(cell):
        leaves, spec = pytree.tree_flatten(cell.state_size)
        made = [torch.tensor(a, requires_grad=True)
                for a in state_arrays(leaves, seed=len(state_leaves) + 1)]
        state_leaves.extend(made)
        return pytree.tree_unflatten(made, spec)

    xt = x.transpose(0, 1)
    env = dict(R=RK, F32=torch.float32, X=x, XT=xt, XS=list(xt.unbind(0)), B=B, T=T, D=D,
               L=torch.tensor(arrays["L"]), make_state=make_state)
    exec(src, env)
    leaves = pytree.tree_leaves((env["out"], env["st"]))
    loss = sum((t * torch.tensor(loss_weights(tuple(t.shape), k))).sum() for k, t in enumerate(leaves))
    variables = rk.global_variables()
    grads = torch.autograd.grad(loss, [x, *state_leaves, *variables], allow_unused=True)
    return {"names": [v.name[:-2] for v in variables],
            "weights": {v.name[:-2]: v.detach().numpy() for v in variables},
            "leaves": [t.detach().numpy() for t in leaves],
            "grads": [np.zeros(t.shape, np.float32) if g is None else g.numpy()
                      for t, g in zip([x, *state_leaves, *variables], grads, strict=True)]}


_TF_SIDE = Path(__file__).with_name("rnn_programs.py").read_text() + """
import types
tf1.disable_eager_execution()
nn = tf1.nn.rnn_cell
R = types.SimpleNamespace(
    BasicRNNCell=nn.BasicRNNCell, GRUCell=nn.GRUCell, BasicLSTMCell=nn.BasicLSTMCell,
    LSTMCell=nn.LSTMCell, MultiRNNCell=nn.MultiRNNCell, DropoutWrapper=nn.DropoutWrapper,
    ResidualWrapper=nn.ResidualWrapper, dynamic_rnn=tf1.nn.dynamic_rnn,
    bidirectional_dynamic_rnn=tf1.nn.bidirectional_dynamic_rnn, static_rnn=tf1.nn.static_rnn,
    static_bidirectional_rnn=tf1.nn.static_bidirectional_rnn, variable_scope=tf1.variable_scope,
    relu=tf.nn.relu, orthogonal=tf1.orthogonal_initializer, raw_rnn=tf1.nn.raw_rnn,
    TensorArray=tf1.TensorArray, tanh=tf1.tanh, reduce_all=tf1.reduce_all, zeros=tf1.zeros,
    cond=tf1.cond)


def _stacked(run, concat):
    # contrib's stack_bidirectional_(dynamic_)rnn: layer k under scope/cell_k reads the
    # concatenated outputs of layer k - 1
    def stack(cells_fw, cells_bw, inputs, initial_states_fw=None, initial_states_bw=None,
              scope=None, **kw):
        states_fw, states_bw, prev = [], [], inputs
        with tf1.variable_scope(scope or "stack_bidirectional_rnn"):
            for k, (fw, bw) in enumerate(zip(cells_fw, cells_bw)):
                with tf1.variable_scope("cell_%d" % k):
                    out, s_fw, s_bw = run(
                        fw, bw, prev, (initial_states_fw or [None] * 9)[k],
                        (initial_states_bw or [None] * 9)[k], **kw)
                prev = concat(out)
                states_fw.append(s_fw)
                states_bw.append(s_bw)
        return prev, tuple(states_fw), tuple(states_bw)
    return stack


def _dynamic(fw, bw, x, s_fw, s_bw, **kw):
    out, (a, b) = tf1.nn.bidirectional_dynamic_rnn(fw, bw, x, initial_state_fw=s_fw,
                                                   initial_state_bw=s_bw, **kw)
    return out, a, b


def _static(fw, bw, x, s_fw, s_bw, **kw):
    return tf1.nn.static_bidirectional_rnn(fw, bw, x, initial_state_fw=s_fw,
                                           initial_state_bw=s_bw, **kw)


R.stack_bidirectional_dynamic_rnn = _stacked(_dynamic, lambda out: tf1.concat(out, 2))
R.stack_bidirectional_rnn = _stacked(_static, lambda out: out)
for name in sorted(PROGRAMS):
    tf1.reset_default_graph()
    x = tf1.constant(INPUTS["X"])
    xt = tf1.transpose(x, [1, 0, 2])
    state_leaves = []

    def make_state(cell):
        sizes = tf.nest.flatten(cell.state_size)
        made = [tf1.constant(a) for a in state_arrays(sizes, seed=len(state_leaves) + 1)]
        state_leaves.extend(made)
        return tf.nest.pack_sequence_as(cell.state_size, made)

    env = dict(R=R, F32=tf.float32, X=x, XT=xt, XS=tf1.unstack(xt), L=tf1.constant(INPUTS["L"]),
               make_state=make_state, B=B, T=T, D=D)
    try:
        exec(PROGRAMS[name], env)
    except Exception as e:
        RESULT[name + "|error"] = f"{type(e).__name__}: {e}"
        continue
    leaves = tf.nest.flatten((env["out"], env["st"]))
    # raw_rnn's stacked outputs have a dynamic time axis; those programs run T steps (another
    # count fails the run with a shape mismatch)
    loss = tf1.add_n([tf1.reduce_sum(t * loss_weights(tuple(T if d is None else d
                                                            for d in t.shape.as_list()), k))
                      for k, t in enumerate(leaves)])
    tvars = tf1.global_variables()
    RESULT[name + "|names"] = [v.op.name for v in tvars]
    targets = [x, *state_leaves, *tvars]
    grads = [g if g is not None else tf1.zeros_like(t) for t, g in
             zip(targets, tf1.gradients(loss, targets))]
    with tf1.Session() as sess:
        for v in tvars:
            key = name + "|w|" + v.op.name
            if key in INPUTS:
                v.load(INPUTS[key], sess)
        got_leaves, got_grads = sess.run([leaves, grads])
    for k, a in enumerate(got_leaves):
        RESULT[f"{name}|leaf|{k}"] = np.asarray(a)
    for k, g in enumerate(got_grads):
        RESULT[f"{name}|grad|{k}"] = np.asarray(g)
"""


@pytest.fixture(scope="module")
def both():
    arrays = inputs()
    ours = {name: run_rnnkit(PROGRAMS[name], arrays) for name in COMPARED}
    feed = dict(arrays)
    for name, r in ours.items():
        feed.update({f"{name}|w|{w}": value for w, value in r["weights"].items()})
    return ours, run_tf(_TF_SIDE, feed)


@pytest.mark.parametrize("program", COMPARED)
def test_names_outputs_states_and_gradients_equal_tf1(program, both):
    ours, tf = both[0][program], both[1]
    assert program + "|error" not in tf, tf.get(program + "|error")
    assert ours["names"] == tf[program + "|names"]
    for k, leaf in enumerate(ours["leaves"]):
        np.testing.assert_allclose(leaf, tf[f"{program}|leaf|{k}"], rtol=1e-5, atol=1e-5,
                                   err_msg=f"output/state leaf {k}")
    targets = ["inputs"] + [f"state {k}" for k in range(len(ours["grads"]) - 1 - len(ours["names"]))]
    targets += ours["names"]
    for k, (what, grad) in enumerate(zip(targets, ours["grads"], strict=True)):
        np.testing.assert_allclose(grad, tf[f"{program}|grad|{k}"], rtol=1e-5, atol=1e-5,
                                   err_msg=f"gradient w.r.t. {what}")


def test_outer_orthogonal_scope_with_peepholes_fails_in_tf_and_falls_back_here(both):
    """TF1 applies the scope's orthogonal initializer to the 1-D peephole vectors and fails;
    rnnkit uses glorot_uniform for them, and describe() says so."""
    assert "at least two-dimensional" in both[1]["scoped_stack_with_orthogonal|error"]
    run_rnnkit(PROGRAMS["scoped_stack_with_orthogonal"], inputs())
    table = rk.describe()
    peep = table["model/bidirectional_rnn/fw/multi_rnn_cell/cell_1/lstm_cell/w_f_diag:0"]
    kernel = table["model/bidirectional_rnn/fw/multi_rnn_cell/cell_0/gru_cell/gates/kernel:0"]
    assert peep["origin"].startswith("fallback") and "glorot" in peep["initializer"].lower()
    assert "orthogonal" in kernel["initializer"].lower()
