"""The README's tour runs as written (its Python blocks, in order, in one namespace)."""

import re
from pathlib import Path


def test_readme_python_blocks_run():
    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    names = [v.name for v in namespace["rk"].global_variables()]
    assert names[:2] == ["model/embedding:0",
                         "model/bidirectional_rnn/fw/multi_rnn_cell/cell_0/gru_cell/gates/kernel:0"]
    assert sorted(namespace["gates"]) == ["U_c", "U_r", "U_u", "W_c", "W_r", "W_u", "b_c", "b_r", "b_u"]
    assert namespace["report"].matched == ["model/embedding"]
    assert namespace["probs"].shape == (4, 2)


def test_guides_python_blocks_run():
    import rnnkit as rk

    for guide in sorted((Path(__file__).parent.parent / "docs" / "guides").glob("*.md")):
        rk.reset_default_graph()
        namespace: dict = {}
        for block in re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S):
            exec(compile(block, str(guide), "exec"), namespace)


def test_api_reference_is_generated_from_the_current_docstrings():
    import subprocess
    import sys

    root = Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, str(root / "docs" / "gen_api.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
