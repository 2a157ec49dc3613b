"""Scale figures: peak training memory against sequence length, with and without
``swap_memory``, and training throughput against batch size; writes ``benchmarks/SCALE.md``.

Memory is the growth of the process's peak resident set (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` just before the measured step) over its resident set at that moment,
for one forward and backward pass of ``dynamic_rnn`` on a warmed-up model; each point runs in a
fresh process so that no allocator state carries over. It counts everything the step allocates:
tensors saved for backward, autograd's graph, outputs and gradients.

    python benchmarks/bench_scale.py            # the full run (a few minutes)
    python benchmarks/bench_scale.py --quick    # small sizes, to check that it works
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import rnnkit as rk

CELLS = {"gru": rk.GRUCell, "lstm": rk.BasicLSTMCell}
HAS_FAST = "fast" in inspect.signature(rk.dynamic_rnn).parameters
PATHS = [False, "auto"] if HAS_FAST else [False]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _path_taken(cell, x: torch.Tensor, swap: bool, fast) -> str:
    if fast is False:
        return "reference"
    return rk.fast.explain(cell, x, swap_memory=swap).path


def _setup(kind: str, batch: int, steps: int, depth: int, units: int):
    rk.reset_default_graph()
    torch.manual_seed(0)
    cell = CELLS[kind](units)
    x = torch.randn(batch, steps, depth, requires_grad=True)
    return cell, x


def _train_step(cell, x: torch.Tensor, swap: bool, fast) -> None:
    kwargs = {"fast": fast} if HAS_FAST else {}
    out, _ = rk.dynamic_rnn(cell, x, swap_memory=swap, **kwargs)
    out.square().mean().backward()


def memory_probe(kind: str, steps: int, swap: bool, fast, batch: int, depth: int, units: int) -> dict:
    """Peak RSS growth (MiB) of one forward+backward in this process, after a warm-up step."""
    cell, x = _setup(kind, batch, steps, depth, units)
    _train_step(cell, x[:, :8].detach().requires_grad_(), swap, fast)  # loads kernels, builds
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    _train_step(cell, x, swap, fast)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"kind": kind, "steps": steps, "swap": swap, "path": _path_taken(cell, x, swap, fast),
            "peak_mib": (peak - base) / 1024, "seconds": seconds,
            "outputs_mib": batch * steps * (units + depth) * 4 / 2**20}


def _probe_in_fresh_process(**config) -> dict:
    done = subprocess.run([sys.executable, __file__, "--probe", json.dumps(config)],
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:  # recorded in the table, so one failing path does not hide the rest
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {**config, "path": "auto" if config["fast"] else "reference", "error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(kind: str, batch: int, fast, steps: int, depth: int, units: int, reps: int) -> dict:
    """Training tokens per second (forward+backward), from the fastest of ``reps`` timed steps
    (on a shared machine the fastest is the least disturbed)."""
    cell, x = _setup(kind, batch, steps, depth, units)
    _train_step(cell, x, False, fast)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        _train_step(cell, x, False, fast)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"kind": kind, "batch": batch, "path": _path_taken(cell, x, False, fast),
            "seconds": best, "tokens_per_s": batch * steps / best}


def _machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = platform.processor()
    head = "\n".join(lscpu.splitlines()[:20])
    return (f"```\n{head}\n```\n\nPython {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numpy {np.__version__}, rnnkit {rk.__version__}; "
            f"{platform.platform()}.")


def _memory_table(rows: list[dict]) -> str:
    lines = ["| cell | T | swap_memory | path | peak growth MiB | inputs+outputs MiB | seconds (one pass) |",
             "|---|---:|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['steps']} | {r['swap']} | {r['path']} | failed: "
                         f"{r['error']} | | |")
            continue
        lines.append(f"| {r['kind']} | {r['steps']} | {r['swap']} | {r['path']} | "
                     f"{r['peak_mib']:.1f} | {r['outputs_mib']:.1f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def _swap_summary(rows: list[dict]) -> str:
    """One sentence per cell: the peak with swap_memory over the peak without, at the longest T."""
    lines = []
    for kind in CELLS:
        mine = [r for r in rows if r["kind"] == kind and r["path"] == "reference" and "error" not in r]
        longest = max(r["steps"] for r in mine)
        plain, swap = (next(r for r in mine if r["steps"] == longest and r["swap"] is s)
                       for s in (False, True))
        slope = ((plain["peak_mib"] - swap["peak_mib"]) / longest) * 1024
        lines.append(f"- {kind}, T={longest}: swap_memory peak {swap['peak_mib']:.0f} MiB against "
                     f"{plain['peak_mib']:.0f} MiB ({swap['peak_mib'] / plain['peak_mib']:.2f}x), "
                     f"{slope:.0f} KiB less per step.")
    return "\n".join(lines)


def _throughput_table(rows: list[dict]) -> str:
    lines = ["| cell | batch | path | seconds / step | tokens / s |", "|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['batch']} | {r['path']} | {r['seconds']:.4f} | "
                     f"{r['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it runs")
    parser.add_argument("--out", default=str(Path(__file__).with_name("SCALE.md")))
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(memory_probe(**json.loads(args.probe))))
        return
    lengths = [100, 1000] if args.quick else [100, 1000, 3000, 10000]
    batches = [1, 8] if args.quick else [1, 4, 16, 64, 256]
    mem = dict(batch=4, depth=8, units=32) if args.quick else dict(batch=16, depth=16, units=128)
    small = dict(batch=2, depth=8, units=16)
    small_steps = 1000 if args.quick else 10000
    tput = dict(steps=20 if args.quick else 100, depth=64, units=128, reps=2 if args.quick else 7)
    load_before = os.getloadavg()
    started = time.time()
    memory = []
    for kind in CELLS:
        for steps in lengths:
            for swap in (False, True):
                for fast in PATHS:
                    memory.append(_probe_in_fresh_process(kind=kind, steps=steps, swap=swap,
                                                          fast=fast, **mem))
                    print(memory[-1], flush=True)
    tiny = [_probe_in_fresh_process(kind="gru", steps=small_steps, swap=swap, fast=False, **small)
            for swap in (False, True)]
    speed = []
    for kind in CELLS:
        for batch in batches:
            for fast in PATHS:
                speed.append(throughput(kind, batch, fast, **tput))
                print(speed[-1], flush=True)
    load_after = os.getloadavg()
    text = f"""# Scale figures

