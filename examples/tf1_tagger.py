"""A TF1-style bidirectional sequence tagger, ported by changing its imports.

The task (generated, nothing downloaded): tag each token with whether it equals its left or its
right neighbour — a tag that needs both directions. Sequences have random lengths;
padding is ignored by the loss exactly as TF1's ``sequence_length`` does.

    python examples/tf1_tagger.py --steps 300
"""

from __future__ import annotations

import argparse

import torch

import rnnkit as rk

VOCAB, DEPTH, UNITS, MAX_LEN = 6, 16, 32, 20


def make_batch(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [batch, MAX_LEN], lengths [batch], tags [batch, MAX_LEN] (-1 past each length)."""
    ids = torch.randint(0, VOCAB, (batch, MAX_LEN), generator=gen)
    lengths = torch.randint(5, MAX_LEN + 1, (batch,), generator=gen)
    earlier = torch.zeros_like(ids, dtype=torch.bool)
    later = torch.zeros_like(ids, dtype=torch.bool)
    earlier[:, 1:] = ids[:, 1:] == ids[:, :-1]
    later[:, :-1] = ids[:, :-1] == ids[:, 1:]
    steps = torch.arange(MAX_LEN)[None, :]
    later &= steps + 1 < lengths[:, None]
    tags = (earlier | later).long()
    return ids, lengths, tags.masked_fill(steps >= lengths[:, None], -1)


class Tagger(torch.nn.Module):
    """Embedding, two-layer bidirectional GRU, per-token logits — written as TF1 code."""

    def __init__(self):
        super().__init__()
        with rk.variable_scope("tagger", initializer="glorot_uniform"):
            self.embedding = rk.get_variable("embedding", [VOCAB, DEPTH])
            self.fw = rk.MultiRNNCell([rk.GRUCell(UNITS) for _ in range(2)])
            self.bw = rk.MultiRNNCell([rk.GRUCell(UNITS) for _ in range(2)])
            self.w_out = rk.get_variable("logits/kernel", [2 * UNITS, 2])
            self.b_out = rk.get_variable("logits/bias", [2], initializer=rk.init.zeros())
            self.forward(*make_batch(1, torch.Generator().manual_seed(0))[:2])  # builds the cells

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = rk.embedding_lookup(self.embedding, ids)
        # built cells keep the variables they made under "tagger" at the first call
        (out_fw, out_bw), _ = rk.bidirectional_dynamic_rnn(
            self.fw, self.bw, x, sequence_length=lengths, dtype=torch.float32)
        return torch.cat([out_fw, out_bw], -1) @ self.w_out + self.b_out


def train(steps: int = 300, batch: int = 32, seed: int = 0, log_every: int = 0) -> float:
    """Train the tagger; return token accuracy on a fresh batch."""
    torch.manual_seed(seed)
    rk.reset_default_graph()
    gen = torch.Generator().manual_seed(seed)
    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        ids, lengths, tags = make_batch(batch, gen)
        logits = model(ids, lengths)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), tags.reshape(-1),
                                                 ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log_every and step % log_every == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    ids, lengths, tags = make_batch(256, gen)
    with torch.no_grad():
        pred = model(ids, lengths).argmax(-1)
    valid = tags >= 0
    return (pred[valid] == tags[valid]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    acc = train(args.steps, log_every=50)
    print(f"token accuracy on held-out batch: {acc:.3f}")
    print(rk.describe())


if __name__ == "__main__":
    main()
