"""rnnkit's own fused LSTM kernel (``rnnkit.fast.fused``) against the reference loop
(``fast=False``): outputs, final states and gradients with respect to inputs, initial states and
every variable, to 1e-5, over the LSTM variants oneDNN lacks (clipping, layer norm, other
activations), lengths, directions, Keras masks and ``swap_memory``; and the dispatch around it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fast_checks import FUSED_CELLS, TOL, compare_masked_keras_layer
from fast_checks import compare as _compare
from fast_checks import decisions as _decisions
from fast_checks import perturb as _perturb
from torch.utils import _pytree as pytree

import rnnkit as rk
from rnnkit.fast import compiled, dispatch, fused, fused_gru
from rnnkit.fast.library import OneDNNError
from rnnkit.unroll import map_state

needs_kernel = pytest.mark.skipif(compiled.load_error() is not None,
                                  reason=f"the fused kernel does not load: {compiled.load_error()}")
pytestmark = needs_kernel

LENGTHS = {"full": None, "varied": [5, 0, 7, 3, 7], "one_short": [7, 7, 6, 7, 7]}


@pytest.mark.parametrize("name", list(FUSED_CELLS))
def test_dispatch_picks_the_fused_kernel(name):
    """``tests/test_fast.py`` checks these cells' numbers against the reference loop."""
    cell = FUSED_CELLS[name]()
    cell.ensure_built(4, torch.float32)
    x = torch.randn(5, 7, 4)
    assert rk.fast.explain(cell, x).path == "fused"
    assert rk.fast.explain(cell, x, sequence_length=[5, 0, 7, 3, 7], swap_memory=True).path \
        == "fused"


@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("lengths", ["full", "varied"])
def test_tf1_gru_kernel_goes_in_whole_and_gets_one_gradient(lengths, reset_after, monkeypatch):
    """The fused GRU takes a TF1 GRU's gathered kernel whole (``U`` None) and writes both its
    row blocks' gradients into one buffer; the numbers equal the reference loop's."""
    cell = rk.GRUCell(5, reset_after=reset_after)
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    seen, apply = [], fused_gru._FusedGRU.apply

    def spy(cfg, hmask, lengths_, x, h0, W, U, *rest):
        seen.append((tuple(W.shape), U))
        return apply(cfg, hmask, lengths_, x, h0, W, U, *rest)

    monkeypatch.setattr(fused_gru._FusedGRU, "apply", spy)
    x = torch.randn(5, 7, 4, requires_grad=True)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=LENGTHS[lengths], fast=fast),
             [x, *cell.parameters()])
    assert seen and all(s == ((9, 15), None) for s in seen)


@pytest.mark.parametrize("make", [lambda: rk.BasicLSTMCell(5),
                                  lambda: rk.LSTMCell(5, cell_clip=0.5, num_proj=3)],
                         ids=["basic_lstm", "lstm_clip_proj"])
def test_tf1_lstm_kernel_goes_in_whole_and_gets_one_gradient(make, monkeypatch):
    """The fused LSTM takes a TF1 LSTM's kernel whole (``U`` None: ``W`` and ``U`` are its row
    blocks) and writes both gradients into one buffer; the numbers equal the reference loop's."""
    cell = make()
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    seen, apply = [], fused._Fused.apply

    def spy(cfg, hmask, lengths_, x, h0, c0, W, U, *rest):
        seen.append((W, U))
        return apply(cfg, hmask, lengths_, x, h0, c0, W, U, *rest)

    monkeypatch.setattr(fused._Fused, "apply", spy)
    x = torch.randn(5, 7, 4, requires_grad=True)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=LENGTHS["varied"], fast=fast),
             [x, *cell.parameters()])
    kernel = cell.get_parameter("kernel")
    assert seen and all(W is kernel and U is None for W, U in seen)


@pytest.mark.parametrize("lengths", ["full", "varied"])
def test_swap_memory_chunks_match_reference(lengths):
    cell = FUSED_CELLS["fused_peephole_clip"]()
    x = torch.randn(5, 7, 4, requires_grad=True)
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=LENGTHS[lengths],
                                         swap_memory=True, fast=fast),
             [x, *cell.parameters()])


