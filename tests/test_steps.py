"""The graph path's fused steps (``rnnkit.fast.steps``, Triton kernels) against the equations'
own ops: whole unrolls, outputs, final states and gradients to 1e-5 (float32) and by float64
``gradcheck``, over the cells they serve (clipping, peepholes, projection, TF1's gate order,
TF1's GRU) and the ones they leave to the ops.

Without a GPU (here and in CI) the kernels run under Triton's interpreter on the CPU
(``TRITON_INTERPRET=1``, set by ``conftest.py`` before Triton is first imported); on a CUDA
device, on it."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from fast_checks import TOL, perturb

import rnnkit as rk
from rnnkit.fast import steps
from rnnkit.unroll import length_mask

pytest.importorskip("triton")
ON_GPU = torch.cuda.is_available()  # else conftest.py has set TRITON_INTERPRET=1
DEVICE = "cuda" if ON_GPU else "cpu"
CELLS = {
    "lstm_clip": lambda: rk.LSTMCell(6, cell_clip=0.6),
    "lstm_peephole_clip": lambda: rk.LSTMCell(6, use_peepholes=True, cell_clip=0.8,
                                              forget_bias=0.5),
    "lstm_peephole_proj": lambda: rk.LSTMCell(6, use_peepholes=True, num_proj=4, proj_clip=0.3),
    "basic_lstm": lambda: rk.BasicLSTMCell(5),
    "keras_lstm": lambda: rk.layers.LSTMCell(5),
    "gru_tf1": lambda: rk.GRUCell(6),
    "layer_norm": lambda: rk.LayerNormLSTMCell(6, forget_bias=0.7),
    "layer_norm_5_units": lambda: rk.LayerNormLSTMCell(5),  # a row shorter than its block
    # the other activations, by the C kernels' ids
    "lstm_relu_clip": lambda: rk.LSTMCell(6, activation="relu", cell_clip=0.9),
    "lstm_softsign_peephole": lambda: rk.LSTMCell(6, activation="softsign", use_peepholes=True),
    "keras_lstm_hard_sigmoid": lambda: rk.layers.LSTMCell(5, recurrent_activation="hard_sigmoid"),
    "keras_lstm_linear": lambda: rk.layers.LSTMCell(
        5, activation="linear", recurrent_activation="hard_sigmoid_keras2"),
    "gru_tf1_relu": lambda: rk.GRUCell(6, activation="relu"),
    "keras_gru_tf1_softsign": lambda: rk.layers.GRUCell(
        5, reset_after=False, activation="softsign", recurrent_activation="hard_sigmoid"),
    "layer_norm_softsign": lambda: rk.LayerNormLSTMCell(6, activation="softsign"),
}
SERVED = {"lstm": "lstm", "gru": "gru", "layer_norm_lstm": "layer_norm_lstm"}


@pytest.fixture(autouse=True)
def _kernels_on():
    assert ON_GPU or os.environ.get("TRITON_INTERPRET") == "1"
    assert steps.load_error() is None, steps.load_error()
    steps._broken.clear()
    yield
    assert not steps._broken, steps._broken  # no kernel fell back to the ops


def _calls(monkeypatch) -> list[str]:
    """Which of ``FusedSteps``'s methods served a step (the name, once per served step)."""
    seen = []
    for name in SERVED.values():
        real = getattr(steps.FusedSteps, name)

        def spy(*args, _real=real, _name=name):
            out = _real(*args)
            if out is not None:
                seen.append(_name)
            return out

        monkeypatch.setattr(steps.FusedSteps, name, staticmethod(spy))
    return seen


def _unroll(cell, x, state, fused: bool):
    with steps.enabled() if fused else contextlib.nullcontext():
        return cell.unroll(x, state, None, "zero", None, fast=False)


def _built(name, dtype=torch.float32):
    cell = CELLS[name]()
    cell.ensure_built(3, dtype)
    perturb(cell, scale=0.8)
    return cell.to(DEVICE)


