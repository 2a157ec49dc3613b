"""rnnkit's own C kernels, two libraries (``FAMILIES``): the LSTM's (``lstm_forward.c``,
``lstm_backward.c``) and the GRU's and vanilla RNN's (``gru_forward.c``, ``gru_backward.c``),
each compiled on first use and loaded with ctypes.

The sources ship with the package; the first process that needs a library (the dispatch asks
only where these kernels would run, and only for the cell's family) runs the C compiler
(``$CC``, else ``cc``/``gcc``) once per source, side by side, links them, and keeps the shared
library in a cache directory (``$RNNKIT_CACHE``, else ``$XDG_CACHE_HOME/rnnkit``, else
``~/.cache/rnnkit``) under a name that hashes the sources, the headers, the flags and this
CPU's feature flags, so an edited source or another machine sharing the directory gets its own
build. The file appears atomically (written under a
temporary name, then renamed), so concurrent first uses are safe. Matrix products go through
oneDNN's ``dnnl_sgemm`` (``rnnkit.fast.library``), whose address is handed to the kernel.
Where no compiler or no oneDNN is there, ``load_error()`` says why in one line and the
dispatch uses the other paths.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from rnnkit.fast.library import OneDNNError, error_of, library

_HERE = Path(__file__).parent
# each library's sources (compiled side by side: about half the time of one source each)
FAMILIES = {"lstm": (_HERE / "lstm_forward.c", _HERE / "lstm_backward.c"),
            "gru": (_HERE / "gru_forward.c", _HERE / "gru_backward.c")}
HEADERS = (_HERE / "kernels.h", _HERE / "lstm.h", _HERE / "gru.h")
# No -ffast-math: a library built with it resets the process's floating-point mode (subnormals
# flushed to zero) when it loads; kernels.h names libmvec's SIMD functions instead.
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-march=native", "-fopenmp", "-fPIC",
         "-std=c11")
LIBS = ("-lm", "-lmvec") if platform.machine() == "x86_64" else ("-lm",)

ACTIVATIONS = {"tanh": 0, "sigmoid": 1, "relu": 2, "linear": 3, "hard_sigmoid": 4,
               "hard_sigmoid_keras2": 5, "softsign": 6}


class Config(ctypes.Structure):
    """``rk_cfg`` of ``lstm.h``."""

    _fields_ = [("T", ctypes.c_int64), ("B", ctypes.c_int64), ("D", ctypes.c_int64),
                ("H", ctypes.c_int64), ("P", ctypes.c_int64),
                ("act", ctypes.c_int32), ("ract", ctypes.c_int32),
                ("peephole", ctypes.c_int32), ("proj", ctypes.c_int32),
                ("layer_norm", ctypes.c_int32),
                ("cell_clip", ctypes.c_float), ("proj_clip", ctypes.c_float),
                ("forget_bias", ctypes.c_float), ("eps", ctypes.c_float),
                ("order", ctypes.c_int32 * 4), ("xmask", ctypes.c_void_p),
                ("hmask", ctypes.c_void_p), ("per_step", ctypes.c_int32),
                ("shared", ctypes.c_int32), ("gmask", ctypes.c_void_p)]


class Saved(ctypes.Structure):
    """``rk_saved`` of ``lstm.h``: the buffers the forward pass keeps for backward."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("gates", "cells", "act_c", "m", "xhat",
                                                      "rstd")]


class GRUConfig(ctypes.Structure):
    """``rk_gru_cfg`` of ``gru.h`` (``gru`` 0: a vanilla RNN)."""

    _fields_ = [("T", ctypes.c_int64), ("B", ctypes.c_int64), ("D", ctypes.c_int64),
                ("H", ctypes.c_int64), ("act", ctypes.c_int32), ("ract", ctypes.c_int32),
                ("gru", ctypes.c_int32), ("reset_after", ctypes.c_int32),
                ("xmask", ctypes.c_void_p), ("hmask", ctypes.c_void_p),
                ("umask", ctypes.c_void_p), ("per_step", ctypes.c_int32),
                ("shared", ctypes.c_int32)]


class GRUSaved(ctypes.Structure):
    """``rk_gru_saved`` of ``gru.h``."""

    _fields_ = [("gates", ctypes.c_void_p), ("extra", ctypes.c_void_p)]


