"""Shared checks for the fast paths' tests: a fast path against the reference loop
(``fast=False``), outputs, states and gradients to 1e-5, and a record of the dispatch's picks."""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

import rnnkit as rk
from rnnkit.fast import dispatch
from rnnkit.unroll import length_mask, map_state

TOL = {"atol": 1e-5, "rtol": 1e-5}

CUDNN_CELLS = {  # cells whose math torch's fused ops (cuDNN) have
    "basic_lstm": lambda: rk.BasicLSTMCell(6, forget_bias=0.5),
    "lstm_proj": lambda: rk.LSTMCell(6, num_proj=4),
    "gru_reset_after": lambda: rk.GRUCell(6, reset_after=True),
    "rnn_tanh": lambda: rk.BasicRNNCell(6),
    "rnn_relu": lambda: rk.BasicRNNCell(6, activation="relu"),
}
CUDNN_LENGTHS = {"full": None, "varied": [5, 0, 7, 3, 7], "one_short": [7, 7, 6, 7, 7]}

FUSED_CELLS = {  # cells that oneDNN lacks and rnnkit's fused kernels serve
    "fused_cell_clip": lambda: rk.LSTMCell(6, cell_clip=0.6),
    "fused_peephole_clip": lambda: rk.LSTMCell(6, use_peepholes=True, cell_clip=0.8),
    "fused_proj_clip": lambda: rk.LSTMCell(6, num_proj=4, proj_clip=0.3),
    "fused_all_options": lambda: rk.LSTMCell(6, use_peepholes=True, cell_clip=0.7, num_proj=3,
                                             proj_clip=0.4, forget_bias=0.5),
    "fused_layer_norm": lambda: rk.LayerNormLSTMCell(6, forget_bias=0.7),
    "fused_relu": lambda: rk.BasicLSTMCell(6, activation="relu"),
    "fused_softsign_clip": lambda: rk.LSTMCell(6, activation="softsign", cell_clip=1.0),
    "fused_gru_relu": lambda: rk.GRUCell(6, activation="relu"),
    "fused_gru_after_softsign": lambda: rk.GRUCell(6, reset_after=True, activation="softsign"),
    "fused_rnn_softsign": lambda: rk.BasicRNNCell(6, activation="softsign"),
}


def perturb(*cells: rk.RNNCell, seed: int = 0, scale: float = 0.4) -> None:
    """Move every variable off its initializer (zero biases would hide bias-layout bugs) by
    ``scale`` times standard normal noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for cell in cells:
            for p in cell.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))


def random_state(cell: rk.RNNCell, batch: int) -> object:
    """A random initial state of ``cell`` for ``batch`` sequences, wanting gradients."""
    return map_state(lambda s: torch.randn_like(s).requires_grad_(), cell.zero_state(batch))


def _grads(outputs, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
    leaves = pytree.tree_leaves(outputs)
    g = torch.Generator().manual_seed(1)
    loss = sum((leaf * torch.randn(leaf.shape, generator=g).to(leaf.device)).sum()
               for leaf in leaves)
    return list(torch.autograd.grad(loss, wrt))


def compare(run, wrt: list[torch.Tensor], scaled: bool = False, tol: dict | None = None) -> None:
    """``run(fast)`` with ``fast=True`` against ``fast=False``: every output leaf, and the
    gradients of a random weighting of them with respect to ``wrt``. ``scaled``: gradients
    summed over many rows (each float32 path is then off from the float64 truth by about 1e-6
    of the gradient's largest entry) are compared with ``atol`` 1e-6 of that entry where that is
    looser than 1e-5. ``tol``: another tolerance for everything (``TOL`` by default)."""
    fast = run(True)
    ref = run(False)
    base = tol or TOL
    for a, b in zip(pytree.tree_leaves(fast), pytree.tree_leaves(ref), strict=True):
        torch.testing.assert_close(a, b, **base)
    for a, b in zip(_grads(fast, wrt), _grads(ref, wrt), strict=True):
        grad_tol = ({"rtol": 1e-5, "atol": max(1e-5, 1e-6 * float(b.abs().max()))} if scaled
                    else base)
        torch.testing.assert_close(a, b, **grad_tol)


def decisions(monkeypatch) -> list[str]:
    """The paths ``dispatch.decide`` picks from now on (none recorded: the switch was False)."""
    seen, decide = [], dispatch.decide

    def spy(*args, **kwargs):
        decision = decide(*args, **kwargs)
        seen.append(decision.path)
        return decision

    monkeypatch.setattr(dispatch, "decide", spy)
    return seen


def cudnn_runs(monkeypatch) -> list[int]:
    """The calls that run the cudnn path from now on (one entry each)."""
    runs, run_cudnn = [], dispatch.run_cudnn

    def spy(*args, **kwargs):
        runs.append(1)
        return run_cudnn(*args, **kwargs)

    monkeypatch.setattr(dispatch, "run_cudnn", spy)
    return runs


def compare_masked_keras_layer(layer: str, go_backwards: bool, monkeypatch, **kwargs
                               ) -> list[str]:
    """``compare`` for Keras layer ``layer`` (5 units, sequences and states returned) under a
    Keras mask of lengths 6, 1, 0, 4 (outputs past a length repeat the last one; with
    ``go_backwards`` the valid steps are a suffix). Returns the paths the fast run took."""
    torch.manual_seed(0)
    made = getattr(rk.layers, layer)(5, return_sequences=True, return_state=True,
                                     go_backwards=go_backwards, **kwargs)
    x = torch.randn(4, 6, 3, requires_grad=True)
    mask = length_mask(torch.tensor([6, 1, 0, 4]), 6).T
    made(x)
    perturb(made)
    seen = decisions(monkeypatch)

    def run(fast):
        made.fast = fast
        return made(x, mask=mask)

    compare(run, [x, *made.parameters()])
    return seen
