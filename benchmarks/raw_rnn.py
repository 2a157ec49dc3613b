"""``raw_rnn`` against TF1's own and against ``dynamic_rnn`` on the same math, each peer in its
own process, 2 threads:

    python benchmarks/raw_rnn.py [--reps 7] [--shape 32,100,256]

Peers: ``rnnkit`` (``rk.raw_rnn``, a ``loop_fn`` reading the inputs by time, as TF's
documentation writes it), ``rnnkit-dynamic`` (``rk.dynamic_rnn`` over the same inputs, on its
fast path: what ``raw_rnn`` gives up by letting ``loop_fn`` make each input) and ``tf1``
(``tf.compat.v1.nn.raw_rnn`` in a graph, the same ``loop_fn`` with ``tf.cond`` and a
``TensorArray``). Cells: TF1's ``GRUCell`` and a peephole ``LSTMCell``. Forward (no gradient)
and forward+backward (gradients of ``sum(outputs * g)`` with respect to the inputs and the
weights), medians of ``--reps`` runs after a warm-up, in milliseconds; the last columns are the
ratios to ``tf1``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from peers import time_ms  # the same timing as every peer's (this script's folder is on the path)

CELLS = ("gru", "lstm_peep")
THREADS = "2"


def _median_ms(fn, reps: int) -> float:
    return time_ms(fn, reps)[0]


def _rnnkit(cell_name: str, shape, reps: int, dynamic: bool) -> dict:
    import numpy as np
    import torch

    import rnnkit as rk

    torch.set_num_threads(int(THREADS))
    B, T, H = shape
    x = torch.from_numpy(np.random.RandomState(0).randn(T, B, H).astype("float32"))
    g = torch.from_numpy(np.random.RandomState(1).randn(T, B, H).astype("float32"))
    cell = rk.GRUCell(H) if cell_name == "gru" else rk.LSTMCell(H, use_peepholes=True)
    lengths = torch.full((B,), T)

    def loop_fn(time, cell_output, cell_state, loop_state):
        state = cell.zero_state(B) if cell_output is None else cell_state
        finished = time >= lengths
        step = x[int(time)] if not bool(finished.all()) else torch.zeros(B, H)
        return finished, step, state, cell_output, None

    def outputs(inputs):
        if dynamic:
            return rk.dynamic_rnn(cell, inputs, time_major=True, dtype=torch.float32)[0]
        return rk.raw_rnn(cell, loop_fn)[0].stack()

    def forward():
        with torch.no_grad():
            outputs(x)

    def train():
        inputs = x.requires_grad_()
        (outputs(inputs) * g).sum().backward()
        inputs.grad = None
        cell.zero_grad()

    return {"fwd": _median_ms(forward, reps), "fwd_bwd": _median_ms(train, reps)}


def _tf1(cell_name: str, shape, reps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    B, T, H = shape
    x = tf1.constant(np.random.RandomState(0).randn(T, B, H).astype("float32"))
    g = np.random.RandomState(1).randn(T, B, H).astype("float32")
    nn = tf1.nn.rnn_cell
    cell = nn.GRUCell(H) if cell_name == "gru" else nn.LSTMCell(H, use_peepholes=True)
    inputs_ta = tf1.TensorArray(tf.float32, size=T).unstack(x)
    lengths = tf1.fill([B], T)

    def loop_fn(time, cell_output, cell_state, loop_state):
        state = cell.zero_state(B, tf.float32) if cell_output is None else cell_state
        finished = time >= lengths
        step = tf1.cond(tf1.reduce_all(finished), lambda: tf1.zeros([B, H]),
                        lambda: inputs_ta.read(time))
        return finished, step, state, cell_output, None

    emit_ta, _, _ = tf1.nn.raw_rnn(cell, loop_fn)
    out = emit_ta.stack()
    grads = tf1.gradients(tf1.reduce_sum(out * g), [x, *tf1.trainable_variables()])
    config = tf1.ConfigProto(intra_op_parallelism_threads=int(THREADS),
                             inter_op_parallelism_threads=int(THREADS))
    with tf1.Session(config=config) as sess:
        sess.run(tf1.global_variables_initializer())
        return {"fwd": _median_ms(lambda: sess.run(out), reps),
                "fwd_bwd": _median_ms(lambda: sess.run(grads), reps)}


def _one(peer: str, cell: str, shape, reps: int) -> dict:
    if peer == "tf1":
        return _tf1(cell, shape, reps)
    return _rnnkit(cell, shape, reps, dynamic=peer == "rnnkit-dynamic")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--shape", default="32,100,256", help="batch,time,units")
    parser.add_argument("--peer", help=argparse.SUPPRESS)  # the child process's job
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    if args.peer:
        print(json.dumps(_one(args.peer, args.cell, shape, args.reps)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1",
               CUDA_VISIBLE_DEVICES="")
    peers = ("rnnkit", "rnnkit-dynamic", "tf1")
    print(f"B, T, H = {shape}; ms, median of {args.reps}; ratio = tf1 / peer (above 1: faster)")
    print(f"{'cell':10} {'peer':15} {'fwd':>8} {'f+b':>8} {'fwd x':>7} {'f+b x':>7}")
    for cell in CELLS:
        got = {}
        for peer in peers:
            proc = subprocess.run([sys.executable, __file__, "--peer", peer, "--cell", cell,
                                   "--shape", args.shape, "--reps", str(args.reps)],
                                  capture_output=True, text=True, env=env, check=True)
            got[peer] = json.loads(proc.stdout.strip().splitlines()[-1])
        for peer in peers:
            r, base = got[peer], got["tf1"]
            print(f"{cell:10} {peer:15} {r['fwd']:8.1f} {r['fwd_bwd']:8.1f} "
                  f"{base['fwd'] / r['fwd']:7.2f} {base['fwd_bwd'] / r['fwd_bwd']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
