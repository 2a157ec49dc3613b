"""File-to-file conversion of RNN weights, with a numeric check (the ``rnnkit convert`` verb).

A source file becomes an rnnkit model: TF1 cells rebuilt from a checkpoint's names and shapes
and restored by name, a native file through ``io.load``, a ``torch.nn.RNN/GRU/LSTM`` state_dict
through a module rebuilt from its shapes and ``from_torch``, a Keras file through
``load_keras``. The model is written in the target format, read back by that format's own
reader or runtime (torch module, onnxruntime), and both are run on one random input.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rnnkit import cells as C
from rnnkit import scope as S
from rnnkit.io._gate_blocks import annotate
from rnnkit.io.inspect import detect_format, read_file
from rnnkit.io.layouts import GATE_ORDERS

__all__ = ["Model", "load_model", "write_model", "compare", "TARGETS", "target_of"]

TARGETS = ("tf", "keras", "torch", "native", "onnx")
_EXTENSIONS = {".ckpt": "tf", ".index": "tf", ".keras": "keras", ".h5": "keras", ".pt": "torch",
               ".pth": "torch", ".safetensors": "native", ".onnx": "onnx"}


class ConvertError(Exception):
    """A conversion that cannot be done, with the reason (the CLI prints it, exit status 1)."""


@dataclass
class Model:
    """A loaded model: ``obj`` is rnnkit cells (a cell, ``MultiRNNCell``, ``(fw, bw)`` pair or a
    list of pairs; ``family="cells"``), or a Keras-style rnnkit model (``family="keras"``)."""

    obj: object
    family: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    """What a file does not record: a TF1 LSTM's run-time forget bias, a vanilla RNN's activation
    in TF and torch files, and which of several models in a file to take."""

    forget_bias: float = 1.0
    activation: str = "tanh"
    scope: str | None = None


def target_of(path: str, to: str | None) -> str:
    """The target format: ``to``, else from the extension (a path without one is a TF prefix)."""
    if to is not None:
        return to
    name = Path(path).name
    if name.endswith(".weights.h5"):
        return "keras"
    suffix = Path(path).suffix
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if not suffix or re.fullmatch(r"\.ckpt-\d+|\.\d+", suffix):
        return "tf"
    raise ConvertError(f"cannot tell the target format from the extension {suffix!r}; pass "
                       f"--to one of {', '.join(TARGETS)}")


# -- sources -----------------------------------------------------------------------------

def load_model(path: str, opts: Options) -> Model:
    """Load any convertible file as a ``Model``.

    Raises:
        FormatError: the file is bad. ConvertError: it holds nothing rnnkit can rebuild.
    """
    fmt = detect_format(path)
    if fmt == "native":
        from rnnkit.io.native import load, read_native

        if read_native(path)[1].get("model"):
            obj = load(path)
            return Model(obj, "cells" if isinstance(obj, C.RNNCell) else "keras")
        return _from_tf_names(path, fmt, opts)  # variables only: rebuild from the names
    if fmt == "tf":
        return _from_tf_names(path, fmt, opts)
    if fmt in ("torch", "safetensors"):
        _, tensors, _ = read_file(path, fmt)
        from rnnkit.io.torch_interop import from_torch

        module, notes = torch_module(tensors, path, opts)
        return Model(from_torch(module), "cells", notes)
    if fmt in ("keras", "keras_h5"):
        from rnnkit.io import load_keras

        return Model(load_keras(path), "keras")
    raise ConvertError(f"{path}: reading a model from an ONNX file is not supported (ONNX is an "
                       "export target); convert from the file it was exported from")


@contextmanager
def _scopes(path: str) -> Iterator[None]:
    """Open the variable scopes of an ``a/b/c`` path (none for ``""``)."""
    with ExitStack() as stack:
        for part in filter(None, path.split("/")):
            stack.enter_context(S.variable_scope(part))
        yield


def _make_cell(scope: str, kind: str, H: int, tensors: dict, opts: Options) -> C.RNNCell:
    name = scope.rsplit("/", 1)[-1]
    if kind == "gru" and f"{scope}/w_ru" in tensors:  # tf.contrib.rnn.GRUBlockCell's names
        return C.GRUBlockCell(H, name=name)
    if kind == "gru":
        return C.GRUCell(H, reset_after=f"{scope}/candidate/input_projection/kernel" in tensors,
                         name=name)
    if kind == "rnn":
        return C.BasicRNNCell(H, activation=opts.activation, name=name)
    forget = 0.0 if "cudnn" in name else opts.forget_bias
    peep, proj = f"{scope}/w_f_diag" in tensors, tensors.get(f"{scope}/projection/kernel")
    if peep or proj is not None or name.startswith("lstm_cell"):
        return C.LSTMCell(H, use_peepholes=peep, num_proj=None if proj is None else proj.shape[1],
                          forget_bias=forget, name=name)
    return C.BasicLSTMCell(H, forget_bias=forget, name=name)


def _arrange(specs: dict[str, C.RNNCell], path: str):
    """Cells keyed by scope, as TF's wrappers name them, into one model."""
    if len(specs) == 1:
        return next(iter(specs.values()))
    parents = {s.rpartition("/")[0]: cell for s, cell in specs.items()}
    if len(parents) < len(specs):
        parents = {}
    multi = [re.fullmatch(r"(.*)/?multi_rnn_cell/cell_(\d+)", p) for p in parents]
    if parents and all(multi) and len({m[1] for m in multi}) == 1:
        order = sorted(zip((int(m[2]) for m in multi), parents.values(), strict=True),
                       key=lambda pair: pair[0])
        if [k for k, _ in order] == list(range(len(order))):
            stack, first = C.MultiRNNCell([cell for _, cell in order]), order[0][1]
            with _scopes(multi[0][1].rstrip("/")):
                stack.ensure_built(first.input_depth, next(first.parameters()).dtype)
            return stack
    bidi = [re.fullmatch(r"(.*?)/?(?:cell_(\d+)/bidirectional_rnn/)?(fw|bw)", p) for p in parents]
    if parents and all(bidi) and len({m[1] for m in bidi}) == 1:
        layers: dict[int, dict[str, C.RNNCell]] = {}
        for m, cell in zip(bidi, parents.values(), strict=True):
            layers.setdefault(int(m[2] or 0), {})[m[3]] = cell
        if sorted(layers) == list(range(len(layers))) and all(len(d) == 2 for d in layers.values()):
            pairs = [(layers[k]["fw"], layers[k]["bw"]) for k in range(len(layers))]
            return pairs[0] if len(pairs) == 1 and bidi[0][2] is None else pairs
    raise ConvertError(f"{path}: found {len(specs)} RNN cells that do not form one model "
                       f"({', '.join(sorted(specs))}); pick one with --scope PREFIX")


