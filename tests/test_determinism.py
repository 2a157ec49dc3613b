"""Determinism and threads: same seeds give the same bytes (in one process, across processes and
under ``torch.use_deterministic_algorithms``); seeded initializers repeat; scopes opened from
several threads at once name each thread's variables under its own scope, with no cross-talk.
"""

import hashlib
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import rnnkit as rk
from rnnkit import init

TESTS = Path(__file__).resolve().parent


@contextmanager
def _deterministic(enabled: bool):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def model_digest(seed: int, deterministic: bool = False) -> str:
    """SHA-256 of a small model's parameters after three Adam steps, its last outputs and its
    gradients, all built and trained from ``seed``: embedding, a bidirectional GRU under a seeded
    variational dropout, a stacked peephole/projection LSTM with swap_memory, a linear head."""
    rk.reset_default_graph()
    torch.manual_seed(seed)
    with _deterministic(deterministic), rk.variable_scope("model", initializer=init.orthogonal()):
        emb = rk.get_variable("embedding", [11, 5], initializer=init.random_uniform(-0.1, 0.1))
        fw = rk.DropoutWrapper(rk.GRUCell(6), output_keep_prob=0.7, state_keep_prob=0.8,
                               variational_recurrent=True, seed=seed)
        bw = rk.GRUCell(6, reset_after=True)
        top = rk.MultiRNNCell([rk.LSTMCell(5, use_peepholes=True, num_proj=3), rk.BasicLSTMCell(4)])
        head = rk.get_variable("head", [4, 2])
        ids = torch.randint(0, 11, (3, 9))
        lengths = torch.tensor([9, 4, 1])

        def forward():
            x = rk.embedding_lookup(emb, ids)
            (a, b), _ = rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths)
            y, _ = rk.dynamic_rnn(top, torch.cat([a, b], -1), sequence_length=lengths,
                                  swap_memory=True)
            return y @ head

        forward()  # builds the cells
        params = rk.trainable_variables()
        opt = torch.optim.Adam(params, lr=0.01)
        for _ in range(3):
            opt.zero_grad()
            out = forward()
            out.square().mean().backward()
            opt.step()
    digest = hashlib.sha256()
    for v in params:
        digest.update(v.name.encode())
        digest.update(v.detach().numpy().tobytes())
        digest.update(v.grad.numpy().tobytes())
    digest.update(out.detach().numpy().tobytes())
    return digest.hexdigest()


def test_same_seed_gives_the_same_bytes_in_one_process():
    first = model_digest(0)
    assert model_digest(0) == first
    assert model_digest(1) != first


