"""Training and measuring one configuration on one task, and the loop over the whole study."""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

import rnnkit as rk
from rnnkit.fast import explain
from rnnkit.study.models import CONFIGS, StudyConfig, StudyModel, recurrent_blocks, spectral_radius
from rnnkit.study.tasks import Task, adding_task, copy_task_spec

__all__ = ["Settings", "DEFAULT", "QUICK", "RunResult", "state_gradient_norms", "solved_at",
           "train_run", "run_study", "study_tasks"]


@dataclass(frozen=True)
class Settings:
    """Sizes and training hyperparameters of a study run (the same for every configuration).

    ``solve_fraction``: a run counts as solved once ``solve_patience`` evaluations in a row have
    a loss below ``solve_fraction * baseline`` (per task: adding, copy); ``solved_at`` is the
    first of them, so a single lucky evaluation does not count.
    """

    num_units: int = 32
    adding_steps: int = 100
    copy_delay: int = 50
    copy_symbols: int = 4
    copy_length: int = 5
    train_steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-2
    clip_norm: float = 1.0
    eval_every: int = 25
    eval_batch: int = 256
    grad_batch: int = 64
    solve_fraction: tuple[float, float] = (0.1, 0.9)
    solve_patience: int = 3

    def __post_init__(self):
        for name in ("num_units", "adding_steps", "copy_delay", "copy_symbols", "copy_length",
                     "train_steps", "batch_size", "eval_every", "eval_batch", "grad_batch",
                     "solve_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Settings.{name} must be a positive int, got {value!r}")
        if not self.learning_rate > 0 or not self.clip_norm > 0:
            raise ValueError(f"Settings.learning_rate and clip_norm must be > 0, got "
                             f"{self.learning_rate!r} and {self.clip_norm!r}")
        if len(self.solve_fraction) != 2 or not all(0 < f <= 1 for f in self.solve_fraction):
            raise ValueError(f"Settings.solve_fraction must be two numbers in (0, 1], got "
                             f"{self.solve_fraction!r}")


DEFAULT = Settings()
QUICK = Settings(num_units=16, adding_steps=40, copy_delay=15, copy_length=3, train_steps=300,
                 eval_every=10, eval_batch=128, grad_batch=32)


def study_tasks(settings: Settings) -> list[Task]:
    """The adding problem and the copy task at the sizes ``settings`` gives."""
    return [adding_task(settings.adding_steps),
            copy_task_spec(settings.copy_delay, settings.copy_symbols, settings.copy_length)]


@dataclass
class RunResult:
    """What one configuration did on one task.

    ``eval_steps``/``eval_losses``: the learning curve on a fixed held-out batch (step 0 is the
    initialization). ``solved_at``: the first of ``Settings.solve_patience`` evaluations in a row
    with loss below ``threshold``, or None.
    ``grad_norms[t]``: mean over sequences of ``||d loss / d state_t||`` at initialization.
    ``spectral_radii``: of each square recurrent block ``U_*`` at initialization.
    ``unroll_path``: the path ``dynamic_rnn`` took in training (``rnnkit.fast.explain``).
    """

    config: str
    family: str
    description: str
    task: str
    baseline: float
    threshold: float
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    solved_at: int | None = None
    grad_norms: list[float] = field(default_factory=list)
    spectral_radii: dict[str, float] = field(default_factory=dict)
    variables: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    diverged: bool = False
    unroll_path: str = ""

    @property
    def final_loss(self) -> float:
        return self.eval_losses[-1] if self.eval_losses else math.nan

    @property
    def grad_ratio(self) -> float:
        """``||d loss / d state_1|| / ||d loss / d state_T||``: how much gradient reaches the start."""
        first, last = self.grad_norms[0], self.grad_norms[-1]
        return first / last if last > 0 else math.nan

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        out.update(final_loss=self.final_loss, grad_ratio=self.grad_ratio)
        return out


def state_gradient_norms(model: StudyModel, task: Task, x: torch.Tensor, y: torch.Tensor
                         ) -> torch.Tensor:
    """``g[t]`` = mean over the batch of ``||d loss_b / d state_t||``, for ``t = 1..T``.

    ``loss_b`` is sequence b's own loss (the batch loss is summed, so each sequence's gradient is
    its own); the state is the whole state carried from step t to step t + 1, its parts taken as
    independent variables (``[c, h]`` for an LSTM), as ``StudyModel.forward_states`` explains.

    Returns:
        A float64 tensor ``[T]``.
    """
    model.zero_grad(set_to_none=True)
    outputs, states = model.forward_states(x)
    task.per_example_loss(outputs, y).sum().backward()
    norms = []
    for state in states:
        leaves = state if isinstance(state, tuple) else (state,)
        sq = sum((leaf.grad.double() ** 2).sum(-1) for leaf in leaves if leaf.grad is not None)
        norms.append(torch.as_tensor(sq, dtype=torch.float64).sqrt().mean())
    model.zero_grad(set_to_none=True)
    return torch.stack(norms)


