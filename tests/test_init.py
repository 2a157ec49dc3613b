"""rnnkit.init: shapes, closed-form statistics, orthogonality, seeding, repr/config and errors."""

import json
import math

import numpy as np
import pytest
import torch

import rnnkit.init as I
from rnnkit.init import (
    chrono,
    compute_fans,
    constant,
    deserialize,
    from_callable,
    get,
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    identity,
    lecun_normal,
    lecun_uniform,
    ones,
    orthogonal,
    per_gate,
    random_normal,
    random_uniform,
    serialize,
    truncated_normal,
    uniform_unit_scaling,
    variance_scaling,
    xavier_normal,
    xavier_uniform,
    zeros,
)

TRUNC = 0.87962566103423978


def halves(shape, dtype):
    """A plain callable initializer importable by name (for from_callable)."""
    return np.full(shape, 0.5)


ALL = [
    zeros(), ones(), constant(), constant(2.5), constant([[1.0, 2.0], [3.0, 4.0]]),
    random_uniform(), random_uniform(-1.0, 2.0, seed=3), random_normal(),
    random_normal(1.0, 0.5, seed=4), truncated_normal(), truncated_normal(stddev=2.0, seed=1),
    variance_scaling(), variance_scaling(2.0, "fan_avg", "uniform", seed=5),
    variance_scaling(0.5, "fan_out", "untruncated_normal"),
    glorot_uniform(), glorot_normal(seed=1), xavier_uniform(), xavier_normal(), he_uniform(),
    he_normal(), lecun_uniform(), lecun_normal(seed=9), orthogonal(), orthogonal(2.0, seed=1),
    identity(), identity(0.5), uniform_unit_scaling(), uniform_unit_scaling(1.43, seed=2),
    per_gate(orthogonal(), 4), per_gate(glorot_uniform(seed=1), 2), chrono(100),
    chrono(50.0, "ijfo", seed=7), from_callable(halves),
]
RANDOM = [i for i in ALL if i.random]
SEEDED = [i for i in RANDOM if getattr(i, "seed", None) is not None]


def shape_for(init):
    if isinstance(init, constant) and isinstance(init.value, list):
        return list(np.shape(init.value))
    return [8] if isinstance(init, chrono) else [4, 4]


def flat(x):
    """The [rows, cols] matrix orthogonal() builds before reshaping."""
    return x.reshape(-1, x.shape[-1]).double()


def assert_orthogonal(x, gain=1.0, atol=1e-5):
    m = flat(x)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0], dtype=gram.dtype),
                               rtol=0, atol=atol * gain**2)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("init", ALL, ids=repr)
def test_shape_and_dtype(init, dtype):
    x = init(shape_for(init), dtype=dtype, generator=gen())
    assert x.shape == tuple(shape_for(init)) and x.dtype == dtype
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("shape", [[0, 5], [5, 0], [2, 0, 4]])
@pytest.mark.parametrize("init", [zeros(), glorot_uniform(), orthogonal(), per_gate(he_normal(), 1),
                                  uniform_unit_scaling(), truncated_normal()], ids=repr)
def test_empty_shapes(init, shape):
    assert init(shape).shape == tuple(shape)


@pytest.mark.parametrize("init", [zeros(), ones(), constant(3), identity()], ids=repr)
def test_non_random_accept_integer_dtypes(init):
    x = init([3, 3], dtype=torch.int64)
    assert x.dtype == torch.int64


@pytest.mark.parametrize("shape, fans", [
    ([], (1, 1)), ([7], (7, 7)), ([3, 5], (3, 5)), ([2, 3, 4, 5], (24, 30)), ((3, 1, 6), (3, 18)),
])
def test_compute_fans(shape, fans):
    assert compute_fans(shape) == fans


def test_glorot_uniform_bounds_and_variance():
    fan_in, fan_out = 300, 500
    x = glorot_uniform()([fan_in, fan_out], torch.float64, gen()).flatten()
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert x.abs().max() <= limit and x.abs().max() > 0.999 * limit
    assert x.var().item() == pytest.approx(limit**2 / 3, rel=0.02)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "untruncated_normal", "uniform"])
