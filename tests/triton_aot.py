"""Compile Triton kernel specializations for a GPU without one (used by test_steps_compile.py).

``python tests/triton_aot.py ARCH < specs.json > results.json``: each spec is
``[name, signature, constexprs, options]``, a kernel of ``rnnkit.fast.steps._kernels()`` by
name and the arguments of ``triton.compile``'s ``ASTSource`` and its ``options``; each result is
``{"name", "constexprs", "error", "registers", "stack"}``, ``stack`` being the bytes of stack
frame a thread uses (spilled registers) in the cubin, as ``cuobjdump`` reads it. Run it without
``TRITON_INTERPRET``: the kernels must be real ``JITFunction``s."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor


def _usage(cubin: bytes) -> tuple[int, int]:
    import triton
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage",
                              f.name], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if not found:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {out!r}")
    return int(found.group(1)), int(found.group(2))


def _compile(job: tuple[int, list]) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rnnkit.fast.steps import _kernels
    kernels = _kernels()
    arch, (name, signature, constexprs, options) = job
    result = {"name": name, "constexprs": constexprs, "error": None, "registers": None,
              "stack": None}
    try:
        compiled = triton.compile(ASTSource(getattr(kernels, name), signature, constexprs),
                                  target=GPUTarget("cuda", arch, 32), options=options)
        result["registers"], result["stack"] = _usage(compiled.asm["cubin"])
    except Exception as err:  # reported, not raised: the test lists every failure
        result["error"] = f"{type(err).__name__}: {err}"[:4000]
    return result


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"
    arch = int(sys.argv[1])
    specs = json.load(sys.stdin)
    with ProcessPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_compile, [(arch, spec) for spec in specs]))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
