"""rnnkit <-> torch.nn.RNN/GRU/LSTM: outputs and final states against torch's own modules
(1e-5, float32), both directions, variable lengths, every model form; the errors for math
torch does not have. ``run_rnnkit``/``run_torch``/``randomize`` are shared with the cuDNN and
ONNX tests."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.cells import (
    BasicLSTMCell,
    BasicRNNCell,
    GRUCell,
    LayerNormLSTMCell,
    LSTMCell,
    LSTMStateTuple,
    MultiRNNCell,
)
from rnnkit.io import from_torch, to_torch
from rnnkit.io.layouts import assign, to_rows
from rnnkit.rnn import bidirectional_dynamic_rnn, dynamic_rnn

try:
    import rnnkit.layers as keras_layers
    from rnnkit.layers import cells as keras_cells
except ImportError:  # the Keras family is optional for these tests
    keras_cells = keras_layers = None

TOL = 1e-5
B, T, D = 4, 6, 5
LENGTHS = {"full": None, "ragged": [6, 1, 4, 3]}


def randomize(model, seed: int = 0, scale: float = 0.4) -> None:
    """Replace every weight with N(0, scale²) draws so biases and peepholes matter too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _parameters_of(model) -> list[torch.nn.Module]:
    if isinstance(model, (tuple, list)):
        return [m for item in model for m in _parameters_of(item)]
    return [model]


def randomize_all(model, seed: int = 0) -> None:
    for k, module in enumerate(_parameters_of(model)):
        randomize(module, seed + k)


def _h_c(state) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Flatten a layer's final state to torch's (h, c) lists."""
    if isinstance(state, LSTMStateTuple):
        return [state.h], [state.c]
    if isinstance(state, tuple):
        hs, cs = zip(*(_h_c(s) for s in state), strict=True)
        return [h for x in hs for h in x], [c for x in cs for c in x]
    return [state], []


def run_rnnkit(model, x: torch.Tensor, lengths):
    """``(output, h_n, c_n)`` in torch's layout for any model form ``to_torch`` accepts."""
    with torch.no_grad():
        if isinstance(model, list):
            hs, cs = [], []
            for k, (fw, bw) in enumerate(model):
                with rnnkit.variable_scope(f"stack_{k}"):
                    (a, b), (sa, sb) = bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths)
                x = torch.cat([a, b], -1)
                for s in (sa, sb):
                    h, c = _h_c(s)
                    hs += h
                    cs += c
            return x, torch.stack(hs), torch.stack(cs) if cs else None
        if isinstance(model, tuple):
            (a, b), (sa, sb) = bidirectional_dynamic_rnn(*model, x, sequence_length=lengths)
            (h1, c1), (h2, c2) = _h_c(sa), _h_c(sb)
            return torch.cat([a, b], -1), torch.stack(h1 + h2), torch.stack(c1 + c2) if c1 else None
        out, state = dynamic_rnn(model, x, sequence_length=lengths)
        hs, cs = _h_c(state)
        return out, torch.stack(hs), torch.stack(cs) if cs else None


