"""The GPU round's benchmark scripts run, on the CPU with tiny shapes (``--device cpu``): a
script that breaks on a GPU machine costs the session's scarce device time. Their timings are
not checked (timings never go into tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"),
                                                       str(ROOT / "benchmarks")]))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_ab_steps_runs_every_column():
    out = _run("ab_steps.py", "--device", "cpu", "--repeats", "1", "--shapes", "4,5,8",
               "--fused-steps", "--cells", "LSTM cell_clip", "GRU TF1 (reset before)")
    header, *rows = [line for line in out.splitlines() if line.startswith(("B,T,H", "4,5,8"))]
    assert header.split()[3:6] == ["ops", "loops", "apart"] and len(rows) == 2


def test_profile_gpu_runs_its_cases():
    out = _run("profile_gpu.py", "--device", "cpu", "--calls", "1", "--top", "2", "--host",
               "--cases", "clip-h64-fwd", "torch-lstm-h64")
    assert "failed" not in out
    for case in ("clip-h64-fwd", "torch-lstm-h64"):
        line = next(line for line in out.splitlines() if line.startswith(case))
        assert "wall" in line and "kernels" in line
    assert "    py " in out and "    host " in out


def test_the_peers_record_names_the_cpu_generation():
    """``run_all.py``'s machine line carries the CPU's family, model and vector set (one model
    name covers CPUs whose matrix-product rates differ twofold)."""
    out = _run("run_all.py", "--help")
    assert "--out" in out
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    line = run_all._machine()
    if Path("/proc/cpuinfo").exists() and "cpu family" in Path("/proc/cpuinfo").read_text():
        assert "family " in line and " model " in line
    assert f"{os.cpu_count()} cores, " in line
