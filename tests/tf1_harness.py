"""Run TF1 RNN programs (Python source over a namespace ``R``) in rnnkit and in real TensorFlow.

A program sees ``R`` (cells, unroll functions, a few ops), ``F32``, ``X`` (batch-major inputs),
``XT`` (time-major), ``XS`` (a list of per-step inputs), ``L`` (sequence lengths), ``B``, ``T``,
``D`` and ``make_state(cell)`` (a random initial state of the cell's structure); it sets ``out``
and ``st``. Each side returns the variables' names, the output and state leaves, and the
gradients of one fixed loss over those leaves with respect to the inputs, the states made by
``make_state`` and every variable. The TF side loads rnnkit's weights by name first.

``arrays`` holds ``X`` and ``L`` for every program, or ``<name>|X`` and ``<name>|L`` for one.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from rnn_programs import loss_weights, state_arrays
from torch.utils import _pytree as pytree

import rnnkit as rk

RK = SimpleNamespace(
    **{n: getattr(rk, n) for n in (
        "BasicRNNCell", "GRUCell", "BasicLSTMCell", "LSTMCell", "MultiRNNCell", "DropoutWrapper",
        "ResidualWrapper", "dynamic_rnn", "bidirectional_dynamic_rnn", "static_rnn",
        "static_bidirectional_rnn", "stack_bidirectional_dynamic_rnn", "stack_bidirectional_rnn",
        "variable_scope", "raw_rnn", "TensorArray")},
    relu=torch.relu, sigmoid=torch.sigmoid, softsign=torch.nn.functional.softsign,
    elu=torch.nn.functional.elu, orthogonal=rk.init.orthogonal, tanh=torch.tanh,
    reduce_all=torch.all, zeros=lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    cond=lambda pred, true_fn, false_fn: true_fn() if bool(pred) else false_fn())


def program_arrays(arrays: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The inputs and lengths of program ``name``: its own, else the shared ones."""
    return arrays.get(f"{name}|X", arrays.get("X")), arrays.get(f"{name}|L", arrays.get("L"))


def run_rnnkit(name: str, src: str, arrays: dict, fast=None, restore: str | None = None) -> dict:
    """Run one program in rnnkit (under ``fast_mode(fast)`` unless None); return weights by name,
    output and state leaves, and gradients. ``restore``: a TF checkpoint; the program runs once
    to make its variables, they are restored from it (every one, strictly), and it runs again
    reusing them, as TF1 code that restores a checkpoint does."""
    rk.reset_default_graph()
    if restore is not None:
        _run(name, src, arrays, fast)
        rk.io.restore(restore, strict=True)
        with rk.variable_scope(rk.get_variable_scope(), reuse=True):
            return _run(name, src, arrays, fast)
    return _run(name, src, arrays, fast)


def _run(name: str, src: str, arrays: dict, fast) -> dict:
    x_np, lengths = program_arrays(arrays, name)
    x = torch.tensor(x_np, requires_grad=True)
    batch, steps, depth = x.shape
    state_leaves: list[torch.Tensor] = []

    def make_state(cell):
        leaves, spec = pytree.tree_flatten(cell.state_size)
        made = [torch.tensor(a, requires_grad=True)
                for a in state_arrays(leaves, seed=len(state_leaves) + 1, batch=batch)]
        state_leaves.extend(made)
        return pytree.tree_unflatten(made, spec)

    xt = x.transpose(0, 1)
    env = dict(R=RK, F32=torch.float32, X=x, XT=xt, XS=list(xt.unbind(0)), B=batch, T=steps,
               D=depth, L=torch.tensor(lengths), make_state=make_state)
    if fast is None:
        exec(src, env)
    else:
        with rk.fast.fast_mode(fast):
            exec(src, env)
    leaves = pytree.tree_leaves((env["out"], env["st"]))
    loss = sum((t * torch.tensor(loss_weights(tuple(t.shape), k))).sum() for k, t in enumerate(leaves))
    variables = rk.global_variables()
    targets = [x, *state_leaves, *variables]
    # a loss that reaches nothing (a raw_rnn whose entries all have length 0 runs no step, from
    # a zero state): every gradient zero, as TF's None gradients are read
    grads = (torch.autograd.grad(loss, targets, allow_unused=True)
             if torch.is_tensor(loss) and loss.requires_grad else [None] * len(targets))
    return {"names": [v.name[:-2] for v in variables],
            "weights": {v.name[:-2]: v.detach().numpy() for v in variables},
            "leaves": [t.detach().numpy() for t in leaves],
            "grads": [np.zeros(t.shape, np.float32) if g is None else g.numpy()
                      for t, g in zip(targets, grads, strict=True)]}


