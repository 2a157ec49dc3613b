"""Saves killed at random moments (SIGKILL, no clean-up possible) never leave a half-written file
under the final name: the file reads back as the previous save or the new one, exactly.

A TF checkpoint is two files (index and data) under fixed names, each replaced atomically, but
not both at once: a kill between the two renames (microseconds apart) leaves an index that
does not describe the data. That state must be reported (a checksum mismatch), never read as
numbers; it came up in about one run in a hundred of this test."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from rnnkit import io

_SAVER = textwrap.dedent("""
    import sys, numpy as np, torch
    from rnnkit import io
    path, fmt = sys.argv[1], sys.argv[2]
    value = torch.full((1024, 1024), 2.0)   # 4 MiB: each save takes a while
    print("ready", flush=True)
    while True:
        if fmt == "native":
            io.save_native(path, {"w": value})
        else:
            io.write_tf_checkpoint(path, {"w": value})
""")


def _read(path, fmt):
    if fmt == "native":
        return io.read_native(path)[0]["w"]
    return io.read_checkpoint(path)["w"]


@pytest.mark.parametrize("fmt", ["native", "tf"])
def test_killed_saves_leave_the_old_or_the_new_file(tmp_path, fmt):
    path = tmp_path / ("model.safetensors" if fmt == "native" else "model")
    old = torch.full((1024, 1024), 1.0)
    rng = np.random.default_rng(0)
    for _ in range(4):
        if fmt == "native":
            io.save_native(path, {"w": old})
        else:
            io.write_tf_checkpoint(path, {"w": old})
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), fmt],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        try:
            value = _read(path, fmt)  # the final names hold whole files
        except io.FormatError as err:  # TF only: killed between its two renames (see above)
            assert fmt == "tf" and "checksum mismatch" in str(err)
            continue
        assert np.all(value == value.flat[0]) and value.flat[0] in (1.0, 2.0)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert all(name.startswith(".") for name in leftovers)  # only hidden temporaries remain
