"""The graph path's loops in Triton (``rnnkit.fast.steps.sequence``) against the equations'
own loop: outputs, final states and gradients to 1e-5 (float32), float64 ``gradcheck`` and
1e-12 agreement, over the cells they serve (clipping, peepholes, projections, TF1's gate order,
layer norm, TF1's GRU, the C kernels' activations), masks (TF1's zero outputs, Keras's held
ones, holes), the cells they leave to the ops, and a kernel that fails.

Without a GPU (here and in CI) the kernels run under Triton's interpreter on the CPU
(``TRITON_INTERPRET=1``, set by ``conftest.py`` before Triton is first imported); on a CUDA
device, on it."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _kernels_on():
    assert ON_GPU or os.environ.get("TRITON_INTERPRET") == "1"
    assert steps.load_error() is None, steps.load_error()
    steps._broken.clear()
    yield
    assert not steps._broken, steps._broken  # no kernel fell back to the ops


def _built(name, dtype=torch.float32):
    cell = CELLS[name]()
    cell.ensure_built(3, dtype)
    perturb(cell, scale=0.8)
    return cell.to(DEVICE)


@pytest.mark.parametrize("name", ["lstm_peephole_clip", "layer_norm", "gru_tf1"])
def test_float64_loops_keep_float64_precision(name):
    """In float64 the kernels' options (cell_clip, epsilon, forget_bias) stay float64 too."""
    cell = _built(name, torch.float64).double()
    x = torch.randn(4, 3, 3, dtype=torch.float64, device=DEVICE)
    state = torch.utils._pytree.tree_map(lambda t: t.normal_(), cell.zero_state(
        3, torch.float64, DEVICE))
    fused = steps.sequence(cell, x, state)
    plain = cell.unroll(x, state, None, "zero", None, fast=False)
    for a, b in zip(torch.utils._pytree.tree_leaves(fused), torch.utils._pytree.tree_leaves(plain),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


LOOP_CELLS = [*CELLS, "lstm_proj_no_clip"]
CELLS_AND_PROJ = {**CELLS, "lstm_proj_no_clip": lambda: rk.LSTMCell(6, num_proj=4, cell_clip=2.0)}


@pytest.mark.parametrize("name", LOOP_CELLS)
def test_whole_loops_match_the_equations(name):
    """``steps.sequence``: the whole unroll as one autograd node (U's gradient in one product
    at the end), against the equations' loop: outputs, final state, every gradient."""
    torch.manual_seed(3)  # its initializers too: the same weights whatever ran before
    cell = CELLS_AND_PROJ[name]()
    cell.ensure_built(3, torch.float32)
    perturb(cell, scale=0.8)
    _compare_loop(cell.to(DEVICE), torch.randn(6, 3, 3, device=DEVICE, requires_grad=True), None)


# Layer norm divides each gate's row by its σ over a few units (6 here), which magnifies float32
# rounding (the products summed in another order) in the gradients: 1.8e-5 absolute and 4.7e-5
# relative seen with some weights, on the CPU as on a GPU. In float64 the loops hold 1e-11
# (``test_float64_loops_keep_float64_precision``) and pass gradcheck.
LN_F32 = {"atol": 1e-4, "rtol": 1e-4}


def _compare_loop(cell, x, mask, masked_output="zero", tol=None):
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
    if tol is None:
        tol = LN_F32 if isinstance(cell, rk.LayerNormLSTMCell) and x.dtype == torch.float32 \
            else TOL
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, **tol)


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


@pytest.mark.parametrize("make", [
    lambda: rk.BasicRNNCell(4),  # nothing to fuse in a vanilla RNN's step
    lambda: rk.LSTMCell(4, activation="elu", cell_clip=1.0),  # no kernel has elu
    lambda: rk.GRUCell(4, reset_after=True),  # cuDNN's
    lambda: rk.LayerNormLSTMCell(4, activation="swish"),
])
def test_what_a_whole_loop_leaves_to_the_ops(make):
    cell = make()
    cell.ensure_built(3, torch.float32)
    x = torch.randn(4, 2, 3, device=DEVICE)
    assert steps.sequence(cell.to(DEVICE), x, cell.zero_state(2, torch.float32, DEVICE)) is None


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
    """A kernel that fails (say, to compile on an unexpected GPU) warns once, the backward is
    recomputed through the equations with the same numbers, and the loops are off from then on."""
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
    assert steps._broken == ["no such GPU"]
    assert steps.sequence(cell, x, state, mask) is None  # off from then on
    steps._broken.clear()


def test_without_triton_the_loops_stay_off():
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


SEQUENCE_CELLS = {  # what the fused steps serve: LSTMs without projection or layer norm
    "lstm_clip_20_units": lambda: rk.LSTMCell(20, cell_clip=0.6),  # two chunks of U's rows
    "lstm_peephole_clip": CELLS["lstm_peephole_clip"],
    "basic_lstm": CELLS["basic_lstm"],
    "keras_lstm_hard_sigmoid": CELLS["keras_lstm_hard_sigmoid"],
    "lstm_softsign_peephole": CELLS["lstm_softsign_peephole"],
}


