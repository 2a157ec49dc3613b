"""The initialization study behind ``rnnkit demo``.

Trains rnnkit's TF1 cells under different initializations on the adding problem and the copy
task, measures each at initialization (spectral radius of the recurrent weights, gradient of the
loss with respect to the state at every time step) and after training (held-out loss, steps to
solve), and writes a table, two PNG figures and a markdown report.

Example:
    >>> from rnnkit import study
    >>> outcome = study.run("out", settings=study.QUICK)  # doctest: +SKIP
    >>> print(outcome.table)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rnnkit.study.models import CONFIGS, StudyConfig
from rnnkit.study.report import results_table, write_outputs
from rnnkit.study.train import DEFAULT, QUICK, RunResult, Settings, run_study, study_tasks

__all__ = ["run", "StudyOutcome", "Settings", "DEFAULT", "QUICK", "CONFIGS"]


@dataclass
class StudyOutcome:
    """What ``run`` produced: the per-run results, the text table and the files written."""

    results: list[RunResult]
    table: str
    paths: dict[str, Path]
    seconds: float


def _setup(settings: Settings, seed: int, configs: tuple[StudyConfig, ...]) -> list[str]:
    adding, copy = study_tasks(settings)
    fa, fc = settings.solve_fraction
    lines = [
        f"- **Adding problem**: T = {adding.steps} steps, inputs (value ~ U(0,1), marker), one "
        f"marker in each half; target the sum of the two marked values; loss MSE of the last "
        f"step's readout. Memoryless baseline MSE = 1/6 = {adding.baseline:.4f}; 'solved' = "
        f"held-out MSE < {fa:g} x baseline = {fa * adding.baseline:.4f} at "
        f"{settings.solve_patience} evaluations in a row (the first of them is reported).",
        f"- **Copy task**: {copy.length} symbols from an alphabet of {copy.symbols}, delay "
        f"{copy.delay}, {copy.steps} steps in all; loss mean cross-entropy per step. Memoryless "
        f"baseline = {copy.length} ln({copy.symbols}) / {copy.steps} = {copy.baseline:.4f} "
        f"nats/step; 'solved' = below {fc:g} x baseline = {fc * copy.baseline:.4f} (likewise), "
        "which a model without memory cannot reach.",
        f"- **Models**: one TF1 cell with H = {settings.num_units} units, unrolled by "
        "`rnnkit.dynamic_rnn`, and a linear readout at every step (glorot_uniform kernel, zero "
        "bias).",
        f"- **Training**: Adam, learning rate {settings.learning_rate:g}, gradient norm clipped to "
        f"{settings.clip_norm:g}, batch {settings.batch_size}, {settings.train_steps} steps, a fresh "
        f"batch each step (the same batches for every configuration); held-out loss on "
        f"{settings.eval_batch} fixed sequences every {settings.eval_every} steps; seed {seed}.",
        f"- **At initialization**: gradients on {settings.grad_batch} sequences, the cell stepped "
        "one call at a time so each state tensor can keep its gradient; the state is h (c and h "
        "together for the LSTM).",
        "- **Configurations**:",
    ]
    lines += [f"  - `{c.name}` ({c.family}): {c.description}" for c in configs]
    lines += [
        "- **How the recurrent rows got their own initializer**: a TF1 cell has one fused kernel "
        "`[depth + H, G*H]` on `[x, h]`. The study passes the scope initializer "
        "`fused_kernel(glorot_uniform(), recurrent=..., num_units=H)` "
        "(`rnnkit.study.models`): it draws the whole kernel as TF1's default glorot_uniform "
        "would, then replaces the recurrent rows `U` block by block (one `H x H` block per gate) "
        "with the recurrent initializer, so `W` has the same distribution in every "
        "configuration and the variable's provenance names the initializer that made it.",
        "- **Biases other than the cell's defaults** (chrono, PyTorch's uniform) are made by "
        "creating `<config>/basic_lstm_cell/bias` with `get_variable(..., initializer=...)` "
        "first and building the cell with `reuse=AUTO_REUSE`, which picks that variable up (the "
        "TF1 idiom). `chrono(T, gate_order='ijfo')` sets b_f = log U(1, T-1), b_i = -b_f with "
        "forget_bias 0. PyTorch's default draws two biases (b_ih + b_hh); the TF1 cell has one, "
        "drawn once from the same uniform.",
    ]
    return lines


def run(out_dir: str | Path, settings: Settings = DEFAULT, seed: int = 0,
        configs: tuple[StudyConfig, ...] = CONFIGS, progress: bool = True) -> StudyOutcome:
    """Run the study and write its outputs into ``out_dir``.

    Each configuration is built in a fresh default graph: ``rk.reset_default_graph()`` runs
    before each one, so variables made earlier in the process are gone afterwards.

    Args:
        out_dir: folder for ``results.csv``, ``results.json``, ``learning_curves.png``,
            ``grad_norms.png`` and ``report.md`` (created if missing).
        settings: sizes and training hyperparameters (``DEFAULT``, ``QUICK`` or your own).
        seed: fixes the data and every initialization.
        configs: the configurations to train (default: all of ``CONFIGS``).
        progress: show tqdm progress bars on stderr.

    Returns:
        A ``StudyOutcome``.

    Raises:
        ValueError: ``configs`` is empty or ``seed`` is negative.
        OSError: ``out_dir`` cannot be created or written.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir must be a folder, got the existing file {str(out_dir)!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = run_study(settings, seed, configs, progress)
    titles = {t.kind: t.title for t in study_tasks(settings)}
    setup = _setup(settings, seed, configs)
    used = sorted({r.unroll_path for r in results})
    setup.append("- **Unroll path** (`rnnkit.fast.explain`; the numbers do not depend on it): "
                 + ", ".join(f"`{p}` for {sum(r.unroll_path == p for r in results)} runs" for p in used)
                 + ".")
    paths = write_outputs(results, out_dir, setup, titles)
    return StudyOutcome(results, results_table(results), paths, time.perf_counter() - start)
