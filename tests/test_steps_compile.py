"""The graph path's Triton kernels compiled for an H100 (``sm_90``) on a machine without a GPU.

``test_steps.py`` runs the kernels under Triton's interpreter here, which executes them as
NumPy and lets through what a GPU compile rejects (types, shapes a block cannot take, what a
thread's registers cannot hold). So this test records every launch the loops make over the
cells, masks, precisions and partial gradients of ``test_steps.py`` (kernel, argument types,
compile-time constants, options), compiles each specialization with Triton's own NVIDIA
toolchain (``ptxas``, bundled with Triton: no GPU and no CUDA install needed) in a process
without the interpreter, and reads each cubin's resource usage. Nothing may fail to compile,
and nothing in float32 may spill registers to the stack (float64, a check of precision more
than of speed, may spill a few bytes: 8 in the LSTM backward with every option). The
layer-norm kernels, which hold a row of each gate in one program, are also compiled at rows of
1024 to ``MAX_NORM_UNITS`` units with the warps ``steps._norm_warps`` gives them: no spills in
float32 up to 2048 units, and a compile beyond. The fused steps (``steps.FUSED_STEP_UNITS``)
are compiled as the loops launch them."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fast_checks import perturb
from test_steps import CELLS_AND_PROJ
from torch.utils import _pytree as pytree

from rnnkit.fast import steps

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="records launches under the interpreter (no GPU here)")
ARCH = 90  # the H100 the device checks run on
KERNELS = ("lstm_forward", "lstm_backward", "ln_lstm_forward", "ln_lstm_backward",
           "gates_forward", "gates_backward", "blend_forward", "blend_backward",
           "lstm_step_forward", "gru_gates_step", "gru_blend_step")
_TYPES = {torch.float32: "*fp32", torch.float64: "*fp64"}
def _toolchain_missing() -> str | None:
    try:
        tools = triton.knobs.nvidia
        missing = [t for t in ("ptxas", "cuobjdump") if not Path(getattr(tools, t).path).exists()]
    except Exception as err:  # a Triton without the NVIDIA backend
        return f"Triton's NVIDIA backend is unavailable ({type(err).__name__}: {err})"
    return f"Triton's {', '.join(missing)} not found" if missing else None


class _Recorder:
    """Stands in for one kernel of ``rnnkit.fast.steps._kernels()``: launches it, and adds each
    new specialization to ``seen`` (key -> ``[name, signature, constexprs, options]``)."""

    def __init__(self, name: str, kernel, seen: dict):
        self.name, self.kernel, self.seen = name, kernel, seen
        self.params = inspect.signature(kernel.fn).parameters

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            values = dict(zip(self.params, args, strict=False)) | kwargs  # args: a prefix
            signature, constexprs, options = {}, {}, {}
            for name, value in values.items():
                if name not in self.params:
                    options[name] = value
                elif "constexpr" in str(self.params[name].annotation):
                    signature[name], constexprs[name] = "constexpr", value
                elif isinstance(value, torch.Tensor):
                    signature[name] = _TYPES[value.dtype]
                elif isinstance(value, int) and not isinstance(value, bool):
                    signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
                else:
                    raise TypeError(f"{self.name}: argument {name} is a {type(value).__name__}")
            spec = [self.name, signature, constexprs, options]
            self.seen.setdefault(json.dumps(spec, sort_keys=True), spec)
            return self.kernel[grid](*args, **kwargs)
        return launch


def _run_loops(names=tuple(CELLS_AND_PROJ)) -> None:
    """Every cell of test_steps.py (or of ``names``) through the loops, forward and backward:
    float32 and float64, without a mask, with TF1's zero outputs and Keras's held ones, and in
    float32 with gradients for the outputs only and for the final state only."""
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 1]], dtype=torch.bool)
    for dtype in (torch.float32, torch.float64):
        for name in names:
            make = CELLS_AND_PROJ[name]
            for masked in (None, "zero", "previous"):
                cell = make()
                cell.ensure_built(3, dtype)
                perturb(cell, scale=0.8)
                cell = cell.to(dtype)
                wanted = ("all", "outputs", "state") if dtype == torch.float32 else ("all",)
                for which in wanted:
                    x = torch.randn(4, 3, 3, dtype=dtype, requires_grad=True)
                    out = steps.sequence(cell, x, cell.zero_state(3, dtype, "cpu"),
                                         mask if masked else None, masked or "zero")
                    assert out is not None, f"{name} did not take the loops"
                    y, state = out
                    leaves = {"all": [y, *pytree.tree_leaves(state)], "outputs": [y],
                              "state": pytree.tree_leaves(state)}[which]
                    torch.autograd.backward(leaves, [torch.randn_like(t) for t in leaves])


def _first_pointer(signature: dict) -> str:
    """The type of a kernel's first tensor argument (its dtype's)."""
    return next(kind for kind in signature.values() if kind.startswith("*"))


def _compile(specs: list) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(here.parent / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(here / "triton_aot.py"), str(ARCH)],
                          input=json.dumps(specs), capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_every_launch_compiles_for_a_gpu_without_spilling(monkeypatch):
    missing = _toolchain_missing()
    if missing:
        pytest.skip(missing)
    kernels = steps._kernels()
    seen: dict = {}
    for name in KERNELS:
        monkeypatch.setattr(kernels, name, _Recorder(name, getattr(kernels, name), seen))
    steps._broken.clear()
    _run_loops()
    plain = [name for name in CELLS_AND_PROJ if "proj" not in name  # plain LSTMs, TF1 GRUs
             and not name.startswith("layer_norm")]  # (the batch there: 3 rows)
    monkeypatch.setattr(steps, "FUSED_MIN_BATCH", 1)  # the steps with their products inside
    _run_loops(plain)
    assert not steps._broken, steps._broken
    recorded = list(seen.values())
    assert {spec[0] for spec in recorded} == set(KERNELS)
    wide = []  # the layer-norm kernels at wide rows, with the warps the loops would give them
    for name, signature, constexprs, options in recorded:
        if name.startswith("ln_") and not constexprs["MASKED"] and constexprs["ACT"] == 0:
            dtype = torch.float64 if _first_pointer(signature) == "*fp64" else torch.float32
            for block in (1024, 2048, steps.MAX_NORM_UNITS):
                wide.append([name, signature, constexprs | {"BLOCK_H": block},
                             options | {"num_warps": steps._norm_warps(block, dtype)}])
    results = _compile(recorded + wide)
    failed = [f"{r['name']} {r['constexprs']}: {r['error']}" for r in results if r["error"]]
    assert not failed, "\n".join(failed)
    spilled = [f"{r['name']} {r['constexprs']}: {r['registers']} registers, {r['stack']} bytes "
               "of stack" for r, spec in zip(results, recorded + wide, strict=True)
               if r["stack"] > 0 and _first_pointer(spec[1]) == "*fp32"
               and spec[2].get("BLOCK_H", 0) <= 2048]
    assert not spilled, "\n".join(spilled)
