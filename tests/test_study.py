"""The initialization study: data generators against closed forms, the gradient-through-time
measurement against hand-derived and independent gradients, the configurations' initial values,
the verdict rule, and a tiny in-process run that writes every output."""

import math

import numpy as np
import pytest
import torch

import rnnkit as rk
from rnnkit import study
from rnnkit.study import models, report, tasks, train


@pytest.fixture(autouse=True)
def _fresh_graph():
    rk.reset_default_graph()
    yield
    rk.reset_default_graph()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- data ------------------------------------------------------------------------------------
def test_adding_targets_are_the_sum_of_the_marked_pair():
    x, y = tasks.adding_problem(500, 31, _gen())
    values, markers = x[..., 0].numpy(), x[..., 1].numpy()
    assert x.shape == (500, 31, 2) and y.shape == (500, 1)
    assert ((values >= 0) & (values < 1)).all()
    for b in range(500):
        (first, second), = [np.flatnonzero(markers[b])]
        assert 0 <= first < 15 <= second < 31
        assert y[b, 0].item() == pytest.approx(values[b, first] + values[b, second], abs=1e-6)


def test_adding_baseline_is_the_variance_of_the_target():
    _, y = tasks.adding_problem(200_000, 4, _gen(1))
    mse_of_the_mean = float(((y - 1.0) ** 2).mean())
    assert tasks.adding_task(4).baseline == pytest.approx(1 / 6)
    assert mse_of_the_mean == pytest.approx(1 / 6, abs=3e-3)  # 6 standard errors


def test_copy_task_layout():
    K, S, delay = 5, 4, 7
    x, y = tasks.copy_task(64, delay, K, S, _gen())
    steps = delay + 2 * S
    assert x.shape == (64, steps, K + 2) and y.shape == (64, steps)
    tokens = x.argmax(-1)
    assert torch.equal(x.sum(-1), torch.ones(64, steps))  # one-hot
    assert ((tokens[:, :S] >= 1) & (tokens[:, :S] <= K)).all()
    assert (tokens[:, delay + S - 1] == K + 1).all()  # the delimiter
    rest = torch.cat([tokens[:, S:delay + S - 1], tokens[:, delay + S:]], 1)
    assert (rest == 0).all()
    assert torch.equal(y[:, -S:], tokens[:, :S]) and (y[:, :-S] == 0).all()


def test_copy_baseline_is_the_loss_of_the_best_memoryless_guess():
    task = tasks.copy_task_spec(delay=9, symbols=6, length=3)
    x, y = task.sample(32, _gen())
    logits = torch.full((32, task.steps, task.output_size), -1e4)
    logits[:, :-3, 0] = 1e4  # certain blank before the answer
    logits[:, -3:, 1:] = 0.0  # uniform over the symbols after the delimiter
    loss = task.per_example_loss(logits, y)
    assert task.baseline == pytest.approx(3 * math.log(6) / 15)
    torch.testing.assert_close(loss, torch.full((32,), task.baseline), rtol=1e-5, atol=1e-6)


def test_generators_are_fixed_by_the_seed():
    for sample in (lambda g: tasks.adding_problem(8, 10, g), lambda g: tasks.copy_task(8, 5, generator=g)):
        a, b = sample(_gen(3)), sample(_gen(3))
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("call, word", [
    (lambda: tasks.adding_problem(0, 10), "batch"),
    (lambda: tasks.adding_problem(4, 1), "length"),
    (lambda: tasks.copy_task(4, 0), "delay"),
    (lambda: tasks.copy_task(4, 3, symbols=1), "symbols"),
    (lambda: tasks.copy_task_spec(3, length=0), "length"),
])
def test_generators_reject_bad_sizes(call, word):
    with pytest.raises(ValueError, match=word):
        call()


# -- gradient through time ---------------------------------------------------------------------
def _linear_config(U_init):
    return models.StudyConfig(
        "linear", "linear RNN", "BasicRNNCell(linear)",
        lambda H, T: (rk.BasicRNNCell(H, activation="linear"),
                      models.fused_kernel(rk.init.glorot_uniform(), U_init, H), {}))


