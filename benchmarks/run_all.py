"""Every peer side by side, each in its own process, in one run: ``python benchmarks/run_all.py``.

Runs ``benchmarks/peers.py`` for each (peer, cell) pair and a large float32 matmul, then prints
one table per cell and mode (forward, forward+backward): milliseconds per peer, rnnkit's speed-up
over the best peer and over torch.nn, and rnnkit's GFLOP/s as a share of the matmul's, then
issue 10's targets read off those figures (the worst case of each, met or not). With ``--out
FILE`` the tables (with the machine and versions) are written as Markdown too; ``--reread FILE``
prints the targets of such a record again without running anything.

``--rounds R`` runs every (peer, cell) pair R times, the peers visited in a rotated order each
round, and keeps each one's fastest round: on a shared machine a burst of load from elsewhere
falls on one process's run, and between two single runs an hour apart the same configuration
was seen to move by 1.7x. The widest spread between rounds is printed with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import allocator  # noqa: E402
from peers import SHAPES  # noqa: E402

PEERS = ["rnnkit", "rnnkit-ref", "torch", "keras-torch", "keras-tf", "tf1", "flax"]
CELLS = ["lstm", "gru_keras", "gru_tf1", "lstm_peep_proj", "lstm_clip"]
GATES = {"lstm": 4, "gru_keras": 3, "gru_tf1": 3, "lstm_peep_proj": 4, "lstm_clip": 4}


def _peer(peer: str, cell: str, shapes: list[str], reps: int, malloc: str = "glibc") -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               **(allocator.ENV if malloc == "steady" else {}))
    proc = subprocess.run([sys.executable, str(HERE / "peers.py"), peer, cell,
                           "--shapes", ",".join(shapes), "--reps", str(reps)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {s: {"skip": f"failed: {last[0][:120]}"} for s in shapes}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge(best: dict, spread: dict, key: tuple, run: dict) -> None:
    """Fold one round's results (shape -> {mode: ms} or {"skip": why}) into ``best`` (the
    fastest round of each shape and mode) and ``spread`` ((fastest, slowest) per key + shape +
    mode)."""
    for shape, entry in run.items():
        kept = best.setdefault(shape, {})
        if "skip" in entry or "note" in entry:
            for field in ("skip", "note"):
                if field in entry:
                    kept.setdefault(field, entry[field])
        if "first_call" in entry:  # the slowest first call of any round
            kept["first_call"] = max(kept.get("first_call", 0.0), entry["first_call"])
        for mode in ("fwd", "fwd_bwd"):
            if mode not in entry:
                continue
            kept[mode] = min(kept.get(mode, entry[mode]), entry[mode])
            lo, hi = spread.get((*key, shape, mode), (entry[mode], entry[mode]))
            spread[(*key, shape, mode)] = (min(lo, entry[mode]), max(hi, entry[mode]))


def flops(cell: str, shape: tuple, mode: str) -> float:
    """Multiply-adds x 2 of the gate matmuls (input and recurrent); backward counted as 2x."""
    B, T, H = shape
    total = 2 * B * T * (H + H) * GATES[cell] * H
    return total * (3 if mode == "fwd_bwd" else 1)


def _cpu_generation() -> str:
    """The CPU's family and model numbers and its widest vector set, from ``/proc/cpuinfo``
    (Linux; empty elsewhere): one model name covers CPUs whose matrix-product rates differ
    twofold (an AMD EPYC of family 25, Zen 4, runs AVX-512 on 256-bit units; family 26, Zen 5,
    on 512-bit ones), and the ratios to peers move with that rate."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n", 1)[0]
    except OSError:
        return ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"))
                if flag in flags), None)
    parts = [f"family {fields['cpu family']} model {fields['model']}"] \
        if "cpu family" in fields and "model" in fields else []
    return f" ({', '.join(parts + ([isa] if isa else []))})" if parts or isa else ""


