"""Variable scopes: names, numbering, reuse, initializer inheritance and errors, against real TF1."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from scope_programs import ERROR_PHRASES, PROGRAMS, run_program
from tf_oracle import requires_tf, run_tf

import rnnkit as rk

_TF_SIDE = Path(__file__).with_name("scope_programs.py").read_text() + """
tf1.disable_eager_execution()
out = {}
for name, src in PROGRAMS.items():
    tf1.reset_default_graph()
    api = dict(vs=tf1.variable_scope, gv=tf1.get_variable, AUTO=tf1.AUTO_REUSE,
               const=tf1.constant_initializer, ortho=tf1.orthogonal_initializer, INT=tf.int32)
    r = run_program(src, api)
    tvars = tf1.global_variables()
    with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        vals = sess.run(tvars)
    r["vars"] = [[v.name, v.shape.as_list(), np.asarray(x, np.float64).ravel().tolist()]
                 for v, x in zip(tvars, vals)]
    out[name] = r
RESULT["programs"] = out
"""


def run_rnnkit(src: str) -> dict:
    rk.reset_default_graph()
    api = dict(vs=rk.variable_scope, gv=rk.get_variable, AUTO=rk.AUTO_REUSE,
               const=rk.init.constant, ortho=rk.init.orthogonal, INT=torch.int32)
    result = run_program(src, api)
    result["vars"] = [[v.name, list(v.shape), v.detach().double().ravel().tolist()]
                      for v in rk.global_variables()]
    return result


@pytest.fixture(scope="module")
def tf_programs():
    return run_tf(_TF_SIDE)["programs"]


@pytest.mark.oracle
@requires_tf
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_program_matches_tf1(program, tf_programs):
    ours, theirs = run_rnnkit(PROGRAMS[program]), tf_programs[program]
    assert [v[:2] for v in ours["vars"]] == [v[:2] for v in theirs["vars"]]
    for (name, shape, a), (_, _, b) in zip(ours["vars"], theirs["vars"], strict=True):
        if len(b) > 1 and len(set(b)) == 1:  # constant or zeros initializer: exact agreement
            assert a == b, name
        else:  # the default glorot_uniform: same bound
            limit = np.sqrt(6.0 / (shape[0] + (shape[1] if len(shape) > 1 else shape[0])))
            assert max(map(abs, a)) <= limit and max(map(abs, b)) <= limit, name
    assert ("error" in ours) == ("error" in theirs), (ours.get("error"), theirs.get("error"))
    if "error" in theirs:
        assert ours["error"][0] == theirs["error"][0]
        phrase = ERROR_PHRASES[program]
        assert phrase in theirs["error"][1] and phrase in ours["error"][1], (ours, theirs)


def test_provenance_records_where_the_initializer_came_from():
    with rk.variable_scope("m", initializer=rk.init.constant(3.0)):
        a = rk.get_variable("a", [2])
        b = rk.get_variable("b", [2], initializer="zeros")
        with rk.variable_scope("inner"):
            c = rk.get_variable("c", [2])
    d = rk.get_variable("d", [2, 2])
    assert (a.provenance.origin, a.provenance.scope) == ("scope", "m")
    assert repr(a.provenance.initializer) == repr(rk.init.constant(3.0))
    assert b.provenance.origin == "argument"
    assert (c.provenance.origin, c.provenance.scope) == ("scope", "m")
    assert d.provenance.origin == "default" and "glorot_uniform" in repr(d.provenance.initializer)
    table = rk.describe()
    assert table["m/a:0"]["origin"] == "scope 'm'"
    assert table["d:0"]["origin"] == "default"


def test_scope_initializer_that_cannot_make_a_shape_falls_back_and_says_so():
    with rk.variable_scope("model", initializer=rk.init.orthogonal()):
        w = rk.get_variable("w", [4, 4])
        peep = rk.get_variable("w_f_diag", [4])
    assert torch.allclose(w.T @ w, torch.eye(4), atol=1e-5)
    assert peep.provenance.origin == "fallback"
    assert "orthogonal" in peep.provenance.note and "glorot_uniform" in peep.provenance.note
    assert "fallback" in rk.describe()["model/w_f_diag:0"]["origin"]
    with pytest.raises(ValueError, match="rank"):  # an explicit argument is never replaced
        rk.get_variable("v", [4], initializer=rk.init.orthogonal())


def test_variables_are_parameters_with_tf_names():
    v = rk.get_variable("x", [3], trainable=False)
    assert isinstance(v, torch.nn.Parameter) and not v.requires_grad
    assert v.name == "x:0" and v.op_name == "x"
    assert rk.trainable_variables() == [] and rk.global_variables() == [v]


def test_value_initializer_and_dtype_by_name():
    v = rk.get_variable("v", initializer=np.arange(6.0).reshape(2, 3), dtype="float32")
    assert v.shape == (2, 3) and v.dtype == torch.float32 and v[1, 2] == 5.0
    with pytest.raises(ValueError, match="omit shape"):
        rk.get_variable("w", [3, 3], initializer=np.zeros((2, 3)))


@pytest.mark.parametrize("bad, match", [
    (dict(name="v", shape=[-1, 2]), "non-negative"),
    (dict(name="v", shape="ab"), "list of ints"),
    (dict(name="", shape=[1]), "name must be a non-empty str"),
    (dict(name="v", shape=[1], dtype="notadtype"), "dtype"),
    (dict(name="v", shape=[1], initializer="no_such_init"), "no_such_init"),
])
def test_get_variable_argument_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rk.get_variable(**bad)


def test_bad_reuse_value():
    with pytest.raises(ValueError, match="reuse must be"):
        with rk.variable_scope("a", reuse="yes"):
            pass


def test_scopes_are_per_thread():
    barrier = threading.Barrier(2)
    names = {}

    def work(tag):
        with rk.variable_scope(tag):
            barrier.wait()
            with rk.variable_scope(None, default_name="cell"):
                names[tag] = rk.get_variable("k", [1]).name

    threads = [threading.Thread(target=work, args=(t,)) for t in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert names == {"left": "left/cell/k:0", "right": "right/cell/k:0"}
    assert {v.name for v in rk.global_variables()} == set(names.values())


def test_embedding_lookup_single_table():
    table = torch.arange(12.0).reshape(4, 3)
    out = rk.embedding_lookup(table, [[0, 3], [2, 2]])
    assert out.shape == (2, 2, 3) and torch.equal(out[0, 1], table[3])
    with pytest.raises(ValueError, match=r"ids must be in \[0, 4\), found 4"):
        rk.embedding_lookup(table, [4])
    with pytest.raises(TypeError, match="integers"):
        rk.embedding_lookup(table, [0.5])


@pytest.mark.oracle
@requires_tf
def test_embedding_lookup_sharded_matches_tf():
    rng = np.random.default_rng(0)
    shards = [rng.standard_normal((n, 3)).astype(np.float32) for n in (4, 3, 3)]
    ids = rng.integers(0, 10, size=(5, 2))
    res = run_tf("""
shards = [INPUTS[f"s{i}"] for i in range(3)]
for strategy in ("mod", "div"):
    RESULT[strategy] = tf1.nn.embedding_lookup(shards, INPUTS["ids"],
                                               partition_strategy=strategy).numpy()
RESULT["norm"] = tf1.nn.embedding_lookup(shards[0] * 10, INPUTS["ids"] % 4, max_norm=1.5).numpy()
""", {"ids": ids, **{f"s{i}": s for i, s in enumerate(shards)}})
    tshards = [torch.from_numpy(s) for s in shards]
    for strategy in ("mod", "div"):
        ours = rk.embedding_lookup(tshards, torch.from_numpy(ids), partition_strategy=strategy)
        np.testing.assert_allclose(ours.numpy(), res[strategy], rtol=1e-6)
    ours = rk.embedding_lookup(tshards[0] * 10, torch.from_numpy(ids % 4), max_norm=1.5)
    np.testing.assert_allclose(ours.numpy(), res["norm"], rtol=1e-5)
