"""On a CUDA device (skipped without one; CI has none): the cudnn path (cuDNN itself, through
torch's fused ops) against the reference loop on the same device, outputs, final states and
gradients with TF32 off, over cells, lengths (zero included), directions, layers, Keras masks
and ``swap_memory``: to 1e-5 in float64; in float32 to 5e-4 (cuDNN sums its products in an order
of its own: a few elements of a float32 run differ from the reference loop's by 1e-5 to 1e-4,
measured on an H100, where a wrong layout or state differs by tenths). Every cell takes the
graph path there: a shape's first call runs cuDNN eagerly where cuDNN has the cell, later ones
replay CUDA graphs of cuDNN's op, or of the reference loop (its steps fused in Triton where
served) for the cells cuDNN lacks and an LSTM's variable lengths; each call gives the CPU's
numbers and gradients (the loop to 1e-5); TF32 (torch's
default for cuDNN's RNNs) stays within its own precision; ``torch.compile`` and the native
format take CUDA models.

The same checks run on torch's CPU ops in ``test_cudnn_path.py`` (weight layouts, packing,
states, masks); these add what only a GPU has: cuDNN's own kernels, its packed-sequence and
float64 support, and tensors that live on the device."""

from __future__ import annotations

import copy

import pytest
import torch
from fast_checks import CUDNN_CELLS, CUDNN_LENGTHS, FUSED_CELLS, TOL, compare, cudnn_runs, decisions, perturb
from torch.utils import _pytree as pytree

import rnnkit as rk
from rnnkit.fast import graphs, steps
from rnnkit.unroll import length_mask, map_state

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OTHER_CELLS = {
    "gru_tf1": lambda: rk.GRUCell(6),
    "lstm_peepholes": lambda: rk.LSTMCell(6, use_peepholes=True, num_proj=4),
    **FUSED_CELLS,
}
LENGTHS = CUDNN_LENGTHS
LSTMS = ("basic_lstm", "lstm_proj")  # variable lengths: the graph path, cuDNN until captured
F32 = {"atol": 5e-4, "rtol": 5e-4}  # cuDNN's float32 against the reference loop's (see above)
F32_SUMS = {"atol": 5e-5, "rtol": 5e-5}  # float32 sums of products in another order


@pytest.fixture
def exact(monkeypatch):
    """float32 products in full precision (cuDNN's RNNs use TF32 by default on Ampere and
    later, which would hide layout errors below 1e-3); the paths taken are recorded."""
    switches = [(torch.backends.cudnn, "allow_tf32", False),
                (torch.backends.cuda.matmul, "allow_tf32", False)]
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if hasattr(rnn, "fp32_precision"):  # torch >= 2.9: cuDNN's RNNs have their own, "tf32"
        switches = [(rnn, "fp32_precision", "ieee"), (torch.backends.cudnn, "fp32_precision",
                                                      "ieee"),
                    (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    saved = [getattr(obj, name) for obj, name, _ in switches]
    for obj, name, value in switches:
        setattr(obj, name, value)
    yield decisions(monkeypatch)
    for (obj, name, _), value in zip(switches, saved, strict=True):
        setattr(obj, name, value)


def _built(make, depth: int = 4, dtype=torch.float32) -> rk.RNNCell:
    cell = make()
    cell.ensure_built(depth, dtype)
    perturb(cell)
    return cell.cuda()


def _captured(cell) -> bool:
    """Whether a CUDA graph of ``cell`` was captured (a failed capture falls back quietly)."""
    return any(isinstance(e, graphs._Graph) for e in graphs._store.get(cell, {}).values())


def _leaves_close(a, b, **tol) -> None:
    for x, y in zip(pytree.tree_leaves(a), pytree.tree_leaves(b), strict=True):
        torch.testing.assert_close(x.cpu(), y.cpu(), **(tol or TOL))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("name", list(CUDNN_CELLS))
def test_cudnn_matches_reference_on_the_gpu(name, lengths, time_major, dtype, exact):
    cell = _built(CUDNN_CELLS[name], dtype=dtype)
    x = torch.randn(*((7, 5) if time_major else (5, 7)), 4, device="cuda", dtype=dtype,
                    requires_grad=True)
    state = map_state(lambda s: torch.randn_like(s, dtype=dtype).requires_grad_(),
                      cell.zero_state(5))
    lens = None if LENGTHS[lengths] is None else torch.tensor(LENGTHS[lengths], device="cuda")
    compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=lens, initial_state=state,
                                        time_major=time_major, dtype=dtype, fast=fast),
            [x, *pytree.tree_leaves(state), *cell.parameters()],
            tol=TOL if dtype == torch.float64 else F32)
    # the graph path, whose first call of a shape runs cuDNN eagerly (it then captures cuDNN's
    # op, or for an LSTM's variable lengths its Triton loop)
    assert exact == ["graph"]


