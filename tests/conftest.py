import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _fresh_graph():
    """Every test starts with an empty variable store and no open scopes, as a new TF graph."""
    import rnnkit

    rnnkit.reset_default_graph()
    yield
    rnnkit.reset_default_graph()