def test_multi_rnn_cell_mixes_fused_and_onednn_layers(monkeypatch):
    monkeypatch.setattr(dispatch, "SMALL_UNITS", dict.fromkeys(dispatch.SMALL_UNITS, 0))  # GRU on oneDNN
    cell = rk.MultiRNNCell([rk.LSTMCell(6, cell_clip=0.5), rk.GRUCell(5)])
    x = torch.randn(3, 6, 4, requires_grad=True)
    cell.ensure_built(4, torch.float32)
    _perturb(cell)
    seen = _decisions(monkeypatch)
    _compare(lambda fast: rk.dynamic_rnn(cell, x, fast=fast), [x, *cell.parameters()])
    wanted = "onednn" if dispatch.onednn.load_error() is None else "reference"
    assert seen == ["fused", wanted]


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("layer, kwargs", [
    ("LSTM", {"recurrent_activation": "hard_sigmoid"}),
    ("LSTM", {"activation": "relu", "unit_forget_bias": False}),
    ("GRU", {"recurrent_activation": "hard_sigmoid"}),
    ("GRU", {"recurrent_activation": "hard_sigmoid", "reset_after": False}),
    ("SimpleRNN", {"activation": "softsign"}),
])
def test_keras_layers_with_masks_match_reference(layer, kwargs, go_backwards, monkeypatch):
    """Keras masks (outputs past a length repeat the last one; with ``go_backwards`` the valid
    steps are a suffix) on the Keras activations oneDNN lacks."""
    assert compare_masked_keras_layer(layer, go_backwards, monkeypatch, **kwargs) == ["fused"]

