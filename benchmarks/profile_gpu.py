"""Where a GPU call's time goes: host, kernels and the gaps between them, for the graph path.

    python benchmarks/profile_gpu.py [--calls 5] [--top 6] [--cases NAME ...] [--host]
                                     [--device cuda]

For each case (a cell from ``bench_rnn.CELLS`` or torch.nn's module, at a shape, forward or
forward+backward, optionally with switches of ``rnnkit.fast.steps`` set while it is captured),
after three warm-up calls (eager, capture, replay) it prints per call:

- ``wall``: the call and a wait for the GPU, median of ``--calls`` (ms);
- ``host``: the call alone, the GPU drained before it (ms); near ``wall``, the host is the bound;
- ``kernels``: kernels and copies the GPU ran, from torch's profiler (CUDA graphs' nodes
  included);
- ``busy``: the GPU's time inside them (their union, ms), and ``span``, first start to last end;
  ``span - busy`` is the GPU waiting between them, on launches or on the host;
- the ``--top`` kernels by total time: count per call, microseconds per call;
- with ``--host``, where the host's time goes: torch's ops by their own CPU time, and Python's
  functions by their own time (``cProfile``; its overhead inflates these).

Needs a CUDA device; ``--device cpu`` runs the same on the CPU, its "kernels" torch's CPU ops (a
smoke test of the script). Timings never go into tests; this is a tool for a device session.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch
from bench_rnn import CELLS, _peer, _rnnkit_case, _torch_case
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from rnnkit.fast import steps

# name: (cell or "torch.nn <kind>", B, T, H, "fwd" | "f+b", switches of steps)
CASES = {
    "torch-lstm-h64": ("torch.nn lstm", 32, 100, 64, "f+b", {}),
    "torch-lstm-h64-fwd": ("torch.nn lstm", 32, 100, 64, "fwd", {}),
    "lstm-h64": ("LSTM (BasicLSTMCell)", 32, 100, 64, "f+b", {}),
    "lstm-h64-fwd": ("LSTM (BasicLSTMCell)", 32, 100, 64, "fwd", {}),
    "gru-h64": ("GRU reset after", 32, 100, 64, "f+b", {}),
    "gru-h64-fwd": ("GRU reset after", 32, 100, 64, "fwd", {}),
    "torch-gru-h64": ("torch.nn gru", 32, 100, 64, "f+b", {}),
    "torch-gru-h64-fwd": ("torch.nn gru", 32, 100, 64, "fwd", {}),
    "ln-h64-fwd": ("LSTM layer norm", 32, 100, 64, "fwd", {}),
    "tf1gru-h64": ("GRU TF1 (reset before)", 32, 100, 64, "f+b", {}),
    "tf1gru-h64-fwd": ("GRU TF1 (reset before)", 32, 100, 64, "fwd", {}),
    "ln-h64": ("LSTM layer norm", 32, 100, 64, "f+b", {}),
    "torch-gru-h256": ("torch.nn gru", 32, 100, 256, "f+b", {}),
    "tf1gru-h256": ("GRU TF1 (reset before)", 32, 100, 256, "f+b", {}),
}

for _h in (64, 256, 512):  # a plain LSTM's forward steps: products apart, or inside the kernels
    CASES[f"clip-h{_h}"] = ("LSTM cell_clip", 32, 100, _h, "f+b", {})
    CASES[f"clip-h{_h}-fwd"] = ("LSTM cell_clip", 32, 100, _h, "fwd", {})
    CASES[f"clip-h{_h}-fwd-apart"] = ("LSTM cell_clip", 32, 100, _h, "fwd",
                                      {"FUSED_STEP_UNITS": 0})
    for _k in (32, 64):
        CASES[f"clip-h{_h}-fwd-fused-k{_k}"] = ("LSTM cell_clip", 32, 100, _h, "fwd",
                                                {"FUSED_STEP_UNITS": 1 << 16, "STEP_K": _k})


def _case(name: str, dev: torch.device):
    cell, B, T, H, mode, switches = CASES[name]
    x = torch.randn(B, T, H, device=dev, requires_grad=True)
    if cell.startswith("torch.nn "):
        forward, train = _torch_case(_peer(cell.split()[1], H).to(dev), x)
        return forward if mode == "fwd" else train
    saved = {k: getattr(steps, k) for k in switches}
    for k, v in switches.items():  # read when the loop is captured
        setattr(steps, k, v)
    try:
        forward, train = _rnnkit_case(CELLS[cell][0], x, True)
        fn = forward if mode == "fwd" else train
        for _ in range(3):  # eager, capture, replay
            fn()
    finally:
        for k, v in saved.items():
            setattr(steps, k, v)
    return fn


def _union(spans: list[tuple[float, float]]) -> float:
    busy, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(name: str, dev: torch.device, calls: int, top: int, host: bool = False) -> None:
    fn = _case(name, dev)
    for _ in range(2):
        fn()
    _sync(dev)
    walls, hosts = [], []
    for _ in range(calls):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        _sync(dev)
        t2 = time.perf_counter()
        hosts.append(t1 - t0)
        walls.append(t2 - t0)
    on_gpu = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        _sync(dev)
    kind = DeviceType.CUDA if on_gpu else DeviceType.CPU
    gpu = [e for e in prof.events() if e.device_type == kind]
    spans = [(e.time_range.start, e.time_range.end) for e in gpu]
    busy = _union(spans) / calls
    span = (max(b for _, b in spans) - min(a for a, _ in spans)) / calls if spans else 0.0
    by_name: dict[str, list[float]] = {}
    for e in gpu:
        by_name.setdefault(e.name, []).append(e.time_range.end - e.time_range.start)
    print(f"{name:<22}wall {statistics.median(walls) * 1e3:6.3f} ms  host "
          f"{statistics.median(hosts) * 1e3:6.3f} ms  kernels {len(gpu) / calls:6.1f}  busy "
          f"{busy / 1e3:6.3f} ms  span {span / 1e3:6.3f} ms", flush=True)
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    for kname, times in ranked:
        print(f"    {len(times) / calls:6.1f} x {statistics.mean(times):7.2f} us = "
              f"{sum(times) / calls:8.1f} us/call  {kname[:90]}")
    if host:
        ops = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:top * 2]:
            print(f"    host {e.count / calls:6.1f} x = {e.self_cpu_time_total / calls:8.1f} "
                  f"us/call  {e.key[:80]}")
        stats = cProfile.Profile()
        rounds = 20 * calls
        stats.runcall(lambda: [fn() for _ in range(rounds)])
        _sync(dev)
        rows = pstats.Stats(stats).stats.items()
        for (path, line, func), (_, ncalls, own, cum, _) in sorted(rows, key=lambda r: -r[1][2])[
                :top * 3]:
            print(f"    py {ncalls / rounds:6.1f} x = {own / rounds * 1e6:8.1f} us/call own, "
                  f"{cum / rounds * 1e6:8.1f} with callees  {path.split('/')[-1]}:{line} {func}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--host", action="store_true", help="where the host's time goes")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "no CUDA device here\n")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, fused steps: {steps.load_error() or 'Triton loaded'}")
    for name in args.cases:
        try:
            measure(name, dev, args.calls, args.top, args.host)
        except Exception as err:  # one case's failure does not hide the others
            print(f"{name:<22}failed: {type(err).__name__}: {err}", flush=True)


if __name__ == "__main__":
    main()
