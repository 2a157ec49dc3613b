"""Per-thread scratch buffers for the fast paths' temporaries.

A kernel call's temporaries (oneDNN's scratchpad, the fused kernels' gate buffers in inference
and their gradient buffers in backward) are needed only while the call runs. Fresh tensors of a
few MB cost page faults on every call: glibc hands large freed blocks back to the OS, so each
new one is mapped and zeroed again. Here each thread keeps one buffer per use, grown as needed
and reused by the next call, up to ``KEEP_BYTES`` (oneDNN's scratchpad at any size); larger
requests get memory of their own.
"""

from __future__ import annotations

import threading

import torch

KEEP_BYTES = 32 << 20  # per thread and use
_local = threading.local()


def scratch(use: str, numel: int, dtype: torch.dtype = torch.float32,
            bounded: bool = True) -> torch.Tensor:
    """A 1-D tensor of ``numel`` elements of ``dtype`` on the CPU, contents undefined, for the
    temporary use ``use``; it stays valid until the next call for ``use`` on this thread, so a
    caller must be done with it before it calls anything that could ask for the same use.
    Buffers up to ``KEEP_BYTES`` are kept, or of any size if not ``bounded`` (oneDNN's
    scratchpad: 64 MB for a B32 T100 H256 LSTM's training primitives)."""
    nbytes = numel * dtype.itemsize
    if bounded and nbytes > KEEP_BYTES:
        return torch.empty(numel, dtype=dtype)
    bufs = _local.__dict__.setdefault("bufs", {})
    buf = bufs.get(use)
    if buf is None or buf.numel() < nbytes:
        buf = bufs[use] = torch.empty(max(nbytes, 64), dtype=torch.uint8)
    return buf[:nbytes].view(dtype)


def release() -> None:
    """Drop this thread's buffers."""
    _local.__dict__.pop("bufs", None)