def test_input_without_grad_and_second_backward():
    cell = FUSED_CELLS["fused_proj_clip"]()
    cell.ensure_built(4, torch.float32)
    x = torch.randn(3, 8, 4)  # no gradient wanted for the input
    out, _ = rk.dynamic_rnn(cell, x, fast=True)
    loss = out.square().sum()
    first = torch.autograd.grad(loss, list(cell.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(cell.parameters()))
    ref, _ = rk.dynamic_rnn(cell, x, fast=False)
    want = torch.autograd.grad(ref.square().sum(), list(cell.parameters()))
    for a, b, c in zip(first, second, want, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(a, c, **TOL)


def test_explain_names_fused_and_why_not_onednn():
    cell = rk.LSTMCell(4, cell_clip=1.0, input_size=3)
    text = str(rk.fast.explain(cell, torch.randn(2, 5, 3)))
    assert text.splitlines()[0] == "path: fused"
    assert "not onednn: cell_clip/proj_clip set" in text
    gelu = rk.LSTMCell(4, activation="gelu", input_size=3)
    assert "not fused: activation is gelu" in str(rk.fast.explain(gelu, torch.randn(2, 5, 3)))
    assert fused.unmet(rk.GRUCell(4, input_size=3).canonical()) == []
    p = rk.GRUCell(4, input_size=3).canonical()
    assert fused.unmet(dataclasses.replace(p, state_mask=torch.ones(2, 4))) == []
    assert fused.unmet(dataclasses.replace(p, state_mask=torch.ones(5, 2, 4))) == []  # per step
    assert "dropout mask state_mask of shape [5, 2, 3, 4]" in fused.unmet(
        dataclasses.replace(p, state_mask=torch.ones(5, 2, 3, 4)))[0]
    assert fused.unmet(dataclasses.replace(p, state_mask=torch.ones(2, 4),
                                           h_mask=torch.ones(2, 3, 4))) == \
        ["both a state mask and a recurrent-dropout mask"]
    norm = rk.LayerNormLSTMCell(4, input_size=3).canonical()
    assert fused.unmet(dataclasses.replace(norm, state_mask=torch.ones(2, 4))) == []
    assert "on a layer_norm_lstm cell" in fused.unmet(
        dataclasses.replace(norm, h_mask=torch.ones(2, 4, 4)))[0]
    assert "not fused: can run it, but onednn comes first" in str(
        rk.fast.explain(rk.GRUCell(300, input_size=3), torch.randn(2, 5, 3)))


def test_reference_runs_with_one_warning_where_the_kernel_cannot_build(monkeypatch, tmp_path):
    monkeypatch.setattr(compiled, "_state", {})
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc or gcc either
    monkeypatch.setattr(dispatch, "_warned", set())
    cell = rk.LSTMCell(4, cell_clip=1.0, input_size=3)
    x = torch.randn(2, 5, 3)
    with pytest.warns(RuntimeWarning, match="fused kernels are not available: no C compiler"):
        out, _ = rk.dynamic_rnn(cell, x)
    torch.testing.assert_close(out, rk.dynamic_rnn(cell, x, fast=False)[0])
    with pytest.raises(ValueError, match="no C compiler found"):
        rk.dynamic_rnn(cell, x, fast=True)
    assert rk.fast.explain(cell, x).path == "reference"


@needs_kernel
def test_a_failing_compiler_is_reported_and_leaves_nothing_in_the_cache(monkeypatch, tmp_path):
    cc = tmp_path / "bin" / "cc"
    cc.parent.mkdir()
    cc.write_text("#!/bin/sh\necho \"$3: error: this compiler refuses\" >&2\nexit 1\n")
    cc.chmod(0o755)
    cache = tmp_path / "cache"
    monkeypatch.setattr(compiled, "_state", {})
    monkeypatch.setenv("RNNKIT_CACHE", str(cache))
    monkeypatch.setenv("CC", str(cc))
    with pytest.raises(OneDNNError, match="cc failed: .*error: this compiler refuses"):
        compiled.kernels("lstm")
    assert list(cache.iterdir()) == []
    assert "this compiler refuses" in compiled.load_error("gru")


@needs_kernel
def test_each_family_builds_its_own_library_on_first_use(monkeypatch, tmp_path):
    """A GRU's first call builds the GRU library alone, an LSTM's the LSTM's; both then run in
    one process (each library calls its own sgemm pointer)."""
    monkeypatch.setattr(compiled, "_state", {})
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    x = torch.randn(2, 6, 3)
    gru = rk.GRUCell(5, activation=torch.nn.functional.relu, input_size=3)
    lstm = rk.LSTMCell(5, cell_clip=1.0, input_size=3)
    built = []
    for cell in (gru, lstm):
        assert rk.fast.explain(cell, x).path == "fused"
        torch.testing.assert_close(rk.dynamic_rnn(cell, x, fast=True)[0],
                                   rk.dynamic_rnn(cell, x, fast=False)[0], **TOL)
        built.append(sorted(p.name.split("-")[0] for p in tmp_path.iterdir()))
    assert built == [["gru"], ["gru", "lstm"]]
    assert set(compiled._state) == {"gru", "lstm"}


def _compare_inference(run) -> None:
    """``run(fast)`` without gradients (inference keeps nothing for backward: the state in
    buffers of its own), ``fast=True`` against ``fast=False``, every output leaf to 1e-5."""
    with torch.no_grad():
        fast, ref = run(True), run(False)
    for a, b in zip(pytree.tree_leaves(fast), pytree.tree_leaves(ref), strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("make", [
    lambda: rk.LSTMCell(64, use_peepholes=True, cell_clip=0.7, num_proj=48, proj_clip=0.4),
    lambda: rk.LayerNormLSTMCell(64),
    lambda: rk.GRUCell(96, activation="relu"),
    lambda: rk.GRUCell(96, reset_after=True, activation="softsign"),
    lambda: rk.BasicRNNCell(128, activation="hard_sigmoid"),
])
def test_rows_split_across_threads_match_reference(make):
    """Batches with at least 4096 gate values per step run their rows on several threads; the
    bias, peephole and layer-norm gradients are then summed over the threads' parts. (Both
    float32 paths are within about 1e-6 of the largest gradient entry of a float64 run here.)"""
    torch.manual_seed(0)
    cell = make()
    x = torch.randn(32, 5, 8, requires_grad=True)
    cell.ensure_built(8, torch.float32)
    _perturb(cell)
    lengths = [5, 5, 4, 0, 3, 5, 1, 2] * 4
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=lengths, fast=fast),
             [x, *cell.parameters()], scaled=True)
    for lens in (lengths, None):
        _compare_inference(lambda fast, lens=lens: rk.dynamic_rnn(cell, x, sequence_length=lens,
                                                                  fast=fast))


@pytest.fixture
def two_threads():
    """The small-batch path needs more than one thread (CI machines have two cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("units", [10, 40, 100, 128, 200])
@pytest.mark.parametrize("make", [
    lambda n: rk.BasicLSTMCell(n, forget_bias=0.5),  # the kernel's TF1 gate order
    lambda n: rk.LSTMCell(n, use_peepholes=True, cell_clip=0.7),
], ids=["basic", "peephole_clip"])
@pytest.mark.parametrize("lengths", [[9], None, [9, 4], [9, 0]])
def test_small_batches_split_units_across_threads_match_reference(make, units, lengths,
                                                                  two_threads, monkeypatch):
    """Batches of 1 or 2 run each thread's units through the whole sequence, one barrier a
    step (``lstm_kernel.c``'s small-batch path): units split unevenly, a thread with none
    (10 units), panels of U narrower than 64 columns and full ones next to them (200 units;
    batch 1 only: at batch 2 that takes the per-step sgemm), sequences ending early and of
    length 0.
    (Variables moved by 0.1 noise: with 0.4 at 128 units, gradients reach 6, and the two float32
    paths, summing in different orders, differed by 1.6e-5, the fast one the closer of the two
    to a float64 run.)"""
    # the fused kernel at any batch
    monkeypatch.setattr(dispatch, "SMALL_UNITS", dict.fromkeys(dispatch.SMALL_UNITS, 10**9))
    torch.manual_seed(0)
    cell = make(units)
    batch = 1 if lengths is None else len(lengths)
    x = torch.randn(batch, 9, 5, requires_grad=True)
    cell.ensure_built(5, torch.float32)
    _perturb(cell, scale=0.1)
    cfg = fused._config(cell.sequence_params(), 9, batch, 5)
    assert compiled.kernels("lstm").rk_lstm_small_batch(cfg) == (batch == 1 or units <= 128)
    h0 = rk.LSTMStateTuple(torch.randn(batch, units, requires_grad=True),
                           torch.randn(batch, units, requires_grad=True))
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=lengths, initial_state=h0,
                                         fast=fast),
             [x, *h0, *cell.parameters()])
    _compare_inference(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=lengths,
                                                   initial_state=h0, fast=fast))


def _takes(query: str, cell, batch: int) -> int:
    """What the kernel's ``query`` (``rk_lstm_small_batch``, ``rk_lstm_split_batch``) says of a
    5-step call of ``cell`` on ``batch`` sequences of depth 4."""
    cell.ensure_built(4, torch.float32)
    return getattr(compiled.kernels("lstm"), query)(
        fused._config(cell.sequence_params(), 5, batch, 4))


def test_small_batch_path_only_where_it_was_measured_faster(two_threads):
    """Batch 1 at any size, batch 2 with a share of U of at most 128 KB per thread (up to 128
    units at 2 threads); no projection, the standard activations."""
    def small(cell, batch=1):
        return _takes("rk_lstm_small_batch", cell, batch)

    assert small(rk.BasicLSTMCell(128), batch=2) == 1
    assert small(rk.BasicLSTMCell(129), batch=2) == 0
    assert small(rk.BasicLSTMCell(129)) == 1
    assert small(rk.BasicLSTMCell(1024)) == 1
    assert small(rk.BasicLSTMCell(64), batch=3) == 0
    assert small(rk.LSTMCell(64, num_proj=32)) == 0
    assert small(rk.LayerNormLSTMCell(64)) == 0
    assert small(rk.BasicLSTMCell(64, activation="relu")) == 0
    torch.set_num_threads(1)
    assert small(rk.BasicLSTMCell(64)) == 0


SPLIT_LENGTHS = {
    "full": None,
    "varied": [9, 9, 8, 0, 3, 9, 1, 2, 5, 7, 0, 9, 4, 6, 9, 2, 8],  # 17 rows: uneven halves
    "one_long": [9] + [1] * 19,  # by tokens, the first thread owns a single sequence
}


@pytest.mark.parametrize("lengths", list(SPLIT_LENGTHS))
@pytest.mark.parametrize("make", [
    lambda: rk.BasicLSTMCell(40, forget_bias=0.5),  # the kernel's TF1 gate order
    lambda: rk.LSTMCell(48, use_peepholes=True, cell_clip=0.7, num_proj=24, proj_clip=0.4),
    lambda: rk.LayerNormLSTMCell(32),
    lambda: rk.BasicLSTMCell(24, activation="relu"),
    lambda: rk.GRUCell(40),  # TF1's: reset before the recurrent product
    lambda: rk.GRUCell(40, reset_after=True),
    lambda: rk.GRUCell(24, activation="relu"),
    lambda: rk.BasicRNNCell(24, activation="softsign"),
], ids=["basic", "peephole_proj_clip", "layer_norm", "relu", "gru_tf1", "gru_reset_after",
        "gru_relu", "rnn_softsign"])
def test_batches_split_between_threads_match_reference(make, lengths, two_threads):
    """From 8 rows per thread, with U in each core's cache, each thread runs its own
    sequences through the whole sequence (split batches, ``lstm_kernel.c`` and
    ``gru_kernel.c``): rows split by tokens, sequences ending early and of length 0, a thread
    whose rows all end before the other's, each thread's own sums and scratch (peepholes,
    layer norm; r * h, h U, the activations' derivatives), training and inference."""
    torch.manual_seed(0)
    cell = make()
    lens = SPLIT_LENGTHS[lengths]
    batch = 16 if lens is None else len(lens)
    x = torch.randn(batch, 9, 5, requires_grad=True)
    cell.ensure_built(5, torch.float32)
    _perturb(cell, scale=0.2)
    p = cell.sequence_params()
    query, kernel = (("rk_lstm_split_batch", fused) if p.kind.endswith("lstm")
                     else ("rk_gru_split_batch", fused_gru))
    assert getattr(compiled.kernels(compiled.family_of(p.kind)), query)(
        kernel._config(p, 9, batch, 5)) == 1
    assert rk.fast.explain(cell, x, sequence_length=lens).path == "fused"
    h0 = map_state(lambda s: torch.randn_like(s).requires_grad_(), cell.zero_state(batch))
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=lens, initial_state=h0,
                                         fast=fast),
             [x, *pytree.tree_leaves(h0), *cell.parameters()], scaled=True)
    _compare_inference(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=lens,
                                                   initial_state=h0, fast=fast))