def test_runs_under_deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` raises for no op rnnkit uses; same bytes twice."""
    first = model_digest(0, deterministic=True)
    assert model_digest(0, deterministic=True) == first


def test_same_seed_gives_the_same_bytes_across_processes():
    """Two fresh interpreters (different hash seeds) print the same digests, with and without
    deterministic algorithms."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_determinism as t; "
            "print(t.model_digest(0)); print(t.model_digest(0, deterministic=True))")
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", code, str(TESTS)], capture_output=True,
                              text=True, env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout.split())
    assert len(runs[0]) == 2
    assert runs[0] == runs[1]


SEEDED = {
    "random_uniform": lambda s: init.random_uniform(-0.3, 0.2, seed=s),
    "random_normal": lambda s: init.random_normal(0.1, 2.0, seed=s),
    "truncated_normal": lambda s: init.truncated_normal(seed=s),
    "variance_scaling": lambda s: init.variance_scaling(2.0, "fan_out", "untruncated_normal", seed=s),
    "glorot_uniform": lambda s: init.glorot_uniform(seed=s),
    "glorot_normal": lambda s: init.glorot_normal(seed=s),
    "he_normal": lambda s: init.he_normal(seed=s),
    "lecun_uniform": lambda s: init.lecun_uniform(seed=s),
    "orthogonal": lambda s: init.orthogonal(seed=s),
    "uniform_unit_scaling": lambda s: init.uniform_unit_scaling(seed=s),
    "per_gate_orthogonal": lambda s: init.per_gate(init.orthogonal(seed=s), 4),
    "chrono": lambda s: init.chrono(20, seed=s),
}


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_seeded_initializers_repeat_and_leave_the_global_rng_alone(name):
    shape = [24] if name == "chrono" else [6, 8]
    rng_before = torch.get_rng_state()
    a = SEEDED[name](3)(shape, dtype=torch.float64)
    again = SEEDED[name](3)
    assert torch.equal(again(shape, dtype=torch.float64), a)
    assert torch.equal(again(shape, dtype=torch.float64), a)  # every call, not only the first
    assert torch.equal(again(shape, dtype=torch.float32), a.to(torch.float32))
    assert not torch.equal(SEEDED[name](4)(shape, dtype=torch.float64), a)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_seeded_scope_initializer_rebuilds_the_same_model():
    def build():
        rk.reset_default_graph()
        torch.manual_seed(123)  # the seeded initializer must not depend on it
        with rk.variable_scope("m", initializer=init.glorot_normal(seed=5)):
            rk.dynamic_rnn(rk.LSTMCell(4, use_peepholes=True), torch.zeros(1, 2, 3))
        return {v.name: v.detach().clone() for v in rk.global_variables()}

    first = build()
    torch.manual_seed(999)
    second = build()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def _in_threads(count: int, work) -> list:
    """Run ``work(i, barrier)`` in ``count`` threads at once; re-raise the first failure."""
    barrier = threading.Barrier(count, timeout=60)
    results, errors = [None] * count, []

    def run(i):
        try:
            results[i] = work(i, barrier)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_threads_build_models_under_their_own_scopes():
    """Each thread opens its scope, waits until all threads are inside theirs, then builds and
    runs its model: every variable lands under its own thread's scope, numbering is per thread
    (TF's scope store is thread-local), and outputs equal a rerun in the main thread. The reference
    loop runs here; the default (fast) path in threads is the next test."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 5, 3, generator=gen) for _ in range(4)]

    def work(i, barrier):
        assert rk.get_variable_scope().name == ""  # the main thread's scopes are not inherited
        with rk.variable_scope(f"tower_{i}"):
            barrier.wait()
            cell = rk.MultiRNNCell([rk.GRUCell(4), rk.BasicLSTMCell(3)])
            with rk.variable_scope(None, default_name="block"):
                barrier.wait()
                out, _ = rk.dynamic_rnn(cell, xs[i], sequence_length=[5, 2], fast=False)
                inner = rk.get_variable_scope().name
            barrier.wait()
            return cell, out, inner, rk.get_variable_scope().name

    with rk.variable_scope("main_thread_scope"):
        results = _in_threads(4, work)
    expected = set()
    for i, (cell, out, inner, outer) in enumerate(results):
        assert (inner, outer) == (f"tower_{i}/block", f"tower_{i}")
        names = {p.name for p in cell.parameters()}
        prefix = f"tower_{i}/block/rnn/multi_rnn_cell/"
        assert names == {prefix + n for n in (
            "cell_0/gru_cell/gates/kernel:0", "cell_0/gru_cell/gates/bias:0",
            "cell_0/gru_cell/candidate/kernel:0", "cell_0/gru_cell/candidate/bias:0",
            "cell_1/basic_lstm_cell/kernel:0", "cell_1/basic_lstm_cell/bias:0")}
        expected |= names
        again, _ = rk.dynamic_rnn(cell, xs[i], sequence_length=[5, 2], fast=False)
        torch.testing.assert_close(out, again, atol=0, rtol=0)
    assert {v.name for v in rk.global_variables()} == expected


def test_auto_reuse_from_many_threads_makes_one_variable():
    def work(i, barrier):
        with rk.variable_scope("shared", reuse=rk.AUTO_REUSE):
            barrier.wait()
            return rk.get_variable("w", [3, 3])

    found = _in_threads(8, work)
    assert all(v is found[0] for v in found)
    assert [v.name for v in rk.global_variables()] == ["shared/w:0"]


def test_concurrent_creation_loses_no_variable_and_keeps_reuse_per_thread():
    """Half the threads create, half fetch with reuse=True, interleaved; nothing is lost and a
    thread's reuse flag never leaks into another's scope."""
    with rk.variable_scope("base"):
        for k in range(50):
            rk.get_variable(f"v{k}", [2])

    def work(i, barrier):
        got = []
        with rk.variable_scope("base" if i % 2 else f"new_{i}", reuse=True if i % 2 else None):
            barrier.wait()
            for k in range(50):
                got.append(rk.get_variable(f"v{k}", [2]))
        return got

    results = _in_threads(6, work)
    base = {v.name: v for v in rk.global_variables() if v.name.startswith("base/")}
    for i, got in enumerate(results):
        if i % 2:
            assert all(v is base[f"base/v{k}:0"] for k, v in enumerate(got))
        else:
            assert [v.name for v in got] == [f"new_{i}/v{k}:0" for k in range(50)]
    assert len(rk.global_variables()) == 50 * 4


@pytest.mark.parametrize("trial", range(5))
def test_threads_calling_one_new_cell_build_it_once(trial):
    """Several threads give a shared, not yet built model its first input at once: one thread
    builds it, the others use it. (Each used to build it too and fail with 'already exists'.)"""
    cell = rk.MultiRNNCell([rk.GRUCell(4), rk.DropoutWrapper(rk.BasicLSTMCell(3))])
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(trial))

    def work(i, barrier):
        barrier.wait()
        return rk.dynamic_rnn(cell, x, fast=False)[0]

    outs = _in_threads(6, work)
    assert len(rk.global_variables()) == 6  # GRU: 2 kernels, 2 biases; LSTM: kernel, bias
    assert len(list(cell.parameters())) == 6
    assert all(torch.equal(out, outs[0]) for out in outs)


_THREADED_RUN = """
import sys, threading, torch, rnnkit as rk
torch.manual_seed(0)
cells = [rk.GRUCell(8), rk.GRUCell(8, reset_after=True), rk.BasicLSTMCell(8), rk.BasicRNNCell(8)]
xs = [torch.randn(4, 12, 5) for _ in cells]
def run(k):
    x = xs[k].clone().requires_grad_()
    out, _ = rk.dynamic_rnn(cells[k], x, sequence_length=[12, 7, 3, 1])
    return [out, *torch.autograd.grad(out.square().sum(), [x, *cells[k].parameters()])]
for k in range(len(cells)):
    with rk.variable_scope(f"m{k}"):
        run(k)
expected = [run(k) for k in range(len(cells))]
got, barrier = {}, threading.Barrier(len(cells))
def work(k):
    barrier.wait()
    got[k] = [run(k) for _ in range(20)]
threads = [threading.Thread(target=work, args=(k,)) for k in range(len(cells))]
[t.start() for t in threads]
[t.join() for t in threads]
ok = all(torch.equal(a, b) for k in range(len(cells)) for r in got[k] for a, b in zip(r, expected[k]))
sys.exit(0 if ok and len(got) == len(cells) else 1)
"""


def test_default_path_runs_from_threads_at_once():
    """Four threads unroll their own models 20 times each on the default path (oneDNN where
    eligible): every result, gradients included, equals the single-threaded one. In a subprocess,
    so that a crash in native code fails this test instead of killing the run."""
    done = subprocess.run([sys.executable, "-c", _THREADED_RUN], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
