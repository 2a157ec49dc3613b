"""Seconds for a machine's first call: one forward+backward of a shape, in a new process, with
an empty kernel cache (the fused kernels built, if the call takes them) and then cached.

``python benchmarks/first_call.py [--repeats 3]``

Each cell's call runs in its own interpreter (``rnnkit`` and torch already imported when the
clock starts, as in a user's program): once with ``RNNKIT_CACHE`` an empty directory, so the
call pays whatever the dispatch loads for it (oneDNN, or the C compiler building the fused
kernels' library of the cell's family), then once more on the filled cache. B32 T100 f+b, as
issue 10's "first call of a new shape" target (2 s). Medians of ``--repeats`` runs each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CELLS = {
    "BasicLSTMCell(256)": "rk.BasicLSTMCell(256)",
    "LSTMCell(256, cell_clip=3.0)": "rk.LSTMCell(256, cell_clip=3.0)",
    "GRUCell(256, reset_after=True)": "rk.GRUCell(256, reset_after=True)",
    "GRUCell(512)": "rk.GRUCell(512)",
    "BasicLSTMCell(256), lengths 10..100": "rk.BasicLSTMCell(256)",
}

CALL = """
import sys, time, torch
import rnnkit as rk
cell = {make}
H = cell.output_size
x = torch.randn(32, 100, H, requires_grad=True)
lengths = torch.randint(10, 101, (32,)) if {varlen} else None
start = time.perf_counter()
out, _ = rk.dynamic_rnn(cell, x, sequence_length=lengths, dtype=torch.float32)
out.sum().backward()
took = time.perf_counter() - start
print(rk.fast.explain(cell, x, sequence_length=lengths).path, took)
"""


def _run(make: str, varlen: bool, cache: str) -> tuple[str, float]:
    env = {**os.environ, "RNNKIT_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", CALL.format(make=make, varlen=varlen)],
                         env=env, check=True, capture_output=True, text=True).stdout.split()
    return out[-2], float(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", nargs="*", default=list(CELLS), choices=list(CELLS))
    args = parser.parse_args()
    print(f"{'cell (B32 T100 f+b)':<38}{'path':<9}{'empty cache':>12}{'cached':>9}  (s)")
    for name in args.cells:
        make = CELLS[name]
        empty, cached, path = [], [], "?"
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                path, took = _run(make, "lengths" in name, cache)
                empty.append(took)
                cached.append(_run(make, "lengths" in name, cache)[1])
        print(f"{name:<38}{path:<9}{statistics.median(empty):>12.2f}"
              f"{statistics.median(cached):>9.2f}")


if __name__ == "__main__":
    main()
