"""Keras ``RNN([cells])`` / ``StackedRNNCells``: against real Keras 3 (outputs, nested states,
weight names, ``.keras`` files both ways), and rnnkit's own properties (configs, the fast path
against the reference loop, stateful calls, errors)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from fast_checks import compare
from tf_oracle import requires_tf, run_tf

from rnnkit import layers as L
from rnnkit.io import load_keras, save_keras

B, T, F = 3, 6, 4
HOLES = [[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 0]]
CASES = [{"rs": rs, "st": st, "gb": gb, "mask": m, "init": False}
         for rs, st, gb, m in itertools.product((False, True), (False, True), (False, True),
                                                (False, True))]
CASES += [{"rs": True, "st": True, "gb": False, "mask": True, "init": True}]


def _cells():
    return [L.LSTMCell(5, name="lstm_cell"), L.GRUCell(4, reset_after=False, name="gru_cell"),
            L.SimpleRNNCell(3, name="simple_rnn_cell"), L.LSTMCell(2, name="lstm_cell_1")]


SCRIPT = """
import keras
from keras import layers as KL
CASES = json.loads(INPUTS["spec"].item())
X, MASK = INPUTS["x"], INPUTS["mask"].astype(bool)

def cells():
    return [KL.LSTMCell(5, name="lstm_cell"), KL.GRUCell(4, reset_after=False, name="gru_cell"),
            KL.SimpleRNNCell(3, name="simple_rnn_cell"), KL.LSTMCell(2, name="lstm_cell_1")]

def record(prefix, out, layer):
    for k, o in enumerate(keras.tree.flatten(out)):
        RESULT[f"{prefix}:out:{k}"] = np.asarray(o)
    for w in layer.weights:
        RESULT[f"{prefix}:w:{w.path}"] = np.asarray(w)

for i, c in enumerate(CASES):
    keras.backend.clear_session()  # the stack's automatic name: stacked_rnn_cells
    layer = KL.RNN(cells(), return_sequences=c["rs"], return_state=c["st"], go_backwards=c["gb"],
                   name="r")
    kw = {"mask": MASK} if c["mask"] else {}
    if c["init"]:
        kw["initial_state"] = [[INPUTS["h0"], INPUTS["c0"]], [INPUTS["h1"]], [INPUTS["h2"]],
                               [INPUTS["h3"], INPUTS["c3"]]]
    record(f"case{i}", layer(X, **kw), layer)

# each model as a file Keras writes, for rnnkit to load, and rnnkit's, for Keras to load
def both_ways(name, model, feed):
    for w in model.weights:
        w.assign(np.random.default_rng(len(w.path)).standard_normal(w.shape).astype("float32")
                 * 0.5)
    model.save(f"{INPUTS['dir'].item()}/keras_{name}.keras")
    for k, o in enumerate(keras.tree.flatten(model(INPUTS[feed]))):
        RESULT[f"keras_{name}:out:{k}"] = np.asarray(o)
    mine = keras.saving.load_model(f"{INPUTS['dir'].item()}/rnnkit_{name}.keras")
    for k, o in enumerate(keras.tree.flatten(mine(INPUTS[feed]))):
        RESULT[f"rnnkit_{name}:out:{k}"] = np.asarray(o)

both_ways("seq", keras.Sequential([keras.Input((6, 4)), KL.Masking(0.0, name="mk"),
                                   KL.RNN(cells(), return_sequences=True, name="r"),
                                   KL.Dense(2, name="d")]), "x_holes")

# functional, the stack's nested states as outputs and as a Dense layer's input
inp = keras.Input((6, 4))
out, (h1, c1), h2 = KL.RNN([KL.LSTMCell(5), KL.GRUCell(3)], return_state=True, name="r")(inp)
both_ways("func", keras.Model(inp, [out, KL.Dense(2, name="d")(c1), h2]), "x")

# a Bidirectional stack: each direction's states nested
inp = keras.Input((6, 4))
out, (h1, c1), h2, (bh1, bc1), bh2 = KL.Bidirectional(
    KL.RNN([KL.LSTMCell(5), KL.GRUCell(3)], return_state=True), name="bi")(inp)
