"""One Keras layer config <-> one rnnkit layer (Keras 3 ``.keras`` JSON and Keras 2 / tf.keras).

Only Keras's own built-in classes are accepted, looked up by name in fixed tables: a ``module``
outside Keras, a ``registered_name`` (a custom, registered class), ``Lambda`` or any class not
in the tables is refused. Values are checked against the types rnnkit itself writes;
initializers, regularizers and constraints are rebuilt from their Keras names. Nothing from a
config is imported or evaluated.
"""

from __future__ import annotations

import functools
from typing import Any

from rnnkit import init as _init
from rnnkit import layers as L
from rnnkit.layers import penalties
from rnnkit.layers.base import serialize


class ConfigError(ValueError):
    """A config names something rnnkit refuses (unsafe or unknown) or cannot represent."""


LAYERS: dict[str, type] = {c.__name__: c for c in (
    L.SimpleRNN, L.GRU, L.LSTM, L.ConvLSTM1D, L.ConvLSTM2D, L.ConvLSTM3D, L.RNN, L.Bidirectional,
    L.TimeDistributed, L.Embedding, L.Masking, L.Dense, L.Dropout)}
CELLS: dict[str, type] = {c.__name__: c for c in (L.SimpleRNNCell, L.GRUCell, L.LSTMCell)}
STACK = {"StackedRNNCells": L.StackedRNNCells}  # an RNN's cell may be a stack of CELLS
# Keras 2's cuDNN-only layers: the math of these layers with these options (their biases are
# converted as they load, _keras_h5.legacy_pairs); only legacy files have them
_CUDNN_MATH = {"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True}
CUDNN = {"CuDNNLSTM": ("LSTM", _CUDNN_MATH),
         "CuDNNGRU": ("GRU", {**_CUDNN_MATH, "reset_after": True})}
KERAS_MODULES = (None, "keras", "keras.layers", "keras.models", "keras.src.models.functional",
                 "keras.src.models.sequential", "keras.src.engine.functional",
                 "keras.src.engine.sequential", "tf_keras.src.engine.functional",
                 "tf_keras.src.engine.sequential")  # names only: nothing is ever imported
# Keras activation names (Keras 2 and 3); legacy files mean Keras 2's hard_sigmoid by the name.
_ACTIVATIONS = ("tanh", "sigmoid", "relu", "relu6", "elu", "selu", "softsign", "softplus",
                "gelu", "swish", "silu", "hard_sigmoid", "linear", "softmax", "log_softmax",
                "exponential", "mish", "hard_silu", "hard_swish")
# Keras-only options: ignored whatever their value ...
_IGNORED = frozenset({"dtype", "implementation", "input_length", "batch_input_shape",
                      "batch_shape", "autocast"})
# ... or accepted only with the value that changes nothing.
_INERT = {"activity_regularizer": None, "quantization_config": None, "lora_rank": None,
          "lora_alpha": None, "time_major": False, "sparse": False, "ragged": False,
          "input_axes": None, "output_axes": None}
_REGULARIZERS = {"L1L2": ("l1", "l2"), "L1": ("l1",), "L2": ("l2",)}
_CONSTRAINTS = {"MaxNorm": penalties.MaxNorm, "NonNeg": penalties.NonNeg,
                "UnitNorm": penalties.UnitNorm}


def check_entry(entry: Any, where: str, allowed: dict | tuple,
                modules: tuple = KERAS_MODULES) -> tuple[str, dict]:
    """``(class_name, config)`` of a serialized Keras object, refused unless it is a built-in.

    Raises:
        ConfigError: not a ``{"class_name", "config"}`` object, or a class not in ``allowed``, a
            module outside Keras or a registered (custom) class.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise ConfigError(f"{where}: expected a {{'class_name': ..., 'config': {{...}}}} object, "
                          f"got {entry!r:.100}")
    config = entry.get("config", {})
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: 'config' must be an object, got {config!r:.100}")
    cls, module, registered = entry["class_name"], entry.get("module"), entry.get("registered_name")
    if cls not in allowed or module not in modules or registered not in (None, cls):
        name = config.get("name", "?")
        why = (" (a Lambda layer carries Python code)" if cls == "Lambda" else
               " (a custom class, whose code is not in the file)" if registered not in (None, cls)
               or module not in modules else "")
        raise ConfigError(f"{where}: layer {name!r} of class {cls!r} (module {module!r}, "
                          f"registered_name {registered!r}) is refused{why}; rnnkit loads only "
                          f"the Keras built-ins {sorted(allowed)} and never imports or runs code "
                          "from a file")
    return cls, config


@functools.cache
def _reference(cls_name: str) -> dict:
    """The config rnnkit writes for a default ``cls_name``: its keys and value types."""
    if cls_name in CELLS:
        return CELLS[cls_name](1, name="c").get_config()
    if cls_name in STACK:
        return L.StackedRNNCells([L.SimpleRNNCell(1, name="c")], name="s").get_config()
    make = {"RNN": lambda: L.RNN(L.SimpleRNNCell(1, name="c"), name="r"),
            "Bidirectional": lambda: L.Bidirectional(L.SimpleRNN(1, name="r"), name="b"),
            "TimeDistributed": lambda: L.TimeDistributed(L.Dense(1, name="d"), name="t"),
            "Embedding": lambda: L.Embedding(1, 1, name="e"), "Dropout": lambda: L.Dropout(0.0),
            "Masking": lambda: L.Masking(name="m")}
    if cls_name.startswith("ConvLSTM"):
        make[cls_name] = lambda: LAYERS[cls_name](1, 1, name="x")
    layer = make.get(cls_name, lambda: LAYERS[cls_name](1, name="x"))()
    if isinstance(layer, L.RNN):
        layer.time_major = True  # a config has it only where it is set (tf.keras's option)
    return layer.get_config()


def _check_type(value: Any, reference: Any, where: str) -> Any:
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    test = ok.get(type(reference))
    if test is not None and not test(value):
        raise ConfigError(f"{where} must be a {type(reference).__name__}, got {value!r:.80}")
    if test is None and not (value is None or isinstance(value, (str, int, float, list))):
        raise ConfigError(f"{where} must be a number, string, list or null, got {value!r:.80}")
    if isinstance(value, list) and not all(v is None or isinstance(v, (int, float)) for v in value):
        raise ConfigError(f"{where} must be a list of numbers, got {value!r:.80}")
    return float(value) if type(reference) is float else value


def _activation(value: Any, where: str, legacy: bool) -> str:
    if value is None:
        return "linear"
    if not isinstance(value, str) or value not in _ACTIVATIONS:
        raise ConfigError(f"{where} must be one of the Keras activations {list(_ACTIVATIONS)}, "
                          f"got {value!r:.100} (custom activations are refused)")
    return "hard_sigmoid_keras2" if legacy and value == "hard_sigmoid" else value


def _initializer(value: Any, where: str) -> _init.Initializer | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"class_name": value, "config": {}}
    cls_name, config = check_entry(value, where, _init._KERAS, (None, "keras.initializers"))
    cls, defaults = _init._KERAS[cls_name]
    names = {p.name for p in cls._params()}
    extra = {k: v for k, v in config.items() if k not in names and k != "dtype"}
    if any(v is not None for v in extra.values()):
        raise ConfigError(f"{where}: {cls_name} options {sorted(extra)} are not supported")
    try:
        return cls.from_config({**defaults, **{k: v for k, v in config.items() if k in names}})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _penalty(value: Any, where: str, kind: str):
    if value is None:
        return None
    table = _REGULARIZERS if kind == "regularizer" else _CONSTRAINTS
    cls_name, config = check_entry(value, where, table, (None, f"keras.{kind}s"))
    try:
        if kind == "regularizer":
            return penalties.L1L2(**{k: float(config.get(k, 0.0)) for k in _REGULARIZERS[cls_name]})
        return _CONSTRAINTS[cls_name](**{k: v for k, v in config.items() if k != "name"})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def layer_from_keras(entry: Any, where: str, legacy: bool, allowed: dict = LAYERS):
    """An rnnkit layer (or cell) from one serialized Keras layer.

    Args:
        entry: ``{"class_name", "config", ...}`` from a Keras config.
        where: where it sits, for messages.
        legacy: the config is Keras 2's (``hard_sigmoid`` means ``clip(0.2 x + 0.5, 0, 1)``).
        allowed: accepted classes (layers, or cells for ``RNN(cell)``).

    Raises:
        ConfigError: refused class, unknown or unsupported option, badly typed value.
    """
    converted = _nested(entry, where, allowed, legacy)
    return allowed[converted["class_name"]].from_config(converted["config"])


def _rnnkit_config(cls_name: str, config: dict, where: str, legacy: bool) -> dict:
    reference, out = _reference(cls_name), {}
    where = f"{where} ({cls_name} {config.get('name', '?')!r})"
    for key, value in config.items():
        at = f"{where}: {key}"
        if key in _IGNORED:
            continue
        if key in _INERT and key not in reference:  # activity_regularizer: some layers take one
            if value != _INERT[key]:
                raise ConfigError(f"{at}={value!r:.80} is not supported by rnnkit")
            continue
        if key not in reference:
            raise ConfigError(f"{at} is not an option rnnkit knows for {cls_name}")
        if key.endswith("_initializer"):
            out[key] = _initializer(value, at)
        elif key.endswith("_regularizer"):
            out[key] = _penalty(value, at, "regularizer")
        elif key.endswith("_constraint"):
            out[key] = _penalty(value, at, "constraint")
        elif key in ("activation", "recurrent_activation"):
            out[key] = _activation(value, at, legacy)
        elif key in ("layer", "backward_layer", "cell"):
            allowed = {**CELLS, **STACK} if key == "cell" else LAYERS
            out[key] = None if value is None else _nested(value, at, allowed, legacy)
        elif key == "cells":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{at} must be a non-empty list of Keras cells, got "
                                  f"{value!r:.80}")
            out[key] = [_nested(v, f"{at}[{k}]", CELLS, legacy) for k, v in enumerate(value)]
        elif key == "name":
            if not isinstance(value, str) or not value or "/" in value:
                raise ConfigError(f"{at} must be a non-empty string without '/', got {value!r:.80}")
            out[key] = value
        else:
            out[key] = _check_type(value, reference[key], at)
    if legacy and cls_name == "Bidirectional":
        out = _flipped_backward(out)
    return out


def _flipped_backward(config: dict) -> dict:
    """tf.keras makes a Bidirectional's backward layer going the other way from ``layer``
    (forwards, where ``layer`` goes backwards; Keras 3 refuses such a layer); its config names
    the backward layer only where it was given."""
    layer = config.get("layer")
    if config.get("backward_layer") is not None or not layer or not layer["config"].get("go_backwards"):
        return config
    name = str(layer["config"].get("name", "")).removeprefix("forward_")
    backward = {**layer, "config": {**layer["config"], "go_backwards": False,
                                    "name": f"backward_{name}"}}
    return {**config, "backward_layer": backward}


def _nested(entry: Any, where: str, allowed: dict, legacy: bool) -> dict:
    """``{"class_name", "config"}`` of rnnkit's for a Keras layer or cell (also one inside
    another's config: ``layer``, ``cell``, each of ``cells``), checked and converted; a legacy
    cuDNN layer becomes its twin."""
    twins = CUDNN if legacy and allowed is LAYERS else {}
    name, sub = check_entry(entry, where, {**allowed, **twins})
    if name in twins:
        name, fixed = twins[name]
        sub = {**sub, **fixed}
    return {"class_name": name, "config": _rnnkit_config(name, sub, where, legacy)}


def _keras_value(key: str, value: Any, where: str) -> Any:
    if value is None:
        return None
    if key.endswith("_initializer"):
        init = _init.deserialize(value)
        names = [n for n, (c, _) in _init._KERAS.items() if type(init) is c and n[0].isupper()]
        if not names:
            raise ValueError(f"{where}: initializer {init!r} has no Keras equivalent")
        return {"module": "keras.initializers", "class_name": names[0],
                "config": init.get_config(), "registered_name": None}
    if key.endswith(("_regularizer", "_constraint")):
        kind = "regularizers" if key.endswith("_regularizer") else "constraints"
        return {"module": f"keras.{kind}", **value, "registered_name": None}
    if key == "time_major" and value:
        raise ValueError(f"{where}: time_major=True has no Keras 3 equivalent (Keras 3's RNN "
                         "layers read [batch, time, features])")
    if key == "mask_with_initial_state" and value:
        raise ValueError(f"{where}: tf.keras's masking of a call with initial_state has no "
                         "Keras 3 equivalent (Keras 3 applies no mask to such a call); set the "
                         "layer's mask_with_initial_state = False to write it with Keras 3's rule")
    if key in ("activation", "recurrent_activation") and value not in _ACTIVATIONS:
        raise ValueError(f"{where}: activation {value!r} has no Keras 3 equivalent (Keras 3's "
                         "hard_sigmoid is relu6(x + 3) / 6, not Keras 2's clip(0.2 x + 0.5, 0, 1))")
    if key in ("layer", "backward_layer", "cell"):
        return _entry_to_keras(value, where)
    if key == "cells":
        return [_entry_to_keras(v, f"{where}[{k}]") for k, v in enumerate(value)]
    return value


def _entry_to_keras(entry: dict, where: str) -> dict:
    cls_name = entry["class_name"]
    if cls_name not in LAYERS and cls_name not in CELLS and cls_name not in STACK:
        raise ValueError(f"{where}: {cls_name} layers cannot be written to a Keras file; "
                         f"supported: {sorted(LAYERS)}")
    at = f"{where} ({cls_name} {entry['config'].get('name')!r})"
    # ``fast`` picks rnnkit's unroll path; it changes no number, and Keras has no such key
    config = {k: _keras_value(k, v, f"{at}: {k}") for k, v in entry["config"].items() if k != "fast"}
    return {"module": "keras.layers", "class_name": cls_name, "config": config,
            "registered_name": None}


def layer_to_keras(layer) -> dict:
    """The Keras 3 serialized form of an rnnkit layer.

    Raises:
        ValueError: a layer, activation or initializer Keras 3 has no equivalent for.
    """
    return _entry_to_keras(serialize(layer), "model")
