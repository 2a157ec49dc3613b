"""Microseconds a short call takes, beside torch.nn in the same run: batch 1, 1 or 10 steps, 64
units, where a call's Python and launches are most of its time (streaming, decoding, serving one
request); then a cell's lone step, ``cell(x, state)``, as a hand-written decoder loop calls it,
against ``torch.nn.GRUCell``/``LSTMCell``.

``python benchmarks/small_calls.py [--device cpu|cuda] [--repeats 5] [--calls 300]``

Each row is the best of ``--repeats`` rounds of ``--calls`` calls (after 30 warm-up calls,
which on a GPU include the CUDA graphs' capture): ``fwd`` under ``torch.no_grad()``, ``f+b``
the outputs' sum and its gradients for the inputs and every weight, synchronized after each
round on a GPU. ``x`` is torch.nn's time for the same kind of cell (GRU or LSTM) over rnnkit's:
above 1, rnnkit is faster.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_rnn import CELLS as BENCH_CELLS
from bench_rnn import _peer, _rnnkit_case, _torch_case

import rnnkit as rk

H = 64
CELLS = ["GRU TF1 (reset before)", "GRU reset after", "LSTM (BasicLSTMCell)",
         "LSTM (Keras layer)"]  # bench_rnn's, each beside torch.nn's GRU or LSTM


def _time(fn, calls: int, repeats: int, dev: torch.device) -> float:
    """Best microseconds a call over ``repeats`` rounds of ``calls``."""
    for _ in range(30):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "no CUDA device here\n")
    print(f"torch {torch.__version__}, {dev}, threads {torch.get_num_threads()}; "
          f"B1 H{H}, microseconds a call (x = torch.nn / rnnkit)")
    print(f"{'T':<4}{'cell':<24}{'fwd us':>9}{'f+b us':>9}{'fwd x':>8}{'f+b x':>8}")
    for steps in (1, 10):
        x = torch.randn(1, steps, H, device=dev, requires_grad=True)
        peers = {}
        for kind in ("gru", "lstm"):
            fwd, train = _torch_case(_peer(kind, H).to(dev), x)
            peers[kind] = (_time(fwd, args.calls, args.repeats, dev),
                           _time(train, args.calls, args.repeats, dev))
            print(f"{steps:<4}{'torch.nn.' + kind.upper():<24}{peers[kind][0]:9.1f}"
                  f"{peers[kind][1]:9.1f}{1:8.2f}{1:8.2f}")
        for name in CELLS:
            make, kind = BENCH_CELLS[name]
            fwd, train = _rnnkit_case(make, x, "auto")
            f = _time(fwd, args.calls, args.repeats, dev)
            b = _time(train, args.calls, args.repeats, dev)
            print(f"{steps:<4}{name:<24}{f:9.1f}{b:9.1f}{peers[kind][0] / f:8.2f}"
                  f"{peers[kind][1] / b:8.2f}", flush=True)
    lone_steps(dev, max(args.calls // 3, 20), args.repeats)


STEP_CELLS = {  # name: (make(H), torch.nn cell kind)
    "GRUCell (TF1)": (lambda h: rk.GRUCell(h), "gru"),
    "GRUCell reset_after": (lambda h: rk.GRUCell(h, reset_after=True), "gru"),
    "BasicLSTMCell": (lambda h: rk.BasicLSTMCell(h), "lstm"),
    "MultiRNNCell of 2 GRUs": (lambda h: rk.MultiRNNCell([rk.GRUCell(h), rk.GRUCell(h)]),
                               "gru2"),
}
PEER_CELLS = {"gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell, "gru2": torch.nn.GRUCell}


def lone_steps(dev: torch.device, calls: int, repeats: int) -> None:
    """``cell(x, state)`` against torch.nn's cells (two in a row for the stack)."""
    print(f"\n{'B,H':<10}{'lone step':<24}{'fwd us':>9}{'f+b us':>9}{'fwd x':>8}{'f+b x':>8}")
    for batch, units in ((1, 256), (32, 256), (32, 512)):
        x = torch.randn(batch, units, device=dev, requires_grad=True)
        peers = {}
        for kind, make in PEER_CELLS.items():
            mods = [make(units, units).to(dev) for _ in range(2 if kind == "gru2" else 1)]
            h = torch.zeros(batch, units, device=dev)
            state = (h, h) if kind == "lstm" else h
            params = [t for m in mods for t in m.parameters()]

            def run(mods=mods, state=state, x=x):
                out = x
                for m in mods:
                    out = m(out, state)
                return out[0] if isinstance(out, tuple) else out

            peers[kind] = _pair(run, [x, *params], calls, repeats, dev)
        for name, (make_cell, kind) in STEP_CELLS.items():
            rk.reset_default_graph()
            cell = make_cell(units)
            cell.ensure_built(units, torch.float32)
            cell.to(dev)
            state = cell.zero_state(batch, torch.float32, device=dev)
            f, b = _pair(lambda cell=cell, state=state, x=x: cell(x, state)[0],
                         [x, *cell.parameters()], calls, repeats, dev)
            print(f"{f'{batch},{units}':<10}{name:<24}{f:9.1f}{b:9.1f}{peers[kind][0] / f:8.2f}"
                  f"{peers[kind][1] / b:8.2f}", flush=True)


def _pair(run, params, calls: int, repeats: int, dev: torch.device) -> tuple[float, float]:
    """``run()``'s microseconds under no_grad, and with the gradients of its sum."""
    def forward():
        with torch.no_grad():
            run()

    def train():
        torch.autograd.grad(run().sum(), params)

    return _time(forward, calls, repeats, dev), _time(train, calls, repeats, dev)


if __name__ == "__main__":
    main()