@pytest.mark.parametrize("name", list(CELLS))
def test_unrolls_match_the_equations(name, monkeypatch):
    cell = _built(name)
    torch.manual_seed(1)
    x = torch.randn(5, 4, 3, device=DEVICE, requires_grad=True)
    state = cell.zero_state(4, torch.float32, DEVICE)
    state = torch.utils._pytree.tree_map(lambda t: (t + 0.5 * torch.randn_like(t))
                                         .requires_grad_(), state)
    leaves = torch.utils._pytree.tree_leaves(state)
    wrt = [x, *leaves, *cell.parameters()]
    seen = _calls(monkeypatch)
    results = []
    for fused in (True, False):
        out, final = _unroll(cell, x, state, fused)
        outs = [out, *torch.utils._pytree.tree_leaves(final)]
        torch.manual_seed(2)
        weights = [torch.randn_like(o) for o in outs]
        loss = sum((o * w).sum() for o, w in zip(outs, weights, strict=True))
        results.append((outs, torch.autograd.grad(loss, wrt, allow_unused=True)))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **TOL)
    kind = cell.sequence_params().kind
    assert seen == [SERVED[kind]] * 5  # every step served


@pytest.mark.parametrize("name", ["lstm_peephole_clip", "basic_lstm", "gru_tf1", "layer_norm"])
def test_float64_gradcheck(name):
    cell = _built(name, torch.float64).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    state = cell.zero_state(2, torch.float64, DEVICE)
    leaves = [t.clone().normal_().requires_grad_() for t in torch.utils._pytree.tree_leaves(state)]
    spec = torch.utils._pytree.tree_structure(state)
    params = list(cell.parameters())

    def run(x, *rest):
        s = torch.utils._pytree.tree_unflatten(list(rest), spec)
        with steps.enabled():
            out, final = cell.unroll(x, s, None, "zero", None, fast=False)
        return (out, *torch.utils._pytree.tree_leaves(final))

    assert torch.autograd.gradcheck(run, (x, *leaves), atol=1e-6, fast_mode=True)
    assert all(p.dtype == torch.float64 for p in params)


@pytest.mark.parametrize("make, why", [
    (lambda: rk.LSTMCell(6, activation="elu", cell_clip=1.0), "activation"),
    (lambda: rk.GRUCell(6, reset_after=True), "reset after (cuDNN's)"),
    (lambda: rk.LayerNormLSTMCell(6, activation="swish"), "activation"),
])
def test_steps_it_does_not_serve_run_as_ops(make, why, monkeypatch):
    cell = make()
    cell.ensure_built(3, torch.float32)
    cell.to(DEVICE)
    x = torch.randn(4, 2, 3, device=DEVICE)
    seen = _calls(monkeypatch)
    state = cell.zero_state(2, torch.float32, DEVICE)
    fused = _unroll(cell, x, state, True)
    plain = _unroll(cell, x, state, False)
    torch.testing.assert_close(fused[0], plain[0], rtol=0, atol=0)
    assert seen == [], why


@pytest.mark.parametrize("name, kernel", [("lstm_peephole_clip", "lstm_backward"),
                                          ("gru_tf1", "blend_backward"),
                                          ("layer_norm", "ln_lstm_backward")])
def test_a_failing_kernel_turns_them_off_with_one_warning(name, kernel, monkeypatch):
    """A kernel that fails (say, to compile on an unexpected GPU) warns once and the steps run
    as the equations' ops, forward and backward, with the same numbers."""
    cell = _built(name)
    x = torch.randn(4, 2, 3, device=DEVICE, requires_grad=True)
    state = cell.zero_state(2, torch.float32, DEVICE)
    out, _ = _unroll(cell, x, state, True)  # forward on the kernels, backward to come
    kernels = steps._kernels()

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("no such GPU")
            return launch

    monkeypatch.setattr(kernels, kernel, Broken())
    with pytest.warns(UserWarning, match="fused steps failed .*no such GPU"):
        gx, = torch.autograd.grad(out.sum(), x)
    ref, _ = _unroll(cell, x, state, False)
    gref, = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(gx, gref, **TOL)
    assert steps._broken == ["no such GPU"]
    seen = _calls(monkeypatch)
    _unroll(cell, x, state, True)
    assert seen == []  # off from then on
    steps._broken.clear()


