"""The command line, run as a subprocess as a user would."""

import subprocess
import sys


def _rnnkit(*args):
    return subprocess.run([sys.executable, "-m", "rnnkit.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_demo_prints_the_variable_table_and_gates():
    proc = _rnnkit("demo")
    assert proc.returncode == 0, proc.stderr
    assert "model/bidirectional_rnn/fw/multi_rnn_cell/cell_1/lstm_cell/w_f_diag:0" in proc.stdout
    assert "fallback" in proc.stdout and "U_c" in proc.stdout


def test_unknown_verb_fails_with_usage_on_stderr():
    proc = _rnnkit("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
