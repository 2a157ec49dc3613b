"""Fast paths for the unroll (oneDNN's RNN primitives and rnnkit's fused C kernels on CPU;
torch's fused ops, cuDNN, and CUDA graphs of cuDNN's op or of the reference loop on CUDA),
chosen by one dispatch function.

``rnnkit.fast.explain(cell, inputs, ...)`` says which path an unroll would take and why not the
others; ``fast_mode(fast)`` sets the ``"auto" | True | False`` switch for a block of code (the
``fast=`` argument of ``dynamic_rnn`` does the same for one call); ``clear_graphs(cell=None)``
frees the CUDA graphs captured for a cell (or for all); ``release_scratch()`` frees the calling
thread's reusable temporaries (``rnnkit.fast.scratch``).
"""

from rnnkit.fast.dispatch import PATHS, Decision, decide, fast_mode
from rnnkit.fast.explain import explain
from rnnkit.fast.graphs import clear as clear_graphs
from rnnkit.fast.onednn import load_error
from rnnkit.fast.scratch import release as release_scratch

__all__ = ["PATHS", "Decision", "clear_graphs", "decide", "explain", "fast_mode", "load_error",
           "release_scratch"]
