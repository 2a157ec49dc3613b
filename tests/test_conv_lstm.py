"""ConvLSTM layers without TensorFlow: the hoisted sequence against the cell stepped by hand,
dropout against an independent per-gate reference with the same masks, float64 gradients,
configs, the native format, and the errors (Keras's numbers: test_conv_lstm_oracle.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnkit as rk
from rnnkit import layers as L
from rnnkit.cells.base import LSTMStateTuple
from rnnkit.io import load, save_native


def _built(layer, x):
    layer.eval()(x)  # eval: a training call would draw dropout masks
    with torch.no_grad():  # away from Keras's init, so every weight matters
        for w in layer.weights:
            w.copy_(torch.randn_like(w) * 0.3)
    return layer


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("padding,strides", [("same", 1), ("valid", 2), ("same", 2)])
def test_unroll_equals_the_cell_stepped_by_hand(data_format, padding, strides):
    torch.manual_seed(0)
    first = data_format == "channels_first"
    x = torch.randn(2, 5, 3, 8, 7) if first else torch.randn(2, 5, 8, 7, 3)
    layer = _built(L.ConvLSTM2D(4, (3, 2), strides=strides, padding=padding,
                                data_format=data_format, return_sequences=True,
                                return_state=True), x)
    seq, h, c = layer(x)
    cell, state = layer.cell, None
    outs = []
    for t in range(x.shape[1]):
        if state is None:
            state = LSTMStateTuple(torch.zeros_like(c), torch.zeros_like(h))
        out, state = cell(x[:, t], state)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), seq)
    torch.testing.assert_close(state.h, h)
    torch.testing.assert_close(state.c, c)
    out, states = cell.keras_call(x[:, 0], [h, c])  # Keras's state list: [h, c]
    assert out.shape == h.shape and len(states) == 2


def _conv_same(x, w):
    """torch's own "same" convolution (odd kernels pad evenly) of channels-first ``x`` with a
    Keras kernel ``[kh, kw, in, out]``."""
    return F.conv2d(x, w.permute(3, 2, 0, 1), padding="same")


def test_dropout_is_one_mask_per_gate_and_sequence():
    """A training call with dropout against the equations written gate by gate, each gate's
    convolution on its own dropped copy of x and of h, with the masks the layer draws."""
    torch.manual_seed(1)
    B, T, S, C, Fn = 2, 4, 6, 3, 2
    x = torch.randn(B, T, S, S, C, dtype=torch.float64)
    layer = L.ConvLSTM2D(Fn, 3, padding="same", dropout=0.4, recurrent_dropout=0.3, seed=7,
                         return_sequences=True)
    _built(layer, x)
    layer.train()
    got = layer(x)
    # the same draws: input masks [B, 4, C, S, S] first, then recurrent [B, 4, F, S, S]
    g = torch.Generator().manual_seed(7)
    x_mask = (torch.rand((B, 4, C, S, S), generator=g, dtype=x.dtype) >= 0.4) / 0.6
    h_mask = (torch.rand((B, 4, Fn, S, S), generator=g, dtype=x.dtype) >= 0.3) / 0.7
    views = layer.cell.gates()
    h = c = torch.zeros(B, Fn, S, S, dtype=x.dtype)
    outs = []
    for t in range(T):
        xt = x[:, t].permute(0, 3, 1, 2)
        z = {k: _conv_same(xt * x_mask[:, j], views[f"W_{k}"])
             + views[f"b_{k}"][None, :, None, None]
             + _conv_same(h * h_mask[:, j], views[f"U_{k}"]) for j, k in enumerate("ifco")}
        c = torch.sigmoid(z["f"]) * c + torch.sigmoid(z["i"]) * torch.tanh(z["c"])
        h = torch.sigmoid(z["o"]) * torch.tanh(c)
        outs.append(h.permute(0, 2, 3, 1))
    torch.testing.assert_close(got, torch.stack(outs, 1))
    layer.eval()  # no dropout outside training
    plain = L.ConvLSTM2D(Fn, 3, padding="same", return_sequences=True)
    plain(x)
    plain.set_weights(layer.get_weights())
    torch.testing.assert_close(layer(x), plain(x))


def test_gradients_float64():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, 2, dtype=torch.float64, requires_grad=True)
    layer = _built(L.ConvLSTM1D(2, 3, padding="same", return_sequences=True), x)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    weights = list(layer.parameters())

    def run(x, *ws):
        with torch.no_grad():
            for p, w in zip(weights, ws, strict=True):
                p.copy_(w)
        return layer(x, mask=mask)

    assert torch.autograd.gradcheck(lambda x: layer(x, mask=mask), (x,))
    assert torch.autograd.gradgradcheck(lambda x: layer(x, mask=mask).sum(), (x,))
    loss = layer(x, mask=mask).square().sum()
    grads = torch.autograd.grad(loss, weights)
    eps = 1e-6
    for p, g in zip(weights, grads, strict=True):  # a finite difference along the gradient
        d = g / g.norm()
        with torch.no_grad():
            p.add_(eps * d)
            up = layer(x, mask=mask).square().sum()
            p.sub_(2 * eps * d)
            down = layer(x, mask=mask).square().sum()
            p.add_(eps * d)
        torch.testing.assert_close((up - down) / (2 * eps), g.norm(), rtol=1e-5, atol=1e-7)


def test_config_native_file_and_describe(tmp_path):
    torch.manual_seed(3)
    x = torch.randn(2, 4, 6, 5, 4, 2)
    layer = L.ConvLSTM3D(3, (1, 2, 3), padding="same", data_format="channels_first",
                         kernel_initializer=rk.init.per_gate(rk.init.orthogonal(), 4),
                         name="c3", return_state=True)
    layer(x)
    config = layer.get_config()
    assert config["filters"] == 3 and config["kernel_size"] == (1, 2, 3) and "rank" not in config
    assert "units" not in config and "time_major" not in config
    again = L.deserialize(L.serialize(layer))
    assert type(again) is L.ConvLSTM3D and again.get_config() == config
    assert layer.filters == 3 and layer.kernel_size == (1, 2, 3)  # read through to the cell
    save_native(tmp_path / "c3.safetensors", layer)
    back = load(tmp_path / "c3.safetensors")
    for a, b in zip(back(x), layer(x), strict=True):
        torch.testing.assert_close(a, b)
    table = str(rk.describe(layer))
    assert "c3/conv_lstm_cell/kernel" in table and "per_gate" in table
    assert "unit_forget_bias" in table
    views = layer.cell.gates()
    assert views["W_f"].shape == (1, 2, 3, 6, 3) and views["U_o"].shape == (1, 2, 3, 3, 3)
    assert views["W_f"].data_ptr() == layer.cell.kernel[..., 3:6].data_ptr()  # views
    torch.testing.assert_close(views["b_f"], torch.ones(3))
    # Keras's orthogonal on [*k, F, 4F]: orthonormal columns of its [prod(k) * F, 4F] matrix
    U = L.ConvLSTM2D(4, 3).cell
    U.ensure_built(2, torch.float32)
    flat = U.recurrent_kernel.detach().reshape(-1, 16)
    torch.testing.assert_close(flat.T @ flat, torch.eye(16), atol=1e-5, rtol=0)


def test_stateful_and_initial_state_shapes():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 8, 4)
    layer = L.ConvLSTM1D(3, 3, strides=2, stateful=True, return_state=True)
    _, h, c = layer(x)
    assert h.shape == (2, 3, 3)  # (8 - 3) // 2 + 1 steps, 3 filters
    _, h2, _ = layer(x)
    layer.reset_states()
    _, h3, _ = layer(x)
    torch.testing.assert_close(h3, h)
    assert not torch.allclose(h2, h)
    with pytest.raises(ValueError, match="batch size 2"):
        layer(torch.randn(3, 3, 8, 4))
    fresh = L.ConvLSTM1D(3, 3, strides=2)
    fresh(x)
    with pytest.raises(ValueError, match=r"initial_state\[0\] must have shape "
                                         r"\[batch, steps, filters\] = \[2, 3, 3\], got \[2, 8, 3\]"):
        fresh(x, initial_state=[torch.zeros(2, 8, 3), torch.zeros(2, 8, 3)])
    with pytest.raises(ValueError, match=r"list \[h, c\]"):
        fresh(x, initial_state=[torch.zeros(2, 3, 3)])


@pytest.mark.parametrize("make,match", [
    (lambda: L.ConvLSTM2D(2, (3, 3, 3)), "kernel_size must be a positive int or 2"),
    (lambda: L.ConvLSTM2D(2, 0), "kernel_size"),
    (lambda: L.ConvLSTM2D(2, 3, strides=2, dilation_rate=2), "one of them must be 1"),
    (lambda: L.ConvLSTM2D(2, 3, padding="causal"), "padding must be 'valid' or 'same'"),
    (lambda: L.ConvLSTM2D(2, 3, data_format="NHWC"), "data_format must be"),
    (lambda: L.ConvLSTM2D(0, 3), "units must be a positive int"),
    (lambda: L.ConvLSTMCell(4, 2, 3), "rank must be 1, 2 or 3"),
    (lambda: L.ConvLSTM2D(2, 3, dropout=1.0), r"dropout must be a number in \[0, 1\)"),
])
def test_arguments_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_refusals_name_the_problem():
    with pytest.raises(TypeError, match="time_major"):
        L.ConvLSTM2D(2, 3, time_major=True)
    with pytest.raises(TypeError, match="use_cudnn"):
        L.ConvLSTM2D(2, 3, use_cudnn=False)
    layer = L.ConvLSTM2D(2, 3)
    with pytest.raises(ValueError, match=r"\[batch, time, rows, cols, channels\] \(rank 5\), "
                                         r"got \[2, 4, 3\]"):
        layer(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="smaller than the kernel's reach"):
        layer(torch.randn(2, 4, 2, 5, 3))
    layer(torch.randn(2, 4, 5, 5, 3))
    with pytest.raises(ValueError, match="must have depth 3"):
        layer(torch.randn(2, 4, 5, 5, 4))
    with pytest.raises(ValueError, match="no fast path"):
        L.ConvLSTM2D(2, 3, fast=True)(torch.randn(2, 4, 5, 5, 3))
    decision = rk.fast.explain(layer.cell, torch.randn(2, 4, 5, 5, 3))
    assert decision.path == "reference" and "ConvLSTM" in str(decision)
    with pytest.raises(TypeError, match="products are convolutions"):
        rk.io.to_torch(layer)
    with pytest.raises(TypeError, match="cannot be stacked"):
        L.StackedRNNCells([L.ConvLSTMCell(2, 2, 3), L.LSTMCell(2)])


def test_initializers_use_keras_fans_for_conv_kernels():
    """glorot_uniform on ``[kh, kw, in, 4F]``: fans over the receptive field, as Keras's
    (limit sqrt(6 / (kh*kw*in + kh*kw*4F))); the bias zeros with the forget block at 1."""
    torch.manual_seed(5)
    layer = L.ConvLSTM2D(16, (3, 5), unit_forget_bias=True)
    layer(torch.zeros(1, 1, 6, 6, 8))
    kernel = layer.cell.kernel.detach()
    limit = (6 / (15 * 8 + 15 * 64)) ** 0.5
    assert float(kernel.abs().max()) <= limit
    assert abs(float(kernel.std()) - limit / 3 ** 0.5) < 0.05 * limit
    bias = layer.cell.bias.detach()
    torch.testing.assert_close(bias, torch.cat([torch.zeros(16), torch.ones(16),
                                                torch.zeros(32)]))


def test_a_per_position_mask_needs_states_of_the_inputs_shape():
    x = torch.randn(2, 3, 6, 5, 2)
    layer = L.ConvLSTM2D(2, 3, return_sequences=True)  # "valid": the states are 4 x 3
    layer(x)
    with pytest.raises(ValueError, match=r"per position \[batch, time, rows, cols\] = "
                                         r"\[2, 3, 4, 3\]"):
        layer(x, mask=torch.ones(2, 3, 6, 5, dtype=torch.bool))
    same = L.ConvLSTM2D(2, 3, padding="same", return_sequences=True)
    full = same(x, mask=torch.ones(2, 3, 6, 5, dtype=torch.bool))
    torch.testing.assert_close(full, same(x))  # all positions valid: no mask
    holes = torch.ones(2, 3, 6, 5, dtype=torch.bool)
    holes[:, 1] = False  # a whole step masked everywhere is the step mask
    torch.testing.assert_close(same(x, mask=holes), same(x, mask=holes[..., 0, 0]))