@pytest.mark.parametrize("name", list(CUDNN_CELLS))
def test_cudnn_matches_the_cpu_reference(name, exact):
    cell = _built(CUDNN_CELLS[name], dtype=torch.float64)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    lengths = torch.tensor(LENGTHS["varied"])
    want = rk.dynamic_rnn(cell.cpu(), x, sequence_length=lengths, fast=False)
    cell.cuda()
    assert rk.fast.explain(cell, x.cuda(), lengths.cuda()).path == "graph"
    _leaves_close(rk.dynamic_rnn(cell, x.cuda(), sequence_length=lengths.cuda(), fast=True), want)


def _weighted_grads(out, wrt, device):
    """The outputs' leaves (on the CPU) and the gradients of a fixed random weighting of them."""
    leaves = pytree.tree_leaves(out)
    g = torch.Generator().manual_seed(1)
    loss = sum((leaf * torch.randn(leaf.shape, generator=g, dtype=leaf.dtype).to(device)).sum()
               for leaf in leaves)
    return [t.cpu() for t in (*leaves, *torch.autograd.grad(loss, wrt))]


@pytest.mark.parametrize("lengths", ["full", "varied"])
@pytest.mark.parametrize("name", list(OTHER_CELLS))
def test_cells_cudnn_lacks_replay_cuda_graphs(name, lengths, exact):
    """The reference loop, captured as CUDA graphs at a shape's second call (its steps then
    fused in Triton, ``rnnkit.fast.steps``, where served) and replayed from the third, gives
    the CPU's numbers and gradients every time."""
    cell = _built(OTHER_CELLS[name])
    x = torch.randn(5, 7, 4, requires_grad=True)
    state = None
    lens = None if LENGTHS[lengths] is None else torch.tensor(LENGTHS[lengths])
    decision = rk.fast.explain(cell, x.cuda(), lens)
    assert decision.path == "graph"
    assert "devices are cuda; cpu only" in " ".join(decision.unmet["fused"])

    def run(device):
        cell.to(device)
        lens_on = None if lens is None else lens.to(device)
        out = rk.dynamic_rnn(cell, x.to(device), sequence_length=lens_on, initial_state=state)
        return _weighted_grads(out, [x, *cell.parameters()], device)

    want = run("cpu")
    for _ in range(3):  # eager, captured, replayed
        _leaves_close(run("cuda"), want)
    assert exact[-3:] == ["graph"] * 3
    assert _captured(cell)


FUSED_STEP_CELLS = {  # 20 units: two blocks of them in a fused step
    "gru_tf1": (lambda: rk.GRUCell(20), "gru_gates_step"),
    "lstm_peephole_clip": (lambda: rk.LSTMCell(20, use_peepholes=True, cell_clip=0.8),
                           "lstm_step_forward"),
}