_lock = threading.Lock()
_state: dict = {}


def _cache_dir() -> Path:
    if os.environ.get("RNNKIT_CACHE"):
        return Path(os.environ["RNNKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnkit"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    raise OSError("no C compiler found ($CC, cc or gcc)")


def _build(family: str) -> Path:
    cc, sources = _compiler(), FAMILIES[family]
    key = hashlib.sha256(b"\0".join(
        [*(f.read_bytes() for f in (*sources, *HEADERS)), " ".join(FLAGS + LIBS).encode(),
         cc.encode(), _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"{family}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # one compiler per source, side by side, then one link; the library appears under its name
    # only once it is whole
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = [f"{tmp}/{src.stem}.o" for src in sources]
        _compile([[cc, *FLAGS, "-c", str(src), "-o", obj]
                  for src, obj in zip(sources, objects, strict=True)])
        _compile([[cc, "-shared", "-fopenmp", *objects, "-o", f"{tmp}/{family}.so", *LIBS]])
        os.replace(f"{tmp}/{family}.so", target)
    return target


def _compile(commands: list[list[str]], timeout: float = 120) -> None:
    """Run ``commands`` at once and wait for them all.

    Raises:
        OSError: one of them failed (its last lines of errors) or ran past ``timeout`` seconds.
    """
    running = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for c in commands]
    try:
        for command, proc in zip(commands, running, strict=True):
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise OSError(f"{command[0]} failed: {err.strip()[-300:]}")
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _declare(lib: ctypes.CDLL, family: str) -> None:
    vp, cfg, gru_cfg = ctypes.c_void_p, ctypes.POINTER(Config), ctypes.POINTER(GRUConfig)
    lib.rk_set_gemm.argtypes, lib.rk_set_gemm.restype = [vp], None
    if family == "lstm":
        lib.rk_lstm_forward.argtypes = [cfg] + [vp] * 16
        lib.rk_lstm_backward.argtypes = [cfg] + [vp] * 23
        lib.rk_lstm_small_batch.argtypes = lib.rk_lstm_split_batch.argtypes = [cfg]
        functions = ("rk_lstm_forward", "rk_lstm_backward", "rk_lstm_small_batch",
                     "rk_lstm_split_batch")
    else:
        lib.rk_gru_forward.argtypes = [gru_cfg] + [vp] * 11
        lib.rk_gru_backward.argtypes = [gru_cfg] + [vp] * 15
        lib.rk_gru_split_batch.argtypes = [gru_cfg]
        functions = ("rk_gru_forward", "rk_gru_backward", "rk_gru_split_batch")
    for name in functions:
        getattr(lib, name).restype = ctypes.c_int


def family_of(kind: str) -> str:
    """The library (a key of ``FAMILIES``) serving a ``Canonical.kind``."""
    return "lstm" if kind in ("lstm", "layer_norm_lstm") else "gru"


def kernels(family: str) -> ctypes.CDLL:
    """The loaded kernel library of ``family`` ("lstm" or "gru"; built and loaded on first
    use).

    Raises:
        OneDNNError: oneDNN (for ``dnnl_sgemm``) does not load, or the kernel does not build
            or load; the message says which.
    """
    with _lock:
        if family in _state:
            return _state[family]
        if ("error", family) in _state:
            raise OneDNNError(_state["error", family])
        try:
            gemm = ctypes.cast(library().dnnl_sgemm, ctypes.c_void_p)
            lib = ctypes.CDLL(str(_build(family)))
            _declare(lib, family)
            lib.rk_set_gemm(gemm)
        except (OSError, subprocess.SubprocessError, AttributeError, OneDNNError) as err:
            _state["error", family] = f"rnnkit's fused kernels are not available: {err}"
            raise OneDNNError(_state["error", family]) from None
        _state[family] = lib
        return lib


def ptr(t) -> int | None:
    """The address of a tensor's data for a kernel argument, or None (NULL) for no tensor; the
    caller keeps the tensor alive until the call returns."""
    return None if t is None else t.data_ptr()


def load_error(family: str | None = None) -> str | None:
    """None if ``family``'s kernel library loads (``None``: both), else one line saying why
    not."""
    for name in FAMILIES if family is None else (family,):
        error = error_of(lambda name=name: kernels(name))
        if error:
            return error
    return None
