"""Reading and writing RNN weights in every format people keep them in.

One file per format; each reader first parses into ``dict[str, np.ndarray]`` plus metadata, and
mapping those names and layouts onto rnnkit models is a separate step. Every reader raises
``FormatError`` for a bad file. Submodules are imported on first use, so ``import rnnkit`` stays
light and a missing optional dependency only matters to the format that needs it.
"""

from __future__ import annotations

import importlib

from rnnkit.io.errors import FormatError

# public name -> submodule of rnnkit.io that defines it
_EXPORTS = {
    "read_checkpoint": "tf_checkpoint",
    "list_variables": "tf_checkpoint",
    "load_variable": "tf_checkpoint",
    "write_tf_checkpoint": "tf_checkpoint",
    "object_graph_names": "tf_checkpoint",
    "save": "saving",
    "restore": "saving",
    "RestoreReport": "saving",
    "named_variables": "saving",
    "load": "native",
    "save_native": "native",
    "read_native": "native",
    "to_torch": "torch_interop",
    "from_torch": "torch_interop",
    "to_cudnn": "cudnn",
    "from_cudnn": "cudnn",
    "to_cudnn_checkpoint": "cudnn",
    "from_cudnn_checkpoint": "cudnn",
    "export_onnx": "onnx_export",
    "load_keras": "keras_files",
    "save_keras": "keras_files",
}

__all__ = ["FormatError", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rnnkit.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rnnkit.io.{module}"), name)
    globals()[name] = value
    return value
