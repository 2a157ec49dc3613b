"""TF1 RNN programs run unchanged by real TensorFlow and by rnnkit (only the namespace ``R`` differs).

Each program sees ``R`` (cells and unroll functions), ``F32``, ``X`` (batch-major inputs),
``XT`` (time-major), ``XS`` (a list of per-step inputs), ``L`` (sequence lengths) and
``make_state(cell)`` (a random initial state of the cell's structure); it sets ``out`` and ``st``.
This file is read by the TF subprocess too, so it imports nothing but numpy.
"""

import numpy as np

B, T, D = 3, 5, 4
LENGTHS = [5, 0, 3]  # full, empty and partial sequences

CELLS = {
    "rnn_tanh": "R.BasicRNNCell(5)",
    "rnn_relu": "R.BasicRNNCell(5, activation=R.relu)",
    "gru": "R.GRUCell(5)",
    "basic_lstm": "R.BasicLSTMCell(5, forget_bias=0.5)",
    "lstm": "R.LSTMCell(5)",
    "lstm_peepholes": "R.LSTMCell(5, use_peepholes=True, forget_bias=0.0)",
    "lstm_clip_proj": "R.LSTMCell(5, use_peepholes=True, cell_clip=0.5, num_proj=3, proj_clip=0.4)",
    "multi": "R.MultiRNNCell([R.GRUCell(4), R.LSTMCell(3, use_peepholes=True)])",
    "residual": "R.MultiRNNCell([R.GRUCell(4), R.ResidualWrapper(R.GRUCell(4))])",
    "dropout_keep_all": "R.MultiRNNCell([R.DropoutWrapper(R.BasicLSTMCell(4)), R.GRUCell(3)])",
    # TF's deprecated concatenated states: [c, h] in one tensor, a stack's side by side
    "lstm_concat": "R.LSTMCell(5, use_peepholes=True, num_proj=3, cell_clip=0.5, "
                   "state_is_tuple=False)",
    "multi_concat": "R.MultiRNNCell([R.GRUCell(4), R.BasicLSTMCell(3, state_is_tuple=False)], "
                    "state_is_tuple=False)",
}

DRIVERS = {
    "dynamic": "out, st = R.dynamic_rnn(cell, X, dtype=F32)",
    "lengths_state": "out, st = R.dynamic_rnn(cell, X, sequence_length=L, "
                     "initial_state=make_state(cell))",
    "time_major": "out, st = R.dynamic_rnn(cell, XT, sequence_length=L, dtype=F32, time_major=True)",
    "bidirectional": "out, st = R.bidirectional_dynamic_rnn(cell, cell2, X, sequence_length=L, "
                     "initial_state_bw=make_state(cell2), dtype=F32)",
    "static": "out, st = R.static_rnn(cell, XS, sequence_length=L, initial_state=make_state(cell))",
    "static_bidirectional": "out, st_fw, st_bw = R.static_bidirectional_rnn(cell, cell2, XS, "
                            "sequence_length=L, dtype=F32)\nst = (st_fw, st_bw)",
}

# every cell under the two drivers that matter most; the other drivers with a few cells
GRID = [(c, d) for c in CELLS for d in ("dynamic", "lengths_state")]
GRID += [(c, d) for c in ("gru", "lstm_clip_proj", "multi", "multi_concat")
         for d in ("time_major", "bidirectional", "static", "static_bidirectional")]

PROGRAMS = {f"{c}-{d}": f"cell = {CELLS[c]}\ncell2 = {CELLS[c]}\n{DRIVERS[d]}" for c, d in GRID}

PROGRAMS["reuse_two_towers"] = """
with R.variable_scope("tower"):
    out1, st1 = R.dynamic_rnn(R.GRUCell(4), X, sequence_length=L, dtype=F32)
with R.variable_scope("tower", reuse=True):
    out2, st2 = R.dynamic_rnn(R.GRUCell(4), XT, dtype=F32, time_major=True)
out, st = (out1, out2), (st1, st2)
"""

