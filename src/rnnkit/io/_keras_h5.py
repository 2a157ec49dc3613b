"""Keras weight files in HDF5: where each rnnkit weight lives, read and written.

Keras 3 (``model.weights.h5`` in a ``.keras`` archive, or a ``.weights.h5``) stores weights by
object path, not by name: ``layers/<snake class name>[_k]/vars/<i>`` with ``_k`` counting
same-class layers in model order, ``cell/vars`` under an RNN, ``forward_layer`` /
``backward_layer`` under ``Bidirectional``, ``layer`` under ``TimeDistributed``. Legacy files
(Keras 2 / tf.keras ``.h5``) list ``layer_names`` and, per layer group, ``weight_names``
(``lstm/lstm_cell/kernel:0``) in the layer's weight order; Keras matches them to layers by
position, and so does rnnkit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rnnkit import layers as L
from rnnkit.io._keras_graph import KerasAny, KerasNotEqual
from rnnkit.layers.base import snake
from rnnkit.layers.model import SymbolicTensor


def _keras_class(obj: Any) -> str:
    if isinstance(obj, SymbolicTensor):
        return "InputLayer"
    return "Functional" if isinstance(obj, L.Model) else type(obj).__name__


def keras3_objects(model, order: list) -> list[tuple[str, str, list]]:
    """``(object path, name, weights)`` for every object Keras 3 saves state for, the model first.

    ``order`` is the model's layers in Keras order (``Sequential``: its layers; functional: the
    file's order or ``keras_order``), InputLayers included or not.
    """
    out: list[tuple[str, str, list]] = [("", model.name, [])]
    used: dict[str, int] = {}
    for op in order:
        if isinstance(op, (KerasNotEqual, KerasAny)):  # an op, not a Keras layer: nothing saved
            continue
        base = snake(_keras_class(op))
        used[base] = used.get(base, -1) + 1
        name = base if used[base] == 0 else f"{base}_{used[base]}"
        _walk(op, f"layers/{name}", out)
    return out


def _walk(obj: Any, path: str, out: list) -> None:
    if isinstance(obj, SymbolicTensor):
        out.append((path, obj.name or "input_layer", []))
        return
    if isinstance(obj, L.StackedRNNCells):  # Keras names a list's items by snake class name
        out.append((path, obj.name, []))
        seen: dict[str, int] = {}
        for cell in obj.cells:
            name = snake(type(cell).__name__)
            seen[name] = seen.get(name, -1) + 1
            _walk(cell, f"{path}/cells/{name}" + (f"_{seen[name]}" if seen[name] else ""), out)
        return
    children = {L.RNN: ("cell",), L.Bidirectional: ("forward_layer", "backward_layer"),
                L.TimeDistributed: ("layer",)}
    kids = next((v for k, v in children.items() if isinstance(obj, k)), ())
    if not kids and not isinstance(obj, (L.Dense, L.Embedding, L.Masking, L.Dropout,
                                         L.SimpleRNNCell, L.GRUCell, L.LSTMCell, L.ConvLSTMCell)):
        raise ValueError(f"layer {obj.name!r} ({type(obj).__name__}) has no Keras weight layout; "
                         "Keras files hold SimpleRNN, GRU, LSTM, ConvLSTM1D/2D/3D, RNN, "
                         "Bidirectional, TimeDistributed, Embedding, Masking, Dense and Dropout")
    out.append((path, obj.name, [] if kids else list(obj.parameters(recurse=False))))
    for kid in kids:
        _walk(getattr(obj, kid), f"{path}/{kid}", out)


def vars_path(path: str) -> str:
    return f"{path}/vars" if path else "vars"


def keras3_pairs(h5, model, order: list) -> list[tuple[Any, str, Any]]:
    """``(weight, key, dataset)`` for every weight of ``model`` in a Keras 3 weights file.

    Raises:
        LookupError: a weight is missing, the file holds weights the model lacks, or a shape
            differs (the message lists them).
    """
    pairs, problems = [], []
    for path, _, weights in keras3_objects(model, order):
        for k, w in enumerate(weights):
            key = f"{vars_path(path)}/{k}"
            pairs.append((w, key, _dataset(h5, key, w, problems)))
    _check_coverage(model, [w for w, _, _ in pairs])
    expected = {key for _, key, _ in pairs}
    extra = sorted(k for k in _datasets(h5) if k not in expected)
    if extra:
        problems.append(f"weights the model does not have: {extra[:8]}")
    if problems:
        raise LookupError("; ".join(problems))
    return pairs


def _datasets(h5) -> list[str]:
    names: list[str] = []
    h5.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
    return names


def _dataset(h5, key: str, w, problems: list):
    ds = h5.get(key)
    if ds is None or not hasattr(ds, "shape"):
        problems.append(f"missing weight {key} ({w.op_name}, shape {list(w.shape)})")
    elif tuple(ds.shape) != tuple(w.shape):
        problems.append(f"{key} has shape {list(ds.shape)} but {w.op_name} has {list(w.shape)}")
    elif ds.dtype.kind not in "fiu":
        problems.append(f"{key} has dtype {ds.dtype}, not a number type")
    return ds


def _check_coverage(model, weights: list) -> None:
    covered = {id(w) for w in weights}
    missed = [w.op_name for w in model.parameters() if id(w) not in covered]
    if missed:
        raise ValueError(f"weights {missed} are outside the Keras layout of the model")


def _names(attr: Any) -> list[str]:
    values = np.asarray(attr).reshape(-1)
    if values.size and values.dtype.kind not in "SUO":
        raise LookupError(f"a name list holds {values.dtype} values, not strings")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class _FromCudnn:
    """A Keras 2 cuDNN layer's weight read as its twin's (``_keras_config.CUDNN``), converted as
    Keras converts them: each gate block of the kernel from cuDNN's layout (the block's
    transpose read back in Fortran order), of the recurrent kernel transposed; CuDNNLSTM's bias
    ``[8H]`` (input then recurrent biases) summed to ``[4H]``, CuDNNGRU's ``[6H]`` as the
    reset-after GRU's ``[2, 3H]`` rows. ``shape`` is what the file's dataset gives converted."""

    def __init__(self, ds, w, gates: int):
        self.ds, self.dtype, self.gates = ds, ds.dtype, gates
        self.kind = w.op_name.rsplit("/", 1)[-1]
        self.shape = tuple(w.shape) if self.kind == "bias" else tuple(ds.shape)

    def __getitem__(self, key):
        a = np.asarray(self.ds[key])
        if self.kind == "bias":
            return a.reshape(2, -1).sum(0) if len(self.shape) == 1 else a.reshape(self.shape)
        blocks = np.split(a, self.gates, axis=1)
        if self.kind == "kernel":
            return np.concatenate([b.T.reshape(b.shape, order="F") for b in blocks], axis=1)
        return np.concatenate([b.T for b in blocks], axis=1)


def _cudnn_cells(layer, group, weight_names: list[str]) -> dict[str, int]:
    """The cells of ``layer`` whose weights in ``group`` are a cuDNN layer's, with their gate
    counts, by weight-name prefix: an LSTM's or a reset-after GRU's whose bias in the file has
    the cuDNN layer's shape (twice as many numbers), as Keras tells them apart."""
    twins = {id(c.bias): 4 if isinstance(c, L.LSTMCell) else 3 for c in layer.modules()
             if (isinstance(c, L.LSTMCell) or isinstance(c, L.GRUCell) and c.reset_after)
             and c.use_bias}
    found = {}
    for w, wn in zip(layer.weights, weight_names, strict=True):
        # cuDNN's [2 * G * H]: an LSTM's [G * H] twice over, a GRU's [2, G * H] flat
        cudnn_shape = (2 * w.numel(),) if w.dim() == 1 else (w.numel(),)
        if id(w) in twins and getattr(group.get(wn), "shape", None) == cudnn_shape:
            found[w.op_name.rpartition("/")[0]] = twins[id(w)]
    return found