def _from_tf_names(path: str, fmt: str, opts: Options) -> Model:
    """TF1 cells rebuilt from the names and shapes of their variables, then restored by name."""
    from rnnkit.io.saving import restore

    _, tensors, extra = read_file(path, fmt)
    found = {}
    for name, info in annotate(tensors, extra).items():
        if not info.framework.startswith(("TF1", "TF cuDNN")) or not info.role.startswith(
                ("kernel", "gates/kernel")):
            continue
        scope = re.sub(r"/(gates/kernel|w_ru)$", "", name) if info.role.startswith("gates") \
            else name.rsplit("/kernel", 1)[0]
        if opts.scope is None or scope == opts.scope or scope.startswith(opts.scope.rstrip("/") + "/"):
            depth = info.blocks[0].index[0][1]
            found[scope] = (info.kind, depth, tensors[name].dtype)
    if not found:
        raise ConvertError(f"{path}: no TF1 RNN cell variables (GRUCell, BasicLSTMCell, LSTMCell, "
                           f"BasicRNNCell, contrib's block cells or cuDNN-compatible cells) found"
                           + (f" under scope {opts.scope!r}" if opts.scope else ""))
    specs = {}
    for scope, (kind, depth, dtype) in found.items():
        gates_bias = f"{scope}/b_ru" if f"{scope}/w_ru" in tensors else f"{scope}/gates/bias"
        units = tensors[gates_bias].shape[0] // 2 if kind == "gru" \
            else tensors[f"{scope}/bias"].shape[0] // {"rnn": 1, "lstm": 4}[kind]
        cell = _make_cell(scope, kind, units, tensors, opts)
        with _scopes(scope.rpartition("/")[0]):
            cell.ensure_built(depth, torch.from_numpy(np.zeros(0, dtype)).dtype)
        specs[scope] = cell
    model = _arrange(specs, path)
    variables = [v for cell in specs.values() for v in cell.parameters()]
    try:
        report = restore(path, variables, strict=True)
    except ValueError as err:
        raise ConvertError(f"{path}: the rebuilt cells do not match the checkpoint: "
                           f"{str(err).splitlines()[-1].strip()}") from None
    notes = [f"rebuilt {', '.join(f'{type(c).__name__} {s!r}' for s, c in specs.items())}"]
    if any(k == "lstm" for k, _, _ in found.values()):
        notes.append(f"TF1 LSTM cells run with forget_bias={opts.forget_bias} (not stored in "
                     "checkpoints; cuDNN-compatible cells use 0; set with --forget-bias)")
    if report.unexpected:
        notes.append(f"{len(report.unexpected)} other variables not part of the model were left "
                     "out")
    return Model(model, "cells", notes)


