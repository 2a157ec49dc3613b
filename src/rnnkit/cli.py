"""The ``rnnkit`` command line.

``rnnkit demo`` shows where a TF1 GRU's weights are and how each was initialized. (The full
initialization study of the adding and copy tasks is still to come.)
"""

from __future__ import annotations

import argparse
import sys

import torch

import rnnkit as rk


def _demo(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    x = torch.randn(4, 10, 8)
    lengths = torch.tensor([10, 7, 3, 1])
    with rk.variable_scope("model", initializer=rk.init.orthogonal()):
        fw = rk.MultiRNNCell([rk.GRUCell(16), rk.LSTMCell(16, use_peepholes=True)])
        bw = rk.GRUCell(16)
        (out_fw, out_bw), _ = rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths)
    print("TF1-style bidirectional model under variable_scope('model', initializer=orthogonal()):")
    print(f"  outputs fw {list(out_fw.shape)}, bw {list(out_bw.shape)}; zero past each length: "
          f"{bool((out_fw[3, 1:] == 0).all())}\n")
    print(rk.describe())
    print("\nThe GRU's gates as views of its fused kernels (x @ W, h @ U):")
    for name, t in bw.gates().items():
        print(f"  {name:4s} {list(t.shape)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rnnkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    demo = sub.add_parser("demo", help="show a TF1 model's weights, gates and initializers")
    demo.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
