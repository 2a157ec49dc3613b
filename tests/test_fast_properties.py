"""Property tests of the fast paths (hypothesis): random cells, sizes, batches, lengths and
directions, each fast path (oneDNN or the fused kernels, whichever the dispatch picks; the
fused kernels forced by making every cell "small"; the cudnn path on torch's CPU op, for the
cells it serves) against the reference loop: outputs, final
states and gradients with respect to inputs, initial states and every variable.
``RNNKIT_PROPERTY_EXAMPLES`` sets the examples (default 15; a longer local run raises it).
Both float32 paths are measured against a float64 run of the reference loop."""

import contextlib
import copy
import os

import pytest
import torch
from fast_checks import perturb, random_state
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

import rnnkit as rk
from rnnkit.cells import dropout as cell_dropout
from rnnkit.cells import wrappers
from rnnkit.fast import compiled, cudnn, dispatch, onednn

pytestmark = pytest.mark.skipif(onednn.load_error() is not None or compiled.load_error() is not None,
                                reason="needs oneDNN and the fused kernels")

CELLS = {
    "rnn": lambda n: rk.BasicRNNCell(n, activation="relu"),
    "rnn_softsign": lambda n: rk.BasicRNNCell(n, activation="softsign"),
    "gru": lambda n: rk.GRUCell(n),
    "gru_after": lambda n: rk.GRUCell(n, reset_after=True),
    "gru_relu": lambda n: rk.GRUCell(n, activation="relu"),
    "lstm": lambda n: rk.BasicLSTMCell(n, forget_bias=0.5),
    "lstm_peep_proj": lambda n: rk.LSTMCell(n, use_peepholes=True, num_proj=max(1, n // 2)),
    "lstm_clip_all": lambda n: rk.LSTMCell(n, use_peepholes=True, cell_clip=0.8,
                                           num_proj=max(1, n - 3), proj_clip=0.5),
    "lstm_relu_clip": lambda n: rk.LSTMCell(n, activation="relu", cell_clip=1.5),
    "layer_norm": lambda n: rk.LayerNormLSTMCell(n),
    "layer_norm_dropout": lambda n: rk.LayerNormLSTMCell(n, dropout_keep_prob=0.7),
    "lstm_candidate_dropout": lambda n: rk.LayerNormLSTMCell(n, layer_norm=False,
                                                             dropout_keep_prob=0.6),
    # TF's concatenated state (state_is_tuple=False): the unroll takes it apart for every path
    "lstm_concat": lambda n: rk.BasicLSTMCell(n, state_is_tuple=False),
    "lstm_peep_proj_concat": lambda n: rk.LSTMCell(n, use_peepholes=True, num_proj=max(1, n // 2),
                                                   state_is_tuple=False),
}
PROPERTY = settings(max_examples=int(os.environ.get("RNNKIT_PROPERTY_EXAMPLES", "15")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(sorted(CELLS)))
    units = draw(st.sampled_from([1, 3, 8, 33, 70]))
    if kind.startswith("layer_norm"):  # over 1-3 units a layer norm is ill-conditioned in
        units = max(units, 8)  # float32: the fused kernel's closed-form gradient and autograd's
        # part ways
    batch = draw(st.integers(1, 40))
    steps = draw(st.integers(1, 9))
    depth = draw(st.integers(1, 12))
    lengths = draw(st.none() | st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    if lengths is not None and max(lengths) == 0:
        lengths[0] = steps
    path = draw(st.sampled_from(["dispatch", "fused", "cudnn"]))
    return kind, units, batch, steps, depth, lengths, draw(st.booleans()), path


@contextlib.contextmanager
def _forced(path: str, cell):
    """The dispatch as it is, or made to pick the fused kernels (every cell "small"), or the
    cudnn path on torch's CPU op (the other two switched off) where it serves the cell."""
    saved = [(dispatch, "SMALL_UNITS"), (cudnn, "DEVICE"), (onednn, "load_error"),
             (compiled, "load_error")]
    saved = [(module, name, getattr(module, name)) for module, name in saved]
    try:
        if path == "fused":
            dispatch.SMALL_UNITS = dict.fromkeys(dispatch.SMALL_UNITS, 10**9)
        elif path == "cudnn" and not cudnn.unmet(p := cell.sequence_params()) and \
                p.g_dropout is None:  # cuDNN has no candidate dropout
            cudnn.DEVICE = "cpu"
            onednn.load_error = compiled.load_error = lambda *family: "switched off"
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _leaves_and_grads(out, wrt):
    leaves = pytree.tree_leaves(out)
    g = torch.Generator().manual_seed(1)
    loss = sum((leaf * torch.randn(leaf.shape, generator=g, dtype=torch.float64).to(leaf.dtype))
               .sum() for leaf in leaves)
    return [t.detach().double() for t in (*leaves, *torch.autograd.grad(loss, wrt))]


class _ClipMargins(TorchFunctionMode):
    """Records, for every ``Tensor.clamp(-bound, bound)`` run inside it, how near any value came
    to the bound (``| |value| - bound | / bound``), and for every ``relu`` how near any value
    came to its kink at 0 (``kinks``, relative to the largest value)."""

    def __init__(self):
        super().__init__()
        self.seen: list[float] = []
        self.kinks: list[float] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        clamp = func in (torch.Tensor.clamp, torch.clamp) and len(args) == 3
        if clamp and args[1] == -args[2] and args[2] > 0:
            bound = args[2]
            self.seen.append(float(((args[0].detach().abs() - bound).abs() / bound).min()))
        if func in (torch.relu, torch.Tensor.relu, torch.nn.functional.relu):
            v = args[0].detach().abs()
            self.kinks.append(float(v.min() / (1 + v.max())))
        return out


@PROPERTY
@given(cases())
def test_fast_paths_match_the_reference_loop(case):
    """The fast path is as close to a float64 run of the reference loop as the float32
    reference loop is (within 10x its error, plus 1e-5 of the largest entry): layer norm over a
    few units or gradients summed over many rows are ill-conditioned in float32 on every path."""
    kind, units, batch, steps, depth, lengths, backward, path = case
    torch.manual_seed(0)
    rk.reset_default_graph()
    cell = CELLS[kind](units)
    cell.ensure_built(depth, torch.float32)
    # noise of about 1/sqrt(units): a larger recurrent gain makes the dynamics chaotic, where any
    # two float32 computations (the reference loop and oneDNN alike) part ways step by step
    perturb(cell, scale=min(0.4, 1.5 / units**0.5))
    x = torch.randn(batch, steps, depth, requires_grad=True)
    h0 = random_state(cell, batch)
    cell64 = copy.deepcopy(cell).double()
    x64 = x.detach().double().requires_grad_()
    h064 = pytree.tree_map(lambda s: s.detach().double().requires_grad_(), h0)

    def run(c, inputs, state, fast):
        torch.manual_seed(7)  # candidate dropout's masks: the same on every run
        if backward:  # the backward direction of a bidirectional run
            return rk.bidirectional_dynamic_rnn(c, c, inputs, lengths, state, state, fast=fast)
        return rk.dynamic_rnn(c, inputs, sequence_length=lengths, initial_state=state, fast=fast)

    with _forced(path, cell):
        fast = _leaves_and_grads(run(cell, x, h0, True), [x, *pytree.tree_leaves(h0),
                                                          *cell.parameters()])
    ref = _leaves_and_grads(run(cell, x, h0, False), [x, *pytree.tree_leaves(h0),
                                                      *cell.parameters()])
    with _ClipMargins() as margins:
        truth = _leaves_and_grads(run(cell64, x64, h064, False),
                                  [x64, *pytree.tree_leaves(h064), *cell64.parameters()])
    # a clip's gradient steps at its bound, relu's at 0: a value there may fall on either side
    # in float32
    assert margins.seen or "clip" not in kind
    assume(min(margins.seen, default=1.0) > 1e-5 and min(margins.kinks, default=1.0) > 1e-5)
    for k, (a, b, t) in enumerate(zip(fast, ref, truth, strict=True)):
        err_fast, err_ref = (a - t).abs().max(), (b - t).abs().max()
        assert err_fast <= 10 * err_ref + 1e-5 * (1 + t.abs().max()), (k, err_fast, err_ref)


KERAS_LAYERS = {
    "lstm": lambda n, **kw: rk.layers.LSTM(n, **kw),
    "gru": lambda n, **kw: rk.layers.GRU(n, **kw),
    "gru_reset_before": lambda n, **kw: rk.layers.GRU(n, reset_after=False, **kw),
    "simple_rnn": lambda n, **kw: rk.layers.SimpleRNN(n, **kw),
}


@st.composite
def keras_dropout_cases(draw):
    kind = draw(st.sampled_from(sorted(KERAS_LAYERS)))
    units = draw(st.sampled_from([1, 3, 8, 33, 70]))
    batch = draw(st.integers(1, 40))
    steps = draw(st.integers(1, 9))
    depth = draw(st.integers(1, 12))
    lengths = draw(st.none() | st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    if lengths is not None and max(lengths) == 0:  # no fast path runs an all-empty batch
        lengths[0] = steps
    rates = draw(st.sampled_from([(0.3, 0.0), (0.0, 0.3), (0.3, 0.4)]))
    return kind, units, batch, steps, depth, lengths, rates, draw(st.booleans())


@PROPERTY
@given(keras_dropout_cases())
def test_keras_dropout_on_the_fast_paths_matches_the_reference_loop(case):
    """Keras layers in training with ``dropout`` (one input mask: dropped before a fast path)
    and ``recurrent_dropout`` (masks per gate: the fused kernels), any sizes, Keras masks,
    either direction: as close to a float64 run of the loop with the same masks as the float32
    loop is (the measure of ``test_fast_paths_match_the_reference_loop``)."""
    kind, units, batch, steps, depth, lengths, (rate, recurrent_rate), backwards = case
    torch.manual_seed(0)
    layer = KERAS_LAYERS[kind](units, return_sequences=True, return_state=True, dropout=rate,
                               recurrent_dropout=recurrent_rate, go_backwards=backwards, seed=3)
    x = torch.randn(batch, steps, depth, requires_grad=True)
    layer(x)
    perturb(layer, scale=min(0.4, 1.5 / units**0.5))
    mask = None if lengths is None else \
        torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    drawn = []
    draw = layer.cell.begin_sequence

    def recorded(*args, **kwargs):
        draw(*args, **kwargs)
        drawn.append(dict(layer.cell._masks))

    layer.cell.begin_sequence = recorded
    layer64 = copy.deepcopy(layer).double()
    layer64.cell.begin_sequence = lambda *a, **k: setattr(
        layer64.cell, "_masks", {name: m.double() for name, m in drawn[0].items()})
    x64 = x.detach().double().requires_grad_()

    def run(model, inputs, fast):
        if model is layer:
            model.cell._generator.manual_seed(3)  # the same masks on every float32 run
        with rk.fast.fast_mode(fast):
            return model(inputs, mask=mask, training=True)

    fast = _leaves_and_grads(run(layer, x, True), [x, *layer.parameters()])
    ref = _leaves_and_grads(run(layer, x, False), [x, *layer.parameters()])
    truth = _leaves_and_grads(run(layer64, x64, False), [x64, *layer64.parameters()])
    assert drawn[0] and all(set(d) == set(drawn[0]) for d in drawn)
    for k, (a, b, t) in enumerate(zip(fast, ref, truth, strict=True)):
        err_fast, err_ref = (a - t).abs().max(), (b - t).abs().max()
        assert err_fast <= 10 * err_ref + 1e-5 * (1 + t.abs().max()), (k, err_fast, err_ref)


def _stack(n: int) -> rk.MultiRNNCell:
    return rk.MultiRNNCell([rk.LSTMCell(n, num_proj=max(1, n - 1)), rk.GRUCell(n)])


@st.composite
def wrapper_cases(draw):
    kind = draw(st.sampled_from(["rnn", "gru", "gru_after", "lstm", "lstm_peep_proj",
                                 "lstm_clip_all", "layer_norm", "stack"]))
    units = draw(st.sampled_from([8, 33] if kind == "layer_norm" else [1, 3, 8, 33]))
    batch, steps, depth = draw(st.integers(1, 12)), draw(st.integers(1, 9)), draw(st.integers(1, 6))
    lengths = draw(st.none() | st.lists(st.integers(0, steps), min_size=batch, max_size=batch))
    if lengths is not None and max(lengths) == 0:
        lengths[0] = steps
    keeps = {name: draw(st.sampled_from([1.0, 0.8, 0.5]))
             for name in ("input_keep_prob", "output_keep_prob", "state_keep_prob")}
    return (kind, units, batch, steps, depth, lengths, keeps, draw(st.booleans()),
            draw(st.booleans()), draw(st.booleans()))


@PROPERTY
@given(wrapper_cases())
def test_dropout_wrapper_on_the_fast_paths_matches_its_steps(case):
    """A ``DropoutWrapper`` in training (input, output and state dropout, variational or not)
    around any cell, any sizes and lengths, either direction, with or without ``swap_memory``:
    its unroll (the cell's, on a fast path, with a state mask) as close to a float64 run step
    by step with the same masks as the float32 run step by step is."""
    kind, units, batch, steps, depth, lengths, keeps, variational, swap, backward = case
    torch.manual_seed(0)
    rk.reset_default_graph()
    inner = _stack(units) if kind == "stack" else CELLS[kind](units)
    cell = rk.DropoutWrapper(inner, variational_recurrent=variational, **keeps)
    cell.ensure_built(depth, torch.float32)
    perturb(cell, scale=min(0.4, 1.5 / units**0.5))
    x = torch.randn(batch, steps, depth)
    h0 = random_state(cell, batch)
    noise = cell_dropout.DropoutWrapper._noise

    def run(c, dtype, whole):
        inputs = x.to(dtype).requires_grad_()
        state = pytree.tree_map(lambda s: s.to(dtype).requires_grad_(), h0)
        wrappers.WHOLE_SEQUENCE = whole
        torch.manual_seed(7)
        try:
            if backward:
                out = rk.bidirectional_dynamic_rnn(c, c, inputs, lengths, state, state,
                                                   swap_memory=swap, fast=None if whole else False)
            else:
                out = rk.dynamic_rnn(c, inputs, sequence_length=lengths, initial_state=state,
                                     swap_memory=swap, fast=None if whole else False)
        finally:
            wrappers.WHOLE_SEQUENCE = True
        return _leaves_and_grads(out, [inputs, *pytree.tree_leaves(state), *c.parameters()])

    cell_dropout.DropoutWrapper._noise = lambda self, like, keep, global_rng: noise(
        self, like.float(), keep, global_rng).to(like.dtype)  # the same masks in float64
    try:
        fast, ref = run(cell, torch.float32, True), run(cell, torch.float32, False)
        truth = run(copy.deepcopy(cell).double(), torch.float64, False)
    finally:
        cell_dropout.DropoutWrapper._noise = noise
    for k, (a, b, t) in enumerate(zip(fast, ref, truth, strict=True)):
        err_fast, err_ref = (a - t).abs().max(), (b - t).abs().max()
        assert err_fast <= 10 * err_ref + 1e-5 * (1 + t.abs().max()), (k, err_fast, err_ref)