def tf_feed(arrays: dict, ours: dict[str, dict], folder: str | None = None) -> dict:
    """The TF side's inputs: the programs' arrays and rnnkit's weights, by program and name;
    with ``folder``, the weights as a TF checkpoint rnnkit wrote there (``<name>|ckpt``, which
    TF's Saver restores), and where TF saves a checkpoint of its own initial values
    (``<name>|save``)."""
    feed = dict(arrays)
    for name, r in ours.items():
        if folder is None:
            feed.update({f"{name}|w|{w}": value for w, value in r["weights"].items()})
            continue
        path = rk.io.write_tf_checkpoint(f"{folder}/{name}/rnnkit", {
            w: torch.from_numpy(value) for w, value in r["weights"].items()})
        feed[f"{name}|ckpt"] = np.array(str(path))
        feed[f"{name}|save"] = np.array(f"{folder}/{name}/tf/model")
    return feed


def tf_script(programs: dict[str, str]) -> str:
    """The script that runs ``programs`` in real TensorFlow (graph mode, ``tf.compat.v1``)."""
    helpers = Path(__file__).with_name("rnn_programs.py").read_text()
    return helpers + f"\nPROGRAMS = json.loads({json.dumps(json.dumps(programs))})\n" + _TF_SIDE


_TF_SIDE = """
import types
tf1.disable_eager_execution()
nn = tf1.nn.rnn_cell
R = types.SimpleNamespace(
    BasicRNNCell=nn.BasicRNNCell, GRUCell=nn.GRUCell, BasicLSTMCell=nn.BasicLSTMCell,
    LSTMCell=nn.LSTMCell, MultiRNNCell=nn.MultiRNNCell, DropoutWrapper=nn.DropoutWrapper,
    ResidualWrapper=nn.ResidualWrapper, dynamic_rnn=tf1.nn.dynamic_rnn,
    bidirectional_dynamic_rnn=tf1.nn.bidirectional_dynamic_rnn, static_rnn=tf1.nn.static_rnn,
    static_bidirectional_rnn=tf1.nn.static_bidirectional_rnn, variable_scope=tf1.variable_scope,
    relu=tf.nn.relu, sigmoid=tf.sigmoid, softsign=tf.nn.softsign, elu=tf.nn.elu,
    orthogonal=tf1.orthogonal_initializer, raw_rnn=tf1.nn.raw_rnn,
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
    x_np = INPUTS.get(name + "|X", INPUTS.get("X"))
    lengths = INPUTS.get(name + "|L", INPUTS.get("L"))
    batch, steps, depth = x_np.shape
    x = tf1.constant(x_np)
    xt = tf1.transpose(x, [1, 0, 2])
    state_leaves = []

    def make_state(cell):
        sizes = tf.nest.flatten(cell.state_size)
        made = [tf1.constant(a) for a in state_arrays(sizes, seed=len(state_leaves) + 1,
                                                      batch=batch)]
        state_leaves.extend(made)
        return tf.nest.pack_sequence_as(cell.state_size, made)

    env = dict(R=R, F32=tf.float32, X=x, XT=xt, XS=tf1.unstack(xt), L=tf1.constant(lengths),
               make_state=make_state, B=batch, T=steps, D=depth)
    try:
        exec(PROGRAMS[name], env)
    except Exception as e:
        RESULT[name + "|error"] = f"{type(e).__name__}: {e}"
        continue
    leaves = tf.nest.flatten((env["out"], env["st"]))
    # raw_rnn's stacked outputs have a dynamic time axis (its loop stops when every entry is
    # finished, up to T steps): the weights of T steps, cut to the steps run, are those of the
    # shape rnnkit's outputs have (loss_weights is one sequence, reshaped)
    def weighted(t, k):
        dims = t.shape.as_list()
        w = loss_weights(tuple(steps if d is None else d for d in dims), k)
        return tf1.reduce_sum(t * (tf1.constant(w)[:tf1.shape(t)[0]] if dims and dims[0] is None
                                   else w))

    loss = tf1.add_n([weighted(t, k) for k, t in enumerate(leaves)])
    tvars = tf1.global_variables()
    RESULT[name + "|names"] = [v.op.name for v in tvars]
    targets = [x, *state_leaves, *tvars]
    grads = [g if g is not None else tf1.zeros_like(t) for t, g in
             zip(targets, tf1.gradients(loss, targets))]
    with tf1.Session() as sess:
        saver = tf1.train.Saver() if tvars else None
        if name + "|ckpt" in INPUTS and saver:
            saver.restore(sess, str(INPUTS[name + "|ckpt"]))
        for v in tvars:
            key = name + "|w|" + v.op.name
            if key in INPUTS:
                v.load(INPUTS[key], sess)
        got_leaves, got_grads = sess.run([leaves, grads])
        if name + "|save" in INPUTS and saver:  # TF's own initial values, for rnnkit to restore
            sess.run(tf1.global_variables_initializer())
            for k, a in enumerate(sess.run(leaves)):
                RESULT[f"{name}|initial|{k}"] = np.asarray(a)
            RESULT[name + "|saved"] = saver.save(sess, str(INPUTS[name + "|save"]))
    for k, a in enumerate(got_leaves):
        RESULT[f"{name}|leaf|{k}"] = np.asarray(a)
    for k, g in enumerate(got_grads):
        RESULT[f"{name}|grad|{k}"] = np.asarray(g)
"""