@pytest.mark.parametrize("masked", [False, True], ids=["full", "varied"])
@pytest.mark.parametrize("name", list(FUSED_STEP_CELLS))
def test_fused_steps_replay_cuda_graphs(name, masked, exact, monkeypatch):
    """From ``steps.FUSED_MIN_BATCH`` rows a plain LSTM's or TF1 GRU's forward steps run their
    recurrent products inside their kernels; captured and replayed, they give the CPU's
    numbers and gradients (float32 sums of 17 rows' products in another order: ``F32_SUMS``)."""
    make, kernel = FUSED_STEP_CELLS[name]
    kernels, launched = steps._kernels(), []
    real = getattr(kernels, kernel)

    class Spy:
        def __getitem__(self, grid):
            launched.append(kernel)
            return real[grid]

    monkeypatch.setattr(kernels, kernel, Spy())
    cell = _built(make)
    B = steps.FUSED_MIN_BATCH + 1
    x = torch.randn(B, 7, 4, requires_grad=True)
    lens = torch.randint(0, 8, (B,), generator=torch.Generator().manual_seed(0)) if masked \
        else None

    def run(device):
        cell.to(device)
        lens_on = None if lens is None else lens.to(device)
        out = rk.dynamic_rnn(cell, x.to(device), sequence_length=lens_on)
        return _weighted_grads(out, [x, *cell.parameters()], device)

    want = run("cpu")
    for _ in range(3):  # eager, captured, replayed
        _leaves_close(run("cuda"), want, **F32_SUMS)
    assert exact[-3:] == ["graph"] * 3 and _captured(cell)
    assert launched  # at the capture (a replay launches nothing from Python)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lengths", ["full", "varied"])
@pytest.mark.parametrize("name", list(CUDNN_CELLS))
def test_cells_cudnn_has_replay_cuda_graphs(name, lengths, dtype, exact):
    """A cell cuDNN has: cuDNN eagerly at a shape's first call, then CUDA graphs replayed
    (cuDNN's op; an LSTM's variable lengths, its Triton loop); every call gives the CPU's
    numbers and gradients (to cuDNN's float32 precision, ``F32``), a replay with other lengths
    of the same shape too, with and without autograd."""
    on_cpu = _built(CUDNN_CELLS[name], dtype=dtype).cpu()
    # the GPU's cell stays put: a graph's key holds its variables' addresses, which a move to
    # the CPU and back could change (a capture of its own then, correctly, but not what is counted)
    cell = copy.deepcopy(on_cpu).cuda()
    x = torch.randn(5, 7, 4, dtype=dtype, requires_grad=True)
    state = map_state(lambda s: torch.randn_like(s, dtype=dtype).requires_grad_(),
                      on_cpu.zero_state(5))
    tol = TOL if dtype == torch.float64 else F32

    def run(device, lens):
        c = cell if device == "cuda" else on_cpu
        lens = None if lens is None else torch.tensor(lens, device=device)
        out = rk.dynamic_rnn(c, x.to(device), dtype=dtype, sequence_length=lens,
                             initial_state=map_state(lambda s: s.to(device), state))
        return _weighted_grads(out, [x, *pytree.tree_leaves(state), *c.parameters()], device)

    other = None if LENGTHS[lengths] is None else [2, 7, 1, 0, 4]
    for lens in (LENGTHS[lengths], other):  # the same shape: the same graphs
        want = run("cpu", lens)
        for _ in range(3):  # cuDNN, captured, replayed (then replayed)
            _leaves_close(run("cuda", lens), want, **tol)
    assert exact.count("graph") == 6 and _captured(cell)  # (the CPU's runs: other paths)
    with torch.no_grad():
        want = [t.cpu() for t in pytree.tree_leaves(rk.dynamic_rnn(cell, x.cuda(), dtype=dtype,
                                                                   fast=False))]
        for _ in range(3):
            _leaves_close(rk.dynamic_rnn(cell, x.cuda(), dtype=dtype), want, **tol)
    kept = sum(isinstance(e, graphs._Graph) for e in graphs._store[cell].values())
    assert kept == 2  # with autograd (both lengths' calls), and without


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", LSTMS)
def test_variable_length_lstm_runs_cudnn_then_its_graph(name, dtype, exact, monkeypatch):
    """An LSTM batch of variable lengths: its first call runs on cuDNN (packed), the second
    captures the graph path's Triton loop, the third replays it; each gives the CPU's numbers
    and gradients (cuDNN's float32 to its own precision, ``F32``)."""
    runs = cudnn_runs(monkeypatch)
    cell = _built(CUDNN_CELLS[name], dtype=dtype)
    x = torch.randn(5, 7, 4, dtype=dtype, requires_grad=True)
    lens = torch.tensor(LENGTHS["varied"])

    def run(device):
        cell.to(device)
        out = rk.dynamic_rnn(cell, x.to(device), sequence_length=lens.to(device), dtype=dtype)
        return _weighted_grads(out, [x, *cell.parameters()], device)

    want = run("cpu")
    for call in range(3):  # cuDNN, captured, replayed
        _leaves_close(run("cuda"), want, **(F32 if call == 0 and dtype == torch.float32
                                            else TOL))
    assert exact[-3:] == ["graph"] * 3
    assert len(runs) == 1 and _captured(cell)


