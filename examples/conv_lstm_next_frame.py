"""Next-frame prediction with a Keras-style ConvLSTM2D: squares move across small frames at a
constant velocity each, and the model predicts every next frame from the frames so far (the
"next frame" example of Keras's documentation, shrunk to run in seconds).

    python examples/conv_lstm_next_frame.py [--steps 150]

The model is ``ConvLSTM2D`` (3x3, "same") then ``TimeDistributed(Dense(1, sigmoid))`` over
each pixel's channels, trained with binary cross-entropy; it is written as a Keras 3 ``.keras``
file, which ``keras.saving.load_model`` reads, and read back. Its error is compared with the
best guess that needs no model: the last frame again.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from rnnkit import layers as L
from rnnkit.io import load_keras, save_keras

SIZE, STEPS, SIDE = 12, 8, 3  # frame size, frames per sequence, square side


def make_batch(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Frames ``[batch, STEPS + 1, SIZE, SIZE, 1]``: one square per sequence, bouncing off the
    frame's edges at a velocity of -1, 0 or 1 pixel per frame on each axis (not both 0)."""
    pos = torch.randint(0, SIZE - SIDE + 1, (batch, 2), generator=generator)
    vel = torch.randint(-1, 2, (batch, 2), generator=generator)
    vel[(vel == 0).all(1), 0] = 1
    frames = torch.zeros(batch, STEPS + 1, SIZE, SIZE, 1)
    for t in range(STEPS + 1):
        for b in range(batch):
            r, c = pos[b].tolist()
            frames[b, t, r:r + SIDE, c:c + SIDE] = 1.0
        nxt = pos + vel
        bounce = (nxt < 0) | (nxt > SIZE - SIDE)
        vel = torch.where(bounce, -vel, vel)
        pos = pos + vel
    return frames


def make_model() -> L.Sequential:
    return L.Sequential([L.ConvLSTM2D(8, 3, padding="same", return_sequences=True),
                         L.TimeDistributed(L.Dense(1, activation="sigmoid"))])


def errors(model, frames: torch.Tensor) -> tuple[float, float]:
    """Mean squared error of the model's next frames and of repeating the last frame."""
    with torch.no_grad():
        pred = model(frames[:, :-1])
    target = frames[:, 1:]
    return ((pred - target) ** 2).mean().item(), ((frames[:, :-1] - target) ** 2).mean().item()


def train(steps: int = 150, batch: int = 16, seed: int = 0):
    """Train; return the model (read back from its .keras file) and its and the baseline's
    error on fresh sequences."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = make_model()
    model(make_batch(2, gen)[:, :-1])  # builds
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        frames = make_batch(batch, gen)
        loss = torch.nn.functional.binary_cross_entropy(model(frames[:, :-1]), frames[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with tempfile.TemporaryDirectory() as tmp:
        save_keras(model.eval(), Path(tmp) / "next_frame.keras")
        model = load_keras(Path(tmp) / "next_frame.keras")
    return (model, *errors(model, make_batch(64, torch.Generator().manual_seed(seed + 1))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    _, mse, last = train(args.steps)
    print(f"next-frame MSE after {args.steps} steps: {mse:.4f} (repeating the last frame: "
          f"{last:.4f})")


if __name__ == "__main__":
    main()