Written by `python benchmarks/bench_scale.py{' --quick' if args.quick else ''}` on
{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} in {time.time() - started:.0f} s.
The machine is shared with other jobs (1-minute load average {load_before[0]:.1f} before the run,
{load_after[0]:.1f} after, on {os.cpu_count()} logical CPUs), so the timings are noisy; the memory
figures are not timing-dependent.

## Machine

{_machine()}

## Peak training memory against sequence length

One forward and backward pass of `dynamic_rnn` (loss: mean of squared outputs), batch
{mem['batch']}, input depth {mem['depth']}, {mem['units']} units, float32. *Peak growth* is the rise
of the process's peak resident set over its resident set just before the pass (each row in a
fresh process, after a warm-up pass). *inputs+outputs* is the size of the input gradient and
the outputs, which any method must hold. `swap_memory=True` recomputes chunks of ~sqrt(T) steps
in the backward pass (`rnnkit.unroll.scan`); *path* is the unroll that ran (`reference` is the
Python time loop; `onednn` the fused fast path where it is eligible).

{_memory_table(memory)}

{_swap_summary(memory)}

Why swap_memory still grows with T: the outputs (and their gradient) are needed for all T steps
whatever the method, and torch's non-reentrant checkpoint, which `scan` uses so that
`torch.autograd.grad` keeps working, drops each step's saved tensors but keeps each step's
autograd graph: some 20 KiB per step whatever the sizes. What it drops are the per-step
activations, so the saving grows with batch x units; for the tiny model below it saves nothing.

The same measurement for a tiny model (GRU, batch {small['batch']}, input depth {small['depth']},
{small['units']} units), where per-step bookkeeping rather than tensor data dominates:

{_memory_table(tiny)}

## Training throughput against batch size

Forward and backward of `dynamic_rnn` over T={tput['steps']} steps, input depth {tput['depth']},
{tput['units']} units, float32; the fastest of {tput['reps']} timed steps after a warm-up step. Tokens
are batch x T per step.

{_throughput_table(speed)}
"""
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