_TORCH_KEY = re.compile(r"^(?P<prefix>.*?)(?:weight|bias)_(?:ih|hh|hr)_l(?P<k>\d+)(?:_reverse)?$")


def torch_module(tensors: dict[str, np.ndarray], path: str, opts: Options
                 ) -> tuple[torch.nn.RNNBase, list[str]]:
    """The ``torch.nn.RNN/GRU/LSTM`` (``batch_first=True``) a state_dict belongs to, loaded."""
    prefixes = {m["prefix"] for m in map(_TORCH_KEY.match, tensors) if m}
    if opts.scope is not None:
        prefixes = {p for p in prefixes if p.startswith(opts.scope)}
    if len(prefixes) != 1:
        what = "no nn.RNN/GRU/LSTM weights (weight_ih_l0, ...)" if not prefixes \
            else f"several RNN modules ({', '.join(sorted(p or '<top>' for p in prefixes))}); " \
            "pick one with --scope"
        raise ConvertError(f"{path}: {what}")
    (prefix,) = prefixes
    state = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in tensors.items()
             if k.startswith(prefix) and _TORCH_KEY.match(k)}
    w_ih, w_hh, w_hr = state.get("weight_ih_l0"), state.get("weight_hh_l0"), state.get("weight_hr_l0")
    if w_ih is None or w_hh is None or w_ih.dim() != 2 or w_hh.dim() != 2:
        raise ConvertError(f"{path}: weight_ih_l0 and weight_hh_l0 (2-D) are needed")
    H = w_hr.shape[1] if w_hr is not None else w_hh.shape[1]
    gates = w_hh.shape[0] // H if H else 0
    kinds = {1: (torch.nn.RNN, {"nonlinearity": opts.activation}), 3: (torch.nn.GRU, {}),
             4: (torch.nn.LSTM, {"proj_size": 0 if w_hr is None else w_hr.shape[0]})}
    if gates not in kinds or w_hh.shape[0] != gates * H:
        raise ConvertError(f"{path}: weight_hh_l0 of shape {list(w_hh.shape)} is no RNN, GRU or LSTM")
    cls, kwargs = kinds[gates]
    layers = 1 + max(int(_TORCH_KEY.match(k)["k"]) for k in state)
    module = cls(w_ih.shape[1], H, num_layers=layers, bias="bias_ih_l0" in state, batch_first=True,
                 bidirectional="weight_ih_l0_reverse" in state, dtype=w_ih.dtype, **kwargs)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConvertError(f"{path}: the weights do not form a torch.nn.{cls.__name__}: "
                           f"{' '.join(str(err).split())}") from None
    notes = [f"rebuilt torch.nn.{cls.__name__}(input_size={w_ih.shape[1]}, hidden_size={H}, "
             f"num_layers={layers}, bidirectional={module.bidirectional})"]
    if gates == 1:
        notes.append(f"vanilla RNN run with nonlinearity {opts.activation!r} (set with --activation)")
    return module, notes


