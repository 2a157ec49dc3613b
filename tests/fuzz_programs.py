"""Random programs for the differential fuzz run (benchmarks/fuzz_oracle.py).

``tf1_programs(seed, count)`` draws programs in ``tf1_harness``'s language (namespace ``R``):
a random cell or stack of cells, with random options (activations, forget biases, peepholes,
clipping, projections, concatenated states, residual and dropout wrappers), unrolled by a random
driver (``dynamic_rnn`` batch- or time-major, ``bidirectional_dynamic_rnn``, ``static_rnn``,
``static_bidirectional_rnn``, ``stack_bidirectional_dynamic_rnn``, a hand-written loop of the
cell's own calls, ``raw_rnn``; the last two from session 20, so earlier seeds now draw other
programs) with or without sequence lengths, initial states, ``swap_memory`` and an outer scope,
over inputs of a random shape.
``keras_programs(seed, count)`` draws Keras models in ``keras_harness``'s language (namespace
``L``): functional models of recurrent layers, cells and stacks, ``Bidirectional``, masks,
encoder states starting decoders, ``ConvLSTM1D``, ``Sequential`` models over token ids, and
stateful models called twice. Every program is one the oracle accepts, or one both sides
should refuse; the same seed draws the same programs.
"""

from __future__ import annotations

import random

import numpy as np

ACTIVATIONS = ("R.tanh", "R.relu", "R.sigmoid", "R.softsign", "R.elu")


def _activation(rng: random.Random) -> list[str]:
    return [f"activation={rng.choice(ACTIVATIONS)}"] if rng.random() < 0.3 else []


def _cell(rng: random.Random, depth: int, concat_state: bool = False) -> tuple[str, int]:
    """One cell reading ``depth`` features, and its output size. ``concat_state``: an LSTM keeps
    ``[c, h]`` in one tensor (what a ``MultiRNNCell(state_is_tuple=False)`` needs)."""
    kind = rng.choice(("rnn", "gru", "basic_lstm", "lstm", "lstm"))
    units = rng.randint(1, 7)
    args, out = [str(units), *_activation(rng)], units
    if kind in ("basic_lstm", "lstm"):
        if rng.random() < 0.5:
            args.append(f"forget_bias={rng.choice((0.0, 0.5, 2.0))}")
        if concat_state or rng.random() < 0.2:
            args.append("state_is_tuple=False")
    if kind == "lstm":
        if rng.random() < 0.5:
            args.append("use_peepholes=True")
        if rng.random() < 0.4:
            args.append(f"cell_clip={rng.choice((0.2, 0.5, 1.5))}")
        if rng.random() < 0.4:
            out = rng.randint(1, 6)
            args.append(f"num_proj={out}")
            if rng.random() < 0.5:
                args.append(f"proj_clip={rng.choice((0.1, 0.3, 1.0))}")
    name = {"rnn": "BasicRNNCell", "gru": "GRUCell", "basic_lstm": "BasicLSTMCell",
            "lstm": "LSTMCell"}[kind]
    src = f"R.{name}({', '.join(args)})"
    if out == depth and rng.random() < 0.3:
        src = f"R.ResidualWrapper({src})"
    elif rng.random() < 0.15:
        keep = rng.choice(("output_keep_prob", "state_keep_prob", "input_keep_prob"))
        src = f"R.DropoutWrapper({src}, {keep}=1.0)"
    return src, out


def _stack(rng: random.Random, depth: int) -> tuple[str, int]:
    """A cell, or a ``MultiRNNCell`` of two or three, reading ``depth`` features."""
    if rng.random() < 0.6:
        return _cell(rng, depth)
    tuple_state = rng.random() < 0.75
    layers = []
    for _ in range(rng.randint(2, 3)):
        if tuple_state and rng.random() < 0.15:  # a stack within the stack
            inner = [_cell(rng, depth)]
            inner.append(_cell(rng, inner[0][1]))
            src, depth = f"R.MultiRNNCell([{inner[0][0]}, {inner[1][0]}])", inner[1][1]
        else:
            src, depth = _cell(rng, depth, concat_state=not tuple_state)
        layers.append(src)
    flag = "" if tuple_state else ", state_is_tuple=False"
    return f"R.MultiRNNCell([{', '.join(layers)}]{flag})", depth


def _state(rng: random.Random, cell: str, keyword: str) -> str:
    return f", {keyword}=make_state({cell})" if rng.random() < 0.35 else ""


