"""Run real TensorFlow (tf.compat.v1 / tf_keras / Keras 3) in a subprocess and bring back results.

TensorFlow and PyTorch in one process fight over threads and protobuf; a subprocess keeps the
oracle independent. A script sets ``RESULT`` to a dict; numpy arrays come back as arrays, other
values through JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

HAVE_TF = importlib.util.find_spec("tensorflow") is not None
requires_tf = pytest.mark.skipif(not HAVE_TF, reason="tensorflow is not installed (pip install '.[oracle]')")

_PRELUDE = """
import json, sys
import numpy as np
import tensorflow as tf
tf1 = tf.compat.v1
INPUTS = dict(np.load(sys.argv[1], allow_pickle=False))
RESULT = {}
"""

_EPILOGUE = """
_arrays = {k: np.asarray(v) for k, v in RESULT.items() if isinstance(v, (np.ndarray, np.generic))}
_other = {k: v for k, v in RESULT.items() if k not in _arrays}
np.savez(sys.argv[2], **_arrays)
with open(sys.argv[3], "w") as _f:
    json.dump(_other, _f)
"""


def run_tf(script: str, inputs: dict[str, np.ndarray] | None = None, *, legacy_keras: bool = True,
           timeout: float = 600) -> dict:
    """Run ``script`` under real TensorFlow and return its ``RESULT`` dict.

    Args:
        script: Python source; ``tf``, ``tf1``, ``np`` and ``INPUTS`` (the arrays passed in) are
            defined; it must fill ``RESULT``.
        inputs: arrays handed to the script as ``INPUTS``.
        legacy_keras: set ``TF_USE_LEGACY_KERAS=1`` so ``tf.keras`` is tf_keras (TF1 cells need it).
        timeout: seconds before the subprocess is killed.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONHASHSEED="0", OMP_NUM_THREADS="2")
    env["TF_USE_LEGACY_KERAS"] = "1" if legacy_keras else "0"
    if not legacy_keras:
        env["KERAS_BACKEND"] = "tensorflow"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp, arr, js, src = tmp / "in.npz", tmp / "out.npz", tmp / "out.json", tmp / "prog.py"
        np.savez(inp, **(inputs or {}))
        src.write_text(_PRELUDE + textwrap.dedent(script) + _EPILOGUE)
        proc = subprocess.run([sys.executable, str(src), str(inp), str(arr), str(js)],
                              capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"TensorFlow oracle failed:\n{proc.stderr[-4000:]}")
        result = dict(np.load(arr, allow_pickle=False))
        result.update(json.loads(js.read_text()))
        return result


# for an oracle script: record a Keras layer's outputs and weights as check_keras_layer reads them
RECORD_LAYER = """
def record(prefix, out, layer):
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    for k, o in enumerate(out):
        RESULT[f"{prefix}:out:{k}"] = np.asarray(o)
    for w in layer.weights:
        RESULT[f"{prefix}:w:{w.path}"] = np.asarray(w)
"""


def check_keras_layer(prefix: str, layer, run, result: dict, atol: float = 1e-5) -> None:
    """Copy a Keras layer's weights (``RECORD_LAYER``'s ``result["<prefix>:w:<path>"]``) into
    the rnnkit ``layer`` by name, asserting the names match, then compare what ``run()``
    returns with Keras's outputs (``result["<prefix>:out:<k>"]``), output by output."""
    import torch  # imported here: the oracle's subprocess side needs none of it

    keras_names = sorted(k.split(":w:")[1] for k in result if k.startswith(f"{prefix}:w:"))
    assert sorted(w.op_name for w in layer.weights) == keras_names
    with torch.no_grad():
        for w in layer.weights:
            w.copy_(torch.from_numpy(result[f"{prefix}:w:{w.op_name}"]))
    outs = run()
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    assert len(outs) == len([k for k in result if k.startswith(f"{prefix}:out:")])
    for k, o in enumerate(outs):
        np.testing.assert_allclose(o.detach().numpy(), result[f"{prefix}:out:{k}"], atol=atol,
                                   rtol=1e-5, err_msg=f"{prefix} output {k}")