LOOP_KERNELS = ("lstm_step_forward", "lstm_forward", "lstm_backward",
                "gru_gates_step", "gru_blend_step", "gates_forward", "blend_forward",
                "gates_backward", "blend_backward")
LOOP_SWITCHES = {  # switches: the kernels launched over 6 steps (fused: from 16 rows)
    "product_and_kernel": ({"FUSED_STEP_UNITS": 0}, ["lstm_forward"] * 6 + ["lstm_backward"] * 6),
    "fused_forward": ({"FUSED_STEP_UNITS": 64}, ["lstm_step_forward"] * 6 + ["lstm_backward"] * 6),
}
F32_SUMS = {"atol": 5e-5, "rtol": 5e-5}
GRU_STEP_CELLS = {  # a reset-before GRU's fused forward steps
    "gru_tf1": CELLS["gru_tf1"],
    "gru_tf1_20_units": lambda: rk.GRUCell(20),  # two blocks of units, two chunks of U's rows
    "keras_gru_tf1_softsign": CELLS["keras_gru_tf1_softsign"],
}
GRU_BACKWARD = ["blend_backward", "gates_backward"] * 6
GRU_SWITCHES = {
    "product_and_kernel": ({"FUSED_STEP_UNITS": 0},
                           ["gates_forward", "blend_forward"] * 6 + GRU_BACKWARD),
    "fused_forward": ({"FUSED_STEP_UNITS": 64},
                      ["gru_gates_step", "gru_blend_step"] * 6 + GRU_BACKWARD),
}


def _spy_on_loop_kernels(monkeypatch) -> list[str]:
    """The names of the loops' kernels as they are launched, in order."""
    kernels, launched = steps._kernels(), []
    for kernel in LOOP_KERNELS:
        real = getattr(kernels, kernel)

        class Spy:
            def __getitem__(self, grid, real=real, kernel=kernel):
                launched.append(kernel)
                return real[grid]

        monkeypatch.setattr(kernels, kernel, Spy())
    return launched


def _check_steps(make, switches, want, masking, batch, dtype, monkeypatch) -> None:
    """The loop of ``make()``'s cell under ``switches`` (of ``steps``) against the equations,
    and the kernels it launched: ``want``, or a batch under ``FUSED_MIN_BATCH`` its product
    and kernel apart."""
    for key, value in switches.items():
        monkeypatch.setattr(steps, key, value)
    launched = _spy_on_loop_kernels(monkeypatch)
    cell = make()
    cell.ensure_built(3, dtype)
    perturb(cell, scale=0.8)
    cell = cell.to(DEVICE, dtype)
    mask = None
    if masking is not None:
        lengths = torch.randint(0, 7, (batch,), generator=torch.Generator().manual_seed(batch))
        mask = length_mask(lengths, 6)
        if masking == "holes":
            mask[1] = ~mask[1]
        mask = mask.to(DEVICE)
    torch.manual_seed(4)
    x = torch.randn(6, batch, 3, dtype=dtype, device=DEVICE, requires_grad=True)
    # float32 at 20 units: a weight's gradient sums 6 x 17 products, in another order than the
    # equations' (3e-5 relative seen); float64 holds TOL
    _compare_loop(cell, x, mask, "previous" if masking == "previous" else "zero",
                  F32_SUMS if dtype == torch.float32 else TOL)
    assert launched == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 17])  # 17: two blocks of rows, the second one row
@pytest.mark.parametrize("masking", [None, "zero", "previous", "holes"])
@pytest.mark.parametrize("name", list(SEQUENCE_CELLS))
@pytest.mark.parametrize("switch", list(LOOP_SWITCHES))
def test_fused_steps_match_the_equations(switch, name, masking, batch, dtype, monkeypatch):
    """A plain LSTM's loop with each step's product and kernel apart, or with its forward
    steps' products inside their kernels (``steps.FUSED_STEP_UNITS``: ``lstm_step_forward``;
    the backward's steps a product and a kernel each; 20 units: two blocks of them; a batch of
    one row takes the product and a kernel): outputs, final state and every gradient are the
    equations'."""
    switches, want = LOOP_SWITCHES[switch]
    if batch < steps.FUSED_MIN_BATCH:
        want = ["lstm_forward"] * 6 + ["lstm_backward"] * 6
    _check_steps(SEQUENCE_CELLS[name], switches, want, masking, batch, dtype, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 17])
@pytest.mark.parametrize("masking", [None, "zero", "previous", "holes"])
@pytest.mark.parametrize("name", list(GRU_STEP_CELLS))
@pytest.mark.parametrize("switch", list(GRU_SWITCHES))
def test_fused_gru_steps_match_the_equations(switch, name, masking, batch, dtype, monkeypatch):
    """A reset-before GRU's forward steps with their two products inside their two kernels
    (``gru_gates_step``, ``gru_blend_step``), or apart from them; the backward's steps a
    product and a kernel each, twice: outputs, final state and every gradient are the
    equations'."""
    switches, want = GRU_SWITCHES[switch]
    if batch < steps.FUSED_MIN_BATCH:
        want = GRU_SWITCHES["product_and_kernel"][1]
    _check_steps(GRU_STEP_CELLS[name], switches, want, masking, batch, dtype, monkeypatch)
