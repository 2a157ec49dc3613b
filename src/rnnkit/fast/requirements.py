"""What the fast paths require of a call, each requirement a short reason where it is not met:
where the tensors are (``placement``), what every fast path needs (``common_unmet``), what only
``fused`` runs (``dropout_unmet``) and what oneDNN's primitives lack (``onednn_cell_unmet``).
``rnnkit.fast.dispatch.decide`` gathers them per path; the paths' own modules add theirs
(``cudnn.unmet``, ``fused.unmet``, ``graphs.unmet``)."""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

from rnnkit.activations import name_of
from rnnkit.cells.equations import Canonical
from rnnkit.fast.varlen import prefix_lengths


def placement(p: Canonical, inputs: torch.Tensor, state) -> tuple[list[str], list[str]]:
    """The dtypes and device types of every tensor an unroll reads, sorted, each once."""
    tensors = [inputs, *_leaves(state), p.W, p.U, p.b, p.b_h, p.P, *(p.peepholes or ())]
    if p.norms is not None:
        tensors += pytree.tree_leaves(p.norms)
    dtypes, devices = set(), set()
    for t in tensors:
        if isinstance(t, torch.Tensor):
            dtypes.add(t.dtype)
            devices.add(t.device.type)
    return (sorted(str(d).removeprefix("torch.") for d in dtypes), sorted(devices))


def _leaves(state) -> list:
    """A state's tensors: a tensor, or a flat tuple of them (``LSTMStateTuple``) without
    pytree's walk (most calls), any other structure with it."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, tuple) and all(isinstance(t, torch.Tensor) for t in state):
        return list(state)
    return pytree.tree_leaves(state)


def placement_unmet(where: tuple[list[str], list[str]], device: str,
                     dtypes: tuple[str, ...]) -> list[str]:
    """Why the tensors (``placement``) are not where a path runs: every one on ``device``, in
    one of ``dtypes``."""
    found, devices = where
    unmet = []
    if len(found) > 1:
        unmet.append(f"dtypes are mixed ({', '.join(found)})")
    elif found[0] not in dtypes:
        unmet.append(f"dtype is {found[0]}; {' or '.join(dtypes)} only")
    if devices != [device]:
        unmet.append(f"devices are {', '.join(devices)}; {device} only")
    return unmet


def autocast_unmet() -> list[str]:
    """Why a float32-only CPU path cannot run under CPU autocast: the reference loop's products
    then run in autocast's dtype, and a fast path must give the loop's numbers."""
    if not torch.is_autocast_enabled("cpu"):
        return []
    dtype = str(torch.get_autocast_dtype("cpu")).removeprefix("torch.")
    return [f"autocast is on (the loop's products run in {dtype}; this path in float32 only)"]


def _transformed() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, jacrev, ...) is running this call."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def common_unmet(p: Canonical, inputs: torch.Tensor, state, mask, masked_output: str, chunk,
                 own_step: bool) -> tuple[list[str], torch.Tensor | None, bool]:
    """What every fast path needs (a ``Canonical`` step, no masks left for the steps to draw, a
    mask without holes), and the lengths (None: full length) and suffix flag of the mask.
    Dropout masks: ``dropout_unmet``."""
    unmet = []
    if _transformed():
        unmet.append("inside a torch.func transform (grad, vmap, ...): the fast paths' "
                     "autograd Functions serve plain autograd only")
    if own_step:
        unmet.append("the cell has its own prepare_inputs/step (per-step work such as dropout)")
    if p.g_dropout is not None:  # a mask each step draws: no path runs all steps at once
        unmet.append("candidate dropout drawn step by step (g_dropout)")
    if inputs.shape[1] == 0:
        unmet.append("batch is empty")
    if masked_output not in ("zero", "previous"):
        unmet.append(f"masked_output is {masked_output!r}")
    lengths, suffix = None, False
    if mask is not None:
        lengths = prefix_lengths(mask)
        if lengths is None:  # Keras go_backwards reads padding first: valid steps are a suffix
            lengths = prefix_lengths(mask.flip(0))
            suffix = lengths is not None
        if lengths is None:
            unmet.append("the mask has holes (valid steps are neither a prefix nor a suffix of "
                         "each sequence)")
        elif int(lengths.max()) == 0:
            unmet.append("every sequence has length 0")
        elif bool((lengths == mask.shape[0]).all()):
            lengths = None
    if chunk and (masked_output != "zero" or suffix):
        unmet.append("swap_memory with Keras masks (outputs held across chunks)")
    return unmet, lengths, suffix


def dropout_unmet(p: Canonical) -> list[str]:
    """Why a path other than ``fused`` cannot run dropout masks: ``h_mask`` (Keras) and
    ``state_mask`` (a ``DropoutWrapper``'s) act between steps, and an ``x_mask`` left in
    ``Canonical`` is one per gate (a single input mask drops the sequence before the unroll:
    ``KerasCell.unroll``)."""
    unmet = []
    if p.h_mask is not None:
        unmet.append("recurrent dropout (h_mask) between steps")
    if p.state_mask is not None:
        unmet.append("state dropout (state_mask) between steps")
    if p.x_mask is not None:
        unmet.append("input dropout with a mask per gate (x_mask, with recurrent_dropout)")
    if p.g_mask is not None:
        unmet.append("candidate dropout (g_mask, LayerNormLSTMCell's dropout_keep_prob) between "
                     "steps")
    return unmet


def onednn_cell_unmet(p: Canonical) -> list[str]:
    """What oneDNN's primitives lack for this cell's math."""
    unmet = []
    act, rec = name_of(p.activation), p.recurrent_activation and name_of(p.recurrent_activation)
    if p.kind == "layer_norm_lstm":
        unmet.append("layer normalization has no oneDNN cell")
    elif p.kind == "rnn":
        if act not in ("tanh", "relu", "sigmoid"):
            unmet.append(f"activation is {act} (oneDNN vanilla_rnn has tanh, relu, sigmoid)")
    else:
        if act != "tanh":
            unmet.append(f"activation is {act} (oneDNN {p.kind} has tanh only)")
        if rec != "sigmoid":
            unmet.append(f"recurrent_activation is {rec} (oneDNN {p.kind} has sigmoid only)")
    if p.cell_clip is not None or p.proj_clip is not None:
        unmet.append("cell_clip/proj_clip set (oneDNN LSTM does not clip)")
    return unmet
