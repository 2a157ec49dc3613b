"""The GPU round's benchmark scripts run, on the CPU with tiny shapes (``--device cpu``): a
script that breaks on a GPU machine costs the session's scarce device time. Their timings are
not checked (timings never go into tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tf_oracle import requires_tf

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
    assert "--reread" in out
    line = _run_all()._machine()
    if Path("/proc/cpuinfo").exists() and "cpu family" in Path("/proc/cpuinfo").read_text():
        assert "family " in line and " model " in line
    assert f"{os.cpu_count()} cores, " in line


def _run_all():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return run_all


def test_targets_are_read_off_a_run_and_off_its_record():
    """``run_all.targets`` judges issue 10's targets by the worst case; ``reread`` gets the same
    figures back from the Markdown record (synthetic figures: no timing here)."""
    run_all = _run_all()
    shapes = ["b32_t100_h64", "b32_t100_h256"]
    fb = {  # (peer, cell) -> f+b ms at each shape
        ("rnnkit", "lstm"): (10.0, 20.0), ("torch", "lstm"): (12.0, 25.0),  # 1.2x, 1.25x
        ("rnnkit", "gru_keras"): (4.0, 10.0), ("torch", "gru_keras"): (12.0, 20.0),
        ("flax", "gru_keras"): (6.0, 30.0),
        ("rnnkit", "gru_tf1"): (4.0, 10.0), ("tf1", "gru_tf1"): (20.0, 29.0),  # 2.9x at H256
        ("keras-tf", "gru_tf1"): (20.0, 40.0), ("tf1", "lstm"): (40.0, 80.0),
        ("keras-tf", "lstm"): (40.0, 80.0), ("keras-torch", "lstm"): (50.0, 50.0),  # 2.5x
        ("rnnkit", "lstm_clip"): (11.0, 26.0),
    }
    results = {p: {c: {} for c in run_all.CELLS} for p in run_all.PEERS}
    for (peer, cell), times in fb.items():
        for shape, ms in zip(shapes, times, strict=True):
            results[peer][cell][shape] = {"fwd": ms / 3, "fwd_bwd": ms}
    results["rnnkit"]["lstm"]["b32_t100_h64"]["first_call"] = 150.0
    record = ("Machine: test\n\nfloat32 matmul 2048^3, GFLOP/s: torch 100, onednn 200 (2 "
              "threads)\n" + run_all.tables(results, 200.0, shapes))
    again, gflops, shapes_again = run_all.reread(record)
    assert gflops == 200.0 and shapes_again == shapes
    assert again["tf1"]["gru_tf1"]["b32_t100_h256"] == {"fwd": round(29.0 / 3, 1),
                                                        "fwd_bwd": 29.0}
    rows = {line.split(" | ")[0].strip("| "): line
            for line in run_all.targets(results, 200.0, shapes).splitlines()
            if line.startswith("| ") and " | " in line}
    lstm = rows["LSTM against torch.nn.LSTM: 1.3x at B32 T100 H256, 1.1x elsewhere"]
    assert "1.25x (b32_t100_h256)" in lstm and lstm.endswith("| no |")
    assert rows["gru_tf1 against TF1 dynamic_rnn, same math: 3x"].endswith("| no |")
    assert "2.90x (b32_t100_h256, against tf1)" in rows[
        "gru_tf1 against TF1 dynamic_rnn, same math: 3x"]
    keras = rows["lstm against Keras 3, same math: 3x"]
    assert "2.50x (b32_t100_h256, against keras-torch)" in keras and keras.endswith("| no |")
    assert rows["lstm against TF1 dynamic_rnn, same math: 3x"].endswith("| yes |")
    assert rows["gru_keras against the best peer's same GRU: 1.2x"].endswith("| yes |")
    assert "0.96x" in rows["lstm_clip within 1.5x of torch.nn.LSTM (no clip)"]
    assert "0.15 s" in rows["first call of a new shape under 2 s"]
    assert rows["gru_keras against torch.nn.GRU: 1.5x, 2.5x at H64 and B1"].endswith("| yes |")
    assert "not measured" in rows[
        "variable length 1.5x faster than the same batch padded (B32 T100 H256)"]
    results["rnnkit"]["lstm"]["varlen_b32_h256"] = {"fwd_bwd": 12.5}  # 20 / 12.5 = 1.6x
    results["rnnkit"]["gru_tf1"]["varlen_b32_h256"] = {"fwd_bwd": 7.0}  # 10 / 7 = 1.43x
    varlen = [line for line in run_all.targets(results, 200.0, shapes).splitlines()
              if line.startswith("| variable length")][0]
    assert "1.43x (gru_tf1, padded over packed)" in varlen and varlen.endswith("| no |")
    assert run_all.targets(again, gflops, shapes_again).splitlines()[5:-2] == \
        run_all.targets(results, 200.0, shapes).splitlines()[5:-2]


def test_first_call_times_an_empty_and_a_filled_cache():
    out = _run("first_call.py", "--repeats", "1", "--cells", "GRUCell(256, reset_after=True)")
    row = next(line for line in out.splitlines() if line.startswith("GRUCell(256"))
    path, empty, cached = row.split(")")[-1].split()
    assert path in ("fused", "reference") and float(empty) > 0 and float(cached) > 0


def test_ab_kernels_builds_each_family_from_the_working_tree():
    for cell in ("lstm_clip", "gru"):
        out = _run("ab_kernels.py", "--refs", ".", "--shape", "2,5,8", "--cell", cell,
                   "--reps", "1")
        assert {line.split()[:2][0] for line in out.splitlines()[1:]} == {".", "torch.nn"}


@pytest.mark.oracle
@requires_tf
def test_raw_rnn_times_every_peer():
    out = _run("raw_rnn.py", "--reps", "1", "--shape", "2,3,4")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [(r[0], r[1]) for r in rows] == [(c, p) for c in ("gru", "lstm_peep")
                                            for p in ("rnnkit", "rnnkit-dynamic", "tf1")]
    assert all(float(v) > 0 for r in rows for v in r[2:])


@pytest.mark.oracle
@requires_tf
def test_conv_lstm_times_every_peer():
    out = _run("conv_lstm.py", "--reps", "1", "--shapes", "2,3,8,2,4")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[1] for r in rows] == ["rnnkit", "keras-tf", "keras-torch", "tf-keras"]
    assert all(float(v) > 0 for r in rows for v in r[2:])
