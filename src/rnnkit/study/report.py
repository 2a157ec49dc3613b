"""The study's outputs: the results table, two PNG figures, the verdicts and ``report.md``.

Figures are drawn with matplotlib's object API on an Agg canvas, so importing this module never
changes the process's matplotlib backend.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rnnkit.describe import aligned_table
from rnnkit.study.train import RunResult

__all__ = ["Effect", "EFFECTS", "compare", "results_table", "markdown_table", "plot_learning_curves",
           "plot_grad_norms", "write_outputs"]

_COLUMNS = ("task", "config", "rho(U)", "g_1/g_T", "final loss", "/ baseline", "solved at",
            "seconds")


def _row(r: RunResult) -> list[str]:
    rho = max(r.spectral_radii.values()) if r.spectral_radii else math.nan
    solved = "diverged" if r.diverged else (str(r.solved_at) if r.solved_at is not None else "-")
    return [r.task, r.config, f"{rho:.3f}", f"{r.grad_ratio:.2e}", f"{r.final_loss:.4f}",
            f"{r.final_loss / r.baseline:.3f}", solved, f"{r.seconds:.1f}"]


def results_table(results: list[RunResult]) -> str:
    """An aligned text table, one row per (task, configuration)."""
    return aligned_table(_COLUMNS, [_row(r) for r in results])


def markdown_table(results: list[RunResult]) -> str:
    """The results table in GitHub markdown."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    return "\n".join(lines)


@dataclass(frozen=True)
class Effect:
    """A known effect to check: ``better`` should beat ``worse`` on long dependencies."""

    claim: str
    better: str
    worse: str


EFFECTS = (
    Effect("identity recurrent init (IRNN) helps a plain RNN", "irnn", "rnn_glorot"),
    Effect("orthogonal recurrent init helps a tanh RNN", "rnn_orthogonal", "rnn_glorot"),
    Effect("forget bias 1 helps the LSTM (vs 0)", "lstm_fb1", "lstm_fb0"),
    Effect("chrono init helps the LSTM (vs forget bias 0)", "lstm_chrono", "lstm_fb0"),
    Effect("TF1's GRU gate bias 1.0 helps the GRU (vs 0)", "gru_bias1", "gru_bias0"),
    Effect("TF1's forget bias 1 beats PyTorch's default LSTM init", "lstm_fb1", "lstm_torch"),
)


_CLIP = 10.0  # learning curves show losses up to this multiple of the baseline


def _loss(r: RunResult) -> float:
    return math.inf if r.diverged or math.isnan(r.final_loss) else r.final_loss


def compare(a: RunResult, b: RunResult, margin: float = 0.8) -> tuple[str, str]:
    """Did ``a`` do better than ``b``? Returns ``(verdict, evidence)``.

    ``verdict`` is ``"yes"``, ``"no"`` (``b`` did better) or ``"unclear"``. The rule: solving
    beats not solving; if both solved, fewer steps wins when the ratio is beyond ``margin``; if
    neither solved, the lower final loss wins when the ratio is beyond ``margin``.
    """
    def fmt(r: RunResult) -> str:
        solved = f"solved at step {r.solved_at}" if r.solved_at is not None else "not solved"
        return f"{r.config}: {solved}, final loss {_loss(r):.4f}"

    evidence = f"{fmt(a)}; {fmt(b)}"
    if (a.solved_at is None) != (b.solved_at is None):
        return ("yes" if a.solved_at is not None else "no"), evidence
    if a.solved_at is not None:
        x, y = a.solved_at, b.solved_at
    else:
        x, y = _loss(a), _loss(b)
    if x < margin * y:
        return "yes", evidence
    if y < margin * x:
        return "no", evidence
    return "unclear", evidence


def _by_task(results: list[RunResult]) -> dict[str, dict[str, RunResult]]:
    out: dict[str, dict[str, RunResult]] = {}
    for r in results:
        out.setdefault(r.task, {})[r.config] = r
    return out


def _style(results: list[RunResult]) -> dict[str, tuple]:
    names = list(dict.fromkeys(r.config for r in results))
    families = {r.config: r.family for r in results}
    dashes = {"tanh RNN": "-", "ReLU RNN": "-.", "LSTM": "--", "GRU": ":"}
    colors = [f"C{i}" for i in range(10)]
    return {n: (colors[i % 10], dashes.get(families[n], "-")) for i, n in enumerate(names)}


