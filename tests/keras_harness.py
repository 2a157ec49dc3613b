"""Run Keras programs (Python source over a namespace ``L``) in Keras 3 and in rnnkit.

A program sees ``L`` (the layers, ``Input`` and ``Model``) and sets ``model``, a functional
model over one ``[batch, time, depth]`` input. Keras runs first (in a subprocess, TF backend):
it draws every weight from a seeded normal distribution, records weights and paths, and the
outputs and the gradients of one fixed loss over them with respect to the input and every
weight, in inference mode. rnnkit then builds the same program, takes Keras's weights in
order and does the same. ``arrays`` holds ``<name>|X`` for each program.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from rnn_programs import loss_weights
from torch.utils import _pytree as pytree

from rnnkit import layers as rkl

RK = SimpleNamespace(**{n: getattr(rkl, n) for n in rkl.__all__})


def keras_script(programs: dict[str, str], scale: float = 0.4, save: str | None = None,
                 legacy: bool = False) -> str:
    """The script that runs ``programs`` in Keras 3 (run it with ``legacy_keras=False``), or
    with ``legacy`` in tf.keras (``legacy_keras=True``; outputs only, no gradients). ``save``: a
    folder where each model is saved after its run, as ``<name>.keras`` (Keras 3) or
    ``<name>.h5`` (tf.keras)."""
    helpers = Path(__file__).with_name("rnn_programs.py").read_text()
    module = "tf_keras" if legacy else "keras"
    return (helpers + f"\nPROGRAMS = json.loads({json.dumps(json.dumps(programs))})\n"
            f"SCALE = {scale!r}\nSAVE = {save!r}\nLEGACY = {legacy!r}\n"
            f"import {module} as keras\n" + _KERAS_SIDE)


def load_script(paths: dict[str, str], calls: dict[str, int]) -> str:
    """The script that loads files rnnkit wrote (``paths``: program name -> file) in Keras 3
    and records their outputs on ``<name>|X`` (at the last of ``calls[name]`` calls)."""
    return f"""
import keras
for name, path in {paths!r}.items():
    try:
        model = keras.models.load_model(path)
        for _ in range({calls!r}[name] - 1):
            model(INPUTS[name + "|X"])
        leaves = keras.tree.flatten(model(INPUTS[name + "|X"]))
    except Exception as e:
        RESULT[name + "|error"] = f"{{type(e).__name__}}: {{str(e)[:300]}}"
        continue
    for j, a in enumerate(leaves):
        RESULT[f"{{name}}|leaf|{{j}}"] = np.asarray(a)
"""


_KERAS_SIDE = """
import types
L = types.SimpleNamespace(**{n: getattr(keras.layers, n) for n in dir(keras.layers)
                             if not n.startswith("_")})
L.Input, L.Model, L.Sequential = keras.Input, keras.Model, keras.Sequential
def run_one(k, name):
    keras.backend.clear_session()
    env = dict(L=L, INT="int32")
    exec(PROGRAMS[name], env)
    model = env["model"]
    rs = np.random.RandomState(k)
    for w in model.weights:
        w.assign((rs.standard_normal(w.shape) * SCALE).astype("float32"))
    x = tf.constant(INPUTS[name + "|X"])
    for _ in range(env.get("CALLS", 1) - 1):  # a stateful model's earlier calls
        model(x, training=False)
    if LEGACY:
        for j, a in enumerate(tf.nest.flatten(model(x, training=False))):
            RESULT[f"{name}|leaf|{j}"] = np.asarray(a)
        model.save(f"{SAVE}/{name}.h5")
        return
    with tf.GradientTape() as tape:
        tape.watch(x)
        leaves = tf.nest.flatten(model(x, training=False))
        loss = tf.add_n([tf.reduce_sum(t * loss_weights(tuple(t.shape), j))
                         for j, t in enumerate(leaves)])
    grads = tape.gradient(loss, [x, *model.weights])
    RESULT[name + "|names"] = [w.path for w in model.weights]
    for j, w in enumerate(model.weights):
        RESULT[f"{name}|w|{j}"] = np.asarray(w)
    for j, a in enumerate(leaves):
        RESULT[f"{name}|leaf|{j}"] = np.asarray(a)
    for j, (t, g) in enumerate(zip([x, *model.weights], grads)):
        RESULT[f"{name}|grad|{j}"] = (np.zeros(t.shape, "float32") if g is None  # an
                                      else np.asarray(tf.convert_to_tensor(g)))  # embedding's: sparse
    if SAVE:
        model.save(f"{SAVE}/{name}.keras")