@pytest.mark.parametrize("shape", [[200, 600], [3, 4, 50, 200]])
def test_variance_scaling_statistics(shape, mode, distribution):
    scale = 2.0
    fan_in, fan_out = compute_fans(shape)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    x = variance_scaling(scale, mode, distribution)(shape, torch.float64, gen(1)).flatten()
    std = math.sqrt(scale / n)
    assert x.std().item() == pytest.approx(std, rel=0.02)
    assert abs(x.mean().item()) < 0.02 * std
    if distribution == "truncated_normal":
        assert x.abs().max() <= 2 * std / TRUNC * (1 + 1e-12)
    if distribution == "uniform":
        assert x.abs().max() <= math.sqrt(3) * std


def test_normal_is_alias_of_truncated_normal():
    assert variance_scaling(distribution="normal") == variance_scaling()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_truncated_normal_range_and_std(dtype):
    mean, stddev = 0.5, 2.0
    x = truncated_normal(mean, stddev)([500, 400], dtype, gen()).double()
    assert x.min() >= mean - 2 * stddev - 1e-6 and x.max() <= mean + 2 * stddev + 1e-6
    assert x.min() < mean - 1.99 * stddev and x.max() > mean + 1.99 * stddev
    assert x.std().item() == pytest.approx(TRUNC * stddev, rel=0.01)
    assert x.mean().item() == pytest.approx(mean, abs=0.02)


def test_random_uniform_and_normal_statistics():
    u = random_uniform(-0.3, 0.7)([400, 500], torch.float64, gen())
    assert u.min() >= -0.3 and u.max() < 0.7
    assert u.mean().item() == pytest.approx(0.2, abs=0.01)
    z = random_normal(1.0, 3.0)([400, 500], torch.float64, gen())
    assert z.mean().item() == pytest.approx(1.0, abs=0.03)
    assert z.std().item() == pytest.approx(3.0, rel=0.01)


@pytest.mark.parametrize("shape, limit", [
    ([200_000], math.sqrt(3)), ([], math.sqrt(3)), ([400, 500], math.sqrt(3 / 400)),
    ([4, 50, 300], math.sqrt(3 / 200)),
])
def test_uniform_unit_scaling_limit(shape, limit):
    factor = 1.5
    x = uniform_unit_scaling(factor)(shape, torch.float64, gen())
    assert x.abs().max() <= factor * limit
    if x.numel() > 1000:
        assert x.abs().max() > 0.999 * factor * limit


@pytest.mark.parametrize("shape", [[50, 20], [20, 50], [30, 30], [4, 5, 6], [2, 3, 12], [1, 9]])
@pytest.mark.parametrize("gain", [1.0, 3.0])
def test_orthogonal(shape, gain):
    x = orthogonal(gain)(shape, generator=gen())
    assert x.shape == tuple(shape)
    assert_orthogonal(x, gain)


def test_orthogonal_is_sign_corrected():
    """With sign(diag(R)) applied, diag(R) of Q's own QR is positive: Q equals its QR's Q."""
    q = flat(orthogonal()([40, 40], torch.float64, gen()))
    a = torch.randn(40, 40, generator=gen(), dtype=torch.float64)
    qa, ra = torch.linalg.qr(a)
    torch.testing.assert_close(q, qa * torch.sign(torch.diagonal(ra)))


@pytest.mark.parametrize("shape", [[3, 3], [2, 5], [5, 2]])
def test_identity(shape):
    torch.testing.assert_close(identity(2.0)(shape), 2.0 * torch.eye(*shape), rtol=0, atol=0)


def test_constant_values():
    assert torch.equal(constant(2.5)([2, 3]), torch.full((2, 3), 2.5))
    values = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert torch.equal(constant(values)([2, 3]), torch.tensor(values))
    assert torch.equal(constant(np.arange(6.0))([2, 3]), torch.arange(6.0).reshape(2, 3))