@pytest.mark.parametrize("name", ["lstm_peephole_clip", "layer_norm", "gru_tf1"])
def test_float64_steps_keep_float64_precision(name):
    """In float64 the kernels' options (cell_clip, epsilon, forget_bias) stay float64 too."""
    cell = _built(name, torch.float64).double()
    x = torch.randn(4, 3, 3, dtype=torch.float64, device=DEVICE)
    state = torch.utils._pytree.tree_map(lambda t: t.normal_(), cell.zero_state(
        3, torch.float64, DEVICE))
    fused = _unroll(cell, x, state, True)
    plain = _unroll(cell, x, state, False)
    for a, b in zip(torch.utils._pytree.tree_leaves(fused), torch.utils._pytree.tree_leaves(plain),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("masked_output", ["zero", "previous"])
@pytest.mark.parametrize("name", ["lstm_peephole_proj", "gru_tf1", "layer_norm"])
def test_masked_unrolls_match_the_equations(name, masked_output):
    """Variable lengths (a zero among them) and Keras's held outputs: the loop around the
    steps masks them, the steps run whole batches."""
    cell = _built(name)
    x = torch.randn(5, 4, 3, device=DEVICE, requires_grad=True)
    mask = length_mask(torch.tensor([5, 0, 3, 2]), 5).to(DEVICE)
    state = cell.zero_state(4, torch.float32, DEVICE)
    params = list(cell.parameters())
    got = []
    for fused in (True, False):
        with steps.enabled() if fused else contextlib.nullcontext():
            out, final = cell.unroll(x, state, mask, masked_output, None, fast=False)
        leaves = [out, *torch.utils._pytree.tree_leaves(final)]
        loss = sum((t * (k + 1)).sum() for k, t in enumerate(leaves))
        got.append([*leaves, *torch.autograd.grad(loss, [x, *params])])
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, **TOL)


LOOP_CELLS = [*CELLS, "lstm_proj_no_clip"]
CELLS_AND_PROJ = {**CELLS, "lstm_proj_no_clip": lambda: rk.LSTMCell(6, num_proj=4, cell_clip=2.0)}


@pytest.mark.parametrize("name", LOOP_CELLS)
def test_whole_loops_match_the_equations(name):
    """``steps.sequence``: the whole unroll as one autograd node (U's gradient in one product
    at the end), against the equations' loop: outputs, final state, every gradient."""
    cell = CELLS_AND_PROJ[name]()
    cell.ensure_built(3, torch.float32)
    perturb(cell, scale=0.8)
    torch.manual_seed(3)
    _compare_loop(cell.to(DEVICE), torch.randn(6, 3, 3, device=DEVICE, requires_grad=True), None)


def _compare_loop(cell, x, mask, masked_output="zero"):
    """``steps.sequence`` against the equations' loop (under ``mask``, ``masked_output``):
    outputs, final state, and the gradients of a weighting of them to every input."""
    state = torch.utils._pytree.tree_map(lambda t: t.normal_().requires_grad_(),
                                         cell.zero_state(x.shape[1], x.dtype, DEVICE))
    wrt = [x, *torch.utils._pytree.tree_leaves(state), *cell.parameters()]
    got = []
    for loop in (True, False):
        done = steps.sequence(cell, x, state, mask, masked_output) if loop else \
            cell.unroll(x, state, mask, masked_output, None, fast=False)
        assert done is not None
        leaves = [done[0], *torch.utils._pytree.tree_leaves(done[1])]
        loss = sum((t * (k + 1.5)).sum() for k, t in enumerate(leaves))
        got.append([*leaves, *torch.autograd.grad(loss, wrt)])
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("name", ["lstm_peephole_clip", "lstm_peephole_proj", "gru_tf1",
                                  "layer_norm"])
def test_whole_loops_gradcheck_and_partial_outputs(name):
    """float64 gradcheck; and gradients when only the outputs, or only the final state, are
    used (autograd then hands the loop None for the others)."""
    cell = _built(name, torch.float64).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    state = cell.zero_state(2, torch.float64, DEVICE)
    leaves = [t.clone().normal_().requires_grad_() for t in torch.utils._pytree.tree_leaves(state)]
    spec = torch.utils._pytree.tree_structure(state)

    def run(x, *rest):
        out, final = steps.sequence(cell, x, torch.utils._pytree.tree_unflatten(list(rest), spec),
                                    None)
        return (out, *torch.utils._pytree.tree_leaves(final))

    assert torch.autograd.gradcheck(run, (x, *leaves), atol=1e-6, fast_mode=True)
    for pick in (lambda outs: outs[0].sum(), lambda outs: outs[-1].sum()):
        got = torch.autograd.grad(pick(run(x, *leaves)), [x, *leaves])
        ref_out, ref_final = cell.unroll(x, torch.utils._pytree.tree_unflatten(leaves, spec), None,
                                         "zero", None, fast=False)
        want = torch.autograd.grad(pick([ref_out, *torch.utils._pytree.tree_leaves(ref_final)]),
                                   [x, *leaves])
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)


