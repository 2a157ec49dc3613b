"""Each script in examples/ runs and does what it says (small settings, in process)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tf1_bidirectional_tagger_learns_a_two_sided_tag():
    tagger = _load("tf1_tagger")
    ids, lengths, tags = tagger.make_batch(64, __import__("torch").Generator().manual_seed(5))
    majority = max((tags == 0).sum(), (tags == 1).sum()).item() / (tags >= 0).sum().item()
    acc = tagger.train(steps=150, batch=32, seed=0)
    assert acc > majority + 0.15, (acc, majority)