def test_gradient_norms_of_a_linear_rnn_match_the_hand_derivation():
    # h_t = x_t W + h_{t-1} U + b; loss_b = (h_T k + c - y_b)^2, so
    # d loss_b / d h_t = 2 (o_b - y_b) k^T (U^T)^(T-t).
    torch.manual_seed(0)
    T, H = 12, 5
    task = tasks.adding_task(T)
    model = models.StudyModel(_linear_config(rk.init.orthogonal(gain=0.8)), 2, 1, H, T)
    x, y = task.sample(7, _gen())
    got = train.state_gradient_norms(model, task, x, y)
    U = model.cell.gates()["U_h"].detach().double()
    k = model.kernel.detach().double()[:, 0]
    with torch.no_grad():
        o = model(x)[:, -1, 0].double()
    v = 2 * (o - y[:, 0].double())[:, None] * k[None, :]  # d loss / d h_T, [B, H]
    want = []
    for _ in range(T):
        want.append(v.norm(dim=1).mean())
        v = v @ U.T
    want = torch.stack(want[::-1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    # orthogonal U times 0.8: each step back shrinks the norm by exactly 0.8
    torch.testing.assert_close(got[:-1] / got[1:], torch.full((T - 1,), 0.8, dtype=torch.float64),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["lstm_fb1", "gru_bias1"])
def test_gradient_norms_match_autograd_through_dynamic_rnn(name):
    # Independent path: restart dynamic_rnn at step t from a leaf state and differentiate.
    torch.manual_seed(1)
    T, H = 9, 6
    task = tasks.adding_task(T)
    config = next(c for c in models.CONFIGS if c.name == name)
    model = models.StudyModel(config, 2, 1, H, T)
    x, y = task.sample(5, _gen(2))
    got = train.state_gradient_norms(model, task, x, y)
    with torch.no_grad():
        _, states = model.forward_states(x)
    for t in (1, 4, T):
        leaves = [s.detach().clone().requires_grad_() for s in
                  (states[t - 1] if isinstance(states[t - 1], tuple) else (states[t - 1],))]
        start = rk.LSTMStateTuple(*leaves) if len(leaves) == 2 else leaves[0]
        if t < T:
            out, _ = rk.dynamic_rnn(model.cell, x[:, t:], initial_state=start)
            h_last = out[:, -1]
        else:
            h_last = leaves[-1]
        loss = ((h_last @ model.kernel + model.bias)[:, 0] - y[:, 0]) ** 2
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
        sq = sum((g.double() ** 2).sum(-1) for g in grads if g is not None)
        assert got[t - 1].item() == pytest.approx(sq.sqrt().mean().item(), rel=1e-5)


# -- initial values of the configurations ----------------------------------------------------------
def _built(name, H=8, T=50):
    rk.reset_default_graph()
    config = next(c for c in models.CONFIGS if c.name == name)
    return models.StudyModel(config, 2, 1, H, T)


def test_configurations_initialize_as_described():
    H = 8
    eye = torch.eye(H)
    U = _built("rnn_orthogonal").cell.gates()["U_h"].detach()
    torch.testing.assert_close(U @ U.T, eye, atol=1e-5, rtol=0)
    irnn = _built("irnn").cell
    assert torch.equal(irnn.gates()["U_h"].detach(), eye)
    assert irnn.activation is torch.relu
    for name, fb in (("lstm_fb0", 0.0), ("lstm_fb1", 1.0), ("lstm_chrono", 0.0), ("lstm_torch", 0.0)):
        assert _built(name).cell.forget_bias == fb
    g = _built("lstm_chrono", T=50).cell.gates()
    assert (g["b_f"] >= 0).all() and (g["b_f"] <= math.log(49) + 1e-6).all()
    torch.testing.assert_close(g["b_i"], -g["b_f"])
    assert (g["b_j"] == 0).all() and (g["b_o"] == 0).all()
    torch_cell = _built("lstm_torch").cell
    for var in (torch_cell.get_parameter("kernel"), torch_cell.get_parameter("bias")):
        assert var.abs().max() <= 1 / math.sqrt(H) and var.std() > 0.5 / math.sqrt(3 * H)
    assert (_built("gru_bias1").cell.gates()["b_r"] == 1).all()
    assert (_built("gru_bias0").cell.gates()["b_u"] == 0).all()


def test_provenance_names_the_initializer_that_made_each_variable():
    rows = {r["name"]: r for r in rk.describe(_built("lstm_chrono", H=4, T=20)).rows}
    bias = rows["lstm_chrono/basic_lstm_cell/bias:0"]
    assert bias["initializer"].startswith("chrono(20") and bias["origin"] == "argument"
    rows = {r["name"]: r for r in rk.describe(_built("irnn", H=4)).rows}
    kernel = rows["irnn/basic_rnn_cell/kernel:0"]
    assert "identity()" in kernel["initializer"] and kernel["origin"] == "scope 'irnn'"


def test_fused_kernel_replaces_each_recurrent_gate_block():
    init = models.fused_kernel(rk.init.glorot_uniform(), rk.init.identity(gain=0.5), 3)
    k = init([5, 6], generator=_gen())
    torch.testing.assert_close(k[2:], torch.cat([0.5 * torch.eye(3)] * 2, 1))
    limit = math.sqrt(6 / (5 + 6))  # glorot_uniform on the whole fused shape
    assert k[:2].abs().max() <= limit
    assert models.fused_kernel.from_config(init.get_config()) == init
    assert repr(init) == "fused_kernel(glorot_uniform(), recurrent=identity(gain=0.5), num_units=3)"
    with pytest.raises(ValueError, match=r"num_units=3.*\[3, 6\]"):
        init([3, 6])
    with pytest.raises(TypeError, match="recurrent"):
        models.fused_kernel(rk.init.zeros(), "identity", 3)


def test_spectral_radius_against_numpy():
    m = torch.randn(7, 7, generator=_gen())
    assert models.spectral_radius(m) == pytest.approx(np.abs(np.linalg.eigvals(m.numpy())).max(),
                                                      rel=1e-5)
    rotation = torch.tensor([[0.0, -2.0], [2.0, 0.0]])  # eigenvalues +-2i
    assert models.spectral_radius(rotation) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="square"):
        models.spectral_radius(torch.ones(2, 3))


@pytest.mark.parametrize("losses, patience, want", [
    ([0.5, 0.05, 0.5, 0.05, 0.04, 0.03], 3, 30),  # a lone dip at step 10 does not count
    ([0.5, 0.05, 0.5, 0.05, 0.04, 0.03], 1, 10),
    ([0.5, 0.05, 0.04, 0.5, 0.05, 0.04], 3, None),
    ([0.1, 0.1, 0.1], 1, None),  # the threshold itself is not below it
])
def test_solved_at_needs_patience_evaluations_in_a_row(losses, patience, want):
    steps = [10 * k for k in range(len(losses))]
    assert train.solved_at(steps, losses, 0.1, patience) == want


# -- verdicts and outputs ----------------------------------------------------------------------
def _fake(config, solved_at, final, task="adding"):
    r = train.RunResult(config, "f", "d", task, 1 / 6, 1 / 60, eval_steps=[0, 10],
                        eval_losses=[0.2, final], solved_at=solved_at,
                        grad_norms=[1.0, 2.0], spectral_radii={"U_h": 1.0})
    return r


@pytest.mark.parametrize("a, b, verdict", [
    ((10, 0.01), (None, 0.16), "yes"),
    ((None, 0.16), (10, 0.01), "no"),
    ((10, 0.01), (100, 0.01), "yes"),
    ((90, 0.01), (100, 0.01), "unclear"),
    ((None, 0.10), (None, 0.16), "yes"),
    ((None, 0.15), (None, 0.16), "unclear"),
])
def test_compare_rule(a, b, verdict):
    assert report.compare(_fake("x", *a), _fake("y", *b))[0] == verdict


def test_report_verdicts_are_computed_from_the_results(tmp_path):
    names = [c.name for c in models.CONFIGS]
    good = [_fake(n, 50 if n in ("irnn", "lstm_fb1", "lstm_chrono") else None, 0.1) for n in names]
    paths = report.write_outputs(good, tmp_path / "good", ["- setup"], {"adding": "adding"})
    text = paths["report"].read_text()
    assert ("identity or orthogonal recurrent init helps a plain RNN: the known effect appeared** "
            "on adding") in text
    assert "a forget-gate bias (1 or chrono) helps the LSTM: the known effect appeared" in text
    bad = [_fake(n, 50 if n in ("rnn_glorot", "lstm_fb0") else None, 0.1) for n in names]
    text = report.write_outputs(bad, tmp_path / "bad", ["- setup"], {})["report"].read_text()
    assert text.count("the known effect did not appear") == 2


def test_tiny_run_writes_table_plots_and_report(tmp_path):
    tiny = train.Settings(num_units=4, adding_steps=6, copy_delay=3, copy_symbols=3, copy_length=2,
                          train_steps=3, batch_size=4, eval_every=2, eval_batch=8, grad_batch=4)
    outcome = study.run(tmp_path / "out", settings=tiny, seed=3, progress=False)
    assert len(outcome.results) == 2 * len(models.CONFIGS)
    for r in outcome.results:
        assert r.eval_steps == [0, 2, 3] and len(r.grad_norms) == (6 if r.task == "adding" else 7)
    lines = outcome.table.splitlines()
    assert lines[0].split()[:2] == ["task", "config"] and len(lines) == 2 + 18
    assert set(outcome.paths) == {"csv", "json", "curves", "grads", "report"}
    for key in ("curves", "grads"):
        assert outcome.paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = outcome.paths["report"].read_text()
    assert "](learning_curves.png)" in text and "](grad_norms.png)" in text
    assert all(f"`{c.name}`" in text for c in models.CONFIGS)
    assert "known effect" in text
    assert len(outcome.paths["csv"].read_text().splitlines()) == 1 + 18


def test_run_and_settings_check_their_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_units"):
        train.Settings(num_units=0)
    with pytest.raises(ValueError, match="solve_fraction"):
        train.Settings(solve_fraction=(0.1, 2.0))
    with pytest.raises(ValueError, match="seed"):
        study.run(tmp_path, seed=-1)
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="out_dir"):
        study.run(tmp_path / "f")
    with pytest.raises(ValueError, match="configs"):
        study.run(tmp_path / "o", configs=())


def test_outputs_survive_a_diverged_run(tmp_path):
    runs = [_fake(n, None, 0.1) for n in ("irnn", "rnn_glorot")]
    runs[0].eval_losses, runs[0].diverged = [0.2, math.nan], True
    paths = report.write_outputs(runs, tmp_path, ["- setup"], {})
    assert "diverged" in paths["csv"].read_text()
    assert report.compare(runs[0], runs[1])[0] == "no"  # a diverged run counts as infinite loss
