"""The graph path's bookkeeping (``rnnkit.fast.graphs``), on the CPU: which path the dispatch
picks and why, a shape captured at its second call and kept (at most ``PER_CELL`` per cell), a
capture that fails falling back to the reference loop. CUDA graphs themselves run on a GPU
only: ``test_gpu.py`` checks their numbers and gradients there."""

from __future__ import annotations

import threading

import pytest
import torch
from fast_checks import TOL, decisions, perturb
from fast_checks import cudnn_runs as count_cudnn_runs

import rnnkit as rk
from rnnkit.fast import compiled, cudnn, dispatch, graphs, onednn, steps


class FakeGraph:
    """Stands in for ``graphs._Graph`` on the CPU: forward-only, runs the captured function
    eagerly at each replay; counts captures."""

    made = 0

    using = graphs._Graph.using

    def __init__(self, fn, cell, inputs, params, grad):
        FakeGraph.made += 1
        self.fn, self.bwd, self.static_in = fn, None, inputs
        self.lock, self.stream, self.device = threading.RLock(), None, None  # no CUDA device
        assert not grad

    def forward(self, inputs):
        self.static_out = self.fn(*inputs)


@pytest.fixture
def graph_on_cpu(monkeypatch):
    monkeypatch.setattr(graphs, "DEVICE", "cpu")
    monkeypatch.setattr(onednn, "load_error", lambda: "oneDNN switched off for this test")
    monkeypatch.setattr(compiled, "load_error", lambda *family: "kernels switched off")
    monkeypatch.setattr(graphs, "_Graph", FakeGraph)
    monkeypatch.setattr(FakeGraph, "made", 0)
    return decisions(monkeypatch)


def _cell():
    cell = rk.LSTMCell(5, cell_clip=0.5, use_peepholes=True)
    cell.ensure_built(3, torch.float32)
    perturb(cell)
    return cell


def test_explain_names_the_graph_path_and_its_requirements(graph_on_cpu):
    cell = _cell()
    x = torch.randn(2, 4, 3)
    assert rk.fast.explain(cell, x).path == "graph"
    text = str(rk.fast.explain(cell, x, swap_memory=True))
    assert "not graph: swap_memory recomputes chunks eagerly" in text
    with torch.autocast("cpu"):
        assert "autocast is on" in str(rk.fast.explain(cell, x))


def test_explain_says_what_the_graphs_replay(graph_on_cpu, monkeypatch):
    """For a cell cuDNN lacks, the loop: the Triton loop, its forward steps' products inside
    their kernels from ``steps.FUSED_MIN_BATCH`` rows (a plain LSTM, TF1's GRU), or the loop
    as ops where the Triton loop does not serve the cell."""
    def first_line(cell, batch):
        cell.ensure_built(3, torch.float32)
        return str(rk.fast.explain(cell, torch.randn(batch, 4, 3))).splitlines()[0]

    fused = "path: graph (replays from CUDA graphs: the Triton loop, its forward steps' " \
            "products inside their kernels)"
    assert first_line(_cell(), steps.FUSED_MIN_BATCH) == fused
    assert first_line(rk.GRUCell(5), steps.FUSED_MIN_BATCH) == fused
    triton = "path: graph (replays from CUDA graphs: the Triton loop)"
    assert first_line(_cell(), 2) == triton
    assert first_line(rk.LSTMCell(5, num_proj=3, cell_clip=1.0), steps.FUSED_MIN_BATCH) == triton
    monkeypatch.setattr(steps, "ENABLED", False)
    assert first_line(_cell(), 2) == "path: graph (replays from CUDA graphs: the loop as ops)"


def test_not_on_the_cpu_by_default():
    text = str(rk.fast.explain(_cell(), torch.randn(2, 4, 3)))
    assert "not graph: devices are cpu; cuda only" in text


