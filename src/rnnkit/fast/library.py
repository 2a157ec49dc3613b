"""Loading oneDNN 3.2 (``libdnnl.so.3`` from the ``onednn-cpu-gomp`` wheel) with ctypes: the
library, its function signatures, one CPU engine and stream, and why it did not load.

The enum values are oneDNN 3.x's C API (``dnnl_types.h``).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

_CPU = 1


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class FastPathError(RuntimeError):
    """A fast path could not run a call (with ``fast="auto"`` the dispatch then runs the
    reference loop, with one warning)."""


class OneDNNError(FastPathError):
    """A oneDNN call returned an error status."""


def _candidates() -> list[Path]:
    """Where ``libdnnl.so.3`` may be: ``$RNNKIT_DNNL_LIBRARY``, the environment's ``lib/``, and
    the location the ``onednn-cpu-gomp`` wheel's RECORD gives."""
    found = []
    if os.environ.get("RNNKIT_DNNL_LIBRARY"):
        found.append(Path(os.environ["RNNKIT_DNNL_LIBRARY"]))
    found.append(Path(sys.prefix) / "lib" / "libdnnl.so.3")
    try:
        files = metadata.distribution("onednn-cpu-gomp").files or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "libdnnl.so.3":
            found.append(Path(f.locate()).resolve())
    return found


_lock = threading.Lock()
_state: dict = {}


def library() -> ctypes.CDLL:
    """The loaded ``libdnnl.so.3`` (loaded and checked on first use).

    Raises:
        OneDNNError: no candidate file loads, or its version is not 3.x.
    """
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        if "error" in _state:
            raise OneDNNError(_state["error"])
        errors = []
        for path in _candidates():
            if not path.exists():
                errors.append(f"{path}: no such file")
                continue
            try:
                lib = ctypes.CDLL(str(path))
                _declare(lib)
                major = lib.dnnl_version().contents.major
                if major != 3:
                    raise OSError(f"oneDNN {major}.x found, 3.x needed")
                _state["engine"], _state["stream"] = _engine_and_stream(lib)
            except (OSError, AttributeError, OneDNNError) as err:
                errors.append(f"{path}: {err}")
                continue
            _state["lib"] = lib
            return lib
        _state["error"] = ("libdnnl.so.3 (pip package onednn-cpu-gomp==2023.2.0) could not be "
                           "loaded: " + ("; ".join(errors) or "no candidate path"))
        raise OneDNNError(_state["error"])


def error_of(load: Callable[[], object]) -> str | None:
    """None if ``load()`` succeeds, else the one line of the ``OneDNNError`` it raised."""
    try:
        load()
    except OneDNNError as err:
        return str(err)
    return None


def load_error() -> str | None:
    """None if oneDNN loads, else one line saying why not."""
    return error_of(library)


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


def _declare(lib: ctypes.CDLL) -> None:
    vp, i, u = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
    pvp = ctypes.POINTER(ctypes.c_void_p)
    dims = ctypes.POINTER(ctypes.c_int64)
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    sigs = {
        "dnnl_engine_create": [pvp, i, ctypes.c_size_t],
        "dnnl_stream_create": [pvp, vp, u],
        "dnnl_stream_wait": [vp],
        "dnnl_memory_desc_create_with_strides": [pvp, i, dims, i, dims],
        "dnnl_memory_desc_create_with_tag": [pvp, i, dims, i, i],
        "dnnl_memory_desc_equal": [vp, vp],
        "dnnl_reorder_primitive_desc_create": [pvp, vp, vp, vp, vp, vp],
        "dnnl_memory_desc_destroy": [vp],
        "dnnl_memory_create": [pvp, vp, vp, vp],
        "dnnl_memory_destroy": [vp],
        "dnnl_memory_set_data_handle": [vp, vp],
        "dnnl_primitive_desc_destroy": [vp],
        "dnnl_primitive_create": [pvp, vp],
        "dnnl_primitive_destroy": [vp],
        "dnnl_primitive_execute": [vp, vp, i, ctypes.POINTER(_ExecArg)],
        "dnnl_primitive_attr_create": [pvp],
        "dnnl_primitive_attr_set_scratchpad_mode": [vp, i],
        "dnnl_primitive_attr_destroy": [vp],
        "dnnl_vanilla_rnn_forward_primitive_desc_create":
            [pvp, vp, i, i, i] + [vp] * 7 + [u, ctypes.c_float, ctypes.c_float, vp],
        "dnnl_vanilla_rnn_backward_primitive_desc_create":
            [pvp, vp, i, i, i] + [vp] * 14 + [u, ctypes.c_float, ctypes.c_float, vp, vp],
        "dnnl_gru_forward_primitive_desc_create": [pvp, vp, i, i] + [vp] * 7 + [u, vp],
        "dnnl_gru_backward_primitive_desc_create": [pvp, vp, i, i] + [vp] * 14 + [u, vp, vp],
        "dnnl_lbr_gru_forward_primitive_desc_create": [pvp, vp, i, i] + [vp] * 7 + [u, vp],
        "dnnl_lbr_gru_backward_primitive_desc_create": [pvp, vp, i, i] + [vp] * 14 + [u, vp, vp],
        "dnnl_lstm_forward_primitive_desc_create": [pvp, vp, i, i] + [vp] * 11 + [u, vp],
        "dnnl_lstm_backward_primitive_desc_create": [pvp, vp, i, i] + [vp] * 22 + [u, vp, vp],
    }
    for name, argtypes in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int  # memory_desc_equal: 1 if equal
    lib.dnnl_primitive_desc_query_md.argtypes = [vp, i, i]
    lib.dnnl_primitive_desc_query_md.restype = vp
    lib.dnnl_memory_desc_get_size.argtypes = [vp]
    lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t


def check(status: int, what: str) -> None:
    """Raise ``OneDNNError`` unless a call returned 0 (else a dnnl status, or -1 from rnnkit's
    kernels: out of memory)."""
    if status != 0:
        raise OneDNNError(f"{what} failed with status {status}")


def _engine_and_stream(lib: ctypes.CDLL) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
    engine, stream = ctypes.c_void_p(), ctypes.c_void_p()
    check(lib.dnnl_engine_create(ctypes.byref(engine), _CPU, 0), "dnnl_engine_create")
    check(lib.dnnl_stream_create(ctypes.byref(stream), engine, 1), "dnnl_stream_create")
    return engine, stream
