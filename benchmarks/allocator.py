"""glibc's allocator, held steady for timing (``--malloc steady`` in ``bench_rnn.py`` and
``run_all.py``).

By default glibc maps every allocation above its mmap threshold (dynamic, at most 32 MB) fresh
from the kernel and unmaps it on free, so a buffer of that size allocated per call is faulted in
page by page every call. torch.nn.LSTM's backward at B32 T100 H256 allocates such a buffer: about
10 of its 35 ms fwd+bwd here (benchmarks/RESULTS.md, fifth round). Raising the thresholds keeps
freed memory for reuse, as jemalloc or tcmalloc would; the tables can then be read with and
without that cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util

THRESHOLD = 1 << 30
ENV = {"MALLOC_MMAP_THRESHOLD_": str(THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(THRESHOLD)}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def steady() -> None:
    """Raise this process's mmap and trim thresholds (glibc's ``mallopt``).

    Raises:
        OSError: not glibc, or it refused the settings.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallopt"):
        raise OSError("no mallopt: not glibc")
    for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD):
        if libc.mallopt(option, ctypes.c_int(THRESHOLD)) != 1:
            raise OSError(f"mallopt({option}, {THRESHOLD}) refused")
