"""``LayerNormLSTMCell(dropout_keep_prob=...)``: TF's recurrent dropout on the candidate
(``Canonical.g_mask``), against NumPy with the masks the documented draw gives, across steps and
unrolls, and on the fused kernels against the reference loop (outputs and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fast_checks import TOL, compare, decisions, perturb, random_state

import rnnkit as rk
from rnnkit.fast import compiled, onednn

needs_kernel = pytest.mark.skipif(onednn.load_error() is not None or compiled.load_error("lstm")
                                  is not None, reason="the fused LSTM kernel does not load")


def _masks(shape, keep: float) -> np.ndarray:
    """The documented draw: 1/keep where keep + U[0, 1) >= 1, else 0 (torch's generator,
    float32 draws)."""
    return (torch.floor(keep + torch.rand(shape)).double() / keep).numpy()


@pytest.mark.parametrize("layer_norm", [True, False])
def test_a_step_drops_the_candidate_as_numpy_says(layer_norm):
    """TF's LayerNormBasicLSTMCell with dropout: c' = LN(σ(f + forget_bias) c + σ(i) (tanh(j)
    mask)) (without layer norm: no LN, the bias added), h' = tanh(c') σ(o)."""
    cell = rk.LayerNormLSTMCell(5, forget_bias=0.7, layer_norm=layer_norm, dropout_keep_prob=0.6,
                                input_size=3, dtype=torch.float64)
    perturb(cell)
    g = {k: v.detach().numpy() for k, v in cell.gates().items()}
    x = np.random.RandomState(0).randn(4, 3)
    c, h = np.random.RandomState(1).randn(2, 4, 5)

    def ln(v, k):
        if not layer_norm:
            return v
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-12) * g[f"gamma_{k}"] + g[f"beta_{k}"]

    def sig(v):
        return 1 / (1 + np.exp(-v))

    pre = {k: ln(x @ g[f"W_{k}"] + h @ g[f"U_{k}"] + (0 if layer_norm else g[f"b_{k}"]), k)
           for k in "ijfo"}
    torch.manual_seed(3)
    mask = _masks((4, 5), 0.6)
    assert set(np.unique(mask)) <= {0.0, 1 / 0.6} and 0 < (mask == 0).sum() < mask.size
    c_new = ln(c * sig(pre["f"] + 0.7) + sig(pre["i"]) * (np.tanh(pre["j"]) * mask), "c")
    h_new = np.tanh(c_new) * sig(pre["o"])
    state = rk.LSTMStateTuple(torch.tensor(c), torch.tensor(h))
    torch.manual_seed(3)
    out, new = cell(torch.tensor(x), state)
    np.testing.assert_allclose(new.c.detach().numpy(), c_new, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.detach().numpy(), h_new, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fast", [True, False])
def test_an_unroll_draws_the_masks_its_steps_would(fast):
    """One draw of [T, B, H] before the unroll is the steps' T draws of [B, H], in order: the
    same numbers as calling the cell step by step (on any path)."""
    cell = rk.LayerNormLSTMCell(6, dropout_keep_prob=0.5, input_size=4)
    perturb(cell)
    x = torch.randn(3, 7, 4)
    torch.manual_seed(5)
    out, final = rk.dynamic_rnn(cell, x, fast="auto" if fast else False)
    torch.manual_seed(5)
    state, outs = cell.zero_state(3), []
    for t in range(7):
        o, state = cell(x[:, t], state)
        outs.append(o)
    torch.testing.assert_close(out, torch.stack(outs, 1), **TOL)
    torch.testing.assert_close(final.c, state.c, **TOL)


def test_eval_mode_and_keep_one_do_not_drop():
    cell = rk.LayerNormLSTMCell(6, dropout_keep_prob=0.5, input_size=4)
    plain = rk.LayerNormLSTMCell(6, input_size=4)
    plain.load_state_dict(cell.state_dict())
    x = torch.randn(3, 7, 4)
    cell.eval()
    assert not cell.draws_masks()
    torch.testing.assert_close(rk.dynamic_rnn(cell, x)[0], rk.dynamic_rnn(plain, x)[0])
    cell.train()
    assert not torch.allclose(rk.dynamic_rnn(cell, x)[0], rk.dynamic_rnn(plain, x)[0])


def test_the_seed_gives_the_same_masks_whatever_the_global_generator():
    x = torch.randn(2, 5, 3)

    def run(global_seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        cell = rk.LayerNormLSTMCell(4, dropout_keep_prob=0.5, dropout_prob_seed=11, input_size=3)
        torch.manual_seed(global_seed)
        first = rk.dynamic_rnn(cell, x)[0]
        return torch.cat([first, rk.dynamic_rnn(cell, x)[0]])

    a, b = run(1), run(2)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[:2], a[2:])  # each unroll draws new masks


@pytest.mark.parametrize("keep", [0.0, 1.5, -0.1, True, "0.5"])
def test_a_keep_prob_out_of_range_is_refused(keep):
    with pytest.raises(ValueError, match="dropout_keep_prob must be a number in \\(0, 1\\]"):
        rk.LayerNormLSTMCell(4, dropout_keep_prob=keep)


@needs_kernel
@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("lengths", [None, [7, 0, 3, 5]])
@pytest.mark.parametrize("swap_memory", [False, True])
def test_the_fused_kernel_runs_candidate_dropout_as_the_loop(layer_norm, lengths, swap_memory,
                                                           monkeypatch):
    cell = rk.LayerNormLSTMCell(6, forget_bias=0.5, layer_norm=layer_norm, dropout_keep_prob=0.7,
                                input_size=5)
    perturb(cell)
    x = torch.randn(4, 7, 5, requires_grad=True)
    h0 = random_state(cell, 4)
    seen = decisions(monkeypatch)
    assert rk.fast.explain(cell, x, lengths).path == "fused"

    def run(fast):
        torch.manual_seed(9)
        return rk.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=h0, fast=fast,
                              swap_memory=swap_memory)

    compare(run, [x, *h0, *cell.parameters()])
    assert seen and set(seen) == {"fused"}


@needs_kernel
def test_the_fused_kernel_splits_a_large_batch_with_candidate_dropout():
    """From 16 rows the kernel may split the batch between threads: each thread's rows read
    their own masks."""
    cell = rk.LayerNormLSTMCell(32, dropout_keep_prob=0.6, input_size=8)
    perturb(cell, scale=0.2)
    x = torch.randn(48, 9, 8, requires_grad=True)

    def run(fast):
        torch.manual_seed(4)
        return rk.dynamic_rnn(cell, x, sequence_length=torch.randint(0, 10, (48,),
                                                                     generator=torch.Generator()
                                                                     .manual_seed(1)), fast=fast)

    compare(run, [x, *cell.parameters()], scaled=True)


def test_the_other_fast_paths_and_a_state_dropout_wrapper_say_why_not():
    cell = rk.LayerNormLSTMCell(6, layer_norm=False, dropout_keep_prob=0.7, input_size=5)
    x = torch.randn(4, 7, 5)
    why = str(rk.fast.explain(cell, x))
    assert "not onednn: " in why and "candidate dropout (g_mask" in why
    wrapped = rk.DropoutWrapper(cell, state_keep_prob=0.8)
    torch.manual_seed(2)
    out, _ = rk.dynamic_rnn(wrapped, x)  # step by step: the cell's steps draw their masks
    assert "draws dropout masks of its own" in str(rk.fast.explain(wrapped, x))
    cell.dropout_keep_prob = 1.0
    torch.manual_seed(2)
    assert not torch.allclose(out, rk.dynamic_rnn(wrapped, x)[0])
