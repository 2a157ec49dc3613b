"""DistributedDataParallel: two CPU processes (gloo, loopback) train an rnnkit model to the same
parameters as one process trained on the same global batches (examples/ddp_train.py)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ddp_train.py"
STEPS, BATCH, SEED = 6, 8, 3


def _example():
    spec = importlib.util.spec_from_file_location("ddp_train", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_equal_one_process_on_the_same_global_batches(tmp_path):
    out = tmp_path / "ddp.json"
    done = subprocess.run([sys.executable, str(EXAMPLE), "--world-size", "2", "--steps", str(STEPS),
                           "--batch", str(BATCH), "--seed", str(SEED), "--out", str(out)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads(out.read_text())
    single = _example().train(0, 1, STEPS, BATCH, SEED)
    assert ddp["max_rank_difference"] == 0.0  # DDP keeps the replicas identical
    assert list(ddp["params"]) == list(single["params"])
    assert "classifier/rnn/multi_rnn_cell/cell_1/gru_cell/gates/kernel" in ddp["params"]
    initial = _example().train(0, 1, 0, BATCH, SEED)["params"]
    for name, value in single["params"].items():
        np.testing.assert_allclose(ddp["params"][name], value, rtol=0, atol=2e-6, err_msg=name)
        assert not np.array_equal(value, initial[name]), f"{name} did not train"
    np.testing.assert_allclose(ddp["losses"], single["losses"], rtol=0, atol=2e-6)


def test_batch_must_split_evenly():
    with pytest.raises(ValueError, match="batch"):
        _example().train(0, 3, 1, 8, 0)