@pytest.mark.parametrize("name", ["basic_lstm", "gru_tf1"])
def test_inference_mode_and_no_grad_replay_graphs_of_their_own(name, exact):
    """A graph captured under ``torch.inference_mode`` holds inference tensors, which a replay
    under ``no_grad`` could not write; each mode replays its own."""
    cell = _built({**CUDNN_CELLS, **OTHER_CELLS}[name])
    x = torch.randn(3, 6, 4, device="cuda")
    with torch.no_grad():
        want = rk.dynamic_rnn(cell, x, fast=False)[0]
    for mode in (torch.inference_mode, torch.no_grad) * 2:
        with mode():
            for _ in range(3):
                _leaves_close(rk.dynamic_rnn(cell, x)[0], want, **F32)
    assert sum(isinstance(e, graphs._Graph) for e in graphs._store[cell].values()) == 2


def _graph_case(name="gru_tf1"):
    cell = _built(OTHER_CELLS[name])
    x = torch.randn(3, 6, 4, device="cuda", requires_grad=True)
    for _ in range(2):  # eager, then captured
        rk.dynamic_rnn(cell, x)
    assert _captured(cell)
    return cell, x


def test_two_forwards_before_a_backward(exact):
    """The second replay overwrites the first one's activations: the first backward replays
    its forward again, and every gradient equals the reference loop's."""
    cell, x = _graph_case()
    params = list(cell.parameters())
    x2 = torch.randn_like(x, requires_grad=True)
    first, second = rk.dynamic_rnn(cell, x)[0], rk.dynamic_rnn(cell, x2)[0]
    assert exact[-2:] == ["graph", "graph"]
    got1 = torch.autograd.grad(first.square().sum(), [x, *params], retain_graph=True)
    again1 = torch.autograd.grad(first.square().sum(), [x, *params])  # a second backward
    got2 = torch.autograd.grad(second.square().sum(), [x2, *params])
    for inp, got in ((x, got1), (x, again1), (x2, got2)):
        ref = rk.dynamic_rnn(cell, inp, fast=False)[0]
        _leaves_close(got, torch.autograd.grad(ref.square().sum(), [inp, *params]))
    torch.testing.assert_close(first, rk.dynamic_rnn(cell, x, fast=False)[0], **TOL)


def test_in_place_change_before_backward_is_an_error(exact):
    cell, x = _graph_case()
    out = rk.dynamic_rnn(cell, x)[0]
    with torch.no_grad():
        next(cell.parameters()).mul_(2)
    with pytest.raises(RuntimeError, match="modified in place between an unroll on the graph path"):
        out.sum().backward()


def test_inference_and_training_graphs(exact):
    cell, x = _graph_case("fused_layer_norm")
    with torch.no_grad():
        for _ in range(3):
            got = rk.dynamic_rnn(cell, x)
    _leaves_close(got, rk.dynamic_rnn(cell, x.detach(), fast=False))
    held = rk.dynamic_rnn(cell, x)[0]
    torch.testing.assert_close(held, rk.dynamic_rnn(cell, x, fast=False)[0], **TOL)
    rk.dynamic_rnn(cell, 2 * x)  # outputs are copies: a later replay leaves them alone
    torch.testing.assert_close(held, rk.dynamic_rnn(cell, x, fast=False)[0], **TOL)


