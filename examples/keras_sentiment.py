"""A Keras-style sentiment classifier on generated reviews, with rnnkit.layers.

Reviews are token sequences of random length, zero-padded; a review is positive when it holds
more "good" tokens than "bad" ones, with "not" flipping the next token's polarity — so word order
matters. The model is Keras code with its imports changed: ``Embedding(mask_zero=True)`` masks the
padding for every recurrent layer below it.

    python examples/keras_sentiment.py --steps 300
"""

from __future__ import annotations

import argparse

import torch

from rnnkit import layers as L

VOCAB, MAX_LEN = 20, 24
GOOD, BAD, NOT = (2, 3, 4), (5, 6, 7), 8  # the other ids (9..19) are neutral; 0 is padding


def make_batch(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [batch, MAX_LEN] (0-padded on the right) and labels [batch] (1 = positive)."""
    ids = torch.randint(2, VOCAB, (batch, MAX_LEN), generator=gen)
    lengths = torch.randint(6, MAX_LEN + 1, (batch,), generator=gen)
    ids[torch.arange(MAX_LEN)[None, :] >= lengths[:, None]] = 0
    polarity = torch.zeros_like(ids)
    polarity[torch.isin(ids, torch.tensor(GOOD))] = 1
    polarity[torch.isin(ids, torch.tensor(BAD))] = -1
    negated = torch.zeros_like(ids, dtype=torch.bool)
    negated[:, 1:] = ids[:, :-1] == NOT
    score = torch.where(negated, -polarity, polarity).sum(1)
    return ids, (score > 0).long()


def build_model() -> L.Sequential:
    return L.Sequential([
        L.Embedding(VOCAB, 16, mask_zero=True),
        L.Bidirectional(L.LSTM(24, return_sequences=True), merge_mode="concat"),
        L.GRU(24, recurrent_initializer="orthogonal", dropout=0.1),
        L.Dense(2, activation="log_softmax"),
    ], name="sentiment")


def train(steps: int = 300, batch: int = 32, seed: int = 0, log_every: int = 0) -> float:
    """Train; return accuracy on a fresh batch of 512 reviews."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model()
    model(make_batch(2, gen)[0])  # build the weights
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        ids, labels = make_batch(batch, gen)
        loss = torch.nn.functional.nll_loss(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log_every and step % log_every == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    model.eval()
    ids, labels = make_batch(512, gen)
    with torch.no_grad():
        return (model(ids).argmax(-1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    print(f"accuracy on held-out reviews: {train(args.steps, log_every=50):.3f}")


if __name__ == "__main__":
    main()
