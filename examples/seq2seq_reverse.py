"""A TF1-style sequence-to-sequence model that learns to reverse digit strings: trained with
teacher forcing through ``dynamic_rnn``, decoded greedily through ``raw_rnn`` (each step's
input is the embedding of the previous step's most likely digit, which ``dynamic_rnn`` cannot
express).

    python examples/seq2seq_reverse.py [--steps 400]

The code is TF1's with the imports changed: ``variable_scope``/``get_variable``, ``GRUCell``,
``dynamic_rnn`` with ``sequence_length``, and ``raw_rnn`` with a ``loop_fn`` whose
``emit_structure`` makes it emit token ids instead of cell outputs.
"""

from __future__ import annotations

import argparse

import torch

import rnnkit as rk

VOCAB, GO = 10, 0  # digits 1-9; 0 starts the decoder (and pads)
UNITS, EMBED, MAX_LEN = 96, 16, 7


def make_batch(batch: int, generator: torch.Generator):
    """Digit strings of lengths 2..MAX_LEN (0-padded), their reversals and their lengths."""
    lengths = torch.randint(2, MAX_LEN + 1, (batch,), generator=generator)
    src = torch.randint(1, VOCAB, (batch, MAX_LEN), generator=generator)
    steps = torch.arange(MAX_LEN)
    src = torch.where(steps < lengths[:, None], src, torch.zeros_like(src))
    # position t of the target is position length - 1 - t of the source
    index = (lengths[:, None] - 1 - steps).clamp(min=0)
    tgt = torch.where(steps < lengths[:, None], src.gather(1, index), torch.zeros_like(src))
    return src, tgt, lengths


class Reverser:
    """Embedding, encoder GRU, decoder GRU and output projection, as TF1 variables."""

    def __init__(self):
        with rk.variable_scope("seq2seq", initializer=rk.init.glorot_uniform(seed=1)):
            self.embedding = rk.get_variable("embedding", [VOCAB, EMBED])
            self.w_out = rk.get_variable("output/kernel", [UNITS, VOCAB])
            self.b_out = rk.get_variable("output/bias", [VOCAB], initializer=rk.init.zeros())
        self.encoder, self.decoder = rk.GRUCell(UNITS), rk.GRUCell(UNITS)

    def encode(self, src, lengths):
        with rk.variable_scope("seq2seq/encoder"):
            _, state = rk.dynamic_rnn(self.encoder, rk.embedding_lookup(self.embedding, src),
                                      sequence_length=lengths, dtype=torch.float32)
        return state

    def train_logits(self, src, tgt, lengths):
        """Teacher forcing: the decoder reads GO, then the true previous digits."""
        inputs = torch.cat([torch.full_like(tgt[:, :1], GO), tgt[:, :-1]], dim=1)
        with rk.variable_scope("seq2seq/decoder"):
            out, _ = rk.dynamic_rnn(self.decoder, rk.embedding_lookup(self.embedding, inputs),
                                    sequence_length=lengths, initial_state=self.encode(src, lengths))
        return out @ self.w_out + self.b_out

    def greedy(self, src, lengths):
        """Greedy decoding with ``raw_rnn``: each step reads its own last prediction."""
        batch = src.shape[0]
        start = self.encode(src, lengths)

        def loop_fn(time, cell_output, cell_state, loop_state):
            finished = time >= lengths
            if cell_output is None:  # time 0: the encoder's state, GO, and what is emitted
                go = rk.embedding_lookup(self.embedding, torch.full((batch,), GO))
                return finished, go, start, torch.zeros((), dtype=torch.int64), None
            token = (cell_output @ self.w_out + self.b_out).argmax(-1)
            return finished, rk.embedding_lookup(self.embedding, token), cell_state, token, None

        with rk.variable_scope("seq2seq/decoder"):
            emit_ta, _, _ = rk.raw_rnn(self.decoder, loop_fn)
        return emit_ta.stack().transpose(0, 1)  # [batch, time] token ids, 0 past each length

    def parameters(self):
        return [self.embedding, self.w_out, self.b_out, *self.encoder.parameters(),
                *self.decoder.parameters()]


def accuracy(model: Reverser, generator: torch.Generator, batch: int = 256) -> float:
    """Greedy decoding's digit accuracy on fresh strings."""
    src, tgt, lengths = make_batch(batch, generator)
    with torch.no_grad():
        pred = model.greedy(src, lengths)
    valid = torch.arange(pred.shape[1]) < lengths[:, None]
    return (pred == tgt[:, :pred.shape[1]])[valid].float().mean().item()


def train(steps: int = 400, batch: int = 64, seed: int = 0) -> tuple[Reverser, float]:
    """Train with teacher forcing; return the model and its greedy accuracy."""
    rk.reset_default_graph()
    torch.manual_seed(seed)
    model = Reverser()
    gen = torch.Generator().manual_seed(seed)
    src, tgt, lengths = make_batch(batch, gen)
    model.train_logits(src, tgt, lengths)  # builds the cells' variables
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        src, tgt, lengths = make_batch(batch, gen)
        logits = model.train_logits(src, tgt, lengths)
        valid = torch.arange(MAX_LEN) < lengths[:, None]
        loss = torch.nn.functional.cross_entropy(logits[valid], tgt[valid])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, accuracy(model, torch.Generator().manual_seed(seed + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    _, acc = train(args.steps)
    print(f"greedy decoding (raw_rnn) digit accuracy after {args.steps} steps: {acc:.3f}")


if __name__ == "__main__":
    main()