def legacy_pairs(h5, model, order: list) -> list[tuple[Any, str, Any]]:
    """``(weight, key, dataset)`` for a Keras 2 / tf.keras ``.h5``: the file's layers with
    weights, in order, against the model's top-level layers with weights.

    Raises:
        LookupError: the layer or weight counts or a shape differ.
    """
    root = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" not in root.attrs:
        raise LookupError("no 'layer_names' attribute: not a Keras weights file")
    file_layers = []
    for name in _names(root.attrs["layer_names"]):
        group = root.get(name)
        if group is None or "weight_names" not in group.attrs:
            raise LookupError(f"layer {name!r} is listed but has no group with weight_names")
        weight_names = _names(group.attrs["weight_names"])
        if weight_names:
            file_layers.append((name, group, weight_names))
    mine = [op for op in order if not isinstance(op, SymbolicTensor) and op.weights]
    if len(mine) != len(file_layers):
        raise LookupError(f"the file has {len(file_layers)} layers with weights "
                          f"{[n for n, _, _ in file_layers]}, the model {len(mine)} "
                          f"{[layer.name for layer in mine]}")
    pairs, problems = [], []
    for layer, (name, group, weight_names) in zip(mine, file_layers, strict=True):
        if len(layer.weights) != len(weight_names):
            problems.append(f"layer {name!r} has {len(weight_names)} weights in the file, "
                            f"{layer.name!r} has {len(layer.weights)}")
            continue
        cudnn = _cudnn_cells(layer, group, weight_names)
        for w, wn in zip(layer.weights, weight_names, strict=True):
            prefix, _, last = w.op_name.rpartition("/")
            gates = cudnn.get(prefix) if last in ("kernel", "recurrent_kernel", "bias") else None
            ds = group.get(wn)
            source = group if gates is None or not hasattr(ds, "dtype") else \
                {wn: _FromCudnn(ds, w, gates)}
            pairs.append((w, f"{name}/{wn}", _dataset(source, wn, w, problems)))
    if problems:
        raise LookupError("; ".join(problems))
    _check_coverage(model, [w for w, _, _ in pairs])
    return pairs


def write_keras3(h5, model, order: list) -> None:
    """Write ``model``'s weights into the open, empty h5py file ``h5`` in Keras 3's layout."""
    pairs = []
    for path, name, weights in keras3_objects(model, order):
        group = h5.require_group(vars_path(path))
        group.attrs["name"] = name
        for k, w in enumerate(weights):
            group.create_dataset(str(k), data=w.detach().cpu().numpy())
            pairs.append(w)
    _check_coverage(model, pairs)
