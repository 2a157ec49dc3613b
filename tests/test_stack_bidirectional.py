"""``stack_bidirectional_dynamic_rnn`` / ``stack_bidirectional_rnn`` (tf.contrib.rnn's): the
arguments they refuse, and that each layer is a ``bidirectional_dynamic_rnn`` over the last
one's concatenated outputs (numbers, names and gradients against TF: test_rnn_oracle.py)."""

from __future__ import annotations

import pytest
import torch

import rnnkit as rk


def test_each_layer_reads_the_last_ones_concatenated_outputs():
    x, lengths = torch.randn(3, 6, 4), [6, 0, 2]
    rk.reset_default_graph()
    out, states_fw, states_bw = rk.stack_bidirectional_dynamic_rnn(
        [rk.GRUCell(3), rk.LSTMCell(2)], [rk.GRUCell(2), rk.LSTMCell(2)], x,
        sequence_length=lengths)
    assert out.shape == (3, 6, 4) and len(states_fw) == len(states_bw) == 2
    with rk.variable_scope("stack_bidirectional_rnn", reuse=True):
        with rk.variable_scope("cell_0"):
            (a, b), _ = rk.bidirectional_dynamic_rnn(rk.GRUCell(3), rk.GRUCell(2), x, lengths)
        with rk.variable_scope("cell_1"):
            (c, d), (fw, bw) = rk.bidirectional_dynamic_rnn(
                rk.LSTMCell(2), rk.LSTMCell(2), torch.cat([a, b], -1), lengths)
    torch.testing.assert_close(out, torch.cat([c, d], -1))
    torch.testing.assert_close(states_bw[1].c, bw.c)
    static, _, _ = rk.stack_bidirectional_rnn(
        [rk.GRUCell(3), rk.LSTMCell(2)], [rk.GRUCell(2), rk.LSTMCell(2)], list(x.unbind(1)),
        sequence_length=lengths, scope="static")
    assert len(static) == 6 and static[0].shape == (3, 4)
    assert "static/cell_1/bidirectional_rnn/bw/lstm_cell/kernel:0" in \
        [v.name for v in rk.global_variables()]


@pytest.mark.parametrize("fw,bw,states,match", [
    ([], [], None, "cells_fw must be a non-empty list"),
    ([rk.GRUCell(2)], [rk.GRUCell(2), rk.GRUCell(2)], None, "the same length, got 1 and 2"),
    ([rk.GRUCell(2)], ["gru"], None, r"cells_bw\[0\] must be"),
    ([rk.GRUCell(2)], [rk.GRUCell(2)], [None, None], "initial_states_fw must be a list of 1"),
])
def test_mismatched_layers_are_refused(fw, bw, states, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rk.stack_bidirectional_dynamic_rnn(fw, bw, torch.randn(2, 3, 4), initial_states_fw=states)
