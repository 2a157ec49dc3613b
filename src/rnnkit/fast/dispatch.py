"""The one place that decides which path runs an unroll, and can say why not the others.

Paths, in order of preference: ``onednn`` (oneDNN's RNN primitives on CPU), ``cudnn`` (torch's
fused RNN ops, cuDNN on a CUDA device, ``rnnkit.fast.cudnn``), ``fused`` (rnnkit's own C kernel,
``rnnkit.fast.fused``, on CPU for the cells oneDNN lacks: LSTM clipping and layer norm, other
activations), ``graph`` (CUDA graphs captured at a shape's second call and replayed,
``rnnkit.fast.graphs``: of the reference loop for the cells cuDNN lacks, of cuDNN's own op for
the cells it has, measured faster than calling cuDNN each time; ``Decision.captures`` and
``Decision.first`` say what the graphs hold and what runs a shape not captured yet, and
``Decision.loop`` which loop they hold for the other cells), ``reference``
(``rnnkit.unroll.scan``, always exact, always available). Exceptions, measured: a
variable-length batch takes ``fused``, which packs the batch's tokens, where oneDNN needs one
call per segment of constant batch; so do batch 1, small cells (LSTMs up to 128 units, GRUs
up to 256, vanilla RNNs up to 64) and LSTMs with peepholes, where oneDNN 3.2's primitives cost
more per step. On a CUDA device ``graph`` goes before ``cudnn`` wherever both can run: a shape's
first call runs cuDNN eagerly, later ones replay cuDNN's op (an LSTM's variable lengths: the
Triton loop, where cuDNN would pack the batch), unless a graph would keep more than
``GRAPHED_CUDNN_MAX_BYTES`` of activations. A fast path is an
optimization, never a second semantics: it must give the reference path's numbers.

The switch has three values: ``"auto"`` takes the best eligible path and falls back quietly;
``True`` raises ``ValueError`` listing every unmet requirement when no fast path is eligible;
``False`` forces the reference path. ``rnnkit.rnn`` sets it per call with ``fast_mode``; cells
read it in ``FusedCell.unroll``, so it reaches every layer of a ``MultiRNNCell``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from rnnkit.cells.equations import Canonical
from rnnkit.fast import compiled, cudnn, fused, graphs, onednn, steps
from rnnkit.fast.autograd import Weights, run
from rnnkit.fast.cudnn import run_cudnn
from rnnkit.fast.fused import run_fused
from rnnkit.fast.library import FastPathError
from rnnkit.fast.packed import run_packed
from rnnkit.fast.requirements import (
    autocast_unmet,
    common_unmet,
    dropout_unmet,
    onednn_cell_unmet,
    placement,
    placement_unmet,
)
from rnnkit.fast.swap import run_chunked
from rnnkit.fast.varlen import hold_last, roll_to_front

PATHS = ("onednn", "cudnn", "fused", "graph", "reference")
_FAST = PATHS[:-1]
_MODE: contextvars.ContextVar = contextvars.ContextVar("rnnkit_fast", default="auto")
_log = logging.getLogger("rnnkit.fast")
_warned: set[str] = set()


def check_fast(fast, argname: str = "fast") -> None:
    """Raise ValueError unless ``fast`` is ``"auto"``, ``True`` or ``False``."""
    if not (fast is True or fast is False or (isinstance(fast, str) and fast == "auto")):
        raise ValueError(f"{argname} must be 'auto', True or False, got {fast!r}")


def mode_of(fast):
    """The switch for one call: ``fast``, or where it is None the one ``fast_mode`` set.

    Raises:
        ValueError: the switch is not ``"auto"``, ``True`` or ``False``.
    """
    mode = _MODE.get() if fast is None else fast
    check_fast(mode)
    return mode


def step_by_step(why: tuple[str, ...]) -> Decision:
    """The decision for a cell that must run step by step for the reasons ``why`` (a wrapper's
    per-step work), whatever its wrapped cell could take."""
    return Decision("reference", dict.fromkeys(_FAST, why))


def refuse(decision: Decision) -> ValueError:
    """The error ``fast=True`` raises where ``decision`` is the reference path."""
    return ValueError("fast=True, but no fast path can run this configuration:\n"
                      + decision.explain())


@contextmanager
def fast_mode(fast) -> Iterator[None]:
    """Set the fast-path switch for the unrolls run inside the block.

    Raises:
        ValueError: ``fast`` is not ``"auto"``, ``True`` or ``False``.
    """
    check_fast(fast)
    token = _MODE.set(fast)
    try:
        yield
    finally:
        _MODE.reset(token)


@dataclass(frozen=True)
class Decision:
    """The chosen ``path`` and, for every path not chosen, its unmet requirements."""

    path: str
    unmet: dict[str, tuple[str, ...]]
    lengths: torch.Tensor | None = field(default=None, repr=False, compare=False)
    suffix: bool = field(default=False, repr=False, compare=False)
    # the graph path: the path that runs a shape not captured (yet), instead of the eager loop,
    # and the one its graphs capture, where it captures another path's op ("cudnn")
    first: str | None = field(default=None, repr=False, compare=False)
    captures: str | None = field(default=None, repr=False, compare=False)
    # the graph path of a loop: what it captures (``rnnkit.fast.steps.describe``; ``explain``
    # says it, the dispatch does not need it)
    loop: str | None = field(default=None, repr=False, compare=False)
    # the fast paths' libraries that failed to load, each one's line (the dispatch warns once
    # where one is all that kept its path from running)
    load_errors: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # a stack's: every layer's decision (this one is the first's; ``explain``)
    layers: tuple[Decision, ...] = field(default=(), repr=False, compare=False)

    def explain(self) -> str:
        """One line per path: which ran, and why each other one did not (then the same for each
        further layer of a stack, each line prefixed ``layer k:``)."""
        lines = [f"path: {self.path}"]
        if self.captures:
            lines[0] += f" (replays {self.captures} from CUDA graphs)"
        elif self.loop:
            lines[0] += f" (replays from CUDA graphs: {self.loop})"
        for name in PATHS:
            if name != self.path and name in self.unmet:
                lines.append(f"not {name}: " + "; ".join(self.unmet[name]))
        for k, layer in enumerate(self.layers[1:], 1):
            lines += [f"layer {k}: {line}" for line in layer.explain().splitlines()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


# Up to these (batch, or output units by kind of cell), the fused kernels beat oneDNN 3.2's
# primitives here; so they do for LSTMs with peepholes at every size measured
# (benchmarks/RESULTS.md). LSTMs up to 128 units and GRUs up to 147 split the batch between
# threads (U then stays in each core's cache; kernels.h's run_split); GRUs up to 256 units beat
# oneDNN's GRU primitives even without it.
SMALL_BATCH = 1
SMALL_UNITS = {"lstm": 128, "gru": 256, "rnn": 64}
FUSED_PEEPHOLES = True
_PACKED = ("variable lengths run faster packed on the fused kernel (oneDNN needs a call per "
           "segment of constant batch)")
# Measured on an H100 (benchmarks/RESULTS.md, session 11): B32 T100 f+b, torch.nn.LSTM 1.67 ms
# at H64, this path eagerly 2.60, replayed from CUDA graphs 1.02 (0.96 / 2.09 / 0.58 for a GRU).
_GRAPHED_CUDNN = ("the graph path replays cuDNN's own op from CUDA graphs, without each call's "
                  "Python and launches (cuDNN runs a shape eagerly until its graph is captured)")
# A graph holds its forward's activations for good (eager cuDNN frees them after the
# backward); above this estimate cuDNN runs eagerly, where launches are a small share anyway.
GRAPHED_CUDNN_MAX_BYTES = 256 << 20


def _activation_bytes(p: Canonical, inputs: torch.Tensor) -> int:
    """About what a forward keeps for its backward: twice the gate pre-activations of every
    step (cuDNN's reserve space and the outputs), in the inputs' dtype."""
    steps_, batch = inputs.shape[:2]
    return 2 * steps_ * batch * p.U.shape[1] * inputs.element_size()


# Measured on an H100 (benchmarks/RESULTS.md, session 11): B32 T100 H256, lengths 10..100, f+b,
# BasicLSTMCell: cuDNN packed 10.2 ms (4.8 for the padded batch), the graph path's Triton loop
# 3.4-3.7 (torch.nn.LSTM on a PackedSequence: 7.7).
_VARLEN_LSTM = ("variable lengths, LSTM: cuDNN needs the batch packed (sorted, the lengths read "
                "on the host); the graph path's Triton loop masks in its kernels (cuDNN still "
                "runs a shape until its graph is captured)")


def decide(params, inputs: torch.Tensor, state, mask: torch.Tensor | None = None,
           masked_output: str = "zero", chunk: int | None = None,
           own_step: bool = False) -> Decision:
    """Pick the path for unrolling ``params`` (a cell's ``sequence_params()``) over time-major
    ``inputs`` ``[T, B, depth]`` from ``state``; ``mask``, ``masked_output`` and ``chunk`` as
    ``rnnkit.unroll.scan``; ``own_step``: the cell replaces the ``Canonical`` step with its own.

    Returns:
        a ``Decision``; ``str(decision)`` says which path and why not each other one.
    """
    if not isinstance(params, Canonical):
        why = ("the cell has no Canonical weights (the fast paths serve BasicRNNCell, GRUCell, "
               "the LSTM cells and the Keras SimpleRNN, GRU and LSTM cells; a ConvLSTM's "
               "products are convolutions, torch's own)",)
        return Decision("reference", dict.fromkeys(_FAST, why))
    common, lengths, suffix = common_unmet(params, inputs, state, mask, masked_output, chunk,
                                           own_step)
    where = placement(params, inputs, state)
    on_cpu = placement_unmet(where, "cpu", ("float32",))
    if not on_cpu:
        on_cpu = autocast_unmet()
    dropout = dropout_unmet(params)
    reasons = {
        "onednn": [*common, *on_cpu, *dropout, *onednn_cell_unmet(params)],
        "cudnn": [*common, *placement_unmet(where, cudnn.DEVICE, cudnn.DTYPES), *dropout,
                  *cudnn.unmet(params)],
        "fused": [*common, *on_cpu, *fused.unmet(params)],
        "graph": [*common, *placement_unmet(where, graphs.DEVICE, graphs.DTYPES), *dropout,
                  *graphs.unmet(chunk, inputs)],
    }
    # Each library is loaded only where its path could run, the fused kernels only where they
    # would run: they are compiled on a machine's first use (seconds), which a call that oneDNN
    # runs should not pay.
    loads = {}
    if not reasons["onednn"]:
        loads["onednn"] = onednn.load_error()
        reasons["onednn"] += [loads["onednn"]] if loads["onednn"] else []
    if not reasons["fused"]:
        prefer = None if reasons["onednn"] else _prefer_fused(params, inputs, lengths)
        if reasons["onednn"] or prefer:
            loads["fused"] = compiled.load_error(compiled.family_of(params.kind))
            reasons["fused"] += [loads["fused"]] if loads["fused"] else []
            reasons["onednn"] += [prefer] if prefer and not loads["fused"] else []
    first = captures = None
    if not reasons["cudnn"] and not reasons["graph"] and graphs.PER_CELL:
        held = _activation_bytes(params, inputs)
        if lengths is not None and params.kind == "lstm":  # packed: lengths read on the host
            if steps.serves(params):
                reasons["cudnn"].append(_VARLEN_LSTM)
                first = "cudnn"
        elif held > GRAPHED_CUDNN_MAX_BYTES:
            reasons["graph"].append(
                f"cuDNN's activations here (about {held >> 20} MiB) are over "
                f"GRAPHED_CUDNN_MAX_BYTES ({GRAPHED_CUDNN_MAX_BYTES >> 20} MiB): a graph "
                "would keep them between calls, and at this size launches cost little")
        else:  # a GRU's or vanilla RNN's lengths: every step padded, masked in the graph
            reasons["cudnn"].append(_GRAPHED_CUDNN)
            first = captures = "cudnn"
    path = next((name for name in _FAST if not reasons[name]), "reference")
    for name in _FAST:
        if name != path and not reasons[name]:
            reasons[name].append(f"can run it, but {path} comes first")
    graph = path == "graph"
    return Decision(path, {k: tuple(v) for k, v in reasons.items() if k != path}, lengths,
                    suffix, first if graph else None, captures if graph else None,
                    load_errors=tuple(err for err in loads.values() if err))


def _prefer_fused(p: Canonical, inputs: torch.Tensor, lengths: torch.Tensor | None) -> str | None:
    """Why the fused kernels beat oneDNN's primitives on this call (measured:
    ``benchmarks/RESULTS.md``), or None where oneDNN's are faster."""
    if lengths is not None:
        return _PACKED
    if inputs.shape[1] <= SMALL_BATCH or p.U.shape[0] <= SMALL_UNITS.get(p.kind, 0):
        return (f"batch of at most {SMALL_BATCH} or at most {SMALL_UNITS.get(p.kind, 0)} units "
                f"({p.kind}): the fused kernels cost less per step than oneDNN's primitives")
    if p.peepholes is not None and FUSED_PEEPHOLES:
        return "peepholes: the fused kernel runs them faster than oneDNN 3.2's peephole LSTM"
    return None


@torch.compiler.disable  # under torch.compile: a graph break here, oneDNN runs on real tensors
def unroll(params, inputs: torch.Tensor, state, mask: torch.Tensor | None = None,
           masked_output: str = "zero", chunk: int | None = None, fast=None,
           own_step: bool = False, cell=None):
    """Run the unroll on the fastest eligible path, or return None for the reference loop.

    Args:
        params, inputs, state, mask, masked_output, chunk, own_step: as ``decide``.
        fast: ``"auto"``, ``True``, ``False``, or None for the switch set by ``fast_mode``.
        cell: the cell whose ``sequence_params()`` ``params`` are (the graph path captures its
            reference loop; without it that path does not run).

    Returns:
        ``(outputs [T, B, out], final_state)``, or None when the reference path must run.

    Raises:
        ValueError: ``fast=True`` and no fast path can run this configuration (the message
            lists every unmet requirement of every fast path).
    """
    mode = mode_of(fast)
    if mode is False:
        return None
    decision = decide(params, inputs, state, mask, masked_output, chunk, own_step)
    if decision.path == "graph" and cell is None:  # then the path it preferred to, if any
        unmet = {**decision.unmet, "graph": ("no cell to capture",)}
        unmet.pop(decision.first, None)
        decision = Decision(decision.first or "reference", unmet, decision.lengths,
                            decision.suffix)
    _log.debug("%s", decision)
    if decision.path == "reference":
        if mode is True:
            raise refuse(decision)
        for name in ("onednn", "fused"):
            unmet = decision.unmet[name]
            if len(unmet) == 1 and unmet[0] in decision.load_errors:
                _warn_once(f"rnnkit: {unmet[0]}; using the reference loop")
                break
        return None
    if decision.path == "graph":
        first = body = None
        if decision.first is not None:
            def first():
                return _run_path(decision.first, params, inputs, state, decision.lengths,
                                 decision.suffix, masked_output, chunk)
        name = "loop"
        if decision.captures == "cudnn":
            # a graph reads nothing of the call's own but its static inputs: the lengths come
            # from the captured mask, and no length is read on the host (every step runs)
            masking = decision.lengths is not None
            name = f"cudnn, {('suffix' if decision.suffix else 'prefix') if masking else 'full'}"

            def body(x, s, m):
                lengths = m.sum(0) if masking else None
                return _run_path("cudnn", cell.sequence_params(), x, s, lengths, decision.suffix,
                                 masked_output, None, every_step=True)
        try:
            return graphs.run(cell, inputs, state, mask, masked_output, first, body, name)
        except FastPathError as err:  # the capture failed (the shape then runs as first sight)
            if mode is True:
                raise
            _warn_once(f"rnnkit: the graph path failed ({err}); using the reference loop")
            return None
    try:
        return _run_path(decision.path, params, inputs, state, decision.lengths,
                         decision.suffix, masked_output, chunk)
    except FastPathError as err:  # oneDNN's status, a cuDNN refusal (forward only)
        if mode is True:
            raise
        _warn_once(f"rnnkit: the {decision.path} path failed ({err}); using the reference loop")
        return None


def _run_path(path: str, params, inputs: torch.Tensor, state, lengths: torch.Tensor | None,
              suffix: bool, masked_output: str, chunk: int | None, every_step: bool = False):
    """Run the unroll on ``path`` (``onednn``, ``cudnn`` or ``fused``) with the mask's
    ``lengths`` (None: full length) and ``suffix`` flag (``common_unmet``); ``every_step``:
    ``run_cudnn``'s. A failure raises ``FastPathError``."""
    chunked = bool(chunk) and chunk < inputs.shape[0] and torch.is_grad_enabled()
    if path in ("fused", "cudnn"):
        runner = run_fused if path == "fused" else \
            functools.partial(run_cudnn, every_step=every_step)

        def sequence(x, s, lengths, masked="zero", steps=slice(None)):
            out, final = runner(_during(params, steps), x, s, lengths)
            if masked == "previous" and lengths is not None:
                out = hold_last(out, lengths)
            return out, final
    else:
        weights = Weights(params, pooled=not chunked)

        def sequence(x, s, lengths, masked="zero", steps=slice(None)):
            if lengths is None:
                return run(weights, x, s)
            return run_packed(weights, x, s, lengths, masked)

    if suffix:  # no output before a sequence's first step: zeros either way
        out, final = sequence(roll_to_front(inputs, lengths), state, lengths)
        return roll_to_front(out, inputs.shape[0] - lengths), final
    if chunked:
        return run_chunked(sequence, inputs, state, lengths, chunk)
    return sequence(inputs, state, lengths, masked_output)


def _during(p, steps: slice):
    """``p`` for a stretch of an unroll's steps: masks per step ``[T, B, n]`` (a state mask, a
    candidate mask; only the fused path takes them; masks there come from lengths, never
    rolled) cut to the stretch."""
    if not isinstance(p, Canonical):
        return p
    cut = {name: m[steps] for name, m in (("state_mask", p.state_mask), ("g_mask", p.g_mask))
           if m is not None and m.dim() == 3}
    return dataclasses.replace(p, **cut) if cut else p


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