def _program(rng: random.Random, depth: int, lengths: bool) -> str:
    driver = rng.choice(("dynamic", "dynamic", "time_major", "bidirectional", "static",
                         "static_bidirectional", "stack", "lone", "raw"))
    length = ", sequence_length=L" if lengths else ""
    swap = ", swap_memory=True" if rng.random() < 0.15 else ""
    fw, out_fw = _stack(rng, depth)
    bw, out_bw = _stack(rng, depth)
    lines = [f"cell = {fw}", f"cell2 = {bw}"]
    if driver in ("lone", "raw"):  # the state they start from
        start = "make_state(cell)" if rng.random() < 0.5 else "cell.zero_state(B, F32)"
    if driver in ("dynamic", "time_major"):
        x, major = ("X", "") if driver == "dynamic" else ("XT", ", time_major=True")
        lines.append(f"out, st = R.dynamic_rnn(cell, {x}{length}{_state(rng, 'cell', 'initial_state')}"
                     f", dtype=F32{major}{swap})")
    elif driver == "bidirectional":
        x, major = ("X", "") if rng.random() < 0.7 else ("XT", ", time_major=True")
        lines.append(f"out, st = R.bidirectional_dynamic_rnn(cell, cell2, {x}{length}"
                     f"{_state(rng, 'cell', 'initial_state_fw')}"
                     f"{_state(rng, 'cell2', 'initial_state_bw')}, dtype=F32{major}{swap})")
    elif driver == "static":
        lines.append(f"out, st = R.static_rnn(cell, XS{length}"
                     f"{_state(rng, 'cell', 'initial_state')}, dtype=F32)")
    elif driver == "lone":  # a hand-written loop of the cell's own calls, in a scope of its
        # own, as dynamic_rnn's "rnn" (the restore pass runs the program again with reuse=True:
        # new cells at the top level would be named anew, gru_cell_1, in TF as here)
        lines += [f"state = {start}", "out = []", 'with R.variable_scope("decoder"):',
                  "    for t in range(T):", "        o, state = cell(XS[t], state)",
                  "        out.append(o)", "st = state"]
    elif driver == "raw":  # raw_rnn reading the inputs up to each length (zeros past them)
        lines += [f"start = {start}", "inputs_ta = R.TensorArray(dtype=F32, size=T).unstack(XT)",
                  "def loop_fn(time, cell_output, cell_state, loop_state):",
                  "    finished = time >= L",
                  "    next_input = R.cond(R.reduce_all(finished), "
                  "lambda: R.zeros([B, D], dtype=F32), lambda: inputs_ta.read(time))",
                  "    state = start if cell_output is None else cell_state",
                  "    return finished, next_input, state, cell_output, None",
                  "emit_ta, st, _ = R.raw_rnn(cell, loop_fn)", "out = emit_ta.stack()"]
    elif driver == "static_bidirectional":
        lines.append(f"out, st_fw, st_bw = R.static_bidirectional_rnn(cell, cell2, XS{length}"
                     f"{_state(rng, 'cell', 'initial_state_fw')}"
                     f"{_state(rng, 'cell2', 'initial_state_bw')}, dtype=F32)")
        lines.append("st = (st_fw, st_bw)")
    else:
        top_fw, _ = _cell(rng, out_fw + out_bw)
        top_bw, _ = _cell(rng, out_fw + out_bw)
        lines += [f"top = {top_fw}", f"top2 = {top_bw}"]
        states = ", initial_states_fw=[make_state(cell), None]" if rng.random() < 0.35 else ""
        lines.append(f"out, st_fw, st_bw = R.stack_bidirectional_dynamic_rnn([cell, top], "
                     f"[cell2, top2], X{states}{length}, dtype=F32)")
        lines.append("st = (st_fw, st_bw)")
    if rng.random() < 0.2:
        lines = ['with R.variable_scope("outer"):', *("    " + line for line in lines)]
    return "\n".join(lines) + "\n"