def test_per_gate_blocks_each_orthogonal():
    x = per_gate(orthogonal(), 4)([16, 64], generator=gen())
    blocks = x.split(16, dim=-1)
    for b in blocks:
        assert_orthogonal(b)
    assert not torch.equal(blocks[0], blocks[1])


def test_per_gate_calls_init_per_block_with_one_generator():
    g1, g2 = gen(3), gen(3)
    x = per_gate(glorot_uniform(), 4)([10, 8], generator=g1)
    expected = torch.cat([glorot_uniform()([10, 2], generator=g2) for _ in range(4)], dim=-1)
    assert torch.equal(x, expected)
    assert x.abs().max() <= math.sqrt(6 / 12)  # block fans (10, 2), not (10, 8)


def test_per_gate_seeded_inner_gives_distinct_reproducible_blocks():
    init = per_gate(orthogonal(seed=5), 2)
    x = init([6, 12])
    assert torch.equal(x, init([6, 12]))
    assert not torch.equal(x[:, :6], x[:, 6:])


@pytest.mark.parametrize("gate_order", ["ifco", "ifgo", "ijfo", "iofc", "fcoi"])
@pytest.mark.parametrize("max_len", [3, 100, 1000.0])
def test_chrono(gate_order, max_len):
    units = 500
    b = chrono(max_len, gate_order)([4 * units], torch.float64, gen())
    blocks = dict(zip(gate_order, b.split(units), strict=True))
    b_f = blocks["f"]
    assert (b_f >= 0).all() and (b_f <= math.log(max_len - 1)).all()
    assert torch.equal(blocks["i"], -b_f)
    for g in set(gate_order) - {"i", "f"}:
        assert torch.equal(blocks[g], torch.zeros(units, dtype=torch.float64))
    if max_len > 3:  # exp(b_f) is uniform on [1, max_len - 1]
        assert b_f.exp().mean().item() == pytest.approx(max_len / 2, rel=0.05)


@pytest.mark.parametrize("init", SEEDED, ids=repr)
def test_seeded_is_reproducible(init):
    shape = shape_for(init)
    assert torch.equal(init(shape), init(shape))
    other = type(init).from_config({**init.get_config(), "seed": init.seed + 1})
    assert not torch.equal(init(shape), other(shape))


