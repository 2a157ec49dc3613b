"""Atomic file writes: a save either completes or leaves the previous files as they were.

Each file is written to a temporary file in its own directory (same filesystem), flushed and
fsynced, and moved over the target with ``os.replace`` only after every file of the group was
written. If anything fails before that, the temporary files are removed and the targets are
untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


class AtomicGroup:
    """Files being written together; committed by ``atomic_files`` when its block succeeds."""

    def __init__(self) -> None:
        self._pending: list[tuple[BinaryIO, str, Path]] = []

    def open(self, path: str | os.PathLike) -> BinaryIO:
        """A binary file to write that becomes ``path`` at commit (parent folders are created)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        # mkstemp makes the file private (0600); give it the mode the target has or would get.
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        handle = os.fdopen(fd, "wb")
        self._pending.append((handle, tmp, target))
        return handle

    def _commit(self) -> None:
        for handle, _, _ in self._pending:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for _, tmp, target in self._pending:
            os.replace(tmp, target)
        self._pending = []

    def _abort(self) -> None:
        for handle, tmp, _ in self._pending:
            handle.close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._pending = []


@contextmanager
def atomic_files() -> Iterator[AtomicGroup]:
    """Write several files all-or-nothing.

    Example:
        >>> with atomic_files() as group:
        ...     group.open("model.index").write(index_bytes)
        ...     group.open("model.data-00000-of-00001").write(data_bytes)
    """
    group = AtomicGroup()
    try:
        yield group
    except BaseException:
        group._abort()
        raise
    try:
        group._commit()
    except BaseException:
        group._abort()
        raise


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write one binary file atomically: ``with atomic_write(p) as f: f.write(...)``."""
    with atomic_files() as group:
        yield group.open(path)