both_ways("bi", keras.Model(inp, [out, c1, bh2]), "x")
"""


def _rnnkit_bidirectional():
    inp = L.Input((6, 4))
    out, (_, c1), _, _, bh2 = L.Bidirectional(
        L.RNN([L.LSTMCell(5), L.GRUCell(3)], return_state=True), name="bi")(inp)
    return L.Model(inp, [out, c1, bh2])


def _rnnkit_functional():
    inp = L.Input((6, 4))
    out, (_, c1), h2 = L.RNN([L.LSTMCell(5), L.GRUCell(3)], return_state=True, name="r")(inp)
    return L.Model(inp, [out, L.Dense(2, name="d")(c1), h2])


def _rnnkit_model():
    return L.Sequential([L.Masking(0.0, name="mk"), L.RNN(_cells(), return_sequences=True, name="r"),
                         L.Dense(2, name="d")])


FILES = {"seq": _rnnkit_model, "func": _rnnkit_functional, "bi": _rnnkit_bidirectional}
FEEDS = {"seq": "x_holes", "func": "x", "bi": "x"}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stacked")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    inputs = {"x": x, "mask": np.array(HOLES, np.int32), "x_holes": x * np.array(HOLES)[..., None]
              .astype(np.float32), "dir": np.array(str(tmp)),
              "spec": np.array(json.dumps(CASES))}
    for name, n in (("h0", 5), ("c0", 5), ("h1", 4), ("h2", 3), ("h3", 2), ("c3", 2)):
        inputs[name] = rng.standard_normal((B, n)).astype(np.float32)
    gen, mine = torch.Generator().manual_seed(5), {}
    for name, make in FILES.items():
        model, feed = make(), torch.from_numpy(inputs[FEEDS[name]])
        model(feed)
        with torch.no_grad():
            for w in model.weights:
                w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
            mine[name] = [o.numpy() for o in _flat(model.eval()(feed))]
        save_keras(model, tmp / f"rnnkit_{name}.keras")
    return tmp, inputs, mine, run_tf(SCRIPT, inputs, legacy_keras=False)


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat(o)]
    return [out]


@pytest.mark.oracle
@requires_tf
@pytest.mark.parametrize("i", range(len(CASES)), ids=[
    f"rs{c['rs']:d}-st{c['st']:d}-gb{c['gb']:d}-mask{c['mask']:d}{'-init' if c['init'] else ''}"
    for c in CASES])
def test_a_stack_matches_keras(oracle, i):
    """Keras's weights copied by name (the names must be Keras 3's), then every output and
    every state of the nested state lists to 1e-5."""
    _, inputs, _, result = oracle
    c = CASES[i]
    L.clear_session()  # the stack's automatic name: stacked_rnn_cells, as Keras's
    layer = L.RNN(_cells(), return_sequences=c["rs"], return_state=c["st"], go_backwards=c["gb"],
                  name="r")
    kw = {"mask": torch.tensor(HOLES, dtype=torch.bool)} if c["mask"] else {}
    if c["init"]:
        s = {k: torch.from_numpy(inputs[k]) for k in ("h0", "c0", "h1", "h2", "h3", "c3")}
        kw["initial_state"] = [[s["h0"], s["c0"]], [s["h1"]], [s["h2"]], [s["h3"], s["c3"]]]
    x = torch.from_numpy(inputs["x"])
    layer(x, **kw)
    prefix = f"case{i}"
    names = sorted(k.split(":w:")[1] for k in result if k.startswith(f"{prefix}:w:"))
    assert sorted(w.op_name for w in layer.weights) == names
    with torch.no_grad():
        for w in layer.weights:
            w.copy_(torch.from_numpy(result[f"{prefix}:w:{w.op_name}"]))
    outs = _flat(layer(x, **kw))
    assert len(outs) == len([k for k in result if k.startswith(f"{prefix}:out:")])
    for k, o in enumerate(outs):
        np.testing.assert_allclose(o.detach().numpy(), result[f"{prefix}:out:{k}"], atol=1e-5,
                                   rtol=1e-5, err_msg=f"{prefix} output {k}")


@pytest.mark.oracle
@requires_tf
def test_keras_and_rnnkit_files_with_a_stack_load_in_the_other(oracle):
    tmp, inputs, mine, result = oracle
    for name in FILES:
        model = load_keras(tmp / f"keras_{name}.keras")
        assert any(isinstance(m, L.StackedRNNCells) for m in model.modules())
        with torch.no_grad():
            outs = _flat(model(torch.from_numpy(inputs[FEEDS[name]])))
        assert len(outs) == len(mine[name])
        for k, (o, theirs) in enumerate(zip(outs, mine[name], strict=True)):
            np.testing.assert_allclose(o.numpy(), result[f"keras_{name}:out:{k}"], atol=1e-5,
                                       rtol=1e-5, err_msg=f"Keras's {name} model, output {k}")
            np.testing.assert_allclose(theirs, result[f"rnnkit_{name}:out:{k}"], atol=1e-5,
                                       rtol=1e-5, err_msg=f"rnnkit's {name} model, output {k}")


def test_states_nest_one_list_per_cell_and_round_trip():
    layer = L.RNN([L.LSTMCell(3), L.GRUCell(2)], return_sequences=True, return_state=True,
                  stateful=True)
    x = torch.randn(2, 4, 5)
    out, lstm_states, gru_states = layer(x)
    assert out.shape == (2, 4, 2) and [s.shape for s in lstm_states] == [(2, 3), (2, 3)]
    assert [s.shape for s in gru_states] == [(2, 2)]
    again = layer(x)  # stateful: starts from the last call's states
    layer.reset_states()
    fresh = layer(x)
    torch.testing.assert_close(fresh[0], out)
    assert not torch.allclose(again[0], out)
    layer.reset_states([[torch.zeros(2, 3), torch.zeros(2, 3)], [torch.zeros(2, 2)]])
    torch.testing.assert_close(layer(x)[0], out)
    copy = L.deserialize(L.serialize(layer))
    assert type(copy.cell).__name__ == "StackedRNNCells" and len(copy.cell.cells) == 2
    assert copy.get_config() == layer.get_config()


@pytest.mark.parametrize("lengths", [False, True])
def test_a_stack_on_the_fast_paths_matches_the_reference_loop(lengths):
    cells = [L.LSTMCell(6), L.GRUCell(5), L.SimpleRNNCell(4, activation="relu")]
    layer = L.RNN(cells, return_sequences=True, return_state=True, go_backwards=True)
    x = torch.randn(4, 7, 3, requires_grad=True)
    mask = torch.arange(7) < torch.tensor([7, 2, 5, 1])[:, None] if lengths else None
    layer(x, mask=mask)

    def run(fast):
        layer.fast = fast
        return layer(x, mask=mask)

    compare(run, [x, *layer.parameters()])


def test_the_cells_drop_out_with_their_own_masks_in_training():
    layer = L.RNN([L.LSTMCell(6, dropout=0.5), L.GRUCell(5, recurrent_dropout=0.5)])
    x = torch.randn(4, 7, 3)
    layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    assert not torch.allclose(layer(x, training=True), layer(x))


@pytest.mark.parametrize("cells,match", [([], "non-empty list"),
                                         ([L.LSTMCell(2), "gru"], r"cells\[1\] must be a Keras"),
                                         ([torch.nn.Linear(2, 2)], r"cells\[0\] must be")])
def test_a_stack_of_what_is_not_keras_cells_is_refused(cells, match):
    with pytest.raises(TypeError, match=match):
        L.RNN(cells)


def test_initial_states_of_the_wrong_structure_are_refused():
    layer = L.RNN([L.LSTMCell(3), L.GRUCell(2)])
    x = torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match="a stack of 2 cells must be a list of 2 state lists"):
        layer(x, initial_state=[torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2)])
    with pytest.raises(ValueError, match=r"initial_state\[1\]\[0\] must have shape"):
        layer(x, initial_state=[[torch.zeros(2, 3), torch.zeros(2, 3)], [torch.zeros(2, 3)]])


def test_a_stack_saves_and_loads_in_rnnkit(tmp_path):
    model = _rnnkit_model()
    x = torch.randn(2, 6, 4)
    with torch.no_grad():
        y = model.eval()(x)
    save_keras(model, tmp_path / "m.keras")
    with torch.no_grad():
        torch.testing.assert_close(load_keras(tmp_path / "m.keras")(x), y)


LEGACY = """
KL = tf.keras.layers
model = tf.keras.Sequential([tf.keras.Input((6, 4)),
                             tf.keras.layers.RNN([KL.LSTMCell(5), KL.GRUCell(3, reset_after=False),
                                                  KL.SimpleRNNCell(2)], return_sequences=True,
                                                 name="r"),
                             KL.Dense(2, name="d")])