@torch.no_grad()
def test_a_shape_is_captured_at_its_second_call_and_kept(graph_on_cpu, monkeypatch):
    cell = _cell()
    x = torch.randn(2, 4, 3)
    want = rk.dynamic_rnn(cell, x, sequence_length=[4, 2], fast=False)
    made = []
    for _ in range(4):
        got = rk.dynamic_rnn(cell, x, sequence_length=[4, 2])
        made.append(FakeGraph.made)
        for a, b in zip(torch.utils._pytree.tree_leaves(got),
                        torch.utils._pytree.tree_leaves(want), strict=True):
            torch.testing.assert_close(a, b, **TOL)
    assert made == [0, 1, 1, 1]
    assert graph_on_cpu == ["graph"] * 4
    monkeypatch.setattr(graphs, "PER_CELL", 2)
    for length in (5, 6):  # two new shapes push the first one out
        rk.dynamic_rnn(cell, torch.randn(2, length, 3), sequence_length=[4, 2])
    rk.dynamic_rnn(cell, x, sequence_length=[4, 2])
    assert FakeGraph.made == 1  # as if never seen: eager
    rk.dynamic_rnn(cell, x, sequence_length=[4, 2])
    assert FakeGraph.made == 2
    rk.fast.clear_graphs(cell)
    assert cell not in graphs._store


@pytest.mark.parametrize("fast", ["auto", True])
def test_a_failed_capture_falls_back_to_the_reference_loop(fast, graph_on_cpu, monkeypatch):
    cell = _cell()
    x = torch.randn(2, 4, 3, requires_grad=True)
    attempts = []

    def refuse(*args):
        attempts.append(1)
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "_Graph", refuse)
    monkeypatch.setattr(dispatch, "_warned", set())
    want = rk.dynamic_rnn(cell, x, fast=False)[0]
    rk.dynamic_rnn(cell, x, fast=fast)  # eager, first sight
    if fast is True:
        with pytest.raises(graphs.GraphCaptureError, match="capture failed: CUDA error: "
                                                           "operation not permitted"):
            rk.dynamic_rnn(cell, x, fast=True)
    else:
        with pytest.warns(RuntimeWarning, match=r"the graph path failed \(CUDA graph capture "
                                                r"failed: CUDA error"):
            got = rk.dynamic_rnn(cell, x)[0]
        torch.testing.assert_close(got, want, **TOL)
    got = rk.dynamic_rnn(cell, x, fast=fast)[0]  # eager from then on, no second attempt
    torch.testing.assert_close(got, want, **TOL)
    assert attempts == [1]


@torch.no_grad()
def test_per_cell_zero_turns_the_path_off(graph_on_cpu, monkeypatch):
    monkeypatch.setattr(graphs, "PER_CELL", 0)
    cell = _cell()
    for _ in range(3):
        rk.dynamic_rnn(cell, torch.randn(2, 4, 3))
    assert FakeGraph.made == 0


@pytest.fixture
def cudnn_runs(graph_on_cpu, monkeypatch):
    """The graph path and the cudnn path both on the CPU (torch's own ops standing in for
    cuDNN); the calls that ran the cudnn path are counted."""
    monkeypatch.setattr(cudnn, "DEVICE", "cpu")
    return count_cudnn_runs(monkeypatch)


@torch.no_grad()
@pytest.mark.parametrize("make", [lambda: rk.BasicLSTMCell(5, forget_bias=0.5),
                                  lambda: rk.LSTMCell(5, num_proj=3)], ids=["basic", "proj"])
def test_variable_length_lstm_runs_cudnn_until_its_graph_is_captured(make, cudnn_runs,
                                                                     graph_on_cpu):
    """An LSTM batch of variable lengths takes the graph path (its Triton loop masks in its
    kernels, where cuDNN needs the batch packed); a shape not captured yet runs on cuDNN, not
    on the eager loop."""
    cell = make()
    cell.ensure_built(3, torch.float32)
    perturb(cell)
    x, lengths = torch.randn(4, 6, 3), torch.tensor([6, 2, 0, 5])
    decision = rk.fast.explain(cell, x, lengths)
    assert decision.path == "graph"
    assert "variable lengths, LSTM: cuDNN needs the batch packed" in \
        " ".join(decision.unmet["cudnn"])
    want = rk.dynamic_rnn(cell, x, sequence_length=lengths, fast=False)
    made = []
    for _ in range(3):  # cuDNN, captured, replayed
        got = rk.dynamic_rnn(cell, x, sequence_length=lengths)
        made.append((len(cudnn_runs), FakeGraph.made))
        for a, b in zip(torch.utils._pytree.tree_leaves(got),
                        torch.utils._pytree.tree_leaves(want), strict=True):
            torch.testing.assert_close(a, b, **TOL)
    assert made == [(1, 0), (1, 1), (1, 1)]
    assert graph_on_cpu[-3:] == ["graph"] * 3


