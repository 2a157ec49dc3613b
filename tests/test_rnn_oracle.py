"""TF1 cells and unrolling against real TensorFlow: the same programs, the same weights (copied by
name from rnnkit into TF), then outputs, final states and the gradients of a loss with respect to
inputs, initial states and every variable compared to 1e-5 in float32."""

import pytest
from rnn_programs import PROGRAMS, inputs
from tf1_harness import mismatches, run_rnnkit, tf_feed, tf_script
from tf_oracle import requires_tf, run_tf

import rnnkit as rk

pytestmark = [pytest.mark.oracle, requires_tf]

COMPARED = sorted(p for p in PROGRAMS if p != "scoped_stack_with_orthogonal")


@pytest.fixture(scope="module")
def both():
    arrays = inputs()
    ours = {name: run_rnnkit(name, PROGRAMS[name], arrays) for name in COMPARED}
    return ours, run_tf(tf_script(PROGRAMS), tf_feed(arrays, ours))


@pytest.mark.parametrize("program", COMPARED)
def test_names_outputs_states_and_gradients_equal_tf1(program, both):
    assert mismatches(program, both[0][program], both[1]) == []


def test_outer_orthogonal_scope_with_peepholes_fails_in_tf_and_falls_back_here(both):
    """TF1 applies the scope's orthogonal initializer to the 1-D peephole vectors and fails;
    rnnkit uses glorot_uniform for them, and describe() says so."""
    assert "at least two-dimensional" in both[1]["scoped_stack_with_orthogonal|error"]
    run_rnnkit("scoped_stack_with_orthogonal", PROGRAMS["scoped_stack_with_orthogonal"],
               inputs())
    table = rk.describe()
    peep = table["model/bidirectional_rnn/fw/multi_rnn_cell/cell_1/lstm_cell/w_f_diag:0"]
    kernel = table["model/bidirectional_rnn/fw/multi_rnn_cell/cell_0/gru_cell/gates/kernel:0"]
    assert peep["origin"].startswith("fallback") and "glorot" in peep["initializer"].lower()
    assert "orthogonal" in kernel["initializer"].lower()
