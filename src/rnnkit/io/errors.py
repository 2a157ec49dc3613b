"""The one error every rnnkit file reader and writer raises for a bad file."""

from __future__ import annotations

import struct
import zipfile
import zlib

# What zipfile, json, struct, h5py and HDF5 raise for damaged bytes (zipfile alone raises
# BadZipFile, UnicodeDecodeError for a bad member name, NotImplementedError for an unknown
# compression, EOFError and zlib.error): a reader turns each into a FormatError.
DAMAGED_FILE_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, EOFError,
                       RecursionError, NotImplementedError, OverflowError, zipfile.BadZipFile,
                       zlib.error, struct.error)


class FormatError(ValueError):
    """A file is missing, truncated, corrupt, of another format, or unsafe to load.

    Every reader in ``rnnkit.io`` raises this (never a bare ``KeyError``, ``struct.error`` or a
    crash) and leaves no partial model behind. ``path`` is the file, ``reason`` what was wrong.
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