def test_keras_gru_with_tf1_reset_and_masks(exact):
    made = rk.layers.GRU(5, reset_after=False, return_sequences=True, return_state=True,
                         go_backwards=True)
    x = torch.randn(4, 6, 3, requires_grad=True)
    made(x)
    perturb(made)
    mask = length_mask(torch.tensor([6, 1, 0, 4]), 6).T
    want = _weighted_grads(made(x, mask=mask), [x, *made.parameters()], "cpu")
    made.cuda()
    for _ in range(3):
        _leaves_close(_weighted_grads(made(x.cuda(), mask=mask.cuda()), [x, *made.parameters()],
                                      "cuda"), want)
    assert exact[-1] == "graph"
    assert _captured(made.cell)


@pytest.mark.parametrize("name", ["basic_lstm", "gru_reset_after", "rnn_tanh"])
def test_float64_and_swap_memory(name, exact):
    cell = _built(CUDNN_CELLS[name], dtype=torch.float64)
    x = torch.randn(5, 9, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    compare(lambda fast: rk.dynamic_rnn(cell, x, sequence_length=[9, 2, 0, 5, 8],
                                        dtype=torch.float64, swap_memory=True, fast=fast),
            [x, *cell.parameters()])
    assert set(exact) == {"cudnn"}


def test_bidirectional_and_multi_layer(exact):
    fw = rk.MultiRNNCell([rk.BasicLSTMCell(5), rk.GRUCell(4, reset_after=True)])
    bw = rk.BasicLSTMCell(3)
    x = torch.randn(4, 6, 3, device="cuda", requires_grad=True)
    lengths = [6, 1, 0, 4]
    rk.bidirectional_dynamic_rnn(fw, bw, x.cpu(), sequence_length=lengths, dtype=torch.float32)
    perturb(fw, bw)
    fw.cuda(), bw.cuda()
    exact.clear()
    compare(lambda fast: rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths,
                                                      dtype=torch.float32, fast=fast),
            [x, *fw.parameters(), *bw.parameters()], tol=F32)
    assert exact == ["graph"] * 3


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("layer, kwargs", [
    ("LSTM", {}), ("GRU", {}), ("SimpleRNN", {"activation": "relu"}),
])
def test_keras_layers_with_masks(layer, kwargs, go_backwards, exact):
    """Keras masks of lengths 6, 1, 0, 4 on the device: outputs past a length repeat the last
    one (with ``go_backwards`` the valid steps are a suffix)."""
    made = getattr(rk.layers, layer)(5, return_sequences=True, return_state=True,
                                     go_backwards=go_backwards, **kwargs)
    x = torch.randn(4, 6, 3, requires_grad=True)
    made(x)
    perturb(made)
    made.cuda()
    exact.clear()
    x = x.detach().cuda().requires_grad_()
    mask = length_mask(torch.tensor([6, 1, 0, 4]), 6).T.cuda()

    def run(fast):
        made.fast = fast
        return made(x, mask=mask)

    compare(run, [x, *made.parameters()], tol=F32)
    assert exact == ["graph"]


def test_tf32_default_stays_within_its_precision():
    """torch's default lets cuDNN's RNNs use TF32 (10-bit mantissa) on Ampere and later, as TF's
    does; rnnkit leaves that setting to the user. The results then agree to TF32's precision."""
    cell = _built(CUDNN_CELLS["basic_lstm"], depth=64)
    x = torch.randn(8, 50, 64, device="cuda")
    with torch.no_grad():
        got = rk.dynamic_rnn(cell, x, fast=True)
        want = rk.dynamic_rnn(cell.double(), x.double(), fast=False)
    _leaves_close(got, [t.float() for t in pytree.tree_leaves(want)], atol=2e-2, rtol=0)