def _figure(n: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * n, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def plot_learning_curves(results: list[RunResult], path: Path, titles: dict[str, str]) -> Path:
    """Held-out loss against training step, one panel per task, log-scaled loss axis."""
    tasks = _by_task(results)
    style = _style(results)
    fig, axes = _figure(len(tasks))
    for ax, (task, runs) in zip(axes, tasks.items(), strict=True):
        first = next(iter(runs.values()))
        for name, r in runs.items():
            color, dash = style[name]
            ax.plot(r.eval_steps, r.eval_losses, dash, color=color, label=name, linewidth=1.6)
        ax.axhline(first.baseline, color="black", linewidth=1, label="memoryless baseline")
        ax.axhline(first.threshold, color="grey", linewidth=1, linestyle="--", label="'solved' threshold")
        unit = "MSE" if task == "adding" else "cross-entropy (nats per step)"
        ax.set(title=f"Learning curves\n{titles.get(task, task)}", xlabel="training step (updates)",
               ylabel=f"held-out loss, {unit} (log scale)", yscale="log")
        finite = [v for r in runs.values() for v in r.eval_losses if math.isfinite(v) and v > 0]
        ax.set_ylim(max(min(finite, default=first.baseline), 1e-6) / 2, _CLIP * first.baseline)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.savefig(path)
    return path


def plot_grad_norms(results: list[RunResult], path: Path, titles: dict[str, str]) -> Path:
    """``||d loss / d state_t||`` at initialization against t, one panel per task, log scale."""
    tasks = _by_task(results)
    style = _style(results)
    fig, axes = _figure(len(tasks))
    for ax, (task, runs) in zip(axes, tasks.items(), strict=True):
        for name, r in runs.items():
            color, dash = style[name]
            t = range(1, len(r.grad_norms) + 1)
            ax.plot(t, [max(g, 1e-30) for g in r.grad_norms], dash, color=color, label=name,
                    linewidth=1.6)
        ax.set(title=f"Gradient of the loss through time, at initialization\n{titles.get(task, task)}",
               xlabel="time step t (1 = first input)",
               ylabel="mean ||d loss / d state_t|| (log scale)", yscale="log")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.savefig(path)
    return path


def _verdicts(results: list[RunResult]) -> list[tuple[Effect, str, str, str]]:
    out = []
    for task, runs in _by_task(results).items():
        for effect in EFFECTS:
            if effect.better in runs and effect.worse in runs:
                verdict, evidence = compare(runs[effect.better], runs[effect.worse])
                out.append((effect, task, verdict, evidence))
    return out


def _summary(results: list[RunResult], verdicts: list[tuple[Effect, str, str, str]]) -> list[str]:
    """Headline lines: per group of known effects where it appeared, the gradient at init, then
    each effect per task."""
    lines = []
    groups = (("identity or orthogonal recurrent init helps a plain RNN", ("irnn", "rnn_orthogonal")),
              ("a forget-gate bias (1 or chrono) helps the LSTM", ("lstm_fb1", "lstm_chrono")))
    for label, names in groups:
        got = [(task, v) for e, task, v, _ in verdicts if e.better in names
               and e.worse in ("rnn_glorot", "lstm_fb0")]
        if not got:
            continue
        helped = sorted({task for task, v in got if v == "yes"})
        count = f"{sum(v == 'yes' for _, v in got)} of {len(got)} comparisons"
        if helped:
            lines.append(f"- **{label}: the known effect appeared** on {' and '.join(helped)} "
                         f"({count}).")
        else:
            lines.append(f"- **{label}: the known effect did not appear** in this run ({count}); "
                         "see the table and the caveats below.")
    lines += ["", "Gradient reaching the first step at initialization, `g_1/g_T` (largest first):", ""]
    for task, runs in _by_task(results).items():
        ranked = sorted(runs.values(), key=lambda r: -r.grad_ratio if math.isfinite(r.grad_ratio) else 0)
        lines.append(f"- {task}: " + ", ".join(f"{r.config} {r.grad_ratio:.1e}" for r in ranked))
    lines += ["", "Each comparison (details in the table below):", ""]
    for effect in EFFECTS:
        by_task = [(task, v) for e, task, v, _ in verdicts if e is effect]
        if by_task:
            lines.append(f"- {effect.claim}: " + "; ".join(f"{task}: **{v}**" for task, v in by_task))
    return lines


def write_outputs(results: list[RunResult], out_dir: Path, setup: list[str],
                  titles: dict[str, str]) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json``, ``learning_curves.png``, ``grad_norms.png`` and
    ``report.md`` into ``out_dir`` (created if missing); return their paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json",
             "curves": out_dir / "learning_curves.png", "grads": out_dir / "grad_norms.png",
             "report": out_dir / "report.md"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_COLUMNS)
        writer.writerows(_row(r) for r in results)
    paths["json"].write_text(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    plot_learning_curves(results, paths["curves"], titles)
    plot_grad_norms(results, paths["grads"], titles)
    verdicts = _verdicts(results)
    lines = ["# rnnkit initialization study", "", *_summary(results, verdicts), "", "## Setup", "",
             *setup, "", "## Results", "", markdown_table(results), "",
             "`rho(U)`: largest spectral radius over the square recurrent blocks `U_*` at "
             "initialization. `g_1/g_T`: mean `||d loss / d state_t||` at the first step "
             "over that at the last (how much gradient reaches the start of the sequence). "
             "`solved at`: the training step from which the held-out loss stayed below the threshold "
             "for the required evaluations in a row (see Setup).",
             "", "## Known effects, checked against these results", "",
             "| effect | task | appeared? | evidence |", "|---|---|---|---|"]
    lines += [f"| {e.claim} | {task} | {v} | {ev} |" for e, task, v, ev in verdicts]
    lines += ["", "Rule: solving beats not solving; if both solved, the one that solved in fewer "
              "than 0.8x the other's steps wins; if neither did, the one with final loss below "
              "0.8x the other's wins; otherwise `unclear`. One seed, short training: a verdict is "
              "evidence from this run, not a general result.", "",
              "## Plots", "", "![learning curves](learning_curves.png)", "",
              "[learning_curves.png](learning_curves.png): held-out loss per task against "
              f"training step; the loss axis stops at {_CLIP:g}x the baseline, so divergence "
              "spikes run off the top.", "", "![gradient norms](grad_norms.png)", "",
              "[grad_norms.png](grad_norms.png): gradient of the loss with respect to the "
              "recurrent state at each time step, at initialization.", "",
              "## How each model's weights were initialized", "",
              "As recorded by `rnnkit.describe` (the provenance of each variable), adding task:", ""]
    first_task = results[0].task
    for r in results:
        if r.task != first_task:
            continue
        lines.append(f"- `{r.config}` ({r.description}):")
        lines += [f"  - `{v['name']}` {v['shape']}: `{v['initializer']}` ({v['origin']})"
                  for v in r.variables]
    lines.append("")
    paths["report"].write_text("\n".join(lines))
    return paths
