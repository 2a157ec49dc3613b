"""Does cuDNN's RNN run inside a CUDA graph, and what would replaying it save? (a GPU probe)

    python benchmarks/probe_cudnn_graph.py [--repeats 7]

At small sizes the cudnn path is bound by its Python and launches per call (session 7: 0.55x of
torch.nn.LSTM at H64, f+b), which a CUDA graph of the whole call would remove, if cuDNN's RNN
kernels can be captured. For B32 T100 and H in {64, 256}, f+b, medians, interleaved: torch.nn's
LSTM and GRU eagerly and replayed from ``torch.cuda.make_graphed_callables``; rnnkit's cudnn path
eagerly (a BasicLSTMCell, a reset-after GRUCell) and replayed from the graph path's own capture
(``graphs._Graph`` around ``run_cudnn``). Prints milliseconds, or the error a capture raised.
"""

from __future__ import annotations

import argparse

import torch
from bench_rnn import _interleaved, _synced

import rnnkit as rk
from rnnkit.cells.base import LSTMStateTuple
from rnnkit.fast import graphs
from rnnkit.fast.cudnn import run_cudnn


def _torch(module, x):
    params = list(module.parameters())

    def train():
        out = module(x)
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out.sum(), [x, *params])

    return train


class _First(torch.nn.Module):
    """The module's output sequence alone (``make_graphed_callables`` wants tensors out)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)[0]


def _rnnkit(cell, x):
    """rnnkit's cudnn path over time-major ``x`` from a zero state, f+b, eager and replayed from
    one CUDA graph of the forward and one of the backward (None and the error where the capture
    failed), and the replay's largest input-gradient difference from eager's."""
    lstm = isinstance(cell, rk.BasicLSTMCell)
    zeros = [torch.zeros(x.shape[1], cell.output_size, device=x.device)
             for _ in range(2 if lstm else 1)]
    params = list(cell.parameters())

    def fn(x, *state):
        s = LSTMStateTuple(*state) if lstm else state[0]
        return (run_cudnn(cell.sequence_params(), x, s)[0],)

    def eager():
        return torch.autograd.grad(fn(x, *zeros)[0].sum(), [x, *params])

    try:
        graph = graphs._Graph(fn, cell, [x, *zeros], params, True)
    except Exception as err:  # the probe's question: does the capture work at all
        return eager, None, f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"

    def replayed():
        out = graphs._Replay.apply(graph, x, *zeros, *params)[0]
        return torch.autograd.grad(out.sum(), [x, *params])

    diff = max(float((a - b).abs().max()) for a, b in zip(eager(), replayed(), strict=True))
    return eager, replayed, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "no CUDA device here\n")
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}; B32 T100, f+b ms (medians of {args.repeats})")
    for H in (64, 256):
        for kind in ("lstm", "gru"):
            module = getattr(torch.nn, kind.upper())(H, H).to(dev)
            x = torch.randn(100, 32, H, device=dev, requires_grad=True)
            rk.reset_default_graph()
            cell = rk.BasicLSTMCell(H) if kind == "lstm" else rk.GRUCell(H, reset_after=True)
            cell.ensure_built(H, torch.float32)
            cell.to(dev)
            eager, replayed, diff = _rnnkit(cell, x)
            cases = {"torch.nn eager": _torch(module, x), "rnnkit cudnn eager": eager}
            try:
                graphed = torch.cuda.make_graphed_callables(_First(module), (x,))
                cases["torch.nn graphed"] = _torch(graphed, x)
            except Exception as err:  # the probe's question: does the capture work at all
                print(f"H{H} {kind}: torch.nn capture failed: {type(err).__name__}: "
                      f"{(str(err).splitlines() or [''])[0]}")
            if replayed is None:
                print(f"H{H} {kind}: rnnkit capture failed: {diff}")
            else:
                cases["rnnkit cudnn graphed"] = replayed
                print(f"H{H} {kind}: replayed against eager, largest gradient difference "
                      f"{diff:.2e}")
            names = list(cases)
            for f in cases.values():
                f()
            ms = _interleaved([_synced(cases[n], dev) for n in names], args.repeats)
            print(f"H{H} {kind}: " + ", ".join(f"{n} {t:.3f}" for n, t in zip(names, ms,
                                                                            strict=True)))


if __name__ == "__main__":
    main()
