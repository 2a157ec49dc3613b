"""Where the gates of RNN weights lie, recognized by tensor names and shapes.

TF1 cells, TF's cuDNN-compatible cells, Keras layers (tf.keras names and Keras 3's
``cell/vars/i``), ``torch.nn`` RNN modules and ONNX ``RNN``/``GRU``/``LSTM`` initializers; each
recognized tensor gets its framework, role, gate order (in the framework's own letters) and
the index of every gate block. Labels: ``W_<g>`` input weights, ``U_<g>`` recurrent weights,
``b_<g>`` a single bias, ``bW_<g>``/``bU_<g>`` the input-side and recurrent-side biases where a
layout has two, ``p_<g>`` peepholes, ``P`` a projection. Gate orders come from
``rnnkit.io.layouts``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from rnnkit.io.layouts import GATE_ORDERS, GATES, ONNX_PEEPHOLE_ORDER, TF1_LETTERS, TORCH_LETTERS

__all__ = ["Block", "GateInfo", "annotate"]


@dataclass(frozen=True)
class Block:
    """One gate's part of a tensor: ``index`` per axis is an int, a ``(start, stop)`` or None (all)."""

    label: str
    index: tuple

    def text(self) -> str:
        parts = [":" if i is None else str(i) if isinstance(i, int) else f"{i[0]}:{i[1]}"
                 for i in self.index]
        return f"[{', '.join(parts)}]"


@dataclass(frozen=True)
class GateInfo:
    """What an RNN tensor is: framework/cell, kind (rnn, gru, lstm), role, gate order, blocks."""

    framework: str
    kind: str
    role: str
    order: tuple[str, ...]
    blocks: tuple[Block, ...]

    def to_json(self) -> dict:
        return {"framework": self.framework, "kind": self.kind, "role": self.role,
                "gate_order": list(self.order),
                "blocks": [{"label": b.label, "index": b.text(),
                            "slices": [list(i) if isinstance(i, tuple) else i for i in b.index]}
                           for b in self.blocks]}


def _letters(framework: str, kind: str) -> list[str]:
    own = TF1_LETTERS[kind] if framework == "tf1" else TORCH_LETTERS.get(kind, {}) \
        if framework == "torch" else {}
    return [own.get(g, g) for g in GATE_ORDERS[framework][kind]]


def _split(label: str, letters: list[str], n: int, axis: int, where: tuple) -> list[Block]:
    """``label_<g>`` blocks splitting length ``n`` along ``axis`` into one block per gate;
    ``where`` is the index of the other axes (its entry at ``axis`` is replaced)."""
    step = n // len(letters)
    return [Block(f"{label}_{g}", where[:axis] + ((k * step + _offset(where, axis), (k + 1) * step
                                                   + _offset(where, axis)),) + where[axis + 1:])
            for k, g in enumerate(letters)]


def _offset(where: tuple, axis: int) -> int:
    """Start of the gate run along ``axis`` (a ``(start, stop)`` placeholder shifts it)."""
    slot = where[axis]
    return slot[0] if isinstance(slot, tuple) else 0


def _info(framework, kind, role, letters, blocks) -> GateInfo:
    return GateInfo(framework, kind, role, tuple(letters), tuple(blocks))


def _concat_kernel(shape, depth: int, letters) -> list[Block]:
    """TF1 kernels act on ``concat([x, h])``: rows ``:depth`` are W, the rest U."""
    return (_split("W", letters, shape[1], 1, ((0, depth), None))
            + _split("U", letters, shape[1], 1, ((depth, shape[0]), None)))


_TF_SUFFIXES = ("candidate/input_projection/kernel", "candidate/input_projection/bias",
                "candidate/hidden_projection/kernel", "candidate/hidden_projection/bias",
                "gates/kernel", "gates/bias", "candidate/kernel", "candidate/bias",
                "projection/kernel", "recurrent_kernel", "kernel", "bias",
                "w_i_diag", "w_f_diag", "w_o_diag")
_KERAS3_VARS = {"0": "kernel", "1": "recurrent_kernel", "2": "bias"}


# tf.contrib.rnn.GRUBlockCell's names for GRUCell's variables
_GRU_BLOCK_VARS = {"w_ru": "gates/kernel", "b_ru": "gates/bias", "w_c": "candidate/kernel",
                   "b_c": "candidate/bias"}


