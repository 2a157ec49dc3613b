"""rnnkit.layers without TensorFlow: argument errors, config round trips, float64 gradcheck,
dropout statistics and closed forms. Numbers against Keras itself: test_layers_oracle.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit as rk
from rnnkit import layers as L
from rnnkit.layers.base import get_mask

X = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
HOLES = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)


# -- errors name the argument, what it got and what was expected -----------------------------
@pytest.mark.parametrize("bad,match", [
    (torch.randn(3, 4), r"inputs must be a tensor of shape \[batch, time, features\] \(rank 3\), "
                        r"got \[3, 4\]"),
    (torch.randn(2, 3, 4, 5), r"inputs .* got \[2, 3, 4, 5\]"),
])
def test_wrong_rank_names_inputs_and_shape(bad, match):
    with pytest.raises(ValueError, match=match):
        L.LSTM(3)(bad)


def test_bad_mask_shape():
    with pytest.raises(ValueError, match=r"mask must have shape \[batch, time\] = \[3, 5\], got \[3, 4\]"):
        L.GRU(3)(X, mask=torch.ones(3, 4, dtype=torch.bool))


@pytest.mark.parametrize("state,match", [
    ([torch.zeros(3, 2)], r"initial_state for LSTMCell must be a list \[h, c\]"),
    ([torch.zeros(3, 2), torch.zeros(3, 3)], r"initial_state\[1\] must have shape \[batch, units\] "
                                             r"= \[3, 2\], got \[3, 3\]"),
    ([torch.zeros(4, 2), torch.zeros(3, 2)], r"initial_state\[0\] .* = \[3, 2\], got \[4, 2\]"),
])
def test_bad_initial_state(state, match):
    with pytest.raises(ValueError, match=match):
        L.LSTM(2)(X, initial_state=state)


def test_bad_merge_mode_and_other_arguments():
    with pytest.raises(ValueError, match=r"merge_mode must be one of .*'concat'.* got 'max'"):
        L.Bidirectional(L.LSTM(2), merge_mode="max")
    with pytest.raises(TypeError, match="layer must be an rnnkit RNN layer, got Dense"):
        L.Bidirectional(L.Dense(2))
    with pytest.raises(ValueError, match="opposite go_backwards"):
        L.Bidirectional(L.LSTM(2, go_backwards=True))
    with pytest.raises(ValueError, match=r"recurrent_dropout must be a number in \[0, 1\), got 1.5"):
        L.GRU(2, recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="units must be a positive int, got 0"):
        L.SimpleRNN(0)
    with pytest.raises(TypeError, match="cell must be a Keras cell"):
        L.RNN(rk.GRUCell(3))
    with pytest.raises(ValueError, match=r"initial_state must be a list of 4 tensors"):
        L.Bidirectional(L.LSTM(2))(X, initial_state=[torch.zeros(3, 2)])
    with pytest.raises(ValueError, match=r"inputs to Embedding must be ids in \[0, 5\)"):
        L.Embedding(5, 2)(torch.tensor([[1, 7]]))


def test_stateful_batch_size_must_not_change():
    layer = L.GRU(3, stateful=True)
    layer(X)
    with pytest.raises(ValueError, match="must keep batch size 3.*got 2"):
        layer(X[:2])


# -- configs round-trip ---------------------------------------------------------------------
def _layers():
    rnn_kw = {"kernel_initializer": rk.init.orthogonal(gain=2.0),
              "recurrent_initializer": "identity", "bias_initializer": rk.init.constant(0.3),
              "kernel_regularizer": "l2", "recurrent_constraint": L.MaxNorm(3.0),
              "dropout": 0.1, "recurrent_dropout": 0.2, "seed": 4}
    return [
        L.SimpleRNN(3, activation="relu", return_sequences=True, go_backwards=True, **rnn_kw),
        L.GRU(3, reset_after=False, return_state=True, stateful=True, **rnn_kw),
        L.LSTM(3, unit_forget_bias=False, recurrent_activation="hard_sigmoid", **rnn_kw),
        L.RNN(L.LSTMCell(2, use_bias=False), return_sequences=True, zero_output_for_mask=True),
        L.Bidirectional(L.GRU(2, return_sequences=True), merge_mode=None),
        L.Bidirectional(L.LSTM(2), merge_mode="ave", backward_layer=L.LSTM(3, go_backwards=True)),
        L.Embedding(7, 3, mask_zero=True, embeddings_regularizer=L.L1L2(0.1, 0.2)),
        L.Masking(-1.0), L.Dense(4, activation="tanh", use_bias=False), L.Dropout(0.3, (None, 1, None), 2),
        L.TimeDistributed(L.Dense(2)),
        L.Sequential([L.Masking(), L.LSTM(2, return_sequences=True), L.Dense(1)]),
    ]


@pytest.mark.parametrize("layer", _layers(), ids=lambda layer: type(layer).__name__)
def test_config_round_trip(layer):
    config = layer.get_config()
    again = type(layer).from_config(config)
    assert again.get_config() == config
    assert L.deserialize(L.serialize(layer)).get_config() == config


def test_functional_model_config_round_trip_and_same_outputs():
    inp = L.Input((5, 4))
    seq, h, c = L.LSTM(3, return_sequences=True, return_state=True)(inp)
    out = L.GRU(3)(seq, initial_state=[h])
    model = L.Model(inp, [out, c])
    again = L.Model.from_config(model.get_config())
    assert again.get_config() == model.get_config()
    model(X), again(X)
    again.set_weights(model.get_weights())
    for a, b in zip(model(X), again(X), strict=True):
        torch.testing.assert_close(a, b)


# -- float64 gradcheck of each layer, masks with holes included ------------------------------
def _gradcheck(layer, x, wrt_inputs=True, **kw):
    layer(x, **kw)  # build in float64
    names, params = zip(*layer.named_parameters(), strict=True)

    def fn(x, *ps):
        out = torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,), kw)
        return tuple(out) if isinstance(out, list) else out

    params = [p.detach().requires_grad_() for p in params]
    inputs = (x.requires_grad_(wrt_inputs and x.dtype.is_floating_point), *params)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: L.SimpleRNN(3, return_sequences=True, return_state=True),
    lambda: L.GRU(3, return_sequences=True, go_backwards=True),
    lambda: L.GRU(3, reset_after=False, return_state=True),
    lambda: L.LSTM(3, return_sequences=True, return_state=True),
    lambda: L.Bidirectional(L.LSTM(2, return_sequences=True), merge_mode="mul"),
    lambda: L.Bidirectional(L.GRU(2), merge_mode="concat"),
    lambda: L.Sequential([L.TimeDistributed(L.Dense(3, activation="tanh")), L.SimpleRNN(2)]),
], ids=["simple_rnn", "gru", "gru_reset_before", "lstm", "bi_lstm", "bi_gru", "dense_td"])
def test_gradcheck_float64(make):
    _gradcheck(make(), X.double().clone(), mask=HOLES)


def test_gradcheck_embedding_and_masking():
    emb = L.Sequential([L.Embedding(6, 3, mask_zero=True), L.LSTM(2)])
    ids = torch.tensor([[1, 0, 2, 5], [0, 3, 3, 0]])
    emb(ids)
    emb.double()
    _gradcheck(emb, ids)
    # Masking is discontinuous in its inputs (a nudge unmasks a step): weights only
    _gradcheck(L.Sequential([L.Masking(0.0), L.GRU(2)]), (X * HOLES[..., None]).double(),
               wrt_inputs=False)


# -- dropout: masks reused across time, inverted scaling, off in eval -------------------------
def _identity_rnn(**kw):
    layer = L.SimpleRNN(400, activation=None, use_bias=False, return_sequences=True, **kw)
    layer(torch.zeros(1, 1, 400))
    with torch.no_grad():
        layer.cell.kernel.copy_(torch.eye(400))
        layer.cell.recurrent_kernel.copy_(torch.eye(400))
    return layer


def test_recurrent_dropout_mask_is_reused_across_time_and_scaled():
    rate, steps = 0.25, 4
    layer = _identity_rnn(recurrent_dropout=rate, seed=1)
    h0 = torch.ones(50, 400)
    out = layer(torch.zeros(50, steps, 400), initial_state=[h0], training=True)
    # h_t = h0 * m^t with one mask m: the same units survive at every step, scaled (1/(1-p))^t
    alive = out[:, 0] != 0
    for t in range(steps):
        assert torch.equal(out[:, t] != 0, alive)
        torch.testing.assert_close(out[:, t][alive], torch.full_like(out[:, t][alive],
                                                                     (1 / (1 - rate)) ** (t + 1)))
    assert abs(alive.double().mean().item() - (1 - rate)) < 0.01  # fresh masks would give 0.32
    assert abs(out[:, 0].mean().item() - 1.0) < 0.02  # inverted scaling keeps the mean


def test_input_dropout_mask_is_reused_across_time():
    layer = _identity_rnn(dropout=0.5, seed=2)
    with torch.no_grad():
        layer.cell.recurrent_kernel.zero_()
    out = layer(torch.ones(20, 3, 400), training=True)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert set(out.unique().tolist()) == {0.0, 2.0}


@pytest.mark.parametrize("make", [lambda: L.GRU(4, recurrent_dropout=0.3, dropout=0.3),
                                  lambda: L.LSTM(4, recurrent_dropout=0.3)])
def test_gru_lstm_recurrent_dropout_is_per_gate_and_off_in_eval(make):
    layer = make()
    x = torch.randn(64, 5, 4)
    plain = layer(x, training=False)
    cell = layer.cell
    cell.begin_sequence(64, x.dtype, x.device, training=True)
    assert cell._masks["recurrent"].shape == (64, cell.gates_count, 4)
    m = cell._masks["recurrent"] > 0
    assert not torch.equal(m[:, 0], m[:, 1])  # one independent mask per gate, as Keras
    cell.end_sequence()
    assert not torch.allclose(layer(x, training=True), plain)
    layer.eval()
    torch.testing.assert_close(layer(x), plain)
    layer.train()
    torch.testing.assert_close(layer(x, training=False), plain)


def test_gru_recurrent_dropout_keeps_undropped_h_in_the_update():
    """Keras: z, r and the candidate see h ⊙ m_gate; the mix z ⊙ h uses h itself."""
    layer = L.GRU(3, recurrent_dropout=0.5, seed=3, reset_after=True)
    x, h0 = torch.randn(5, 1, 2), torch.randn(5, 3)
    layer(x, initial_state=[h0])
    cell = layer.cell
    torch.manual_seed(0)
    cell.begin_sequence(5, x.dtype, x.device, training=True)
    m = cell._masks["recurrent"]
    g = cell.gates()
    xz, xr, xh = (x[:, 0] @ g[f"W_{k}"] + g[f"b_{k}"] for k in "zrh")
    hz, hr, hh = ((h0 * m[:, k]) @ g[f"U_{n}"] + g[f"b_h{n}"] for k, n in enumerate("zrh"))
    z, r = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr)
    want = z * h0 + (1 - z) * torch.tanh(xh + r * hh)
    got, _ = cell.unroll(x.transpose(0, 1), h0)
    torch.testing.assert_close(got[0], want)


# -- closed forms, names, masks, gates, provenance -------------------------------------------
def test_linear_simple_rnn_docs_example_and_recurrent_initializer():
    x1 = torch.arange(20.0)[:, None, None].repeat(1, 1, 5)  # sample i: one step of five i's
    for rec in ("zeros", "ones", "orthogonal"):
        layer = L.SimpleRNN(1, activation=None, kernel_initializer="ones",
                            recurrent_initializer=rec, bias_initializer="zeros")
        np.testing.assert_array_equal(layer(x1)[:, 0].detach().numpy(), np.arange(0, 100, 5))
    x2 = x1.repeat(1, 2, 1)  # two steps: h2 = 5i + U * 5i, so U now matters
    for rec, u in (("zeros", 0.0), ("ones", 1.0), (rk.init.constant(-0.5), -0.5)):
        layer = L.SimpleRNN(1, activation=None, kernel_initializer="ones",
                            recurrent_initializer=rec, bias_initializer="zeros")
        np.testing.assert_allclose(layer(x2)[:, 0].detach().numpy(), np.arange(0, 100, 5) * (1 + u))


def test_masks_propagate_like_keras():
    ids = torch.tensor([[4, 2, 0, 0], [0, 1, 3, 0]])
    seq = L.Embedding(5, 3, mask_zero=True)(ids)
    assert torch.equal(get_mask(seq), ids != 0)
    out = L.LSTM(2, return_sequences=True)(seq)
    assert torch.equal(get_mask(out), ids != 0)
    assert get_mask(L.LSTM(2)(seq)) is None
    bi = L.Bidirectional(L.GRU(2, return_sequences=True), merge_mode=None)(seq)
    assert all(torch.equal(get_mask(t), ids != 0) for t in bi)
    # a fully masked row keeps its initial state and outputs zeros
    h0 = torch.randn(2, 2)
    out, h = L.GRU(2, return_state=True)(seq, mask=torch.tensor([[0] * 4, [1] * 4]).bool(),
                                        initial_state=[h0])
    assert torch.equal(h[0], h0[0]) and torch.equal(out[0], torch.zeros(2))


def test_weight_names_layouts_gates_and_provenance():
    model = L.Sequential([L.GRU(3, recurrent_initializer=rk.init.orthogonal(gain=0.5), name="g")],
                         name="seq")
    model(X)
    cell = model.model_layers[0].cell
    assert [(w.op_name, list(w.shape)) for w in model.weights] == [
        ("seq/g/gru_cell/kernel", [4, 9]), ("seq/g/gru_cell/recurrent_kernel", [3, 9]),
        ("seq/g/gru_cell/bias", [2, 9])]
    gates = cell.gates()
    assert gates["U_r"].data_ptr() == cell.recurrent_kernel[:, 3:].data_ptr()
    assert set(gates) == {f"{k}_{g}" for k in "WUb" for g in "zrh"} | {"b_hz", "b_hr", "b_hh"}
    table = rk.describe(model)
    assert table["seq/g/gru_cell/recurrent_kernel:0"]["initializer"] == "orthogonal(gain=0.5)"
    assert table["seq/g/gru_cell/recurrent_kernel:0"]["origin"] == "argument"
    assert table["seq/g/gru_cell/kernel:0"]["origin"] == "layer default"
    lstm = L.LSTM(2)
    lstm(X)
    torch.testing.assert_close(lstm.cell.gates()["b_f"], torch.ones(2))
    assert "unit_forget_bias" in rk.describe(lstm)[f"{lstm.name}/lstm_cell/bias:0"]["origin"]


def test_regularizer_losses_and_constraints():
    layer = L.SimpleRNN(2, kernel_regularizer=L.L1L2(l2=0.5), recurrent_constraint=L.NonNeg())
    layer(X)
    torch.testing.assert_close(layer.losses[0], 0.5 * layer.cell.kernel.square().sum())
    layer.apply_constraints()
    assert (layer.cell.recurrent_kernel >= 0).all()


def test_stateful_continues_and_resets():
    layer = L.LSTM(3, stateful=True, return_sequences=True)
    whole = L.LSTM(3, return_sequences=True)
    whole(X)
    layer(X[:, :2])
    layer.set_weights(whole.get_weights())
    layer.reset_states()
    torch.testing.assert_close(torch.cat([layer(X[:, :2]), layer(X[:, 2:])], 1), whole(X))
    layer.reset_states()
    torch.testing.assert_close(layer(X[:, :2]), whole(X[:, :2]))


@pytest.mark.parametrize("cls", [L.GRU, L.LSTM])
def test_use_cudnn_is_accepted_and_changes_nothing(cls):
    """Keras 3's GRU/LSTM switch of its own cuDNN implementation: the same numbers either way,
    not in the config (as Keras's)."""
    torch.manual_seed(0)
    plain = cls(4, return_sequences=True)
    x = torch.randn(2, 5, 3)
    want = plain(x)
    for value in ("auto", True, False):
        layer = cls.from_config(plain.get_config() | {"use_cudnn": value})
        layer(x)  # built
        layer.set_weights(plain.get_weights())
        assert torch.equal(layer(x), want) and "use_cudnn" not in layer.get_config()
    with pytest.raises(ValueError, match="use_cudnn must be"):
        cls(4, use_cudnn="yes")
    with pytest.raises(TypeError, match="unexpected keyword argument 'use_cudnn'"):
        L.SimpleRNN(4, use_cudnn=True)
