"""The ``rnnkit inspect`` and ``rnnkit convert`` verbs: what is in a weights file, and turning
one format into another with a numeric check.

``add_parsers(subparsers)`` registers both on an ``argparse`` subparsers object; each sets
``run=function(args) -> int``. Exit status: 0 done, 1 a bad file or an impossible conversion
(one line on stderr, no traceback), 2 bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys

_INSPECT_EPILOG = """\
formats (detected from the file's bytes, not its name):
  TensorFlow checkpoint  prefix (model.ckpt-100), its .index or .data file, or its folder
  rnnkit native          safetensors with rnnkit metadata (initializers are shown too)
  safetensors            any other safetensors file
  Keras                  .keras archive, Keras 3 .weights.h5, legacy Keras 2 / tf.keras .h5
  PyTorch                torch.save files, read with torch.load(weights_only=True) only
  ONNX                   .onnx models (initializers; W/R/B/P of RNN, GRU and LSTM nodes)

gate labels: W_<g> input weights, U_<g> recurrent weights, b_<g> a bias, bW_<g>/bU_<g> the
input-side and recurrent-side biases where a layout has two, p_<g> peepholes, P projection;
<g> in the framework's own letters and order (TF1 LSTM i, j, f, o; TF1 GRU r, u + candidate c;
Keras LSTM i, f, c, o and GRU z, r, h; torch LSTM i, f, g, o and GRU r, z, n; ONNX LSTM
i, o, f, c and GRU z, r, h). Indices are [rows, columns] slices of the stored tensor.
"""

_CONVERT_EPILOG = """\
conversions (source -> target; the target is inferred from DST's extension without --to:
.ckpt or no extension tf, .safetensors native, .pt/.pth torch, .onnx onnx, .keras/.weights.h5
keras):
  source \\ target            tf   native  torch  onnx  keras
  TF checkpoint (TF1 cells)  yes  yes(1)  (2)    (3)   no
  rnnkit native, TF1 cells   yes  yes     (2)    (3)   no
  rnnkit native, Keras model no   yes     (4)    (4)   (5)
  torch nn.RNN/GRU/LSTM      yes  yes(1)  yes    yes   no
  Keras file                 no   yes     (4)    (4)   yes
  ONNX                       no: ONNX is export-only
(1) one cell or a MultiRNNCell; bidirectional models go to tf, torch or onnx.
(2) when torch has the math: not TF1's GRUCell (reset before; GRUCell(reset_after=True) and
    cuDNN-compatible GRUs do convert), peepholes, clipping or layer norm.
(3) not projection, clipping or layer norm.
(4) a Keras model of exactly one SimpleRNN/GRU/LSTM or Bidirectional layer.
(5) a Sequential or Model of what Keras 3 can express: not rnnkit's own initializers
    (per_gate, chrono, ...) or Keras 2's hard_sigmoid, which only the native file keeps.
TF checkpoints are read as the cells their variable names say (GRUCell, BasicLSTMCell,
LSTMCell, BasicRNNCell, cuDNN-compatible cells; stacked under multi_rnn_cell/cell_k or
bidirectional under fw/bw). A TF1 LSTM adds its forget_bias at run time and checkpoints do not
store it: --forget-bias (default 1.0, TF's) applies when reading and writing them.
After writing, DST is read back (TF/native by rnnkit, torch by torch.nn, ONNX by onnxruntime,
Keras by load_keras), both models run on one random input, and the largest absolute
difference is printed; above the tolerance (1e-5) the command fails with exit status 1.
"""


def _fail(verb: str, err: BaseException) -> int:
    print(f"rnnkit {verb}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 1


def _inspect(args: argparse.Namespace) -> int:
    from rnnkit.io.errors import FormatError
    from rnnkit.io.inspect import inspect_file

    try:
        result = inspect_file(args.path, stats=args.stats)
    except FormatError as err:
        return _fail("inspect", err)
    if args.json:
        print(json.dumps(result.to_json(), indent=1, allow_nan=False))
    else:
        print(result)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from rnnkit.io import _convert as cv
    from rnnkit.io.errors import FormatError

    opts = cv.Options(forget_bias=args.forget_bias, activation=args.activation, scope=args.scope)
    try:
        target = cv.target_of(args.dst, args.to)
        model = cv.load_model(args.src, opts)
        for note in model.notes:
            print(f"{args.src}: {note}")
        reloaded = cv.write_model(model, args.dst, target, opts)
        print(f"wrote {args.dst} ({target})")
        diff, shape = cv.compare(model, reloaded)
    except (FormatError, cv.ConvertError, ValueError, TypeError, OSError, ImportError) as err:
        return _fail("convert", err)
    verdict = "ok" if diff <= args.tolerance else "FAILED"
    print(f"numeric check: max |difference| = {diff:.3g} between {args.src} and {args.dst} on a "
          f"random input of shape {shape} (tolerance {args.tolerance:g}): {verdict}")
    if diff > args.tolerance:
        print(f"rnnkit convert: error: the converted model differs by {diff:.3g} > "
              f"{args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``inspect`` and ``convert`` verbs on ``subparsers``.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
    """
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "inspect", help="show a weights file's tensors, statistics and RNN gate blocks",
        description="Show every tensor of a checkpoint or model file (name, shape, dtype, mean, "
                    "std, min, max) and, for recognized RNN weights, the framework and cell they "
                    "come from, their gate order and which rows/columns hold each gate.",
        epilog=_INSPECT_EPILOG, formatter_class=raw)
    p.add_argument("path", metavar="PATH", help="the file, TF checkpoint prefix or folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--stats", action=argparse.BooleanOptionalAction, default=True,
                   help="compute mean, std, min and max of each tensor (default: yes)")
    p.set_defaults(run=_inspect)

    p = subparsers.add_parser(
        "convert", help="convert RNN weights between TF, Keras, torch, native and ONNX files",
        description="Load SRC as an rnnkit model, write it to DST in the target format, read DST "
                    "back and check both give the same outputs.",
        epilog=_CONVERT_EPILOG, formatter_class=raw)
    p.add_argument("src", metavar="SRC", help="the file to read (format detected)")
    p.add_argument("dst", metavar="DST", help="the file (or TF checkpoint prefix) to write")
    p.add_argument("--to", choices=("tf", "keras", "torch", "native", "onnx"),
                   help="target format (default: from DST's extension)")
    p.add_argument("--forget-bias", type=float, default=1.0, metavar="F",
                   help="run-time forget bias of TF1 LSTM cells in TF checkpoints (default 1.0)")
    p.add_argument("--activation", choices=("tanh", "relu"), default="tanh",
                   help="activation of vanilla RNNs read from TF or torch files (default tanh)")
    p.add_argument("--scope", metavar="PREFIX",
                   help="the model to take when SRC holds several (a variable-name prefix)")
    p.add_argument("--tolerance", type=float, default=1e-5, metavar="T",
                   help="largest accepted output difference (default 1e-5)")
    p.set_defaults(run=_convert)
