"""The ``rnnkit`` command line.

Each verb is a subcommand with its own ``--help``; errors go to stderr and give a non-zero exit
status (2 for bad arguments, 1 for failures, 130 when interrupted).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rnnkit import cli_files

DEFAULT_OUT = "rnnkit-demo-out"


class _Error(Exception):
    """A failure to report as ``rnnkit <verb>: error: ...`` with exit status 1."""


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _demo(args: argparse.Namespace) -> int:
    import torch

    try:
        from rnnkit import study
    except ImportError as e:
        raise _Error(f"the demo needs matplotlib and tqdm ({e}); install them with "
                     "`pip install 'rnnkit[demo]'`") from e
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _Error(f"--out must be a folder, but {str(out)!r} is an existing file")
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds synchronization
    settings = study.QUICK if args.quick else study.DEFAULT
    print(f"rnnkit demo: initialization study ({'quick' if args.quick else 'default'} settings, "
          f"seed {args.seed}), writing to {out}/", file=sys.stderr)
    try:
        outcome = study.run(out, settings=settings, seed=args.seed, progress=not args.no_progress)
    except OSError as e:
        raise _Error(f"cannot write the results to {str(out)!r}: {e}") from e
    print(outcome.table)
    print(f"\nWrote {', '.join(p.name for p in outcome.paths.values())} to {out}/ "
          f"in {outcome.seconds:.0f} s; read {outcome.paths['report']}.")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="initialization study on the adding problem and the copy task",
        description="Train rnnkit's TF1 cells (tanh RNN glorot vs orthogonal, IRNN, LSTM forget "
                    "bias 0/1/chrono, GRU gate bias 1/0, PyTorch's default init) on the adding "
                    "problem and the copy task; print a results table and write PNG plots and "
                    "report.md. About 10 minutes on 2 CPU cores; --quick about 1.")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (about a minute)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="N",
                   help="seed for the data and the initializations (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_demo)


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [_add_demo, cli_files.add_parsers]


def build_parser() -> argparse.ArgumentParser:
    """The ``rnnkit`` parser; each entry of ``VERBS`` adds one subcommand."""
    parser = argparse.ArgumentParser(prog="rnnkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _Error as e:
        print(f"rnnkit {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rnnkit {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
