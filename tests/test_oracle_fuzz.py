"""A short round of the differential fuzz run (benchmarks/fuzz_oracle.py) in the suite: random
TF1 programs against tf.compat.v1 and random Keras models against Keras 3, each on rnnkit's fast
paths and on its reference loop. The long runs are recorded in benchmarks/RESULTS.md."""

import io
import sys
from pathlib import Path

import pytest
from tf_oracle import requires_tf

pytestmark = [pytest.mark.oracle, requires_tf]
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

import fuzz_oracle  # noqa: E402


@pytest.mark.parametrize("family, programs", [("tf1", 24), ("keras", 40)])
def test_random_programs_agree_with_the_oracle(family, programs):
    report = io.StringIO()
    failures = fuzz_oracle.run(programs, seed=11, per_run=programs, family=family, out=report)
    assert failures == {}, report.getvalue()
