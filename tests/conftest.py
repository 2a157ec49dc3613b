import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Without a GPU, Triton's kernels (the graph path's fused steps, tests/test_steps.py) run under
# its interpreter on the CPU. Triton reads the variable when its functions are made, its own
# library's included, so it is set before any test module can import it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _fresh_graph():
    """Every test starts with an empty variable store and no open scopes, as a new TF graph."""
    import rnnkit

    rnnkit.reset_default_graph()
    yield
    rnnkit.reset_default_graph()