def tf1_programs(seed: int, count: int, long: bool = False) -> tuple[dict[str, str],
                                                                   dict[str, np.ndarray]]:
    """``count`` random programs and their arrays (``<name>|X``, ``<name>|L``), from ``seed``;
    ``long``: longer sequences and larger batches (the fast paths' segments and chunks)."""
    rng = random.Random(seed)
    rs = np.random.RandomState(seed)
    programs, arrays = {}, {}
    for k in range(count):
        name = f"s{seed}_p{k}"
        batch = rng.randint(1, 12 if long else 5)
        steps = rng.choice((33, 64, 101) if long else (1, 2, 5, 9, 17))
        depth = rng.randint(1, 6)
        lengths = rng.random() < 0.6
        programs[name] = _program(rng, depth, lengths)
        arrays[f"{name}|X"] = rs.uniform(-1.5, 1.5, size=(batch, steps, depth)).astype(np.float32)
        arrays[f"{name}|L"] = rs.randint(0, steps + 1, size=batch).astype(np.int32)
    return programs, arrays


# ---- Keras 3 programs: a functional model over namespace L (keras.layers or rnnkit.layers) ----

def _keras_recurrent(rng: random.Random, sequences: bool, state: bool = False,
                     masked: bool = False, stateful: bool = False) -> str:
    """A random recurrent layer (maybe ``RNN`` over a cell or a stack of cells). ``masked``:
    its inputs carry a mask, so no ``unroll=True`` (Keras 3's unrolled loop applies the mask
    in input order to outputs in processing order when going backwards; rnnkit does not follow
    it there, see docs/guides/files.md)."""
    kind = rng.choice(("SimpleRNN", "GRU", "LSTM", "LSTM", "GRU", "RNN"))
    units = rng.randint(1, 6)
    args = [str(units)]
    if rng.random() < 0.3:
        args.append(f"activation={rng.choice(('tanh', 'relu', 'sigmoid', 'softsign'))!r}")
    if kind in ("GRU", "LSTM") and rng.random() < 0.3:
        args.append(f"recurrent_activation="
                    f"{rng.choice(('sigmoid', 'hard_sigmoid', 'tanh', 'relu'))!r}")
    if rng.random() < 0.2:
        args.append("use_bias=False")
    if kind == "GRU" and rng.random() < 0.4:
        args.append("reset_after=False")
    options = []
    if sequences:
        options.append("return_sequences=True")
    if state:
        options.append("return_state=True")
    if rng.random() < 0.25:
        options.append("go_backwards=True")
    if not masked and rng.random() < 0.1:
        options.append("unroll=True")
    if stateful:
        options.append("stateful=True")
    if kind != "RNN":
        return f"L.{kind}({', '.join(args + options)})"
    cells = [f"L.{rng.choice(('SimpleRNNCell', 'GRUCell', 'LSTMCell'))}({rng.randint(1, 5)})"
             for _ in range(rng.randint(1, 2))]
    cell = cells[0] if len(cells) == 1 else f"[{', '.join(cells)}]"
    if rng.random() < 0.3:
        options.append("zero_output_for_mask=True")
    return f"L.RNN({', '.join([cell, *options])})"


def _keras_program(rng: random.Random, batch: int, steps: int, depth: int) -> str:
    """A functional model; one in ten stateful (a fixed batch size, called twice: ``CALLS``)."""
    stateful = rng.random() < 0.1
    shape = f"batch_shape=({batch}, {steps}, {depth})" if stateful else f"({steps}, {depth})"
    lines = ["CALLS = 2"] if stateful else []
    lines += [f"inp = L.Input({shape})", "h = inp"]
    masked = rng.random() < 0.5
    if masked:
        lines.append("h = L.Masking()(h)")
    layers = rng.randint(1, 3)
    outs = "h"
    for k in range(layers):
        last = k == layers - 1
        if not last and not stateful and rng.random() < 0.2:
            # an encoder's final state starting a decoder of the same kind and size (maybe a
            # bidirectional one, from a bidirectional encoder's states)
            kind, units = rng.choice(("GRU", "LSTM", "SimpleRNN")), rng.randint(1, 5)
            enc = f"L.{kind}({units}, return_state=True)"
            dec = f"L.{kind}({units}, return_sequences=True)"
            if rng.random() < 0.3:
                enc, dec = f"L.Bidirectional({enc})", f"L.Bidirectional({dec})"
            lines += [f"_, *st = {enc}(h)", f"h = {dec}(h, initial_state=st)"]
            continue
        sequences = not last or rng.random() < 0.5
        bidirectional = rng.random() < 0.3
        state = last and rng.random() < 0.3
        keeps = stateful and rng.random() < 0.7
        if keeps and bidirectional:  # Keras 3 fails on a stateful Bidirectional's states
            state = False
        layer = _keras_recurrent(rng, sequences, state, masked, keeps)
        if bidirectional:
            merge = rng.choice(("concat", "sum", "mul", "ave",
                                None if last and not keeps else "concat"))
            layer = f"L.Bidirectional({layer}, merge_mode={merge!r})"
            state = state or merge is None
        if state:
            lines.append(f"outs = {layer}(h)")
            outs = "outs"
        else:
            lines.append(f"h = {layer}(h)")
        if not last and rng.random() < 0.2:
            lines.append(f"h = L.TimeDistributed(L.Dense({rng.randint(1, 4)}))(h)")
    lines.append(f"model = L.Model(inp, {outs})")
    return "\n".join(lines) + "\n"


