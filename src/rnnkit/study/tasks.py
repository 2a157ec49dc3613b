"""The two synthetic long-dependency tasks of the initialization study, generated on the fly.

* Adding problem (Hochreiter & Schmidhuber, 1997; the variant of Le et al., 2015): each step
  carries a value ``U(0, 1)`` and a marker; exactly two steps are marked, one in each half of the
  sequence; the target is the sum of the two marked values. Predicting the mean (1.0) always
  gives MSE ``Var(U + U') = 2/12 = 1/6`` — the baseline a model without memory reaches.
* Copy task (Hochreiter & Schmidhuber, 1997; the form of Arjovsky et al., 2016): ``S`` symbols
  from an alphabet of ``K``, then ``delay - 1`` blanks, a delimiter, and ``S`` blanks; the target
  is blank everywhere except the last ``S`` steps, which must repeat the symbols. A model
  without memory can at best output blank until the delimiter and then guess uniformly, giving
  cross-entropy ``S log(K) / (delay + 2 S)`` per step.

Everything is drawn from a ``torch.Generator``, so a seed fixes the data; nothing is downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Task", "adding_problem", "copy_task", "adding_task", "copy_task_spec"]


def _check_positive(value, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def adding_problem(batch: int, length: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the adding problem.

    Args:
        batch: number of sequences.
        length: time steps T (>= 2); one marker lies in ``[0, T//2)``, the other in
            ``[T//2, T)``.
        generator: source of randomness (torch's global RNG if None).

    Returns:
        ``(x, y)``: ``x [batch, T, 2]`` (channel 0 the values, channel 1 the 0/1 markers) and
        ``y [batch, 1]``, the sum of the two marked values.

    Raises:
        ValueError: ``batch < 1`` or ``length < 2``.
    """
    _check_positive(batch, "batch")
    _check_positive(length, "length", 2)
    half = length // 2
    values = torch.rand(batch, length, generator=generator)
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    markers = torch.zeros(batch, length)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = (values * markers).sum(1, keepdim=True)
    return torch.stack([values, markers], dim=-1), y


def copy_task(batch: int, delay: int, symbols: int = 8, length: int = 10,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the copy task with ``K = symbols`` and ``S = length``.

    Inputs are one-hot over ``K + 2`` classes: 0 blank, ``1..K`` the symbols, ``K + 1`` the
    delimiter. A sequence is ``S`` symbols, ``delay - 1`` blanks, the delimiter, ``S`` blanks
    (``delay + 2 S`` steps); its target is ``delay + S`` blanks then the ``S`` symbols.

    Args:
        batch: number of sequences.
        delay: steps from the last symbol to the delimiter (>= 1).
        symbols: alphabet size K (>= 2).
        length: number of symbols to copy, S (>= 1).
        generator: source of randomness (torch's global RNG if None).

    Returns:
        ``(x, y)``: ``x [batch, delay + 2 S, K + 2]`` float one-hot and ``y [batch, delay + 2 S]``
        class indices in ``[0, K]``.

    Raises:
        ValueError: a size below its minimum.
    """
    _check_positive(batch, "batch")
    _check_positive(delay, "delay")
    _check_positive(symbols, "symbols", 2)
    _check_positive(length, "length")
    steps = delay + 2 * length
    seq = torch.randint(1, symbols + 1, (batch, length), generator=generator)
    tokens = torch.zeros(batch, steps, dtype=torch.long)
    tokens[:, :length] = seq
    tokens[:, delay + length - 1] = symbols + 1
    y = torch.zeros(batch, steps, dtype=torch.long)
    y[:, -length:] = seq
    return F.one_hot(tokens, symbols + 2).float(), y


@dataclass(frozen=True)
class Task:
    """A task of the study: how to sample it, score it, and what a memoryless model scores.

    ``kind`` is ``"adding"`` (regression from the last output, MSE) or ``"copy"`` (per-step
    classification, mean cross-entropy over all steps).
    """

    kind: str
    steps: int
    input_size: int
    output_size: int
    baseline: float
    delay: int = 0
    symbols: int = 0
    length: int = 0

    @property
    def title(self) -> str:
        if self.kind == "adding":
            return f"adding problem, T={self.steps}"
        return f"copy task, {self.length} symbols (alphabet {self.symbols}), delay {self.delay}"

    @property
    def loss_name(self) -> str:
        return "MSE" if self.kind == "adding" else "cross-entropy (nats/step)"

    def sample(self, batch: int, generator: torch.Generator | None = None):
        """``(x [batch, steps, input_size], y)`` for this task."""
        if self.kind == "adding":
            return adding_problem(batch, self.steps, generator)
        return copy_task(batch, self.delay, self.symbols, self.length, generator)

    def per_example_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of each sequence ``[batch]`` from the readout's ``outputs [batch, steps, out]``."""
        if self.kind == "adding":
            return (outputs[:, -1, 0] - y[:, 0]) ** 2
        ce = F.cross_entropy(outputs.reshape(-1, self.output_size), y.reshape(-1), reduction="none")
        return ce.reshape(y.shape).mean(1)


def adding_task(steps: int) -> Task:
    """The adding problem over ``steps`` time steps; baseline MSE 1/6."""
    _check_positive(steps, "steps", 2)
    return Task("adding", steps, 2, 1, 1.0 / 6.0)


def copy_task_spec(delay: int, symbols: int = 8, length: int = 10) -> Task:
    """The copy task; baseline ``length * log(symbols) / (delay + 2 * length)`` nats per step."""
    _check_positive(delay, "delay")
    _check_positive(symbols, "symbols", 2)
    _check_positive(length, "length")
    steps = delay + 2 * length
    return Task("copy", steps, symbols + 2, symbols + 1, length * math.log(symbols) / steps,
                delay, symbols, length)
