"""Models whose unroll runs on a fused path work under torch.compile and give the same results
(graph breaks at the oneDNN call are allowed). The ``aot_eager`` backend traces with Dynamo and
AOTAutograd like the default one, without compiling C++, so the test stays quick."""

import pytest
import torch

import rnnkit as rk


class Tagger(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x, lengths):
        out, _ = rk.dynamic_rnn(self.cell, x, sequence_length=lengths)
        return self.head(out)


@pytest.mark.parametrize("make", [lambda: rk.GRUCell(8), lambda: rk.BasicLSTMCell(8),
                                  lambda: rk.LSTMCell(8, use_peepholes=True)],
                         ids=["gru", "lstm", "lstm_peepholes"])
def test_compiled_model_equals_eager(make):
    torch.manual_seed(0)
    model = Tagger(make())
    x, lengths = torch.randn(4, 6, 5), torch.tensor([6, 3, 1, 5])
    model(x, lengths)  # build the variables eagerly
    eager_out = model(x, lengths)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(x, lengths)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