@torch.no_grad()
def test_variable_length_lstm_stays_on_cudnn_without_the_triton_loop(cudnn_runs, graph_on_cpu,
                                                                     monkeypatch):
    """Without the fused steps (Triton missing, switched off) the graph path would capture the
    loop as ops, slower than packed cuDNN: the cudnn path runs it. So it does without a cell to
    capture (``dispatch.unroll`` called on weights alone)."""
    cell = rk.BasicLSTMCell(5)
    cell.ensure_built(3, torch.float32)
    x, lengths = torch.randn(4, 6, 3), torch.tensor([6, 2, 0, 5])
    monkeypatch.setattr(steps, "ENABLED", False)
    assert rk.fast.explain(cell, x, lengths).path == "cudnn"
    monkeypatch.setattr(steps, "ENABLED", True)
    assert rk.fast.explain(cell, x, lengths).path == "graph"
    mask = torch.arange(6)[:, None] < lengths[None, :]
    state = cell.zero_state(4)
    got = dispatch.unroll(cell.sequence_params(), x.transpose(0, 1), state, mask)
    assert graph_on_cpu[-1] == "graph" and len(cudnn_runs) == 1
    want = rk.dynamic_rnn(cell, x, sequence_length=lengths, fast=False)
    torch.testing.assert_close(got[0].transpose(0, 1), want[0], **TOL)


@torch.no_grad()
@pytest.mark.parametrize("make", [lambda: rk.BasicLSTMCell(5), lambda: rk.LSTMCell(5, num_proj=3),
                                  lambda: rk.GRUCell(5, reset_after=True),
                                  lambda: rk.BasicRNNCell(5, activation="relu")],
                         ids=["lstm", "proj", "gru", "rnn"])
def test_full_length_cells_cudnn_has_replay_its_op_from_graphs(make, cudnn_runs, graph_on_cpu,
                                                               monkeypatch):
    """A full-length batch of a cell cuDNN has: eager cuDNN at a shape's first call, then cuDNN's
    op captured (here: run again at each replay of the stand-in graph), never the loop; a
    change of torch's TF32 switches is a new shape (a graph bakes them in)."""
    cell = make()
    cell.ensure_built(3, torch.float32)
    perturb(cell)
    x = torch.randn(4, 6, 3)
    decision = rk.fast.explain(cell, x)
    assert decision.path == "graph" and decision.captures == "cudnn"
    assert str(decision).startswith("path: graph (replays cudnn from CUDA graphs)")
    assert "replays cuDNN's own op" in " ".join(decision.unmet["cudnn"])
    loops = []
    monkeypatch.setattr(steps, "sequence", lambda *args: loops.append(1))
    want = rk.dynamic_rnn(cell, x, fast=False)
    made = []
    for _ in range(3):  # cuDNN, captured, replayed
        got = rk.dynamic_rnn(cell, x)
        made.append((len(cudnn_runs), FakeGraph.made))
        for a, b in zip(torch.utils._pytree.tree_leaves(got),
                        torch.utils._pytree.tree_leaves(want), strict=True):
            torch.testing.assert_close(a, b, **TOL)
    assert made == [(1, 0), (2, 1), (3, 1)] and not loops
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", not torch.backends.cudnn.allow_tf32)
    for _ in range(2):
        rk.dynamic_rnn(cell, x)
    assert FakeGraph.made == 2
    rnn_switches = getattr(torch.backends.cudnn, "rnn", None)
    if hasattr(rnn_switches, "fp32_precision"):  # torch >= 2.9: cuDNN's RNNs have their own
        monkeypatch.setattr(rnn_switches, "fp32_precision", "ieee")  # apart from convolutions'
        for _ in range(2):  # (torch's old allow_tf32 switch then raises when read)
            rk.dynamic_rnn(cell, x)
        assert FakeGraph.made == 3
    held = 2 * 6 * 4 * cell.sequence_params().U.shape[1] * 4  # 2 x T x B x gate units x 4 B
    monkeypatch.setattr(dispatch, "GRAPHED_CUDNN_MAX_BYTES", held)
    assert rk.fast.explain(cell, x).path == "graph"
    monkeypatch.setattr(dispatch, "GRAPHED_CUDNN_MAX_BYTES", held - 1)
    decision = rk.fast.explain(cell, x)  # a forward's activations over the bound: eager cuDNN
    assert decision.path == "cudnn" and "over GRAPHED_CUDNN_MAX_BYTES" in str(decision)
    monkeypatch.setattr(dispatch, "GRAPHED_CUDNN_MAX_BYTES", 1 << 28)
    monkeypatch.setattr(graphs, "PER_CELL", 0)
    assert rk.fast.explain(cell, x).path == "cudnn"