@pytest.mark.parametrize("batch, steps, depth", [(24, 20, 40), (2, 5, 600)],
                         ids=["rows", "columns"])
@pytest.mark.parametrize("make", [
    lambda: rk.LSTMCell(72, use_peepholes=True, cell_clip=0.7),
    lambda: rk.GRUCell(72),
    lambda: rk.GRUCell(72, reset_after=True),
], ids=["lstm", "gru_tf1", "gru_reset_after"])
@pytest.mark.parametrize("threads", [2, 3])
def test_input_gradient_split_between_threads_matches_reference(make, batch, steps, depth,
                                                                 threads, monkeypatch):
    """From a million multiply-adds, the input gradient dz W^T at the end of a backward runs as
    one one-thread product per thread (``kernels.h``'s ``gemm_split``): by rows of dx where
    there are more tokens than input features (split at row 16 * k, not the middle), by
    columns where there are fewer; with lengths (a packed batch) and without; two threads and
    three (on two cores: blocks of unequal size)."""
    monkeypatch.setattr(dispatch, "SMALL_UNITS", dict.fromkeys(dispatch.SMALL_UNITS, 10**9))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _input_gradient_case(make, batch, steps, depth)
    finally:
        torch.set_num_threads(before)


def _input_gradient_case(make, batch, steps, depth):
    torch.manual_seed(0)
    cell = make()
    x = torch.randn(batch, steps, depth, requires_grad=True)
    cell.ensure_built(depth, torch.float32)
    _perturb(cell, scale=0.1)
    gates = cell.sequence_params().W.shape[1]
    assert batch * steps * depth * gates >= 1 << 20
    assert rk.fast.explain(cell, x).path == "fused"
    for lens in (None, [steps - q % 3 for q in range(batch)]):
        _compare(lambda fast, lens=lens: rk.dynamic_rnn(cell, x, sequence_length=lens,
                                                        fast=fast),
                 [x, *cell.parameters()], scaled=True)


