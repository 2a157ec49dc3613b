"""One peer's timings, in its own process: ``python benchmarks/peers.py PEER CELL`` prints JSON.

Peers: ``rnnkit`` (fast path where eligible), ``rnnkit-ref`` (the reference loop), ``torch``
(torch.nn.LSTM/GRU), ``keras-torch`` and ``keras-tf`` (Keras 3 layers on each backend with
``use_cudnn=False``, i.e. the generic loop; the TF one inside ``tf.function`` without XLA, as
``model.fit``'s ``jit_compile="auto"`` picks on a machine without a GPU), ``tf1``
(``tf.compat.v1.nn.dynamic_rnn`` in a graph) and ``flax`` (``flax.linen.RNN``, jitted; skipped
when JAX is not installed). Cells: ``lstm``, ``gru_keras``
(reset after), ``gru_tf1`` (reset before), ``lstm_peep_proj`` (peepholes and a projection to
H/2), ``lstm_clip`` (cell_clip 3). A peer that lacks a cell's math says so instead of timing
something else. Every shape is run forward (no gradient) and forward+backward (gradients of
``sum(outputs * g)``, ``g`` a fixed random array, with respect to the inputs and all trainable
weights); the median of ``--reps`` runs after a warm-up, and the first forward call's time
(building, tracing or compiling included), are reported in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SHAPES = {"b32_t100_h64": (32, 100, 64), "b32_t100_h256": (32, 100, 256),
          "b32_t100_h512": (32, 100, 512), "b1_t500_h256": (1, 500, 256),
          "varlen_b32_h256": (32, 100, 256)}
THREADS = 2


def lengths_for(batch: int, steps: int):
    """Variable lengths 10..steps, spread evenly (the same batch for every peer)."""
    import numpy as np

    return np.linspace(10, steps, batch).round().astype("int64")[::-1].copy()


def out_grad(cell: str, shape: tuple):
    """The fixed cotangent ``g`` of the loss ``sum(outputs * g)`` (the same for every peer)."""
    import numpy as np

    B, T, H = shape
    depth = H // 2 if cell == "lstm_peep_proj" else H
    return np.random.RandomState(1).randn(B, T, depth).astype("float32")


def time_ms(fn, reps: int) -> tuple[float, float]:
    """``(median of reps calls, the first call)`` of ``fn`` in milliseconds: the first call is
    timed apart, a second warms up, then ``reps`` calls are timed."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    fn()
    runs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs) * 1e3, first * 1e3