def run_torch(module: torch.nn.RNNBase, x: torch.Tensor, lengths):
    """``(output, h_n, c_n)`` of a torch module, lengths through a PackedSequence."""
    with torch.no_grad():
        if lengths is not None:
            packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=True,
                                          enforce_sorted=False)
            out, state = module(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        else:
            out, state = module(x)
    h, c = state if isinstance(state, tuple) else (state, None)
    return out, h, c


def assert_same(got, want, tol: float = TOL) -> None:
    for name, g, w in zip(("output", "h_n", "c_n"), got, want, strict=True):
        if w is None:
            assert g is None, name
            continue
        g, w = torch.as_tensor(g), torch.as_tensor(w)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert torch.allclose(g, w, atol=tol, rtol=tol), (name, (g - w).abs().max().item())


# -- rnnkit -> torch -----------------------------------------------------------------------------
CELLS = {
    "rnn_tanh": lambda: BasicRNNCell(7),
    "rnn_relu": lambda: BasicRNNCell(7, activation="relu"),
    "gru_reset_after": lambda: GRUCell(7, reset_after=True),
    "basic_lstm_fb1": lambda: BasicLSTMCell(7, forget_bias=1.0),
    "lstm_fb0.5": lambda: LSTMCell(7, forget_bias=0.5),
    "lstm_proj": lambda: LSTMCell(7, num_proj=3),
}
if keras_cells is not None:
    CELLS.update({
        "keras_simple_rnn": lambda: keras_cells.SimpleRNNCell(7),
        "keras_gru": lambda: keras_cells.GRUCell(7),
        "keras_lstm": lambda: keras_cells.LSTMCell(7),
        "keras_lstm_nobias": lambda: keras_cells.LSTMCell(7, use_bias=False),
    })
FORMS = ("single", "multi", "pair", "stacked_pairs")
# MultiRNNCell is TF1's stacking; Keras cells stack as layers (see test_keras_layers_to_torch)
CASES = [(c, f) for c in CELLS for f in FORMS if not (c.startswith("keras") and f == "multi")]


def build(make, form: str, x: torch.Tensor):
    """A model of ``form`` from cells made by ``make``, built by one run over ``x``."""
    if form == "single":
        model = make()
    elif form == "multi":
        model = MultiRNNCell([make(), make()])
    elif form == "pair":
        model = (make(), make())
    else:
        model = [(make(), make()), (make(), make())]
    run_rnnkit(model, x, None)
    randomize_all(model)
    return model


@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("cell,form", CASES)
def test_to_torch_matches_rnnkit(cell, form, lengths):
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    model = build(CELLS[cell], form, x)
    module = to_torch(model)
    assert module.batch_first and module.bidirectional == (form in ("pair", "stacked_pairs"))
    assert module.num_layers == (2 if form in ("multi", "stacked_pairs") else 1)
    if cell == "lstm_proj":
        assert module.proj_size == 3
    assert_same(run_torch(module, x, LENGTHS[lengths]), run_rnnkit(model, x, LENGTHS[lengths]))


# -- torch -> rnnkit -----------------------------------------------------------------------------
MODULES = {
    "rnn_tanh": lambda **kw: torch.nn.RNN(D, 7, batch_first=True, **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(D, 7, nonlinearity="relu", batch_first=True, **kw),
    "gru": lambda **kw: torch.nn.GRU(D, 7, batch_first=True, **kw),
    "lstm": lambda **kw: torch.nn.LSTM(D, 7, batch_first=True, **kw),
    "lstm_proj": lambda **kw: torch.nn.LSTM(D, 7, proj_size=3, batch_first=True, **kw),
    "gru_nobias": lambda **kw: torch.nn.GRU(D, 7, bias=False, batch_first=True, **kw),
}


@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("kind", MODULES)
def test_from_torch_matches_torch(kind, layers, bidirectional, lengths):
    torch.manual_seed(3)
    module = MODULES[kind](num_layers=layers, bidirectional=bidirectional)
    randomize(module, 4)
    model = from_torch(module)
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(5))
    assert_same(run_rnnkit(model, x, LENGTHS[lengths]), run_torch(module, x, LENGTHS[lengths]))
    # and back again: the same module up to the summed biases
    assert_same(run_torch(to_torch(model), x, LENGTHS[lengths]),
                run_torch(module, x, LENGTHS[lengths]))


def test_from_torch_cells_names_and_conventions():
    torch.manual_seed(0)
    with rnnkit.variable_scope("enc"):
        lstm = from_torch(torch.nn.LSTM(3, 4))
        gru_fw, gru_bw = from_torch(torch.nn.GRU(3, 4, bidirectional=True))
        stack = from_torch(torch.nn.RNN(3, 4, num_layers=2))
    assert isinstance(lstm, BasicLSTMCell) and lstm.forget_bias == 0.0
    assert isinstance(gru_fw, GRUCell) and gru_fw.reset_after and gru_bw.reset_after
    assert isinstance(stack, MultiRNNCell)
    names = [v.op_name for v in rnnkit.global_variables()]
    assert names[:2] == ["enc/basic_lstm_cell/kernel", "enc/basic_lstm_cell/bias"]
    assert "enc/bidirectional_rnn/fw/gru_cell/candidate/hidden_projection/bias" in names
    assert "enc/bidirectional_rnn/bw/gru_cell/gates/kernel" in names
    assert "enc/multi_rnn_cell/cell_1/basic_rnn_cell/kernel" in names
    assert all(v.provenance.origin == "restored" for v in rnnkit.global_variables())


def test_from_torch_sums_the_two_biases_into_tf_bias():
    module = torch.nn.LSTM(2, 3)
    randomize(module)
    cell = from_torch(module)
    b_ih, b_hh = module.bias_ih_l0.detach(), module.bias_hh_l0.detach()
    total = (b_ih + b_hh).chunk(4)  # torch i, f, g, o; TF1 kernel order i, j(g), f, o
    assert torch.allclose(cell.get_parameter("bias"), torch.cat([total[0], total[2], total[1], total[3]]))


@pytest.mark.parametrize("cls", [torch.nn.RNNCell, torch.nn.GRUCell, torch.nn.LSTMCell])
def test_from_torch_single_step_cells(cls):
    module = cls(D, 7)
    randomize(module, 2)
    cell = from_torch(module)
    x = torch.randn(B, D)
    with torch.no_grad():
        if cls is torch.nn.LSTMCell:
            h0, c0 = torch.randn(B, 7), torch.randn(B, 7)
            want_h, want_c = module(x, (h0, c0))
            out, state = cell(x, LSTMStateTuple(c0, h0))
            assert torch.allclose(state.c, want_c, atol=TOL)
        else:
            h0 = torch.randn(B, 7)
            want_h = module(x, h0)
            out, state = cell(x, h0)
    assert torch.allclose(out, want_h, atol=TOL)


def _built(cell, depth: int = 3):
    cell.ensure_built(depth, torch.float32)
    return cell


@pytest.mark.parametrize("make,message", [
    (lambda: GRUCell(4), "torch.nn.GRU applies the reset gate after the recurrent matmul; TF1 "
     "GRUCell (like Keras reset_after=False) applies it before — use GRUCell(reset_after=True)"),
    (lambda: LSTMCell(4, use_peepholes=True), "no peephole connections"),
    (lambda: LSTMCell(4, cell_clip=3.0), "does not clip the cell state (cell_clip=3.0)"),
    (lambda: LSTMCell(4, num_proj=2, proj_clip=1.0), "does not clip the projection (proj_clip=1.0)"),
    (lambda: LayerNormLSTMCell(4), "no layer normalization"),
    (lambda: BasicRNNCell(4, activation="sigmoid"), "nonlinearity 'tanh' or 'relu', the cell uses 'sigmoid'"),
    (lambda: BasicLSTMCell(4, activation="relu"), "uses tanh for the candidate, the cell uses 'relu'"),
])
def test_to_torch_refuses_math_torch_lacks(make, message):
    with pytest.raises(ValueError, match="cannot convert to torch.nn") as info:
        to_torch(_built(make()))
    assert message in str(info.value)


def test_to_torch_argument_errors():
    with pytest.raises(RuntimeError, match="no variables yet"):
        to_torch(GRUCell(4, reset_after=True))
    with pytest.raises(TypeError, match="must be a built cell"):
        to_torch("gru")
    with pytest.raises(ValueError, match="all layers must be of one kind"):
        to_torch(_built(MultiRNNCell([BasicRNNCell(4), BasicLSTMCell(4)])))
    with pytest.raises(ValueError, match="list of \\(cell_fw, cell_bw\\) pairs"):
        to_torch((_built(MultiRNNCell([BasicRNNCell(4)])), _built(BasicRNNCell(4))))
    with pytest.raises(ValueError, match="forward and backward cells must have the same"):
        to_torch((_built(BasicRNNCell(4)), _built(BasicRNNCell(5))))
    with pytest.raises(ValueError, match="layer 1 takes inputs of depth 3, but layer 0 gives 8"):
        to_torch([(_built(BasicRNNCell(4)), _built(BasicRNNCell(4))),
                  (_built(BasicRNNCell(4)), _built(BasicRNNCell(4)))])
    with pytest.raises(TypeError, match="module must be a torch.nn.RNN"):
        from_torch(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("cell", CELLS)
def test_assign_round_trips_every_cell_layout(cell):
    """``layouts.assign`` writes rows (two biases) into any cell's own variables exactly: TF1
    names and forget_bias, Keras's reset-after bias rows, projection."""
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(8))
    source = build(CELLS[cell], "single", x)
    target = CELLS[cell]()
    target.ensure_built(D, torch.float32)
    rows = to_rows(source.canonical(), "torch")
    assign(target, rows, "test")
    assert_same(run_rnnkit(target, x, LENGTHS["ragged"]), run_rnnkit(source, x, LENGTHS["ragged"]))


@pytest.mark.skipif(keras_layers is None, reason="rnnkit.layers is not available")
@pytest.mark.parametrize("kind", ["SimpleRNN", "GRU", "LSTM"])
def test_keras_layers_to_torch(kind):
    """Keras RNN layers and stacked Bidirectional layers, masked (right-padded) inputs."""
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(9))
    lengths = LENGTHS["ragged"]
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    layer = getattr(keras_layers, kind)(7, return_sequences=True)
    bi = [keras_layers.Bidirectional(getattr(keras_layers, kind)(7, return_sequences=True))
          for _ in range(2)]
    with torch.no_grad():
        want_single = layer(x, mask=mask)
        want_stack = bi[1](bi[0](x, mask=mask), mask=mask)
    for model, want in ((layer, want_single), (bi, want_stack)):
        got = run_torch(to_torch(model), x, lengths)[0]
        assert torch.allclose(got[mask], want[mask], atol=TOL, rtol=TOL)