def test_compiled_model_on_the_gpu(exact):
    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell, self.head = rk.BasicLSTMCell(8), torch.nn.Linear(8, 3)

        def forward(self, x, lengths):
            return self.head(rk.dynamic_rnn(self.cell, x, sequence_length=lengths)[0])

    torch.manual_seed(0)
    model = Tagger()
    x, lengths = torch.randn(4, 6, 5), torch.tensor([6, 3, 1, 5])
    model(x, lengths)
    model.cuda()
    x, lengths = x.cuda(), lengths.cuda()
    eager = model(x, lengths)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()))
    compiled = torch.compile(model)
    out = compiled(x, lengths)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    _leaves_close([out, *grads], [eager, *eager_grads])


def test_a_cuda_model_saves_and_loads(tmp_path):
    pytest.importorskip("google_crc32c")
    cell = _built(CUDNN_CELLS["lstm_proj"])
    path = rk.io.save_native(tmp_path / "model.safetensors", cell)
    rk.reset_default_graph()
    again = rk.io.load(path)
    _leaves_close(list(again.parameters()), list(cell.parameters()), atol=0, rtol=0)
    x = torch.randn(3, 5, 4)
    _leaves_close(rk.dynamic_rnn(again, x), rk.dynamic_rnn(cell.cpu(), x))


@pytest.mark.parametrize("variational", [True, False])
def test_state_dropout_on_the_gpu(variational, exact, monkeypatch):
    """A ``DropoutWrapper``'s state dropout around a stack, on CUDA tensors: each layer's
    unroll with its state mask (the masks drawn on the host, as the steps draw them) against
    the same wrapper step by step, with lengths (zero included) and ``swap_memory``."""
    from rnnkit.cells import wrappers

    cell = rk.DropoutWrapper(rk.MultiRNNCell([rk.BasicLSTMCell(5), rk.GRUCell(4)]),
                             state_keep_prob=0.6, output_keep_prob=0.8,
                             variational_recurrent=variational)
    cell.ensure_built(3, torch.float64)
    perturb(cell)
    cell.cuda()
    x = torch.randn(4, 6, 3, dtype=torch.float64, device="cuda", requires_grad=True)

    def run(whole):
        monkeypatch.setattr(wrappers, "WHOLE_SEQUENCE", whole)
        torch.manual_seed(3)
        out = rk.dynamic_rnn(cell, x, sequence_length=[6, 1, 0, 4], dtype=torch.float64,
                             swap_memory=True)
        loss = sum(t.sum() for t in pytree.tree_leaves(out))
        return out, torch.autograd.grad(loss, [x, *cell.parameters()])

    _leaves_close(run(True), run(False))


def test_device_wrapper_runs_the_cell_on_the_gpu():
    """``DeviceWrapper(cell, "/gpu:0")``: CPU inputs and state moved to the GPU, the variables
    too at its first call (the same Parameter objects), outputs there, the CPU cell's numbers."""
    x = torch.randn(3, 6, 2)
    rk.reset_default_graph()
    cell = rk.LSTMCell(5, cell_clip=1.0)
    want, want_state = rk.dynamic_rnn(cell, x)
    params = list(cell.parameters())
    wrapped = rk.DeviceWrapper(cell, "/device:GPU:0")
    got, got_state = rk.dynamic_rnn(wrapped, x, initial_state=cell.zero_state(3))
    assert got.device.type == "cuda" and [id(p) for p in cell.parameters()] == [id(p) for p in params]
    assert all(p.device.type == "cuda" for p in params)
    torch.testing.assert_close(got.cpu(), want, **TOL)
    torch.testing.assert_close(got_state.h.cpu(), want_state.h, **TOL)
    decision = rk.fast.explain(wrapped, x)  # explained on the GPU: oneDNN refused for being there
    assert decision.path == "graph" and "devices are cpu" not in str(decision), str(decision)
    assert "devices are cuda; cpu only" in "\n".join(decision.unmet["onednn"])