def _embedding_program(rng: random.Random, steps: int, vocab: int) -> str:
    """A ``Sequential`` from an ``Input`` of token ids through ``Embedding(mask_zero=True)``
    (id 0 masks its step) and recurrent layers."""
    items = [f"L.Input(({steps},), dtype=INT)",
             f"L.Embedding({vocab}, {rng.randint(1, 4)}, mask_zero={rng.random() < 0.8})"]
    layers = rng.randint(1, 2)
    for k in range(layers):
        layer = _keras_recurrent(rng, k < layers - 1 or rng.random() < 0.5, masked=True)
        if rng.random() < 0.3:
            layer = f"L.Bidirectional({layer}, merge_mode={rng.choice(('concat', 'sum'))!r})"
        items.append(layer)
    if rng.random() < 0.5:
        items.append(f"L.Dense({rng.randint(1, 3)}, activation='tanh')")
    return f"model = L.Sequential([{', '.join(items)}])\n"


def _conv_program(rng: random.Random, steps: int, width: int, depth: int) -> str:
    """A ``ConvLSTM1D`` or two over ``[batch, time, width, channels]`` inputs."""
    lines = [f"inp = L.Input(({steps}, {width}, {depth}))", "h = inp"]
    if rng.random() < 0.4:
        lines.append("h = L.Masking()(h)")
    layers = rng.randint(1, 2)
    for k in range(layers):
        args = [str(rng.randint(1, 4)), str(rng.choice((1, 2, 3)))]
        if rng.random() < 0.5:
            args.append("padding='same'")
        elif rng.random() < 0.3:
            args.append("strides=2")
        if rng.random() < 0.2:
            args.append("dilation_rate=2, padding='same'")
        if rng.random() < 0.2:
            args.append(f"recurrent_activation={rng.choice(('hard_sigmoid', 'tanh'))!r}")
        if rng.random() < 0.2:
            args.append("go_backwards=True")
        if k < layers - 1 or rng.random() < 0.5:
            args.append("return_sequences=True")
        lines.append(f"h = L.ConvLSTM1D({', '.join(args)})(h)")
    lines.append("model = L.Model(inp, h)")
    return "\n".join(lines) + "\n"


def keras_programs(seed: int, count: int) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """``count`` random Keras models and their inputs (``<name>|X``, with whole steps of zeros
    for ``Masking`` to find), from ``seed``."""
    rng = random.Random(seed)
    rs = np.random.RandomState(seed)
    programs, arrays = {}, {}
    for k in range(count):
        name = f"k{seed}_p{k}"
        batch, steps, depth = rng.randint(1, 5), rng.choice((1, 2, 5, 9)), rng.randint(1, 5)
        if rng.random() < 0.15:
            vocab = rng.randint(2, 9)
            programs[name] = _embedding_program(rng, steps, vocab)
            x = rs.randint(0, vocab, size=(batch, steps)).astype(np.int32)
        elif rng.random() < 0.15:
            width = rng.randint(5, 9)  # room for a kernel of 3 dilated by 2
            programs[name] = _conv_program(rng, steps, width, depth)
            x = rs.uniform(-1.5, 1.5, size=(batch, steps, width, depth)).astype(np.float32)
            x[rs.uniform(size=(batch, steps, width)) < 0.2] = 0.0  # masked positions
        else:
            programs[name] = _keras_program(rng, batch, steps, depth)
            x = rs.uniform(-1.5, 1.5, size=(batch, steps, depth)).astype(np.float32)
            x[rs.uniform(size=(batch, steps)) < 0.25] = 0.0  # masked steps
        arrays[f"{name}|X"] = x
    return programs, arrays