for w in model.weights:
    w.assign(np.random.default_rng(len(w.name)).standard_normal(w.shape).astype("float32") * 0.5)
model.save(INPUTS["dir"].item() + "/legacy.h5")
RESULT["out"] = model(INPUTS["x"]).numpy()
"""


@pytest.mark.oracle
@requires_tf
def test_a_legacy_keras_2_file_with_a_stack_loads(tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 6, 4)).astype(np.float32)
    result = run_tf(LEGACY, {"x": x, "dir": np.array(str(tmp_path))}, legacy_keras=True)
    model = load_keras(tmp_path / "legacy.h5")
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, result["out"], atol=1e-5, rtol=1e-5)


def test_a_keras_layer_over_a_stack_converts_to_torch_nn():
    from rnnkit.io import to_torch

    layer = L.RNN([L.LSTMCell(4), L.LSTMCell(4)], return_sequences=True)
    x = torch.randn(2, 5, 3)
    y = layer(x)
    peer = to_torch(layer)
    assert peer.num_layers == 2
    torch.testing.assert_close(peer(x)[0], y)
    backwards = L.RNN([L.LSTMCell(4), L.LSTMCell(4)], go_backwards=True)
    backwards(x)
    with pytest.raises(ValueError, match="go_backwards=True alone"):
        to_torch(backwards)


def test_a_bidirectional_stack_nests_each_directions_states_as_keras():
    """Keras 3: ``(out, [h, c], [h], [h, c], [h])`` from an eager call; in a functional graph
    a GRU cell's state is one tensor (``(out, [h, c], h, [h, c], h)``)."""
    layer = L.Bidirectional(L.RNN([L.LSTMCell(5), L.GRUCell(3)], return_state=True,
                                  return_sequences=True))
    out = layer(torch.randn(2, 6, 4))
    shapes = [out[0].shape] + [[tuple(t.shape) for t in s] for s in out[1:]]
    assert shapes == [(2, 6, 6), [(2, 5), (2, 5)], [(2, 3)], [(2, 5), (2, 5)], [(2, 3)]]
    symbolic = L.Bidirectional(L.RNN([L.LSTMCell(5), L.GRUCell(3)], return_state=True))(
        L.Input((6, 4)))
    assert [type(s).__name__ for s in symbolic] == ["SymbolicTensor", "list", "SymbolicTensor",
                                                    "list", "SymbolicTensor"]