for k, name in enumerate(sorted(PROGRAMS)):
    try:
        run_one(k, name)
    except Exception as e:
        RESULT[name + "|error"] = f"{type(e).__name__}: {str(e)[:300]}"
"""


def run_rnnkit(name: str, src: str, arrays: dict, keras: dict, fast=None) -> dict:
    """Run one program in rnnkit with Keras's weights (``keras``: the Keras side's results)."""
    import rnnkit as rk

    rkl.clear_session()
    env = dict(L=RK, INT=torch.int64)
    exec(src, env)
    model = env["model"]
    x = torch.tensor(arrays[name + "|X"])
    x = x.long() if not x.is_floating_point() else x.requires_grad_()  # ids: no gradient
    model(x.detach(), training=False)  # built, so every weight exists
    for module in model.modules():
        if getattr(module, "stateful", False):
            module.reset_states()
    weights = model.weights
    if len(weights) == len(keras.get(name + "|names", ())):
        with torch.no_grad():
            for j, w in enumerate(weights):
                w.copy_(torch.from_numpy(keras[f"{name}|w|{j}"]))
    with rk.fast.fast_mode("auto" if fast is None else fast):
        for _ in range(calls(src)):  # a stateful model's state carries over, detached
            outs = model(x, training=False)
    leaves = pytree.tree_leaves(outs)  # Keras's order: nested outputs flattened
    loss = sum((t * torch.tensor(loss_weights(tuple(t.shape), j))).sum() for j, t in enumerate(leaves))
    grads = torch.autograd.grad(loss, [x, *weights] if x.requires_grad else weights,
                                allow_unused=True)
    grads = grads if x.requires_grad else (None, *grads)
    return {"names": [w.op_name for w in weights], "model": model,
            "leaves": [t.detach().numpy() for t in leaves],
            "grads": [np.zeros(t.shape, np.float32) if g is None else g.numpy()
                      for t, g in zip([x, *weights], grads, strict=True)]}


def calls(src: str) -> int:
    """How many times a program's model is called (``CALLS = n`` in it; the last is compared)."""
    return 2 if "CALLS = 2" in src else 1


def mismatches(name: str, ours: dict, keras: dict, tol: float = 1e-5) -> list[str]:
    """What differs between rnnkit's run of program ``name`` and Keras's (gradients where
    both have them)."""
    if name + "|error" in keras:
        return [f"Keras raised {keras[name + '|error']}"]
    if "names" in ours and ours["names"] != keras[name + "|names"]:
        return [f"weights {ours['names']} in rnnkit, {keras[name + '|names']} in Keras"]
    found = []
    n_leaves = len([k for k in keras if k.startswith(name + "|leaf|")])
    if len(ours["leaves"]) != n_leaves:
        return [f"{len(ours['leaves'])} outputs in rnnkit, {n_leaves} in Keras"]
    for k, leaf in enumerate(ours["leaves"]):
        theirs = keras[f"{name}|leaf|{k}"]
        if leaf.shape != theirs.shape or not np.allclose(leaf, theirs, rtol=tol, atol=tol):
            found.append(f"output {k}: shape {leaf.shape} / {theirs.shape}, max difference "
                         f"{np.abs(leaf - theirs).max() if leaf.shape == theirs.shape else '-'}")
    grads = zip(["input", *ours["names"]], ours["grads"], strict=True) if "grads" in ours else ()
    for k, (what, grad) in enumerate(grads):
        theirs = keras[f"{name}|grad|{k}"]
        if not np.allclose(grad, theirs, rtol=tol, atol=tol):
            found.append(f"gradient w.r.t. {what}: max difference {np.abs(grad - theirs).max():.3g}")
    return found