# -- targets -----------------------------------------------------------------------------

def _leaves(obj) -> list[C.RNNCell]:
    if isinstance(obj, list):
        return [c for pair in obj for c in pair]
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, C.MultiRNNCell):
        return [c for sub in obj.cells for c in _leaves(sub)]
    return _leaves(obj.cell) if hasattr(obj, "cell") and isinstance(obj.cell, C.RNNCell) else [obj]


def _tf_tensors(model: Model, opts: Options) -> dict[str, torch.Tensor]:
    """The model's variables, LSTM forget biases re-based on the run-time ``opts.forget_bias``."""
    out = {}
    f = GATE_ORDERS["tf1"]["lstm"].index("f")
    for cell in _leaves(model.obj):
        for var in cell.parameters():
            out[var.op_name] = var.detach().clone()
        shift = getattr(cell, "forget_bias", None)
        if isinstance(cell, (C.BasicLSTMCell, C.LSTMCell)) and "cudnn" not in cell.scope_name:
            bias = out[cell.get_parameter("bias").op_name]
            H = cell.num_units
            bias[f * H:(f + 1) * H] += shift - opts.forget_bias
    return out


def _keras_layers(model: Model) -> list:
    """A Keras model's layers in order; a single layer (from a native file) is its own list."""
    layers = getattr(model.obj, "model_layers", None)
    return [model.obj] if layers is None else list(layers)


def _keras_rnn_layer(model: Model, target: str):
    layers = _keras_layers(model)
    rnn = [ly for ly in layers if hasattr(ly, "cell") or hasattr(ly, "backward_layer")]
    if len(layers) != 1 or len(rnn) != 1:
        raise ConvertError(f"only a Keras model of exactly one RNN or Bidirectional layer converts "
                           f"to {target}; this one has {[type(ly).__name__ for ly in layers]}")
    return rnn[0]


def write_model(model: Model, dst: str, target: str, opts: Options) -> Callable:
    """Write ``model`` as ``target`` to ``dst``; return a function ``x -> output`` of the model
    read back from ``dst`` (for the numeric check).

    Raises:
        ConvertError: no mapping between the model and the target; ValueError/TypeError from
        the library's writers (math the target lacks), with their reasons.
    """
    if model.family == "keras" and target == "tf":
        raise ConvertError("a Keras model converts to keras, native, torch or onnx, not tf")
    if model.family == "cells" and target == "keras":
        raise ConvertError("TF1 cells have no Keras file form; convert to tf, native, torch or onnx")
    if target == "keras":
        from rnnkit.io import load_keras, save_keras

        save_keras(model.obj, dst)
        if Path(dst).name.endswith(".weights.h5"):  # weights only: load them into a copy
            return lambda x: load_keras(dst, copy.deepcopy(model.obj))(x)
        return lambda x: load_keras(dst)(x)
    if target == "native":
        from rnnkit.io.native import load, save_native

        if isinstance(model.obj, list):
            raise ConvertError("the native format holds one cell, MultiRNNCell or Keras model; a "
                               "bidirectional pair of TF1 cells converts to tf, torch or onnx")
        save_native(dst, model.obj)
        return lambda x: run(Model(load(dst), model.family), x)
    if target == "tf":
        from rnnkit.io.tf_checkpoint import write_tf_checkpoint

        write_tf_checkpoint(dst, _tf_tensors(model, opts))
        return lambda x: run(_from_tf_names(dst, "tf", opts), x)
    source = _keras_rnn_layer(model, target) if model.family == "keras" else model.obj
    if target == "torch":
        from rnnkit.io.atomic import atomic_write
        from rnnkit.io.torch_interop import to_torch

        module = to_torch(source)
        with atomic_write(dst) as f:
            torch.save(module.state_dict(), f)

        def reloaded(x):
            tensors = {k: v.numpy() for k, v in torch.load(dst, weights_only=True).items()}
            with torch.no_grad():
                return _as_keras_output(torch_module(tensors, dst, opts)[0](x)[0], model)
        return reloaded
    from rnnkit.io.onnx_export import export_onnx

    export_onnx(source, dst)

    def onnx_run(x):
        import onnxruntime as ort

        session = ort.InferenceSession(dst, providers=["CPUExecutionProvider"])
        feed = {"input": x.to(torch.float32).numpy(),
                "sequence_lens": np.full(x.shape[0], x.shape[1], np.int32)}
        return _as_keras_output(torch.from_numpy(session.run(["output"], feed)[0]), model)
    return onnx_run


