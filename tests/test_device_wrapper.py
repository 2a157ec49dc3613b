"""``DeviceWrapper``, as ``tf.nn.rnn_cell.DeviceWrapper``: TF's device strings, the same numbers
and variables as the bare cell, inputs and states moved to the device (on a GPU: test_gpu.py)."""

from __future__ import annotations

import pytest
import torch
from fast_checks import TOL, perturb

import rnnkit as rk
from rnnkit.cells.wrappers import torch_device


@pytest.mark.parametrize("spec,want", [
    ("/gpu:0", "cuda:0"), ("/GPU:1", "cuda:1"), ("/device:GPU:2", "cuda:2"), ("/gpu", "cuda:0"),
    ("/cpu:0", "cpu"), ("/device:CPU:0", "cpu"),
    ("/job:localhost/replica:0/task:0/device:GPU:1", "cuda:1"),
    ("/job:worker/task:3/device:CPU:0", "cpu"), ("cuda:1", "cuda:1"), ("cpu", "cpu"),
    (torch.device("cuda", 3), "cuda:3")])
def test_tf_and_torch_device_names(spec, want):
    assert torch_device(spec) == torch.device(want)


@pytest.mark.parametrize("spec,error", [("/tpu:0", ValueError), ("gpu0", ValueError),
                                        (0, TypeError), (None, TypeError)])
def test_a_name_of_no_device_is_refused(spec, error):
    with pytest.raises(error, match="device must be"):
        rk.DeviceWrapper(rk.GRUCell(3), spec)


@pytest.mark.parametrize("make", [lambda: rk.LSTMCell(5, cell_clip=1.0),
                                  lambda: rk.GRUCell(4),
                                  lambda: rk.MultiRNNCell([rk.BasicLSTMCell(4), rk.GRUCell(3)])])
def test_on_the_cpu_it_is_the_bare_cell(make):
    """The same variables (reused under the same scope: the wrapper adds no level) and numbers,
    on the fast path and step by step (inside a DropoutWrapper with state dropout)."""
    x = torch.randn(3, 6, 2)
    rk.reset_default_graph()
    with rk.variable_scope("m"):
        bare = make()
        rk.dynamic_rnn(bare, x)
    perturb(bare)
    with rk.variable_scope("m", reuse=True):
        wrapped = rk.DeviceWrapper(make(), "/device:CPU:0")
        got, got_state = rk.dynamic_rnn(wrapped, x)
    assert {id(v) for v in wrapped.parameters()} == {id(v) for v in bare.parameters()}
    want, want_state = rk.dynamic_rnn(bare, x)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_state, want_state, **TOL)
    stepped = rk.DropoutWrapper(wrapped, state_keep_prob=0.5)
    torch.manual_seed(1)
    a = rk.dynamic_rnn(stepped, x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(a, rk.dynamic_rnn(rk.DropoutWrapper(bare, state_keep_prob=0.5),
                                                 x)[0], **TOL)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_gpu_that_is_not_there_is_named_at_the_first_call():
    cell = rk.DeviceWrapper(rk.GRUCell(3), "/gpu:0")
    with pytest.raises(RuntimeError, match="device 'cuda:0' is not available"):
        rk.dynamic_rnn(cell, torch.randn(2, 4, 3))


def test_native_files_keep_the_device(tmp_path):
    from rnnkit.io import load, save_native

    torch.manual_seed(0)
    x = torch.randn(2, 4, 3)
    cell = rk.MultiRNNCell([rk.DeviceWrapper(rk.GRUCell(3), "/device:CPU:0"),
                            rk.DeviceWrapper(rk.LSTMCell(2, use_peepholes=True), "cpu")])
    want, _ = rk.dynamic_rnn(cell, x)
    save_native(tmp_path / "cpu.safetensors", cell)
    rk.reset_default_graph()
    back = load(tmp_path / "cpu.safetensors")
    assert [type(c).__name__ for c in back.cells] == ["DeviceWrapper", "DeviceWrapper"]
    assert all(c.device == torch.device("cpu") for c in back.cells)
    torch.testing.assert_close(rk.dynamic_rnn(back, x)[0], want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_file_for_a_gpu_loads_on_the_cpu_with_a_warning(tmp_path):
    """A file saved on a GPU machine loads anywhere (as torch.load's map_location makes it)."""
    from rnnkit.io import load, read_native, save_native

    cell = rk.DeviceWrapper(rk.GRUCell(3, input_size=2), "cpu")
    x = torch.randn(2, 4, 2)
    want = rk.dynamic_rnn(cell, x)[0]
    cell.device = torch.device("cuda", 0)  # as a GPU machine would have saved it
    save_native(tmp_path / "g.safetensors", cell)
    assert read_native(tmp_path / "g.safetensors")[1]["model"]["config"] == {"device": "cuda:0"}
    rk.reset_default_graph()
    with pytest.warns(UserWarning, match="'cuda:0', which this machine lacks"):
        back = load(tmp_path / "g.safetensors")
    assert back.device == torch.device("cpu")
    torch.testing.assert_close(rk.dynamic_rnn(back, x)[0], want)


def test_a_file_naming_no_device_is_a_format_error(tmp_path):
    from rnnkit.io import FormatError, load, save_native

    cell = rk.DeviceWrapper(rk.GRUCell(3, input_size=2), "cpu")
    cell.device = "/tpu:0"  # what a damaged or hand-made file could say
    save_native(tmp_path / "t.safetensors", cell)
    with pytest.raises(FormatError, match="device must be"):
        load(tmp_path / "t.safetensors")