def test_what_a_whole_loop_leaves_to_the_ops():
    x = torch.randn(4, 2, 3, device=DEVICE)
    cell = rk.BasicRNNCell(4)  # nothing to fuse in a vanilla RNN's step
    cell.ensure_built(3, torch.float32)
    assert steps.sequence(cell.to(DEVICE), x, cell.zero_state(2, torch.float32, DEVICE)) is None
    elu = rk.LSTMCell(4, activation="elu", input_size=3).to(DEVICE)  # no kernel has elu
    assert steps.sequence(elu, x, elu.zero_state(2, torch.float32, DEVICE)) is None


@pytest.mark.parametrize("masked_output", ["zero", "previous"])
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("name", ["lstm_peephole_clip", "basic_lstm", "gru_tf1", "layer_norm",
                                  "keras_gru_tf1_softsign", "lstm_peephole_proj",
                                  "lstm_proj_no_clip"])
def test_masked_whole_loops_match_the_equations(name, holes, masked_output):
    """TF1's ``sequence_length`` (a zero length among them), Keras's held outputs, and masks
    with holes (a first step masked too): past a length the state is held and the output is 0
    or the previous one, forward and backward, as the equations'."""
    mask = length_mask(torch.tensor([6, 0, 3, 1]), 6)
    if holes:
        mask[0, 0] = mask[1, 0] = mask[4, 0] = False
        mask[2, 1] = True
    cell = CELLS_AND_PROJ[name]()
    cell.ensure_built(3, torch.float32)
    perturb(cell, scale=0.8)
    _compare_loop(cell.to(DEVICE), torch.randn(6, 4, 3, device=DEVICE, requires_grad=True),
                  mask.to(DEVICE), masked_output)


@pytest.mark.parametrize("name, kernel", [("lstm_peephole_clip", "lstm_backward"),
                                          ("lstm_peephole_proj", "lstm_backward"),
                                          ("gru_tf1", "gates_backward"),
                                          ("layer_norm", "ln_lstm_backward")])
@pytest.mark.parametrize("lengths, masked_output", [(None, "zero"), ([4, 1], "zero"),
                                                    ([4, 1], "previous")])
def test_a_whole_loop_whose_kernel_fails_recomputes_as_ops(name, kernel, lengths, masked_output,
                                                           monkeypatch):
    cell = _built(name)
    x = torch.randn(4, 2, 3, device=DEVICE, requires_grad=True)
    state = cell.zero_state(2, torch.float32, DEVICE)
    params = list(cell.parameters())
    mask = None if lengths is None else length_mask(torch.tensor(lengths), 4).to(DEVICE)
    out, _ = steps.sequence(cell, x, state, mask, masked_output)

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("no such GPU")
            return launch

    monkeypatch.setattr(steps._kernels(), kernel, Broken())
    with pytest.warns(UserWarning, match="fused steps failed .*no such GPU"):
        got = torch.autograd.grad(out.square().sum(), [x, *params])
    ref, _ = cell.unroll(x, state, mask, masked_output, None, fast=False)
    want = torch.autograd.grad(ref.square().sum(), [x, *params])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert steps.sequence(cell, x, state, mask) is None  # off from then on
    steps._broken.clear()


def test_without_triton_the_steps_stay_off():
    """Where Triton cannot be imported, ``load_error`` says so and the loop runs as ops."""
    code = """
import sys
sys.modules["triton"] = None  # as if it were not installed
import torch, rnnkit as rk
from rnnkit.fast import steps
print(steps.load_error())
cell = rk.GRUCell(4, input_size=3)
x = torch.randn(5, 2, 3)
state = cell.zero_state(2)
assert steps.sequence(cell, x, state, None) is None
with steps.enabled():
    out, _ = cell.unroll(x, state, None, "zero", None, fast=False)
print(tuple(out.shape))
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    first, shape = done.stdout.strip().splitlines()[-2:]
    assert first.startswith("Triton is unavailable (")
    assert shape == "(5, 2, 4)"
