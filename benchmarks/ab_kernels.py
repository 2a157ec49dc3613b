"""The fused C kernels at several git revisions, in one process, timed interleaved with torch.nn.

``python benchmarks/ab_kernels.py --refs HEAD~1,HEAD --shape 1,500,256``

This machine moves between speed regimes that last seconds, so two separate runs can disagree
by more than a kernel change is worth. Here each revision's kernel library for the cell (its C
sources and headers in ``src/rnnkit/fast``) is built with rnnkit's own flags
(``rnnkit.fast.compiled``) and loaded side by side. The calls go round-robin, in reversed order
every other round. Each line is the median and the fastest of ``--reps`` calls, in ms.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import rnnkit as rk
from rnnkit.fast import compiled
from rnnkit.fast.library import library

ROOT = Path(__file__).resolve().parents[1]
CELLS = {
    "lstm": (lambda h: rk.BasicLSTMCell(h), lambda h: torch.nn.LSTM(h, h, batch_first=True)),
    "lstm_clip": (lambda h: rk.LSTMCell(h, cell_clip=3.0),
                  lambda h: torch.nn.LSTM(h, h, batch_first=True)),
    "gru_tf1": (lambda h: rk.GRUCell(h), lambda h: torch.nn.GRU(h, h, batch_first=True)),
    "gru": (lambda h: rk.GRUCell(h, reset_after=True),
            lambda h: torch.nn.GRU(h, h, batch_first=True)),
}


def build(spec: str, family: str, out_dir: Path) -> ctypes.CDLL:
    """The kernels of ``family`` at git revision ``spec`` (``"."``: the working tree;
    ``REF@FLAGS``: with ``FLAGS`` after rnnkit's, so ``.@-O2`` overrides its ``-O3``), built
    and loaded: the family's sources (``compiled.FAMILIES``), or before they were split by
    family (one library, ``lstm_kernel.c`` and ``gru_kernel.c``), all of them."""
    ref, _, extra = spec.partition("@")
    src = out_dir / "".join(c if c.isalnum() else "_" for c in spec)
    src.mkdir()
    fast = compiled.FAMILIES["lstm"][0].parent
    if ref == ".":
        names = [p.name for p in fast.iterdir() if p.suffix in (".c", ".h")]
    else:
        names = [Path(line).name for line in subprocess.run(
            ["git", "-C", str(ROOT), "ls-tree", "--name-only", ref,
             f"{fast.relative_to(ROOT).as_posix()}/"], check=True, capture_output=True,
            text=True).stdout.split() if line.endswith((".c", ".h"))]
    for name in names:
        rel = (fast / name).relative_to(ROOT)
        text = (fast / name).read_text() if ref == "." else subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:{rel.as_posix()}"], check=True,
            capture_output=True, text=True).stdout
        (src / name).write_text(text)
    sources = sorted(n for n in names if n.endswith(".c"))
    mine = [n for n in sources if n.startswith(family)]
    if any("rk_set_gemm" in (src / n).read_text() for n in mine):
        sources = mine  # else (before the split) one library of every source
    target = src / "kernels.so"
    subprocess.run([compiled._compiler(), *compiled.FLAGS, *extra.split(), "-shared",
                    *(str(src / n) for n in sources), "-o", str(target), *compiled.LIBS],
                   check=True)
    lib = ctypes.CDLL(str(target))
    compiled._declare(lib, family)
    lib.rk_set_gemm(ctypes.cast(library().dnnl_sgemm, ctypes.c_void_p))
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", default="HEAD,.", help="comma-separated git revisions; '.' is "
                    "the working tree; REF@FLAGS adds compiler flags")
    ap.add_argument("--shape", default="1,500,256", help="B,T,H")
    ap.add_argument("--cell", default="lstm", choices=list(CELLS))
    ap.add_argument("--reps", type=int, default=31)
    args = ap.parse_args()
    B, T, H = map(int, args.shape.split(","))
    make, make_peer = CELLS[args.cell]
    torch.manual_seed(0)
    cell, peer = make(H), make_peer(H)
    cell.ensure_built(H, torch.float32)
    family = compiled.family_of(cell.sequence_params().kind)
    with tempfile.TemporaryDirectory() as tmp:
        libs = {ref: build(ref, family, Path(tmp)) for ref in args.refs.split(",")}
        compiled.kernels(family)  # the library of record loaded too, so the switch below sticks
        x = torch.randn(B, T, H, requires_grad=True)
        g = torch.randn(B, T, H)

        def ours():
            return rk.dynamic_rnn(cell, x, fast=True, dtype=torch.float32)[0]

        def theirs():
            return peer(x)[0]

        cases = []
        for name, lib, run in [*((ref, lib, ours) for ref, lib in libs.items()),
                               ("torch.nn", None, theirs)]:
            def fwd(run=run):
                with torch.no_grad():
                    run()

            def train(run=run):
                (run() * g).sum().backward()

            cases += [(name, lib, "fwd", fwd), (name, lib, "f+b", train)]
        times: dict[tuple[str, str], list[float]] = {}
        for k in range(args.reps + 2):
            for name, lib, what, fn in (cases if k % 2 else cases[::-1]):
                if lib is not None:
                    compiled._state[family] = lib
                start = time.perf_counter()
                fn()
                if k >= 2:  # two warm-up rounds
                    times.setdefault((name, what), []).append(
                        1000 * (time.perf_counter() - start))
    print(f"{args.cell} B{B} T{T} H{H}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    for name, _, what, _ in cases:
        ts = times[name, what]
        print(f"{name:<16}{what:<5} median {statistics.median(ts):8.2f}  fastest {min(ts):8.2f}")


if __name__ == "__main__":
    main()
