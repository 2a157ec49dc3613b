"""Transfer learning: reuse a pretrained encoder's weights in a new model, frozen.

1. Pretrain an encoder (embedding + GRU, TF1-style, under scope "encoder") with a head for task A
   (does the sequence contain token 3?) and save the whole model as a TF checkpoint.
2. Build a new model: the same encoder under "encoder", a new head for task B (how many 3s, 0-3+).
3. ``rk.io.restore(..., include="encoder", freeze=True)`` takes only the encoder's variables from
   the checkpoint and freezes them; the report lists what matched and what was left out.
4. Train only the new head.

    python examples/transfer_restore.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import rnnkit as rk

VOCAB, LEN, UNITS = 8, 12, 32


class Model(torch.nn.Module):
    """Encoder (embedding + GRU) and a linear head with ``classes`` outputs."""

    def __init__(self, head: str, classes: int):
        super().__init__()
        with rk.variable_scope("encoder"):
            self.embedding = rk.get_variable("embedding", [VOCAB, 16])
            self.cell = rk.GRUCell(UNITS)
            rk.dynamic_rnn(self.cell, torch.zeros(1, 1, 16))  # builds encoder/rnn/gru_cell/...
        with rk.variable_scope(head):
            self.w = rk.get_variable("kernel", [UNITS, classes])
            self.b = rk.get_variable("bias", [classes], initializer=rk.init.zeros())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, h = rk.dynamic_rnn(self.cell, rk.embedding_lookup(self.embedding, ids))
        return h @ self.w + self.b


def task_a(ids: torch.Tensor) -> torch.Tensor:
    return (ids == 3).any(1).long()


def task_b(ids: torch.Tensor) -> torch.Tensor:
    return (ids == 3).sum(1).clamp(max=3)


def fit(model: Model, target, steps: int, gen: torch.Generator) -> float:
    """Train the trainable parameters; return accuracy on a fresh batch."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (64, LEN), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(ids), target(ids))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids = torch.randint(0, VOCAB, (512, LEN), generator=gen)
    with torch.no_grad():
        return (model(ids).argmax(-1) == target(ids)).float().mean().item()


def run(folder: Path, steps: int = 200, seed: int = 0) -> dict:
    """Pretrain, save, restore the encoder into a new model, train its head; return the facts."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rk.reset_default_graph()
    pretrained = Model("head_a", 2)
    acc_a = fit(pretrained, task_a, steps, gen)
    rk.io.save(folder / "pretrained", rk.global_variables(), format="tf")
    saved = {v.name: v.detach().clone() for v in rk.global_variables()}

    rk.reset_default_graph()
    model = Model("head_b", 4)
    report = rk.io.restore(folder / "pretrained", rk.global_variables(), include="encoder",
                           freeze=True, strict=True)
    acc_b = fit(model, task_b, steps, gen)
    return {"acc_a": acc_a, "acc_b": acc_b, "report": report, "saved": saved, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(Path(tmp), args.steps)
    print(f"task A (pretraining) accuracy: {r['acc_a']:.3f}")
    print(r["report"])
    print(f"task B with the frozen pretrained encoder, head trained alone: {r['acc_b']:.3f}")


if __name__ == "__main__":
    main()