@pytest.mark.parametrize("init", RANDOM, ids=repr)
def test_generator_is_used(init):
    shape = shape_for(init)
    a, b, c = (init(shape, generator=gen(seed)) for seed in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unseeded_uses_global_rng():
    torch.manual_seed(11)
    a = he_normal()([5, 5])
    torch.manual_seed(11)
    assert torch.equal(a, he_normal()([5, 5]))
    assert not torch.equal(a, he_normal()([5, 5]))


@pytest.mark.parametrize("init", ALL, ids=repr)
def test_repr_rebuilds(init):
    assert eval(repr(init), vars(I)) == init


@pytest.mark.parametrize("init, text", [
    (glorot_uniform(), "glorot_uniform()"), (he_normal(seed=2), "he_normal(seed=2)"),
    (orthogonal(), "orthogonal()"), (orthogonal(gain=2), "orthogonal(gain=2.0)"),
    (per_gate(orthogonal(), 4), "per_gate(orthogonal(), 4)"),
    (variance_scaling(2.0, distribution="uniform"),
     "variance_scaling(scale=2.0, distribution='uniform')"),
    (chrono(10), "chrono(10.0)"), (from_callable(halves), "from_callable('test_init:halves')"),
])
def test_repr_text(init, text):
    assert repr(init) == text


@pytest.mark.parametrize("init", ALL, ids=repr)
def test_config_round_trips(init):
    config = init.get_config()
    assert type(init).from_config(json.loads(json.dumps(config))) == init
    assert deserialize(json.loads(json.dumps(serialize(init)))) == init
    assert serialize(init)["class_name"] == type(init).__name__
    assert hash(deserialize(serialize(init))) == hash(init)


def test_equality_is_by_config():
    assert glorot_uniform() != xavier_uniform()  # same math, different names
    assert glorot_uniform() != variance_scaling(1.0, "fan_avg", "uniform")
    assert orthogonal(seed=1) != orthogonal(seed=2)
    assert per_gate(orthogonal(), 4) == per_gate(orthogonal(), 4)


@pytest.mark.parametrize("name, expected", [
    ("zeros", zeros()), ("zero", zeros()), ("Zeros", zeros()), ("ones", ones()), ("Ones", ones()),
    ("constant", constant(0)), ("Constant", constant(0)),
    ("glorot_uniform", glorot_uniform()), ("GlorotUniform", glorot_uniform()),
    ("glorot_normal", glorot_normal()), ("GlorotNormal", glorot_normal()),
    ("he_uniform", he_uniform()), ("HeUniform", he_uniform()),
    ("he_normal", he_normal()), ("HeNormal", he_normal()),
    ("lecun_uniform", lecun_uniform()), ("LecunUniform", lecun_uniform()),
    ("lecun_normal", lecun_normal()), ("LecunNormal", lecun_normal()),
    ("orthogonal", orthogonal()), ("Orthogonal", orthogonal()),
    ("OrthogonalInitializer", orthogonal()), ("identity", identity()), ("Identity", identity()),
    ("random_uniform", random_uniform(-0.05, 0.05)), ("uniform", random_uniform(-0.05, 0.05)),
    ("RandomUniform", random_uniform(-0.05, 0.05)),
    ("random_normal", random_normal(0.0, 0.05)), ("RandomNormal", random_normal(0.0, 0.05)),
    ("truncated_normal", truncated_normal(0.0, 0.05)),
    ("TruncatedNormal", truncated_normal(0.0, 0.05)),
    ("variance_scaling", variance_scaling()), ("VarianceScaling", variance_scaling()),
    ("uniform_unit_scaling", uniform_unit_scaling()),
])
def test_get_keras_names(name, expected):
    assert get(name) == expected


def test_get_other_identifiers():
    assert get(None) is None
    init = orthogonal(seed=3)
    assert get(init) is init
    keras = {"module": "keras.initializers", "class_name": "RandomNormal",
             "config": {"mean": 0.0, "stddev": 0.05, "seed": 7}, "registered_name": None}
    assert get(keras) == random_normal(0.0, 0.05, seed=7)
    tf1 = {"class_name": "RandomUniform",
           "config": {"minval": 0.0, "maxval": None, "seed": None, "dtype": "float32"}}
    assert get(tf1) == random_uniform(0.0, 1.0)
    assert get({"class_name": "HeNormal", "config": {"seed": None}}) == he_normal()
    wrapped = get(halves)
    assert isinstance(wrapped, from_callable)
    assert torch.equal(wrapped([2, 3]), torch.full((2, 3), 0.5))
    assert get(serialize(per_gate(orthogonal(), 4))) == per_gate(orthogonal(), 4)


ERRORS = [
    (lambda: orthogonal()([4]), ValueError,
     r"orthogonal: shape must have rank >= 2, got shape \[4\] \(rank 1\)"),
    (lambda: identity()([2, 2, 2]), ValueError, r"identity: shape must have rank 2, got shape"),
    (lambda: zeros()([2, -1]), ValueError,
     r"zeros: shape must be a sequence of non-negative ints, got \[2, -1\]"),
    (lambda: he_normal()(3), ValueError, r"he_normal: shape must be a sequence.*got 3"),
    (lambda: ones()([2.5]), ValueError, r"shape must be a sequence of non-negative ints"),
    (lambda: ones()([True]), ValueError, r"shape must be a sequence of non-negative ints"),
    (lambda: compute_fans("ab"), ValueError, r"compute_fans: shape must be"),
    (lambda: variance_scaling(mode="fan"), ValueError,
     r"mode must be one of \('fan_in', 'fan_out', 'fan_avg'\), got 'fan'"),
    (lambda: variance_scaling(distribution="gauss"), ValueError,
     r"distribution must be one of .*'uniform'.*got 'gauss'"),
    (lambda: variance_scaling(scale=0), ValueError, r"scale must be > 0, got 0"),
    (lambda: glorot_uniform(seed=1.5), TypeError, r"glorot_uniform: seed must be an int"),
    (lambda: per_gate(orthogonal(), 3)([4, 10]), ValueError,
     r"divisible by num_gates=3, got shape \[4, 10\]"),
    (lambda: per_gate(orthogonal(), 0), ValueError, r"num_gates must be a positive int, got 0"),
    (lambda: per_gate("orthogonal", 4), TypeError, r"per_gate: init must be an Initializer"),
    (lambda: chrono(2), ValueError, r"chrono: max_len must be > 2, got 2"),
    (lambda: chrono(10, "ifcc"), ValueError, r"gate_order must be 4 letters.*got 'ifcc'"),
    (lambda: chrono(10, "ifcgo"), ValueError, r"gate_order must be"),
    (lambda: chrono(10)([6]), ValueError, r"chrono: shape must be \[4 \* units\].*got shape \[6\]"),
    (lambda: chrono(10)([4, 4]), ValueError, r"chrono: shape must be \[4 \* units\]"),
    (lambda: constant([1.0, 2.0, 3.0])([2, 2]), ValueError,
     r"constant: value has shape \[3\] \(3 elements\) but shape is \[2, 2\]"),
    (lambda: constant([[1, 2], [3]]), ValueError, r"constant: value must be"),
    (lambda: random_uniform(1.0, 0.0), ValueError, r"maxval must be >= minval"),
    (lambda: random_normal(stddev=-1), ValueError, r"random_normal: stddev must be >= 0"),
    (lambda: orthogonal(gain="x"), ValueError, r"orthogonal: gain must be a finite real"),
    (lambda: zeros()([2], dtype="float32"), TypeError, r"zeros: dtype must be a torch.dtype"),
    (lambda: glorot_uniform()([2, 2], dtype=torch.int32), TypeError,
     r"glorot_uniform: dtype must be a floating torch dtype, got torch.int32"),
    (lambda: per_gate(orthogonal(), 2)([2, 2], dtype=torch.int32), TypeError,
     r"per_gate: dtype must be a floating"),
    (lambda: orthogonal()([2, 2], generator=3), TypeError, r"generator must be a torch.Generator"),
    (lambda: get("glorot"), ValueError,
     r"unknown initializer identifier 'glorot'; known names: \[.*'glorot_uniform'"),
    (lambda: get(3), TypeError, r"get: identifier must be .* got int"),
    (lambda: deserialize({"class_name": "Foo"}), ValueError, r"unknown class_name 'Foo'"),
    (lambda: deserialize({"config": {}}), ValueError, r"must be a dict with a str 'class_name'"),
    (lambda: serialize("zeros"), TypeError, r"serialize: init must be an Initializer"),
    (lambda: from_callable(3), TypeError, r"from_callable: fn must be callable"),
    (lambda: from_callable(lambda s, d: 0).get_config(), ValueError, r"cannot be serialized"),
]


@pytest.mark.parametrize("call, exc, match", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


class halved_orthogonal(I.Initializer):
    """A user-defined initializer: subclasses register, so they serialize like built-ins."""

    random = True

    def __init__(self, seed=None):
        self.seed = seed

    def _sample(self, shape, dtype, generator):
        return orthogonal(0.5)(shape, dtype, generator)


def test_user_subclass_registers_and_round_trips():
    init = halved_orthogonal(seed=3)
    assert repr(init) == "halved_orthogonal(seed=3)"
    assert deserialize(serialize(init)) == init
    assert torch.equal(init([4, 4]), init([4, 4]))
    assert_orthogonal(init([6, 4]), gain=0.5)