@pytest.mark.parametrize("make", [lambda: rk.GRUCell(5, reset_after=True),
                                  lambda: rk.BasicRNNCell(5)], ids=["gru", "rnn"])
def test_variable_lengths_replay_cudnn_with_the_lengths_of_each_call(make, cudnn_runs,
                                                                    graph_on_cpu, monkeypatch):
    """A GRU's or vanilla RNN's variable-length batch: cuDNN's op captured with every step run
    and the lengths taken from the graph's own mask input, so that a replay with other lengths
    of the same shape gives that call's numbers; full-length, suffix (Keras ``go_backwards``)
    and held-output (Keras) masks are graphs of their own."""
    cell = make()
    cell.ensure_built(3, torch.float32)
    perturb(cell)
    x = torch.randn(4, 6, 3)
    with torch.no_grad():
        for lengths in ([6, 2, 0, 5], [6, 2, 0, 5], [3, 6, 1, 4], [1, 1, 1, 1], [6, 6, 6, 6]):
            lengths = torch.tensor(lengths)
            decision = rk.fast.explain(cell, x, lengths)
            assert decision.path == "graph" and decision.captures == "cudnn"
            got = rk.dynamic_rnn(cell, x, sequence_length=lengths)
            want = rk.dynamic_rnn(cell, x, sequence_length=lengths, fast=False)
            for a, b in zip(torch.utils._pytree.tree_leaves(got),
                            torch.utils._pytree.tree_leaves(want), strict=True):
                torch.testing.assert_close(a, b, **TOL)
        assert FakeGraph.made == 1  # the last call: a full mask, first sight of its own graph
        made = FakeGraph.made
        layer = rk.layers.GRU(5, reset_after=True, return_sequences=True, return_state=True,
                              go_backwards=True) if isinstance(cell, rk.GRUCell) else \
            rk.layers.SimpleRNN(5, return_sequences=True, return_state=True, go_backwards=True)
        layer(x)
        perturb(layer)
        for lengths in ([6, 2, 0, 5], [6, 2, 0, 5], [4, 6, 1, 1]):  # suffix masks, held outputs
            mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
            layer.fast = "auto"
            got = layer(x, mask=mask)
            layer.fast = False
            want = layer(x, mask=mask)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b, **TOL)
        assert FakeGraph.made == made + 1


def test_inference_mode_is_a_shape_of_its_own(graph_on_cpu):
    """A graph captured under ``torch.inference_mode`` holds inference tensors, which a replay
    outside it could not write: the same call under ``no_grad`` captures a graph of its own,
    and each replays its own."""
    cell = _cell()
    x = torch.randn(2, 4, 3)
    want = rk.dynamic_rnn(cell, x, fast=False)[0]
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode, torch.no_grad):
        with mode():
            for _ in range(2):
                torch.testing.assert_close(rk.dynamic_rnn(cell, x)[0], want, **TOL)
    assert FakeGraph.made == 2