@pytest.mark.parametrize("layer_norm", [True, False])
def test_candidate_dropout_on_the_gpu_matches_the_cpu(layer_norm):
    """``LayerNormLSTMCell(dropout_keep_prob < 1)`` on CUDA tensors (the masks drawn on the CPU
    from the same seed, then moved): the CPU fused kernel's numbers and gradients."""
    torch.manual_seed(0)
    cell = rk.LayerNormLSTMCell(8, layer_norm=layer_norm, dropout_keep_prob=0.7, input_size=5)
    perturb(cell)
    x = torch.randn(4, 9, 5)
    lengths = [9, 3, 0, 6]

    def run(c, inputs):
        inputs = inputs.clone().requires_grad_()
        torch.manual_seed(3)
        out, state = rk.dynamic_rnn(c, inputs, sequence_length=lengths)
        grads = torch.autograd.grad(out.sum() + state.c.sum(), [inputs, *c.parameters()])
        return [out, state.c, *grads]

    cpu = run(cell, x)
    gpu = run(copy.deepcopy(cell).cuda(), x.cuda())
    for a, b in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=2e-5, rtol=2e-5)


def test_raw_rnn_and_concatenated_states_on_the_gpu(exact):
    """``raw_rnn`` on CUDA tensors (its emissions, also an empty one, on the GPU) and an LSTM's
    concatenated state (state_is_tuple=False) on the GPU paths: the CPU's numbers (raw_rnn's
    steps to 1e-5, cuDNN's first call to its float32 tolerance; TF32 off, which cuDNN's RNNs
    use by default and which differed by 2e-3 relative on an H100)."""
    rk.reset_default_graph()
    cell = rk.LSTMCell(5, num_proj=3, state_is_tuple=False, input_size=4)
    perturb(cell)
    x, lengths = torch.randn(6, 3, 4), torch.tensor([6, 2, 0])

    def run(device):
        inputs, lens = x.to(device), lengths.to(device)

        def loop_fn(time, cell_output, cell_state, loop_state):
            state = cell.zero_state(3, device=device) if cell_output is None else cell_state
            finished = time >= lens
            step = inputs[min(int(time), 5)]
            return finished, step, state, cell_output, None

        emit_ta, state, _ = rk.raw_rnn(cell, loop_fn)
        dynamic = rk.dynamic_rnn(cell, inputs, sequence_length=lens, time_major=True,
                                 dtype=torch.float32)
        return emit_ta.stack(), state, *dynamic

    want = run("cpu")
    cell.cuda()
    got = run("cuda")
    assert all(t.device.type == "cuda" for t in got)
    _leaves_close(got[:2], want[:2])
    _leaves_close(got[2:], want[2:], **F32)
    empty = rk.TensorArray(torch.float32, dynamic_size=True, element_shape=[2], device="cuda")
    assert empty.stack().device.type == "cuda"


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv_lstm_on_the_gpu_matches_the_cpu(data_format):
    """``ConvLSTM2D`` on CUDA tensors (torch's convolutions there, no fast path): the CPU's
    outputs, states and gradients, per-position masks and strided convolutions included."""
    torch.manual_seed(0)
    first = data_format == "channels_first"
    x = torch.randn(2, 5, 3, 8, 7) if first else torch.randn(2, 5, 8, 7, 3)
    layer = rk.layers.ConvLSTM2D(4, (3, 2), padding="same", data_format=data_format,
                                 return_sequences=True, return_state=True)
    layer(x)
    strided = rk.layers.ConvLSTM1D(3, 3, strides=2, return_sequences=True)
    seq = torch.randn(2, 5, 9, 2)
    strided(seq)
    mask = None if first else torch.rand(2, 5, 8, 7) > 0.3

    def run(device):
        inputs = x.to(device).requires_grad_()
        outs = layer.to(device)(inputs, mask=None if mask is None else mask.to(device))
        grads = torch.autograd.grad(sum(o.sum() for o in outs), [inputs, *layer.parameters()])
        return [*outs, *grads, strided.to(device)(seq.to(device))]

    want = run("cpu")
    got = run("cuda")
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=2e-5, rtol=2e-5)
