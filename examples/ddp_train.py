"""Train a TF1-style rnnkit model with DistributedDataParallel on CPU (gloo), or in one process.

The task (generated, nothing downloaded): classify a variable-length token sequence by its first
token, which the recurrent state must carry to the end. Each step draws one global batch from the
step number and the seed; with ``--world-size N`` process ``r`` trains on the ``r``-th of N equal
slices of it, and DDP averages the gradients, so N processes take the same steps as one process
on the whole batch. Processes talk over loopback (127.0.0.1, a free port found at run time).

    python examples/ddp_train.py --world-size 2 --out ddp.json     # loss ~1.4 -> ~0.001
    python examples/ddp_train.py --world-size 1 --out single.json  # the same, in one process
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import rnnkit as rk

VOCAB, CLASSES, MAX_LEN = 12, 4, 16


def make_batch(step: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: ids ``[batch, MAX_LEN]``, lengths ``[batch]``, labels."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    ids = torch.randint(0, VOCAB, (batch, MAX_LEN), generator=gen)
    lengths = torch.randint(2, MAX_LEN + 1, (batch,), generator=gen)
    return ids, lengths, ids[:, 0] % CLASSES


class Classifier(torch.nn.Module):
    """Embedding, stacked GRUs unrolled by ``dynamic_rnn``, a linear head on the last output.

    Variables are made at construction (``ensure_built``), so DDP sees every parameter from the
    start; names are TF's (``classifier/rnn/multi_rnn_cell/cell_0/gru_cell/gates/kernel``...).
    """

    def __init__(self, depth: int = 8, units: int = 16, layers: int = 2):
        super().__init__()
        with rk.variable_scope("classifier", initializer=rk.init.glorot_uniform()):
            self.embedding = rk.get_variable("embedding", [VOCAB, depth])
            self.cell = rk.MultiRNNCell([rk.GRUCell(units) for _ in range(layers)])
            with rk.variable_scope("rnn"):
                self.cell.ensure_built(depth, torch.float32)
            self.kernel = rk.get_variable("head/kernel", [units, CLASSES])
            self.bias = rk.get_variable("head/bias", [CLASSES], initializer=rk.init.zeros())

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = rk.embedding_lookup(self.embedding, ids)
        outputs, _ = rk.dynamic_rnn(self.cell, x, sequence_length=lengths)
        last = outputs[torch.arange(ids.shape[0]), lengths - 1]
        return last @ self.kernel + self.bias


def train(rank: int = 0, world_size: int = 1, steps: int = 200, batch: int = 32, seed: int = 0,
          lr: float = 0.3) -> dict:
    """Train (as process ``rank`` of ``world_size`` when that is > 1; the process group must be
    up) and return ``{"params": {name: nested lists}, "losses": [global loss per step]}``.

    Raises:
        ValueError: ``batch`` is not divisible by ``world_size``.
    """
    if batch % world_size:
        raise ValueError(f"batch ({batch}) must be divisible by world_size ({world_size})")
    rk.reset_default_graph()
    torch.manual_seed(seed)
    model = Classifier()
    names = [name for name, _ in model.named_parameters()]
    tf_names = {name: p.op_name for name, p in model.named_parameters()}
    net = DistributedDataParallel(model) if world_size > 1 else model
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    local = batch // world_size
    losses = []
    for step in range(steps):
        ids, lengths, labels = (t[rank * local:(rank + 1) * local] for t in make_batch(step, batch, seed))
        loss = torch.nn.functional.cross_entropy(net(ids, lengths), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total = loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(total)
        losses.append(total.item() / world_size)
    params = dict(model.named_parameters())
    return {"params": {tf_names[n]: params[n].detach().tolist() for n in names}, "losses": losses}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, steps: int, batch: int, seed: int, out: str) -> None:
    """One DDP process: join the gloo group on loopback, train, and (rank 0) write the result
    with the largest parameter difference between ranks."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        result = train(rank, world_size, steps, batch, seed)
        flat = torch.cat([torch.tensor(v).flatten() for v in result["params"].values()])
        first = flat.clone()
        dist.broadcast(first, src=0)
        spread = (flat - first).abs().max()
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        result["max_rank_difference"] = spread.item()
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
        dist.barrier()  # rank 0 hosts the store: no process leaves while another still uses it
    finally:
        dist.destroy_process_group()


def run(world_size: int, steps: int, batch: int, seed: int, out: str) -> None:
    """Train with ``world_size`` processes (spawned, gloo, loopback), or in this process if 1;
    write the JSON result to ``out``."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if world_size == 1:
        with open(out, "w") as f:
            json.dump(train(0, 1, steps, batch, seed), f)
        return
    mp.spawn(_worker, args=(world_size, _free_port(), steps, batch, seed, out), nprocs=world_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="global batch (all processes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ddp_result.json")
    args = parser.parse_args()
    run(args.world_size, args.steps, args.batch, args.seed, args.out)
    with open(args.out) as f:
        losses = json.load(f)["losses"]
    print(f"{args.world_size} process(es), {args.steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
