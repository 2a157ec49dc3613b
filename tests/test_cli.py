"""The command line, run as a subprocess as a user would."""

import subprocess
import sys

import pytest

from rnnkit.cli import main


def _rnnkit(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rnnkit.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_demo_quick_writes_the_table_plots_and_report(tmp_path):
    out = tmp_path / "demo out"
    proc = _rnnkit("demo", "--quick", "--out", str(out), "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    names = ("results.csv", "results.json", "learning_curves.png", "grad_norms.png", "report.md")
    for name in names:
        assert (out / name).is_file(), name
    for png in ("learning_curves.png", "grad_norms.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = proc.stdout.splitlines()
    assert table[0].split()[:3] == ["task", "config", "rho(U)"]
    assert sum(line.startswith(("adding ", "copy ")) for line in table) == 18
    assert "study" in proc.stderr and "%|" in proc.stderr  # tqdm progress bars go to stderr
    report = (out / "report.md").read_text()
    assert "](learning_curves.png)" in report and "](grad_norms.png)" in report


@pytest.mark.parametrize("verb", [[], ["demo"]])
def test_help_for_each_verb(verb):
    proc = _rnnkit(*verb, "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: rnnkit")
    if verb:
        assert "--quick" in proc.stdout and "--out DIR" in proc.stdout and "--seed N" in proc.stdout
    else:
        assert "demo" in proc.stdout


def test_bad_argument_exits_2_with_a_message_on_stderr():
    proc = _rnnkit("demo", "--seed", "-1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "argument --seed: must be a non-negative integer, got '-1'" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "invalid choice"),
    ([], "required: VERB"),
    (["demo", "--seed", "many"], "must be a non-negative integer, got 'many'"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_in_process(args, message, capsys):
    # The same parser in-process (no interpreter start-up per case).
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and message in captured.err and captured.out == ""


def test_demo_out_that_is_a_file_fails_cleanly(tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    proc = _rnnkit("demo", "--quick", "--out", str(target))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "rnnkit demo: error: --out must be a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
