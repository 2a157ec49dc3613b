"""The fast paths' per-thread scratch buffers (``rnnkit.fast.scratch``): reused, never aliased
across uses or threads, never holding anything a call returns."""

from __future__ import annotations

import threading

import pytest
import torch

import rnnkit as rk
from rnnkit.fast import compiled, scratch


@pytest.fixture(autouse=True)
def _fresh():
    scratch.release()
    yield
    scratch.release()


def test_a_use_reuses_its_buffer_and_grows_it():
    a = scratch.scratch("t", 100)
    assert a.shape == (100,) and a.dtype == torch.float32
    b = scratch.scratch("t", 50)
    assert b.data_ptr() == a.data_ptr()  # the same pages
    c = scratch.scratch("t", 1000)  # grown: new memory, kept from now on
    assert scratch.scratch("t", 900).data_ptr() == c.data_ptr()
    assert scratch.scratch("t", 8, torch.uint8).dtype == torch.uint8


def test_uses_and_threads_do_not_share_and_large_requests_are_not_kept(monkeypatch):
    a, b = scratch.scratch("one", 64), scratch.scratch("two", 64)
    assert a.data_ptr() != b.data_ptr()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(scratch.scratch("one", 64).data_ptr()))
    thread.start()
    thread.join()
    assert seen[0] != a.data_ptr()
    monkeypatch.setattr(scratch, "KEEP_BYTES", 1024)
    big = scratch.scratch("one", 1000)  # 4000 bytes: memory of its own, not kept
    assert big.data_ptr() != scratch.scratch("one", 1000).data_ptr()
    assert scratch.scratch("one", 64).data_ptr() == a.data_ptr()
    kept = scratch.scratch("any size", 1000, bounded=False)  # oneDNN's scratchpad: always kept
    assert scratch.scratch("any size", 1000, bounded=False).data_ptr() == kept.data_ptr()
    rk.fast.release_scratch()
    assert not scratch._local.__dict__.get("bufs")


@pytest.mark.skipif(compiled.load_error() is not None, reason="the fused kernels do not build")
@pytest.mark.parametrize("make", [lambda: rk.BasicLSTMCell(8), lambda: rk.GRUCell(8),
                                  lambda: rk.layers.LSTM(8).cell], ids=["lstm", "gru", "keras"])
def test_outputs_survive_the_next_call(make):
    """Inference keeps its gates in a scratch buffer, training its gradient buffers: the next
    call, which reuses them, must not change what an earlier one returned."""
    torch.manual_seed(0)
    cell = make()
    x1, x2 = torch.randn(3, 6, 5, requires_grad=True), torch.randn(3, 6, 5, requires_grad=True)
    with torch.no_grad():
        out1, state1 = rk.dynamic_rnn(cell, x1, dtype=torch.float32, fast=True)
        kept = out1.clone(), [t.clone() for t in torch.utils._pytree.tree_leaves(state1)]
        rk.dynamic_rnn(cell, x2, dtype=torch.float32, fast=True)
    torch.testing.assert_close(out1, kept[0], rtol=0, atol=0)
    for now, then in zip(torch.utils._pytree.tree_leaves(state1), kept[1], strict=True):
        torch.testing.assert_close(now, then, rtol=0, atol=0)
    rk.dynamic_rnn(cell, x1, dtype=torch.float32, fast=True)[0].sum().backward()
    g1 = x1.grad.clone()
    rk.dynamic_rnn(cell, x2, dtype=torch.float32, fast=True)[0].square().sum().backward()
    torch.testing.assert_close(x1.grad, g1, rtol=0, atol=0)
    with rk.fast.fast_mode(False):
        x1.grad = None
        rk.dynamic_rnn(cell, x1, dtype=torch.float32)[0].sum().backward()
    torch.testing.assert_close(g1, x1.grad)