def _semantic(name: str) -> str:
    """A name to recognize by: ``:0`` dropped, Keras 3's ``cell/vars/i`` as Keras names,
    ``GRUBlockCell``'s ``w_ru``... as ``GRUCell``'s."""
    name = name.removesuffix(":0")
    m = re.match(r"^(.*/cell)/vars/(\d)$", name)
    if m and m[2] in _KERAS3_VARS:
        return f"{m[1]}/{_KERAS3_VARS[m[2]]}"
    scope, _, last = name.rpartition("/")
    return f"{scope}/{_GRU_BLOCK_VARS[last]}" if scope and last in _GRU_BLOCK_VARS else name


def _groups(names: dict[str, str]) -> dict[str, dict[str, str]]:
    """``{scope: {suffix: original name}}`` for names ending in a TF or Keras weight suffix."""
    out: dict[str, dict[str, str]] = {}
    for original, name in names.items():
        for sfx in _TF_SUFFIXES:
            if name == sfx or name.endswith("/" + sfx):
                out.setdefault(name[:-len(sfx)].rstrip("/"), {})[sfx] = original
                break
    return out


_KIND_OF_GATES = {1: "rnn", 3: "gru", 4: "lstm"}
_CLASS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


def _kind(gates_times_units: int, units: int) -> str | None:
    ok = units > 0 and gates_times_units % units == 0
    return _KIND_OF_GATES.get(gates_times_units // units) if ok else None


def _conv_group(g: dict[str, tuple]) -> dict[str, GateInfo]:
    """A Keras ConvLSTM cell: ``kernel [*k, in, 4F]``, ``recurrent_kernel [*k, F, 4F]``,
    ``bias [4F]``, gate blocks on the last axis."""
    rk, k = g["recurrent_kernel"], g["kernel"]
    *window, F, GF = rk
    if (len(rk) > 5 or GF != 4 * F or F == 0 or len(k) != len(rk) or k[:-2] != tuple(window)
            or k[-1] != GF):
        return {}
    fw, L, lead = f"Keras ConvLSTM{len(window)}D", _letters("keras", "lstm"), (None,) * len(rk)
    out = {"kernel": _info(fw, "lstm", "kernel [*kernel_size, in, 4F]", L,
                           _split("W", L, GF, len(rk) - 1, lead)),
           "recurrent_kernel": _info(fw, "lstm", "recurrent_kernel [*kernel_size, F, 4F]", L,
                                     _split("U", L, GF, len(rk) - 1, lead))}
    if g.get("bias") == (GF,):
        out["bias"] = _info(fw, "lstm", "bias [4F]", L, _split("b", L, GF, 0, (None,)))
    return out


def _keras_group(g: dict[str, tuple]) -> dict[str, GateInfo]:
    """A Keras SimpleRNN/GRU/LSTM cell: ``kernel``, ``recurrent_kernel``, ``bias`` (a ConvLSTM's:
    ``_conv_group``)."""
    if len(g["recurrent_kernel"]) != 2:
        return _conv_group(g) if len(g["recurrent_kernel"]) > 2 else {}
    H, GH = g["recurrent_kernel"]
    kind = _kind(GH, H)
    if kind is None or g["kernel"][1:] != (GH,):
        return {}
    fw, L = f"Keras {'SimpleRNN' if kind == 'rnn' else _CLASS[kind]}", _letters("keras", kind)
    b = g.get("bias")
    # Keras 2's CuDNNLSTM/CuDNNGRU: input and recurrent biases side by side, each gate block of
    # the kernels in cuDNN's layout (rnnkit's loader converts them, as Keras does)
    cudnn = b == (2 * GH,) and kind in ("lstm", "gru")
    layout = " (each gate block in cuDNN's layout)" if cudnn else ""
    fw = f"Keras 2 CuDNN{_CLASS[kind]}" if cudnn else fw
    out = {"kernel": _info(fw, kind, f"kernel [in, G*H]{layout}", L,
                           _split("W", L, GH, 1, (None, None))),
           "recurrent_kernel": _info(fw, kind, f"recurrent_kernel [H, G*H]{layout}", L,
                                     _split("U", L, GH, 1, (None, None)))}
    if cudnn:
        out["bias"] = _info(fw, kind, "bias [2*G*H] (input biases, then recurrent)", L,
                            _split("bW", L, GH, 0, (None,)) + _split("bU", L, GH, 0, ((GH, None),)))
    elif b == (2, GH):
        out["bias"] = _info(fw, kind, "bias [2, 3H] (reset_after=True: input row, recurrent row)",
                            L, _split("bW", L, GH, 1, (0, None)) + _split("bU", L, GH, 1, (1, None)))
    elif b == (GH,):
        out["bias"] = _info(fw, kind, "bias [G*H]", L, _split("b", L, GH, 0, (None,)))
    return out


def _gru_group(g: dict[str, tuple]) -> dict[str, GateInfo]:
    """TF1 ``GRUCell`` (reset before) or TF's ``CudnnCompatibleGRUCell`` (reset after)."""
    rows, H2 = g["gates/kernel"]
    H, letters = H2 // 2, _letters("tf1", "gru")
    gates, c = letters[:2], letters[2]
    fw = ("TF cuDNN-compatible GRU (CudnnCompatibleGRUCell, reset after)"
          if "candidate/input_projection/kernel" in g else "TF1 GRUCell (reset before)")
    out = {"gates/kernel": _info(fw, "gru", "gates/kernel [in+H, 2H] on concat([x, h])", gates,
                                 _concat_kernel(g["gates/kernel"], rows - H, gates))}
    if g.get("gates/bias") == (H2,):
        out["gates/bias"] = _info(fw, "gru", "gates/bias", gates, _split("b", gates, H2, 0, (None,)))
    if "candidate/kernel" in g:
        out["candidate/kernel"] = _info(fw, "gru", "candidate/kernel [in+H, H] on concat([x, r*h])",
                                        [c], _concat_kernel(g["candidate/kernel"], rows - H, [c]))
    for sfx, label, role in (("candidate/bias", "b", "candidate/bias"),
                             ("candidate/input_projection/kernel", "W", "candidate input kernel"),
                             ("candidate/input_projection/bias", "bW", "candidate input bias"),
                             ("candidate/hidden_projection/kernel", "U", "candidate hidden kernel"),
                             ("candidate/hidden_projection/bias", "bU",
                              "candidate hidden bias (inside r * (h U + b))")):
        if sfx in g:
            out[sfx] = _info(fw, "gru", role, [c], [Block(f"{label}_{c}", (None,) * len(g[sfx]))])
    return out


_TF1_CELLS = {"basic_lstm_cell": "TF1 BasicLSTMCell", "lstm_cell": "TF1 LSTMCell",
              "cudnn_compatible_lstm_cell": "TF cuDNN-compatible LSTM (CudnnCompatibleLSTMCell)",
              "basic_rnn_cell": "TF1 BasicRNNCell"}


def _kernel_group(cell: str, g: dict[str, tuple]) -> dict[str, GateInfo]:
    """A TF1 LSTM or vanilla RNN cell: ``kernel [in+H, G*H]`` and ``bias`` (plus peepholes and
    projection); the kind comes from the cell's scope name (a Dense layer has the same shapes)."""
    kernel, bias = g.get("kernel"), g.get("bias")
    if kernel is None or len(kernel) != 2 or bias != (kernel[1],):
        return {}
    lstm = ("lstm" in cell and "layer_norm" not in cell) or "w_f_diag" in g or "projection/kernel" in g
    if not lstm and "rnn" not in cell:
        return {}
    kind = "lstm" if lstm else "rnn"
    H = kernel[1] // GATES[kind]
    h_out = g["projection/kernel"][1] if "projection/kernel" in g else H
    if kernel[1] % GATES[kind] or kernel[0] <= h_out:
        return {}
    fw, L = _TF1_CELLS.get(cell, f"TF1 {_CLASS[kind]} cell"), _letters("tf1", kind)
    role = "bias (forget_bias is added at run time, not stored)" if lstm and "cudnn" not in cell \
        else "bias"
    out = {"kernel": _info(fw, kind, "kernel [in+H, G*H] on concat([x, h])", L,
                           _concat_kernel(kernel, kernel[0] - h_out, L)),
           "bias": _info(fw, kind, role, L, _split("b", L, kernel[1], 0, (None,)))}
    for x in "ifo":
        if f"w_{x}_diag" in g:
            out[f"w_{x}_diag"] = _info(fw, kind, "peephole", [x], [Block(f"p_{x}", (None,))])
    if "projection/kernel" in g:
        out["projection/kernel"] = _info(fw, kind, "projection [H, num_proj]", [],
                                         [Block("P", (None, None))])
    return out


def _tf_group(scope: str, g: dict[str, tuple]) -> dict[str, GateInfo]:
    """Annotate one scope's variables (``g``: suffix -> shape)."""
    if "recurrent_kernel" in g and "kernel" in g:
        return _keras_group(g)
    if "gates/kernel" in g:
        return _gru_group(g)
    return _kernel_group(scope.rsplit("/", 1)[-1], g)


_TORCH = re.compile(r"^(?P<prefix>.*?)(?P<what>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
                    r"(?P<sfx>_l\d+(?:_reverse)?)?$")
_TORCH_PARTS = (("weight_ih", "W", "weight_ih [G*H, in]"), ("weight_hh", "U", "weight_hh [G*H, H]"),
                ("bias_ih", "bW", "bias_ih"), ("bias_hh", "bU", "bias_hh"))


def _torch_annotations(shapes: dict[str, tuple]) -> dict[str, GateInfo]:
    """``torch.nn.RNN/GRU/LSTM`` (``_l{k}[_reverse]``) and ``RNNCell/GRUCell/LSTMCell`` keys."""
    groups: dict[tuple, dict[str, str]] = {}
    for name in shapes:
        m = _TORCH.match(name)
        if m:
            groups.setdefault((m["prefix"], m["sfx"] or ""), {})[m["what"]] = name
    out = {}
    for (_, sfx), g in groups.items():
        if "weight_ih" not in g or "weight_hh" not in g or len(shapes[g["weight_hh"]]) != 2:
            continue
        GH, H = shapes[g["weight_hh"]][0], shapes[g["weight_hh"]][1]
        if "weight_hr" in g and len(shapes[g["weight_hr"]]) == 2:
            H = shapes[g["weight_hr"]][1]
        kind = _kind(GH, H)
        if kind is None:
            continue
        fw = f"PyTorch nn.{_CLASS[kind]}" + ("" if sfx else "Cell") + \
            (" (reverse direction)" if sfx.endswith("_reverse") else "")
        L = _letters("torch", kind)
        for what, label, role in _TORCH_PARTS:
            if what in g and shapes[g[what]][:1] == (GH,):
                where = (None,) * len(shapes[g[what]])
                out[g[what]] = _info(fw, kind, role, L, _split(label, L, GH, 0, where))
        if "weight_hr" in g:
            out[g["weight_hr"]] = _info(fw, kind, "weight_hr [proj, H] (projection)", [],
                                        [Block("P", (None, None))])
    return out


_ONNX_PARTS = {"W": (["W"], "W [dirs, G*H, in]"), "R": (["U"], "R [dirs, G*H, H]"),
               "B": (["bW", "bU"], "B [dirs, 2*G*H] (input biases, then recurrent)"),
               "P": (["p"], "P [dirs, 3H] peepholes")}


def _onnx_annotations(shapes: dict[str, tuple], roles: dict) -> dict[str, GateInfo]:
    """The W, R, B, P inputs of ONNX RNN/GRU/LSTM nodes; directions on axis 0."""
    out = {}
    for name, (kind, part, attrs) in roles.items():
        shape = shapes[name]
        if len(shape) < 2:
            continue
        L = list(ONNX_PEEPHOLE_ORDER) if part == "P" else _letters("onnx", kind)
        fw = f"ONNX {_CLASS[kind]}"
        if kind == "gru":
            fw += f" (linear_before_reset={attrs.get('linear_before_reset', 0)})"
        labels, role = _ONNX_PARTS[part]
        width, blocks = shape[1] // len(labels), []
        for d in range(shape[0]):
            tag = "" if shape[0] == 1 else ("/fw", "/bw")[d] if shape[0] == 2 else f"/{d}"
            for k, label in enumerate(labels):
                where = (d, (k * width, (k + 1) * width)) + (None,) * (len(shape) - 2)
                blocks += [Block(b.label + tag, b.index) for b in _split(label, L, width, 1, where)]
        out[name] = _info(fw, kind, role, L, blocks)
    return out


def annotate(tensors: dict[str, np.ndarray], extra: dict | None = None) -> dict[str, GateInfo]:
    """Gate blocks of every recognized RNN weight in ``tensors`` (names and shapes decide).

    Args:
        tensors: ``{name: array}`` as ``read_file`` returns.
        extra: ``read_file``'s extra (ONNX node roles, names to recognize TF2 keys by).

    Returns:
        ``{name: GateInfo}`` for the tensors recognized; others are left out.
    """
    extra = extra or {}
    shapes = {k: tuple(np.shape(v)) for k, v in tensors.items()}
    if "onnx" in extra:
        return _onnx_annotations(shapes, extra["onnx"])
    aliases = extra.get("aliases", {})
    out = _torch_annotations(shapes)
    for scope, g in _groups({k: _semantic(aliases.get(k, k)) for k in shapes}).items():
        found = _tf_group(scope, {sfx: shapes[name] for sfx, name in g.items()})
        out.update({g[sfx]: info for sfx, info in found.items()})
    return out