# tf.contrib.rnn's stacked bidirectional layers (TF 2 has no contrib: the TF side composes them
# from bidirectional_dynamic_rnn under the same scopes, as contrib did)
PROGRAMS["stack_bidirectional_dynamic"] = """
out, st_fw, st_bw = R.stack_bidirectional_dynamic_rnn(
    [R.GRUCell(4), R.LSTMCell(3, use_peepholes=True)], [R.GRUCell(2), R.BasicLSTMCell(3)], X,
    initial_states_bw=[make_state(R.GRUCell(2)), None], sequence_length=L, dtype=F32)
st = (st_fw, st_bw)
"""

PROGRAMS["stack_bidirectional_static"] = """
with R.variable_scope("enc"):
    out, st_fw, st_bw = R.stack_bidirectional_rnn([R.GRUCell(4), R.GRUCell(3)],
                                                  [R.GRUCell(4), R.GRUCell(2)], XS,
                                                  sequence_length=L, dtype=F32)
st = (st_fw, st_bw)
"""

# raw_rnn: the documented reading of a TensorArray with lengths, from a given initial state ...
PROGRAMS["raw_rnn_lengths"] = """
cell = R.LSTMCell(5, use_peepholes=True)
inputs_ta = R.TensorArray(dtype=F32, size=T).unstack(XT)

def loop_fn(time, cell_output, cell_state, loop_state):
    next_state = make_state(cell) if cell_output is None else cell_state
    finished = time >= L
    next_input = R.cond(R.reduce_all(finished), lambda: R.zeros([B, D], dtype=F32),
                        lambda: inputs_ta.read(time))
    return finished, next_input, next_state, cell_output, None

with R.variable_scope("decoder"):
    emit_ta, st, _ = R.raw_rnn(cell, loop_fn)
out = emit_ta.stack()
"""

# ... and a decoder feeding its output back, emitting a tuple and summing into its loop state
PROGRAMS["raw_rnn_feedback"] = """
cell = R.MultiRNNCell([R.GRUCell(4), R.BasicRNNCell(4)])

def loop_fn(time, cell_output, cell_state, loop_state):
    finished = time >= L
    if cell_output is None:
        one = R.zeros([4], dtype=F32)  # emit_structure: one batch entry's emission
        return finished, XT[0], cell.zero_state(B, F32), (one, one), R.zeros([B, 4], dtype=F32)
    emit = (cell_output, cell_output * cell_output)
    return finished, R.tanh(cell_output), cell_state, emit, loop_state + cell_output

emit_ta, st, total = R.raw_rnn(cell, loop_fn)
out = (emit_ta[0].stack(), emit_ta[1].stack(), total)
"""

# a hand-written loop of lone steps: a GRU stack's call (each layer's own step) and a GRU's
PROGRAMS["lone_steps"] = """
cell = R.MultiRNNCell([R.GRUCell(4), R.GRUCell(3, activation=R.relu)])
cell2 = R.GRUCell(5)
state, state2 = make_state(cell), make_state(cell2)
outs = []
with R.variable_scope("decoder"):
    for t in range(T):
        o, state = cell(XS[t], state)
        o2, state2 = cell2(XS[t], state2)
        outs += [o, o2]
out, st = outs, (state, state2)
"""

PROGRAMS["scoped_stack_with_orthogonal"] = """
with R.variable_scope("model", initializer=R.orthogonal()):
    fw = R.MultiRNNCell([R.GRUCell(4), R.LSTMCell(4, use_peepholes=True)])
    bw = R.MultiRNNCell([R.GRUCell(4), R.BasicLSTMCell(4)])
    out, st = R.bidirectional_dynamic_rnn(fw, bw, X, sequence_length=L, dtype=F32)
"""


def inputs() -> dict:
    rs = np.random.RandomState(0)
    x = rs.uniform(-1, 1, size=(B, T, D)).astype(np.float32)
    return {"X": x, "L": np.asarray(LENGTHS, np.int32)}


def state_arrays(sizes: list, seed: int, batch: int = B) -> list:
    """One random ``[batch, n]`` array per flattened state size, drawn in flattening order."""
    rs = np.random.RandomState(seed)
    return [rs.uniform(-1, 1, size=(batch, n)).astype(np.float32) for n in sizes]


def loss_weights(shape: tuple, k: int) -> np.ndarray:
    """Fixed weights for the ``k``-th output leaf, so the loss reaches every element differently."""
    n = int(np.prod(shape))
    return np.sin(np.arange(n) * 0.37 + k).reshape(shape).astype(np.float32)