def test_gru_split_only_where_u_stays_in_the_cache(two_threads):
    """At least 8 rows per thread and U of at most 256 KB: GRUs up to 147 units, vanilla RNNs
    up to 256, at 2 threads; past that each step is one product over all rows."""
    def split(cell, batch=16):
        cell.ensure_built(4, torch.float32)
        return compiled.kernels("gru").rk_gru_split_batch(
            fused_gru._config(cell.sequence_params(), 5, batch, 4))

    assert split(rk.GRUCell(147)) == 1
    assert split(rk.GRUCell(148, reset_after=True)) == 0
    assert split(rk.GRUCell(64), batch=15) == 0
    assert split(rk.BasicRNNCell(256)) == 1
    assert split(rk.BasicRNNCell(257)) == 0
    torch.set_num_threads(1)
    assert split(rk.GRUCell(64)) == 0


def test_gru_rows_split_per_step_where_u_leaves_the_cache(two_threads):
    torch.manual_seed(0)
    cell = rk.GRUCell(160)
    x = torch.randn(32, 5, 8, requires_grad=True)
    cell.ensure_built(8, torch.float32)
    _perturb(cell, scale=0.1)
    assert compiled.kernels("gru").rk_gru_split_batch(
        fused_gru._config(cell.sequence_params(), 5, 32, 8)) == 0
    assert rk.fast.explain(cell, x).path == "fused"
    lengths = [5, 5, 4, 0, 3, 5, 1, 2] * 4
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=lengths, fast=fast),
             [x, *cell.parameters()], scaled=True)