# -- torch-based peers ----------------------------------------------------------------------------
def _rnnkit(cell: str, H: int, fast):
    import inspect

    import rnnkit as rk

    make = {"lstm": lambda: rk.BasicLSTMCell(H, forget_bias=0.0),
            "gru_keras": lambda: rk.GRUCell(H, reset_after=True),
            "gru_tf1": lambda: rk.GRUCell(H),
            "lstm_peep_proj": lambda: rk.LSTMCell(H, use_peepholes=True, num_proj=H // 2),
            "lstm_clip": lambda: rk.LSTMCell(H, cell_clip=3.0)}[cell]
    kwargs = {"fast": fast} if "fast" in inspect.signature(rk.dynamic_rnn).parameters else {}
    if fast is not False and not kwargs:
        return None, "this rnnkit has no fast path"
    rk.reset_default_graph()
    module = make()

    def run(x, lengths):
        return rk.dynamic_rnn(module, x, sequence_length=lengths, **kwargs)[0]

    def params():
        return list(module.parameters())

    return (run, params), None


def _torch(cell: str, H: int):
    import torch

    if cell not in ("lstm", "gru_keras"):
        return None, "torch.nn has no " + {"gru_tf1": "reset-before GRU",
                                           "lstm_peep_proj": "peepholes",
                                           "lstm_clip": "cell clipping"}[cell]
    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H, batch_first=True)

    def run(x, lengths):
        if lengths is None:
            return module(x)[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
        return torch.nn.utils.rnn.pad_packed_sequence(module(packed)[0], batch_first=True,
                                                      total_length=x.shape[1])[0]

    return (run, lambda: list(module.parameters())), None


def _keras_torch(cell: str, H: int):
    import keras

    layer = _keras_layer(keras, cell, H)
    if isinstance(layer, str):
        return None, layer

    def run(x, lengths):
        import torch

        mask = None if lengths is None else torch.arange(x.shape[1])[None, :] < lengths[:, None]
        return layer(x, mask=mask)

    return (run, lambda: [w.value for w in layer.trainable_weights]), None


def _keras_layer(keras, cell: str, H: int):
    if cell == "lstm":
        return keras.layers.LSTM(H, return_sequences=True, use_cudnn=False)
    if cell in ("gru_keras", "gru_tf1"):
        return keras.layers.GRU(H, return_sequences=True, reset_after=cell == "gru_keras",
                                use_cudnn=False)
    return "Keras 3 LSTM has no " + ("peepholes" if cell == "lstm_peep_proj" else "cell clipping")


def time_torch_peer(builder, shape: tuple, varlen: bool, reps: int, g) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    B, T, H = shape
    built, why = builder()
    if built is None:
        return {"skip": why}
    run, params = built
    x = torch.randn(B, T, H)
    lengths = torch.as_tensor(lengths_for(B, T)) if varlen else None

    def fwd():
        with torch.no_grad():
            run(x, lengths)

    xg = x.clone().requires_grad_()
    g = torch.as_tensor(g)

    def fwd_bwd():
        out = run(xg, lengths)
        torch.autograd.grad((out * g).sum(), [xg, *params()], allow_unused=True)

    fwd_ms, first = time_ms(fwd, reps)
    bwd_ms, _ = time_ms(fwd_bwd, reps)
    return {"fwd": fwd_ms, "fwd_bwd": bwd_ms, "first_call": first}


# -- TensorFlow-based peers -----------------------------------------------------------------------
def time_tf1(cell: str, shape: tuple, varlen: bool, reps: int, g) -> dict:
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    B, T, H = shape
    nn = tf1.nn.rnn_cell
    make = {"lstm": lambda: nn.BasicLSTMCell(H, forget_bias=0.0),
            "gru_keras": None, "gru_tf1": lambda: nn.GRUCell(H),
            "lstm_peep_proj": lambda: nn.LSTMCell(H, use_peepholes=True, num_proj=H // 2),
            "lstm_clip": lambda: nn.LSTMCell(H, cell_clip=3.0)}[cell]
    if make is None:
        return {"skip": "TF1 GRUCell applies the reset gate before the matmul"}
    graph = tf1.Graph()
    with graph.as_default():
        import numpy as np

        x = tf1.constant(np.random.RandomState(0).randn(B, T, H).astype("float32"))
        lengths = tf1.constant(lengths_for(B, T)) if varlen else None
        out, _ = tf1.nn.dynamic_rnn(make(), x, sequence_length=lengths, dtype=tf.float32)
        grads = tf1.gradients(tf1.reduce_sum(out * g), [x, *tf1.trainable_variables()])
        config = tf1.ConfigProto(intra_op_parallelism_threads=THREADS,
                                 inter_op_parallelism_threads=THREADS)
        sess = tf1.Session(graph=graph, config=config)
        sess.run(tf1.global_variables_initializer())
    fwd_ms, first = time_ms(lambda: sess.run(out), reps)
    bwd_ms, _ = time_ms(lambda: sess.run(grads), reps)
    return {"fwd": fwd_ms, "fwd_bwd": bwd_ms, "first_call": first}


def time_keras_tf(cell: str, shape: tuple, varlen: bool, reps: int, g) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    B, T, H = shape
    layer = _keras_layer(keras, cell, H)
    if isinstance(layer, str):
        return {"skip": layer}
    x = tf.constant(np.random.RandomState(0).randn(B, T, H).astype("float32"))
    g = tf.constant(g)
    mask = None
    if varlen:
        mask = tf.constant(np.arange(T)[None, :] < lengths_for(B, T)[:, None])
    layer.build((B, T, H))  # variables made outside tf.function; the first call traces

    @tf.function
    def fwd():
        return layer(x, mask=mask)

    @tf.function
    def fwd_bwd():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, mask=mask) * g)  # inside the tape, or it is not recorded
        return tape.gradient(loss, [x, *layer.trainable_weights])

    fwd_ms, first = time_ms(fwd, reps)
    if any(grad is None for grad in fwd_bwd()):
        return {"fwd": fwd_ms, "first_call": first,
                "note": "fwd_bwd not measured: tf.GradientTape returned None gradients"}
    bwd_ms, _ = time_ms(fwd_bwd, reps)
    return {"fwd": fwd_ms, "fwd_bwd": bwd_ms, "first_call": first}