def mismatches(name: str, ours: dict, tf: dict, tol: float = 1e-5, scaled: bool = False) -> list[str]:
    """What differs between rnnkit's run of program ``name`` and TF's: names, then each output
    or state leaf and each gradient beyond ``tol`` (absolute and relative, element by element;
    ``scaled``: relative to the largest magnitude in the tensor, for long sequences, where
    float32 rounding grows with the steps in TF as in rnnkit)."""
    if name + "|error" in tf:
        return [f"TF raised {tf[name + '|error']}"]
    if ours["names"] != tf[name + "|names"]:
        return [f"variables {ours['names']} in rnnkit, {tf[name + '|names']} in TF"]

    def close(a: np.ndarray, b: np.ndarray) -> bool:
        if scaled:
            return bool(np.abs(a - b).max(initial=0.0) <= tol * max(1.0, np.abs(b).max(initial=0.0)))
        return np.allclose(a, b, rtol=tol, atol=tol)

    found = []
    for k, leaf in enumerate(ours["leaves"]):
        if not close(leaf, tf[f"{name}|leaf|{k}"]):
            found.append(f"output/state leaf {k}: max difference "
                         f"{np.abs(leaf - tf[f'{name}|leaf|{k}']).max():.3g}")
    n_states = len(ours["grads"]) - 1 - len(ours["names"])
    targets = ["inputs", *(f"state {k}" for k in range(n_states)), *ours["names"]]
    for k, (what, grad) in enumerate(zip(targets, ours["grads"], strict=True)):
        if not close(grad, tf[f"{name}|grad|{k}"]):
            found.append(f"gradient w.r.t. {what}: max difference "
                         f"{np.abs(grad - tf[f'{name}|grad|{k}']).max():.3g}")
    return found