def test_lstm_rows_split_per_step_where_u_leaves_the_cache(two_threads):
    """Past 256 KB of U, an LSTM's steps are one product over all rows each and the rows' gate
    passes are split between threads."""
    torch.manual_seed(0)
    cell = rk.LSTMCell(160, use_peepholes=True, cell_clip=0.7)
    x = torch.randn(32, 5, 8, requires_grad=True)
    cell.ensure_built(8, torch.float32)
    _perturb(cell, scale=0.1)
    assert compiled.kernels("lstm").rk_lstm_split_batch(
        fused._config(cell.sequence_params(), 5, 32, 8)) == 0
    lengths = [5, 5, 4, 0, 3, 5, 1, 2] * 4
    _compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=lengths, fast=fast),
             [x, *cell.parameters()], scaled=True)


def test_batch_split_only_where_it_was_measured_faster(two_threads):
    """At least 8 rows per thread and at most 256 KB of U (with the projection): up to 128
    units at 2 threads."""
    def split(cell, batch=16):
        return _takes("rk_lstm_split_batch", cell, batch)

    assert split(rk.BasicLSTMCell(128)) == 1
    assert split(rk.BasicLSTMCell(129)) == 0
    assert split(rk.BasicLSTMCell(64), batch=15) == 0
    assert split(rk.LSTMCell(160, num_proj=80)) == 1  # U 200 KB, projection 50 KB
    assert split(rk.LSTMCell(176, num_proj=80)) == 0  # U 220 KB, projection 55 KB
    assert split(rk.LayerNormLSTMCell(64)) == 1
    torch.set_num_threads(1)
    assert split(rk.BasicLSTMCell(64)) == 0


def test_loading_the_kernels_keeps_subnormal_floats():
    """A library built with -ffast-math would switch the whole process to flushing subnormals
    to zero when it loads; the kernels are built without it."""
    for family in compiled.FAMILIES:
        compiled.kernels(family)
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert float((tiny * 1.0).item()) != 0.0
    assert float(torch.tensor([5e-310], dtype=torch.float64).mul(1.0).item()) != 0.0


def test_small_batches_and_cells_take_the_fused_kernels_and_say_why():
    x = torch.randn(2, 5, 3)
    small = rk.LSTMCell(8, input_size=3)
    decision = rk.fast.explain(small, x)
    assert decision.path == "fused"
    assert "at most 128 units (lstm): the fused kernels cost less per step" in decision.explain()
    assert rk.fast.explain(rk.LSTMCell(128, input_size=3), x).path == "fused"
    assert rk.fast.explain(rk.GRUCell(256, input_size=3), x).path == "fused"
    big = rk.GRUCell(257, input_size=3)
    wanted = "onednn" if dispatch.onednn.load_error() is None else "fused"
    assert rk.fast.explain(big, x).path == wanted
    assert rk.fast.explain(big, x[:1]).path == "fused"  # batch 1
    peepholes = rk.LSTMCell(200, use_peepholes=True, input_size=3)
    decision = rk.fast.explain(peepholes, x)
    assert decision.path == "fused"
    if dispatch.onednn.load_error() is None:
        assert "peepholes: the fused kernel runs them faster" in decision.explain()