# -- JAX ------------------------------------------------------------------------------------------
def time_flax(cell: str, shape: tuple, varlen: bool, reps: int, g) -> dict:
    try:
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {"skip": "flax/jax not installed (pip install flax)"}
    if cell not in ("lstm", "gru_keras"):
        return {"skip": "flax.linen has no " + cell}
    B, T, H = shape
    model = nn.RNN(nn.OptimizedLSTMCell(H) if cell == "lstm" else nn.GRUCell(H))
    x = jnp.asarray(__import__("numpy").random.RandomState(0).randn(B, T, H), jnp.float32)
    lengths = jnp.asarray(lengths_for(B, T)) if varlen else None
    params = model.init(jax.random.PRNGKey(0), x)
    fwd = jax.jit(lambda p, x: model.apply(p, x, seq_lengths=lengths))
    g = jnp.asarray(g)
    grad = jax.jit(jax.grad(lambda p, x: (model.apply(p, x, seq_lengths=lengths) * g).sum(), (0, 1)))
    fwd_ms, first = time_ms(lambda: jax.block_until_ready(fwd(params, x)), reps)
    bwd_ms, _ = time_ms(lambda: jax.block_until_ready(grad(params, x)), reps)
    return {"fwd": fwd_ms, "fwd_bwd": bwd_ms, "first_call": first}


def measure(peer: str, cell: str, shapes: list[str], reps: int) -> dict:
    results = {}
    for name in shapes:
        shape, varlen = SHAPES[name], name.startswith("varlen")
        H, g = shape[2], out_grad(cell, shape)
        if peer in ("rnnkit", "rnnkit-ref"):
            fast = "auto" if peer == "rnnkit" else False
            r = time_torch_peer(lambda H=H, fast=fast: _rnnkit(cell, H, fast), shape, varlen, reps, g)
        elif peer == "torch":
            r = time_torch_peer(lambda H=H: _torch(cell, H), shape, varlen, reps, g)
        elif peer == "keras-torch":
            r = time_torch_peer(lambda H=H: _keras_torch(cell, H), shape, varlen, reps, g)
        elif peer == "keras-tf":
            r = time_keras_tf(cell, shape, varlen, reps, g)
        elif peer == "tf1":
            r = time_tf1(cell, shape, varlen, reps, g)
        elif peer == "flax":
            r = time_flax(cell, shape, varlen, reps, g)
        else:
            raise SystemExit(f"unknown peer {peer!r}")
        results[name] = r
    return results


def matmul_gflops(n: int = 2048, reps: int = 10) -> dict[str, float]:
    """Large float32 matmul throughput with the same thread count, the ceiling for ratios: torch's
    BLAS and, where oneDNN loads, oneDNN's ``dnnl_sgemm`` (on AMD, MKL's kernels may not use
    AVX-512 and run at about half the rate)."""
    import ctypes

    import torch

    torch.set_num_threads(THREADS)
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)

    def best_of(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(reps):  # a ceiling: the least disturbed run
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return 2 * n**3 / best / 1e9

    out = {"torch": best_of(lambda: torch.mm(a, b, out=c))}
    try:
        from rnnkit.fast.library import library

        sgemm = library().dnnl_sgemm
    except Exception:  # noqa: BLE001 - oneDNN is optional; the torch figure stands alone
        return out
    i64, f32, vp = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    sgemm.argtypes = [ctypes.c_char, ctypes.c_char, i64, i64, i64, f32, vp, i64, vp, i64, f32,
                      vp, i64]
    out["onednn"] = best_of(lambda: sgemm(b"N", b"N", n, n, n, 1.0, a.data_ptr(), n,
                                          b.data_ptr(), n, 0.0, c.data_ptr(), n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer")
    parser.add_argument("cell")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    # TF1 cells live in tf_keras; Keras 3 peers pick their backend from KERAS_BACKEND.
    os.environ["TF_USE_LEGACY_KERAS"] = "1" if args.peer == "tf1" else "0"
    if args.peer.startswith("keras-"):
        os.environ["KERAS_BACKEND"] = "torch" if args.peer == "keras-torch" else "tensorflow"
    if args.peer == "matmul":
        json.dump(matmul_gflops(), sys.stdout)
        return
    json.dump(measure(args.peer, args.cell, args.shapes.split(","), args.reps), sys.stdout)


if __name__ == "__main__":
    main()
