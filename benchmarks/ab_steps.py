"""The graph path with and without its Triton loops (``rnnkit.fast.steps``), on a GPU.

    python benchmarks/ab_steps.py [--repeats 7] [--shapes 32,100,256 32,100,64 1,500,256 varlen]
                                  [--fused-steps] [--cells NAME ...]

For each shape and cell the graph path runs (by default TF1's GRU, peepholes with projection,
cell clipping, layer norm; ``--cells`` names others of ``bench_rnn.CELLS``), forward+backward
as ops (``steps.ENABLED`` off) and as Triton loops (the default), each captured afresh, timed
interleaved with torch.nn's cuDNN module of the nearest math; prints milliseconds (medians)
and the ratios torch.nn / each. The shape ``varlen`` is a variable-length batch (B32 T100
H256, lengths 10..100, ``sequence_length``) against torch.nn on the padded batch.
``--fused-steps`` adds two columns for a plain LSTM's or TF1 GRU's loop (other cells run as in
"loops"): its forward steps' products apart from their kernels ("apart":
``steps.FUSED_STEP_UNITS`` 0), and inside them at every size ("inside": unbounded). Under
``--device cpu`` it runs the same on the CPU (without the graphs or Triton: a smoke test of
the script).
"""

from __future__ import annotations

import argparse

import torch
from bench_rnn import CELLS, _interleaved, _peer, _rnnkit_case, _synced

from rnnkit.fast import steps

GRAPH_CELLS = ["GRU TF1 (reset before)", "LSTM peephole+proj", "LSTM cell_clip",
               "LSTM layer norm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", nargs="+",
                        default=["32,100,256", "32,100,64", "1,500,256", "varlen"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--fused-steps", action="store_true",
                        help="columns with the forward steps' products apart from their "
                             "kernels, and inside them at every size")
    parser.add_argument("--cells", nargs="+", default=GRAPH_CELLS, choices=list(CELLS))
    args = parser.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "no CUDA device here\n")
    print(f"torch {torch.__version__}, device {dev}, fused steps: "
          f"{steps.load_error() or 'Triton loaded'}")
    # (column, steps.ENABLED, the switches set while its case is made and captured)
    variants = [("ops", False, {}), ("loops", True, {})]
    if args.fused_steps:
        variants += [("apart", True, {"FUSED_STEP_UNITS": 0}),
                     ("inside", True, {"FUSED_STEP_UNITS": 1 << 16})]
    print(f"{'B,T,H':<12}{'cell':<24}{'torch.nn':>9}"
          + "".join(f"{name:>9}" for name, _, _ in variants)
          + "".join(f"{'x ' + name:>11}" for name, _, _ in variants))
    g = torch.Generator().manual_seed(0)
    varlen = torch.randint(10, 101, (32,), generator=g).to(dev)
    for text in args.shapes:  # varlen: B32 T100 H256, lengths 10..100
        B, T, H = (32, 100, 256) if text == "varlen" else (int(v) for v in text.split(","))
        lengths = varlen if text == "varlen" else None
        x = torch.randn(B, T, H, device=dev, requires_grad=True)
        for name in args.cells:
            make, kind = CELLS[name]
            peer = _peer(kind, H).to(dev)
            params = list(peer.parameters())

            def torch_train(peer=peer, params=params, x=x):
                out, _ = peer(x)
                torch.autograd.grad(out.sum(), [x, *params])

            cases = []
            for _, enabled, switches in variants:
                saved = {k: getattr(steps, k) for k in switches}
                steps.ENABLED = enabled
                for k, v in switches.items():
                    setattr(steps, k, v)
                train = _rnnkit_case(make, x, True, lengths)[1]
                for _ in range(3):  # eager, capture, replay: the captures keep the switches
                    train()
                cases.append(train)
                steps.ENABLED = True
                for k, v in saved.items():
                    setattr(steps, k, v)
            ms = _interleaved([_synced(f, dev) for f in (torch_train, *cases)], args.repeats)
            print(f"{text:<12}{name:<24}{ms[0]:>9.2f}" + "".join(f"{t:>9.2f}" for t in ms[1:])
                  + "".join(f"{ms[0] / t:>11.2f}" for t in ms[1:]), flush=True)


if __name__ == "__main__":
    main()
