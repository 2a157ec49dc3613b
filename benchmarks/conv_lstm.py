"""``ConvLSTM2D`` against Keras's own, each peer in its own process, 2 threads:

    python benchmarks/conv_lstm.py [--reps 7] [--shapes 8,10,32,4,16 4,20,64,1,32]

A shape is ``batch,time,size,channels,filters``: inputs ``[batch, time, size, size, channels]``,
a 3x3 kernel, ``padding="same"``, ``return_sequences=True``. Peers: ``rnnkit``
(``rk.layers.ConvLSTM2D``), ``keras-tf`` (Keras 3 on TensorFlow, inside ``tf.function`` without
XLA), ``keras-torch`` (Keras 3 on torch: the same convolutions as rnnkit's) and ``tf-keras``
(Keras 2's, tf_keras, inside ``tf.function``). Forward (no gradient) and
forward+backward (gradients of ``sum(outputs * g)`` with respect to the inputs and the weights),
medians of ``--reps`` runs after a warm-up, in milliseconds; the ratio columns are the best
Keras peer's time over each peer's (above 1: faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from peers import time_ms  # the same timing as every peer's (this script's folder is on the path)

THREADS = "2"
PEERS = ("rnnkit", "keras-tf", "keras-torch", "tf-keras")


def _arrays(shape):
    import numpy as np

    B, T, S, C, F = shape
    x = np.random.RandomState(0).randn(B, T, S, S, C).astype("float32")
    g = np.random.RandomState(1).randn(B, T, S, S, F).astype("float32")
    return x, g


def _time_torch(layer, x, g, reps: int, clear_grads) -> dict:
    """Forward and forward+backward of a layer on torch (rnnkit's, or Keras 3's)."""
    import torch

    def forward():
        with torch.no_grad():
            layer(x)

    def train():
        inputs = x.clone().requires_grad_()
        (layer(inputs) * g).sum().backward()
        clear_grads()

    return {"fwd": time_ms(forward, reps)[0], "fwd_bwd": time_ms(train, reps)[0]}


def _rnnkit(shape, reps: int) -> dict:
    import torch

    from rnnkit import layers as L

    torch.set_num_threads(int(THREADS))
    x, g = (torch.from_numpy(a) for a in _arrays(shape))
    layer = L.ConvLSTM2D(shape[4], 3, padding="same", return_sequences=True).eval()
    layer(x[:, :1])  # builds
    return _time_torch(layer, x, g, reps, layer.zero_grad)


def _keras_torch(shape, reps: int) -> dict:
    import keras
    import torch

    torch.set_num_threads(int(THREADS))
    x, g = (torch.from_numpy(a) for a in _arrays(shape))
    layer = keras.layers.ConvLSTM2D(shape[4], 3, padding="same", return_sequences=True)
    layer.build(tuple(x.shape))

    def clear_grads():
        for w in layer.trainable_weights:
            w.value.grad = None

    return _time_torch(layer, x, g, reps, clear_grads)


def _keras_tf(shape, reps: int) -> dict:
    import tensorflow as tf

    keras = tf.keras  # Keras 3 or, with TF_USE_LEGACY_KERAS=1, tf_keras (Keras 2)
    tf.config.threading.set_intra_op_parallelism_threads(int(THREADS))
    tf.config.threading.set_inter_op_parallelism_threads(int(THREADS))
    x, g = (tf.constant(a) for a in _arrays(shape))
    layer = keras.layers.ConvLSTM2D(shape[4], 3, padding="same", return_sequences=True)
    layer.build(tuple(x.shape))

    @tf.function(jit_compile=False)
    def forward():
        return layer(x)

    @tf.function(jit_compile=False)
    def train():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * g)
        return tape.gradient(loss, [x, *layer.trainable_weights])

    return {"fwd": time_ms(lambda: forward().numpy(), reps)[0],
            "fwd_bwd": time_ms(lambda: [t.numpy() for t in train()], reps)[0]}


def _one(peer: str, shape, reps: int) -> dict:
    if peer == "rnnkit":
        return _rnnkit(shape, reps)
    if peer == "keras-torch":
        return _keras_torch(shape, reps)
    return _keras_tf(shape, reps)


def _env(peer: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", TF_USE_LEGACY_KERAS="1" if peer == "tf-keras" else "0")
    if peer.startswith("keras-"):
        env["KERAS_BACKEND"] = "torch" if peer == "keras-torch" else "tensorflow"
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--shapes", nargs="+", default=["8,10,32,4,16", "4,20,64,1,32"],
                        help="batch,time,size,channels,filters")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)  # the child process's job
    args = parser.parse_args()
    if args.peer:
        shape = tuple(int(n) for n in args.shapes[0].split(","))
        print(json.dumps(_one(args.peer, shape, args.reps)))
        return 0
    print(f"ConvLSTM2D, 3x3 kernel, 'same'; ms, median of {args.reps}; x: the best Keras "
          "peer's time over this peer's (above 1: faster)")
    print(f"{'B,T,size,C,F':14} {'peer':13} {'fwd':>9} {'f+b':>9} {'fwd x':>7} {'f+b x':>7}")
    for text in args.shapes:
        got = {}
        for peer in args.peers:
            proc = subprocess.run([sys.executable, __file__, "--peer", peer, "--shapes", text,
                                   "--reps", str(args.reps)], capture_output=True, text=True,
                                  env=_env(peer))
            if proc.returncode != 0:
                print(f"{text:14} {peer:13} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            got[peer] = json.loads(proc.stdout.strip().splitlines()[-1])
        keras = [got[p] for p in got if p != "rnnkit"]
        best = {k: min(r[k] for r in keras) if keras else float("nan") for k in ("fwd", "fwd_bwd")}
        for peer, r in got.items():
            print(f"{text:14} {peer:13} {r['fwd']:9.1f} {r['fwd_bwd']:9.1f} "
                  f"{best['fwd'] / r['fwd']:7.2f} {best['fwd_bwd'] / r['fwd_bwd']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