def _as_keras_output(y: torch.Tensor, model: Model) -> torch.Tensor:
    """A full output sequence as the Keras layer returns it (the last step without
    ``return_sequences``; for a bidirectional layer the backward half's last step is at t=0)."""
    if model.family != "keras":
        return y
    layer = _keras_rnn_layer(model, "")
    if layer.return_sequences:
        return y
    if hasattr(layer, "backward_layer"):
        H = y.shape[-1] // 2
        return torch.cat([y[:, -1, :H], y[:, 0, H:]], dim=-1)
    return y[:, -1]


def run(model: Model, x: torch.Tensor) -> torch.Tensor:
    """The model's output for batch-major ``x`` (outputs of both directions concatenated)."""
    from rnnkit.rnn import bidirectional_dynamic_rnn, dynamic_rnn

    with torch.no_grad():
        if model.family == "keras":
            model.obj.eval()
            return model.obj(x)
        pairs = model.obj if isinstance(model.obj, list) else [model.obj] \
            if isinstance(model.obj, tuple) else None
        if pairs is None:
            return dynamic_rnn(model.obj, x, dtype=x.dtype)[0]
        for fw, bw in pairs:
            x = torch.cat(bidirectional_dynamic_rnn(fw, bw, x, dtype=x.dtype)[0], dim=-1)
        return x


def input_spec(model: Model) -> tuple[list[int], torch.dtype]:
    """One step's input shape without batch and the dtype of a model (a Keras model's first
    layer must be recurrent)."""
    if model.family == "keras":
        first = next(iter(_keras_layers(model)), None)
        cell = getattr(getattr(first, "forward_layer", first), "cell", None)
        if cell is None or cell.step_shape is None:
            raise ConvertError("the numeric check needs a Keras model whose first layer is an RNN "
                               "or Bidirectional layer")
        return cell.step_shape, next(cell.parameters()).dtype
    first = _leaves(model.obj)[0]
    return [first.input_depth], next(first.parameters()).dtype


def compare(model: Model, reloaded: Callable, seed: int = 0) -> tuple[float, list[int]]:
    """Max |difference| of the two models' outputs on one random input ``[3, 7, *step]``
    (``step``: ``[depth]``, a ConvLSTM's ``[*spatial, channels]``)."""
    step, dtype = input_spec(model)
    x = torch.randn(3, 7, *step, generator=torch.Generator().manual_seed(seed)).to(dtype)
    expected = run(model, x)
    S.reset_default_graph()  # the reloaded model takes the same variable names
    with torch.no_grad():
        got = torch.as_tensor(reloaded(x))
    if got.shape != expected.shape:
        raise ConvertError(f"the reloaded model's output has shape {list(got.shape)}, the "
                           f"source's {list(expected.shape)}")
    return float((got.double() - expected.double()).abs().max()), list(x.shape)