def _machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lscpu if "Model name" in line), "?")
    except OSError:
        model = "?"
    model += _cpu_generation()
    import importlib.metadata as md

    versions = []
    for pkg in ("torch", "tensorflow-cpu", "keras", "tf-keras", "jax", "flax", "onednn-cpu-gomp"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return (f"{model}, {os.cpu_count()} cores, {platform.python_version()}; "
            + ", ".join(versions))


def tables(results: dict, gflops: float, shapes: list[str]) -> str:
    lines = []
    for cell in CELLS:
        for mode in ("fwd", "fwd_bwd"):
            lines += [f"\n### {cell}, {'forward' if mode == 'fwd' else 'forward+backward'} (ms)\n",
                      "| shape | " + " | ".join(PEERS) + " | rnnkit vs best peer | vs torch.nn "
                      f"{'LSTM ' if cell == 'lstm_clip' else ''}| rnnkit % of matmul |",
                      "|---" * (len(PEERS) + 4) + "|"]
            for shape in shapes:
                row, times = [], {}
                for peer in PEERS:
                    r = results[peer][cell].get(shape, {})
                    if mode in r:
                        times[peer] = r[mode]
                        row.append(f"{r[mode]:.1f}")
                    else:
                        row.append("—")
                ours = times.get("rnnkit")
                others = {p: t for p, t in times.items() if not p.startswith("rnnkit")}
                best = min(others.values()) if others else None
                vs_best = f"{best / ours:.2f}x" if ours and best else "—"
                # torch.nn has no clipped LSTM: the target compares with its plain LSTM
                torch_cell = "lstm" if cell == "lstm_clip" else cell
                torch_time = results["torch"][torch_cell].get(shape, {}).get(mode)
                vs_torch = f"{torch_time / ours:.2f}x" if ours and torch_time else "—"
                share = (f"{flops(cell, SHAPES[shape], mode) / (ours / 1e3) / 1e9 / gflops:.0%}"
                         if ours else "—")
                lines.append(f"| {shape} | " + " | ".join(row) + f" | {vs_best} | {vs_torch} | {share} |")
    return "\n".join(lines)


def _ratio(results: dict, peers, cell: str, shape: str, against: str | None = None):
    """The fastest of ``peers``' f+b time on ``against`` (default ``cell``) over rnnkit's on
    ``cell`` at ``shape``, and that peer; (None, None) where either is missing."""
    ours = results["rnnkit"][cell].get(shape, {}).get("fwd_bwd")
    times = {p: results[p][against or cell].get(shape, {}).get("fwd_bwd") for p in peers}
    times = {p: t for p, t in times.items() if t}
    if not ours or not times:
        return None, None
    peer = min(times, key=times.get)
    return times[peer] / ours, peer


def targets(results: dict, gflops: float, shapes: list[str]) -> str:
    """Issue 10's CPU targets read off this run's forward+backward figures, as a Markdown table
    (target, the worst case measured, met or not). The variable-length batch padded is the
    full-length batch of its shape (B32 T100 H256), which the run times too."""
    rows = []

    def add(target: str, cases: list[tuple[str, float | None, float, str]],
            percent: bool = False) -> None:
        """cases: (label, ratio or None, needed, what the ratio is against)."""
        found = [(ratio, label, need, what) for label, ratio, need, what in cases if ratio]
        if not found:
            rows.append(f"| {target} | not measured | — |")
            return
        worst = min(found, key=lambda f: f[0] / f[2])
        ratio, label, _, what = worst
        met = all(r >= need for r, _, need, _ in found)
        figure = f"{ratio:.0%}" if percent else f"{ratio:.2f}x"
        rows.append(f"| {target} | {figure} ({label}{', ' + what if what else ''}) | "
                    f"{'yes' if met else 'no'} |")

    others = [s for s in shapes if s != "b32_t100_h256"]
    rows_torch = []
    for shape in ("b32_t100_h256", *others):
        r, _ = _ratio(results, ["torch"], "lstm", shape)
        rows_torch.append((shape, r, 1.3 if shape == "b32_t100_h256" else 1.1, ""))
    add("LSTM against torch.nn.LSTM: 1.3x at B32 T100 H256, 1.1x elsewhere", rows_torch)
    for cell in ("gru_keras", "gru_tf1"):
        add(f"{cell} against torch.nn.GRU: 1.5x, 2.5x at H64 and B1",
            [(s, _ratio(results, ["torch"], cell, s, "gru_keras")[0],
              2.5 if s in ("b32_t100_h64", "b1_t500_h256") else 1.5, "") for s in shapes])
        best = [p for p in PEERS if not p.startswith("rnnkit")]
        add(f"{cell} against the best peer's same GRU: 1.2x",
            [_case(s, _ratio(results, best, cell, s), 1.2) for s in shapes])
    for cell in ("lstm", "gru_tf1"):
        for peer, name in (("tf1", "TF1 dynamic_rnn"), (("keras-tf", "keras-torch"), "Keras 3")):
            group = [peer] if isinstance(peer, str) else list(peer)
            add(f"{cell} against {name}, same math: 3x",
                [_case(s, _ratio(results, group, cell, s), 3.0) for s in shapes])
    add("lstm_clip within 1.5x of torch.nn.LSTM (no clip)",
        [(s, _ratio(results, ["torch"], "lstm_clip", s, "lstm")[0], 1 / 1.5, "") for s in shapes])
    shares = []
    for cell in CELLS:
        for shape in ("b32_t100_h256", "b32_t100_h512"):
            ours = results["rnnkit"][cell].get(shape, {}).get("fwd_bwd")
            if ours and shape in shapes:
                share = flops(cell, SHAPES[shape], "fwd_bwd") / (ours / 1e3) / 1e9 / gflops
                shares.append((f"{cell} {shape}", share, 0.7, ""))
    add("70% of the matmul rate at B32, H >= 256", shares, percent=True)
    firsts = [(c, s, r["first_call"]) for c in CELLS for s, r in results["rnnkit"][c].items()
              if "first_call" in r]
    if firsts:
        cell, shape, ms = max(firsts, key=lambda f: f[2])
        rows.append(f"| first call of a new shape under 2 s | {ms / 1e3:.2f} s, the slowest "
                    f"({cell} {shape}) | {'yes' if ms < 2000 else 'no'} |")
    else:
        rows.append("| first call of a new shape under 2 s | not recorded | — |")
    # the same batch padded costs what the full-length batch of its shape does (T100 H256)
    padded = []
    for cell in CELLS:
        full = results["rnnkit"][cell].get("b32_t100_h256", {}).get("fwd_bwd")
        varlen = results["rnnkit"][cell].get("varlen_b32_h256", {}).get("fwd_bwd")
        padded.append((cell, full / varlen if full and varlen else None, 1.5,
                       "padded over packed"))
    add("variable length 1.5x faster than the same batch padded (B32 T100 H256)", padded)
    return ("\n### Issue 10's targets, read off this run (forward+backward)\n\n"
            "Each line: the case nearest to (or furthest below) its target.\n\n"
            "| target | worst case | met? |\n|---|---|---|\n" + "\n".join(rows))


def _case(label: str, pair: tuple, need: float) -> tuple:
    """A ``targets`` case from ``_ratio``'s (ratio, peer)."""
    ratio, peer = pair
    return label, ratio, need, f"against {peer}" if peer else ""


def reread(text: str) -> tuple[dict, float, list[str]]:
    """``(results, gflops, shapes)`` back from a recorded run's Markdown (``--out``): the
    tables' figures (ms, as printed) and the faster matmul rate, to read targets off a file."""
    rates = re.search(r"GFLOP/s: ([^(]*)\(", text)
    if rates is None:
        raise ValueError("no 'float32 matmul ... GFLOP/s:' line: not a run_all.py record")
    gflops = max(float(part.split()[-1]) for part in rates.group(1).split(","))
    results = {p: {c: {} for c in CELLS} for p in PEERS}
    shapes: list[str] = []
    for cell, mode, body in re.findall(r"### (\w+), (forward\+backward|forward) \(ms\)\n\n"
                                       r"\| shape \|[^\n]*\n\|[-|]*\n((?:\|[^\n]*\n?)*)", text):
        key = "fwd_bwd" if mode == "forward+backward" else "fwd"
        for line in body.strip().splitlines():
            shape, *cells = [c.strip() for c in line.strip("|").split("|")]
            if shape not in shapes:
                shapes.append(shape)
            for peer, value in zip(PEERS, cells, strict=False):
                if value not in ("—", ""):
                    results[peer][cell].setdefault(shape, {})[key] = float(value)
    return results, gflops, shapes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="run each peer this many times, round-robin; keep its fastest round")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--out", type=Path, default=None, help="also write Markdown here")
    parser.add_argument("--malloc", choices=["glibc", "steady"], default="glibc",
                        help="steady: each peer's glibc keeps large freed buffers for reuse "
                             "(benchmarks/allocator.py)")
    parser.add_argument("--reread", type=Path, default=None,
                        help="print the targets read off a recorded run (--out's Markdown); "
                             "runs nothing")
    args = parser.parse_args()
    if args.reread:
        print(targets(*reread(args.reread.read_text())))
        return 0
    shapes = args.shapes.split(",")
    matmul = _peer("matmul", "-", shapes, 1)
    gflops = max(matmul.values())
    results = {p: {c: {} for c in CELLS} for p in PEERS}
    spread: dict = {}
    peers = args.peers.split(",")
    for rnd in range(args.rounds):
        order = peers[rnd % len(peers):] + peers[:rnd % len(peers)]
        for cell in args.cells.split(","):
            for peer in order:
                print(f"round {rnd + 1}/{args.rounds}: running {peer} {cell} ...",
                      file=sys.stderr, flush=True)
                merge(results[peer][cell], spread, (peer, cell),
                      _peer(peer, cell, shapes, args.reps, args.malloc))
    widest = max(spread.items(), key=lambda kv: kv[1][1] / kv[1][0], default=None)
    widest_text = ("" if widest is None or args.rounds < 2 else
                   f" Widest spread between rounds: {widest[1][1] / widest[1][0]:.2f}x "
                   f"({' / '.join(widest[0])}: {widest[1][0]:.1f} to {widest[1][1]:.1f} ms).")
    skips = sorted({f"{p} / {c}: {r.get('skip') or r.get('note')}" for p in PEERS for c in CELLS
                    for r in results[p][c].values() if "skip" in r or "note" in r})
    rates = ", ".join(f"{name} {rate:.0f}" for name, rate in matmul.items())
    text = (f"Machine: {_machine()}\n\nfloat32 matmul 2048^3, GFLOP/s: {rates} "
            "(2 threads, best of 10; the share of matmul below is of the faster). "
            f"Allocator: glibc, {args.malloc} (benchmarks/allocator.py). "
            f"Each figure: the fastest of {args.rounds} rounds (every peer once per round, in a "
            f"rotated order), each round the median of {args.reps} runs after a warm-up."
            f"{widest_text} Batch-major inputs, "
            "input depth = H. Forward+backward: gradients of sum(outputs * g), g a fixed random array, "
            "with respect to the inputs and all trainable weights. Keras 3 layers run with use_cudnn=False "
            "(the generic loop); keras-torch runs eagerly, keras-tf inside tf.function without XLA "
            "(model.fit's jit_compile='auto' on a machine without a GPU), tf1 in a graph session, flax "
            "under jax.jit. For lstm_clip, 'vs torch.nn LSTM' compares with torch.nn.LSTM without "
            "clipping (torch has none) at the same shape.\n"
            + tables(results, gflops, shapes) + "\n" + targets(results, gflops, shapes)
            + "\n\nNot measured (the peer lacks the math, or failed):\n\n"
            + "\n".join(f"- {s}" for s in skips) + "\n")
    print(text)
    if args.out:
        args.out.write_text("# Peers side by side (benchmarks/run_all.py)\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