def solved_at(steps: list[int], losses: list[float], threshold: float, patience: int) -> int | None:
    """The first step of the first ``patience`` consecutive losses below ``threshold``, or None."""
    run = 0
    for k, loss in enumerate(losses):
        run = run + 1 if loss < threshold else 0
        if run == patience:
            return steps[k - patience + 1]
    return None


def _seed(seed: int, *names: str) -> int:
    return (seed * 1_000_003 + zlib.crc32("/".join(names).encode())) % (2 ** 31)


def train_run(config: StudyConfig, task: Task, settings: Settings, seed: int = 0,
              progress: bool = True) -> RunResult:
    """Build ``config`` for ``task``, measure it at initialization, train it and evaluate it.

    Adam with gradient-norm clipping; a fresh batch every step (the data are infinite); the
    held-out batch and the initialization are fixed by ``seed`` (the same held-out data and the
    same training batches for every configuration of a task).

    Returns:
        A ``RunResult``. A loss that becomes NaN or infinite stops training (``diverged``; the
        curve then ends with a NaN at that step).
    """
    rk.reset_default_graph()
    torch.manual_seed(_seed(seed, config.name, task.kind))
    model = StudyModel(config, task.input_size, task.output_size, settings.num_units, task.steps)
    threshold = settings.solve_fraction[task.kind != "adding"] * task.baseline
    result = RunResult(config.name, config.family, config.description, task.kind, task.baseline,
                       threshold)
    result.variables = [{k: r[k] for k in ("name", "shape", "initializer", "origin")}
                        for r in rk.describe(model).rows]
    result.spectral_radii = {k: spectral_radius(u) for k, u in recurrent_blocks(model.cell).items()}
    data = torch.Generator().manual_seed(_seed(seed, task.kind, "data"))
    x_grad, y_grad = task.sample(settings.grad_batch, data)
    result.grad_norms = state_gradient_norms(model, task, x_grad, y_grad).tolist()
    x_eval, y_eval = task.sample(settings.eval_batch, data)
    result.unroll_path = explain(model.cell, x_eval).path

    def evaluate(step: int) -> float:
        with torch.no_grad():
            loss = float(task.per_example_loss(model(x_eval), y_eval).mean())
        result.eval_steps.append(step)
        result.eval_losses.append(loss)
        if result.solved_at is None:
            result.solved_at = solved_at(result.eval_steps, result.eval_losses, threshold,
                                         settings.solve_patience)
        return loss

    opt = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    start = time.perf_counter()
    loss = evaluate(0)
    bar = tqdm(range(1, settings.train_steps + 1), desc=f"{task.kind:6s} {config.name:14s}",
               disable=not progress, leave=False, dynamic_ncols=True, mininterval=0.5)
    for step in bar:
        x, y = task.sample(settings.batch_size, data)
        batch_loss = task.per_example_loss(model(x), y).mean()
        if not torch.isfinite(batch_loss):
            result.diverged = True
            result.eval_steps.append(step)
            result.eval_losses.append(math.nan)
            break
        opt.zero_grad(set_to_none=True)
        batch_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
        opt.step()
        if step % settings.eval_every == 0 or step == settings.train_steps:
            loss = evaluate(step)
            bar.set_postfix(eval_loss=f"{loss:.4f}", solved=result.solved_at is not None, refresh=False)
    bar.close()
    result.seconds = time.perf_counter() - start
    return result


def run_study(settings: Settings = DEFAULT, seed: int = 0,
              configs: tuple[StudyConfig, ...] = CONFIGS, progress: bool = True
              ) -> list[RunResult]:
    """Train every configuration on both tasks; an overall progress bar counts the runs."""
    if not configs:
        raise ValueError("configs must name at least one configuration, got none")
    tasks = study_tasks(settings)
    runs = [(c, t) for t in tasks for c in configs]
    results = []
    with tqdm(runs, desc="study", unit="run", disable=not progress, dynamic_ncols=True) as bar:
        for config, task in bar:
            bar.set_postfix_str(f"{task.kind}/{config.name}")
            results.append(train_run(config, task, settings, seed, progress))
    return results
