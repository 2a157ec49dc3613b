"""The ``graph`` path: on a CUDA device, an unroll captured as CUDA graphs and replayed: the
reference loop of a cell cuDNN lacks (TF1's GRU, peepholes, clipping, layer norm, other
activations), or cuDNN's own op for a cell it has (``body``, given by ``rnnkit.fast.dispatch``).

On a GPU the reference loop is bound by launching its small kernels, a few dozen per step in
each direction; a CUDA graph replays all of a sequence's kernels with one launch. cuDNN's RNN
too launches kernels step by step, and a call costs the dispatch's Python besides: replayed, a
B32 T100 H64 LSTM trains in 1.0 ms instead of 2.6 on an H100 (torch.nn.LSTM: 1.7). The numbers
are the captured function's own (the same kernels on the same inputs). Per cell, each shape
(inputs, state, mask; which of them want gradients; with or without autograd; what is captured;
torch's TF32 switches) is captured the
second time it is seen, so that a shape seen once costs only its eager run, and at most
``PER_CELL`` shapes are kept (least recently used dropped), each holding its own memory pool:
the forward graph, the backward graph, and the activations between them.

The captured loop is ``rnnkit.fast.steps.sequence`` where it serves the cell (an LSTM's,
layer-norm LSTM's or TF1 GRU's, where Triton is: torch's CUDA builds bring it): one autograd
node for the whole loop, each step's elementwise work in one Triton kernel each way instead of
a dozen or more, U's gradient in one product at the end, masks in the kernels. Eager calls (a
shape's first, and shapes whose capture failed) run what the dispatch gives as ``first`` (cuDNN,
for the cells it has), else the loop as ops, so that a first call never waits for Triton to
compile.

A replay writes into the graph's fixed buffers, so each call's outputs are copies, and a
second forward of the same shape before the first one's backward overwrites the activations
the first one saved: its backward then replays its forward again from its saved inputs (a
generation count tells), as it does for a second backward (``retain_graph``). As in eager
autograd, a variable modified in place between a forward and its backward is an error. One
thread at a time uses a graph (its buffers are shared), and a replay on another stream than the
last one waits for it.

Memory: each kept shape holds the activations of a whole forward pass for good (the eager loop
frees them after its backward), so ``PER_CELL`` shapes a cell can cost that many times an eager
step's peak; ``rnnkit.fast.clear_graphs()`` frees them, and ``PER_CELL = 0`` turns the path off
(every shape then runs eagerly, as if seen for the first time).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict

import torch
from torch.autograd.function import once_differentiable
from torch.utils import _pytree as pytree

from rnnkit.fast import steps
from rnnkit.fast.library import FastPathError

DEVICE = "cuda"
DTYPES = ("float32", "float64")
PER_CELL = 4
_SEEN = "seen"  # a shape met once (captured at the second sight)
_FAILED = "failed"  # a shape whose capture failed: eager from then on
_lock = threading.Lock()
_store: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class GraphCaptureError(FastPathError):
    """The reference loop could not be captured as a CUDA graph (it synchronizes with the host,
    say); the shape runs eagerly from then on."""


def unmet(chunk: int | None, inputs: torch.Tensor) -> list[str]:
    """What the graph path lacks beyond the common requirements and the device."""
    out = []
    if chunk:
        out.append("swap_memory recomputes chunks eagerly (a graph would hold all of them)")
    if torch.is_autocast_enabled(inputs.device.type):
        out.append("autocast is on")
    return out


@contextlib.contextmanager
def _aliased(cell, aliases: dict[int, torch.Tensor]):
    """The cell reads ``aliases[id(variable)]`` (same storage, a new autograd leaf) for each of
    its variables."""
    slots = [(m, name) for m in cell.modules() for name, p in m._parameters.items()
             if p is not None]
    saved = [m._parameters[name] for m, name in slots]
    try:
        for (m, name), p in zip(slots, saved, strict=True):
            m._parameters[name] = aliases[id(p)]
        yield
    finally:
        for (m, name), p in zip(slots, saved, strict=True):
            m._parameters[name] = p


class _Graph:
    """One shape's captured forward (and backward, when anything wants a gradient).

    The capture reads the cell's variables through aliases (new leaves on the same storage),
    so that it never meets an autograd node of theirs made on another stream (a graph of an
    earlier call kept alive), which would break the capture; warm-up and capture run on one
    stream of their own."""

    def __init__(self, fn, cell, inputs: list[torch.Tensor], params: list[torch.Tensor],
                 grad: bool):
        self.static_in = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        self.params = params
        aliases = [torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in params]
        every = [*self.static_in, *aliases]
        self.wrt = [i for i, t in enumerate(every) if t.requires_grad] if grad else []
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.set_grad_enabled(bool(self.wrt)):
            self._capture(fn, cell, every, aliases, stream)
        torch.cuda.current_stream().wait_stream(stream)
        self.generation = 0
        self.lock, self.stream, self.stream_id = threading.RLock(), None, None
        self.device = torch.cuda.current_device()  # run() captures under the inputs' device

    @contextlib.contextmanager
    def using(self):
        """Hold the graph for this thread, on its device (a replay runs on the current stream of
        the current device); order this stream after the last one that used it. The usual call
        (same device, same stream as the last) makes no stream or device object: on a GPU host
        those cost tens of microseconds a call (``benchmarks/profile_gpu.py --host``)."""
        device = self.device
        if device is None:  # a stand-in without a CUDA device (tests)
            with self.lock:
                yield
            return
        moved = torch.cuda.current_device() != device
        with self.lock, (torch.cuda.device(device) if moved else contextlib.nullcontext()):
            now = _stream_id(device)
            if now != self.stream_id:
                current = torch.cuda.current_stream(device)
                if self.stream is not None:
                    current.wait_stream(self.stream)
                self.stream, self.stream_id = current, now
            yield

    def _capture(self, fn, cell, every, aliases, stream) -> None:
        n = len(self.static_in)
        alias_of = {id(p): a for p, a in zip(self.params, aliases, strict=True)}
        self.pool = torch.cuda.graph_pool_handle()
        self.fwd = torch.cuda.CUDAGraph()
        for capturing in (False, True):  # warm-up (lazy initialization), then the capture
            with _aliased(cell, alias_of), contextlib.ExitStack() as capture:
                if capturing:
                    capture.enter_context(torch.cuda.graph(self.fwd, pool=self.pool,
                                                           stream=stream))
                outs = list(fn(*every[:n]))
            self.diff = [i for i, o in enumerate(outs) if o.requires_grad]
            self.bwd = None
            if not (self.wrt and self.diff):
                continue
            gout = [torch.ones_like(outs[i]) for i in self.diff]
            with contextlib.ExitStack() as capture:
                if capturing:
                    self.bwd = torch.cuda.CUDAGraph()
                    capture.enter_context(torch.cuda.graph(self.bwd, pool=self.pool,
                                                           stream=stream))
                grads = torch.autograd.grad([outs[i] for i in self.diff],
                                            [every[i] for i in self.wrt], gout,
                                            allow_unused=True)
            self.static_gout, self.static_grads = gout, list(grads)
        self.static_out = [o.detach() for o in outs]

    def forward(self, inputs) -> None:
        """Replay the forward on ``inputs``: its activations are then this generation's."""
        with torch.no_grad():
            for s, t in zip(self.static_in, inputs, strict=True):
                s.copy_(t)
        self.fwd.replay()
        self.generation += 1


def _stream_id(device: int):
    """The current stream of ``device``, as a value to compare (torch's own, without a
    ``torch.cuda.Stream`` made for it where torch has that call)."""
    raw = getattr(torch._C, "_cuda_getCurrentStream", None)
    return raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graph: _Graph, *tensors):
        n = len(graph.static_in)
        with graph.using():
            graph.forward(tensors[:n])
            ctx.graph, ctx.generation = graph, graph.generation
            outs = tuple(o.clone() for o in graph.static_out)
        ctx.versions = [p._version for p in graph.params]
        ctx.save_for_backward(*tensors[:n])
        ctx.mark_non_differentiable(*(o for i, o in enumerate(outs) if i not in graph.diff))
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs):
        graph: _Graph = ctx.graph
        if [p._version for p in graph.params] != ctx.versions:
            raise RuntimeError("rnnkit: a variable of the cell was modified in place between an "
                               "unroll on the graph path and its backward pass")
        grads: list[torch.Tensor | None] = [None] * (len(graph.static_in) + len(graph.params))
        with graph.using():
            if graph.generation != ctx.generation:  # another replay overwrote its activations
                graph.forward(ctx.saved_tensors)
            with torch.no_grad():
                for static, i in zip(graph.static_gout, graph.diff, strict=True):
                    g = grad_outputs[i]
                    static.copy_(g) if g is not None else static.zero_()
            graph.bwd.replay()
            graph.generation += 1  # the backward's buffers reuse the activations' memory
            for i, g in zip(graph.wrt, graph.static_grads, strict=True):
                grads[i] = None if g is None else g.clone()
        return (None, *grads)


def _precision() -> tuple:
    """torch's float32 switches that a captured kernel bakes in (TF32 in products and in cuDNN's
    RNNs): a graph captured under one setting is not replayed under another. torch >= 2.9 has
    ``fp32_precision`` switches, read where they exist; the older ``allow_tf32`` ones then raise
    when set apart from them, so they are read only where the new ones are missing."""
    out = [torch.get_float32_matmul_precision()]
    for obj in (torch.backends.cuda.matmul, torch.backends.cudnn,
                getattr(torch.backends.cudnn, "rnn", None)):
        try:
            if obj is None:
                out.append(None)
            elif hasattr(obj, "fp32_precision"):
                out.append(obj.fp32_precision)
            else:
                out.append(getattr(obj, "allow_tf32", None))
        except RuntimeError as err:  # torch's own complaint about mixed switches
            out.append(str(err))
    return tuple(out)


def _key(inputs: list[torch.Tensor], params: list[torch.Tensor], spec, masked: bool,
         masked_output: str, grad: bool, body: str) -> tuple:
    # under inference mode the graph's buffers are inference tensors, which no copy may write
    # outside it: such a graph is a shape of its own
    return (body, _precision(), grad, torch.is_inference_mode_enabled(), masked, masked_output,
            str(spec),
            tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in inputs),
            tuple((p.data_ptr(), p.shape, p.dtype, p.requires_grad) for p in params))


def run(cell, inputs: torch.Tensor, state, mask: torch.Tensor | None, masked_output: str,
        first=None, body=None, name: str = "loop"):
    """``cell.unroll(inputs, state, mask, masked_output, fast=False)``, replayed from a CUDA
    graph of its shape once that shape has been seen before; the caller
    (``rnnkit.fast.dispatch``) has checked eligibility.

    Args:
        first: what runs a shape not captured (seen for the first time, or its capture failed)
            instead of the eager loop: a function of no arguments that returns
            ``(outputs, final_state)`` (another fast path of the same numbers).
        body: what is captured instead of the loop: a function of ``(inputs, state, mask)``
            that returns ``(outputs, final_state)`` and reads the cell's variables when called
            (the capture swaps in aliases of them); ``name`` tells its graphs apart.
    """
    leaves, spec = pytree.tree_flatten(state)
    flat = [inputs, *leaves] + ([mask] if mask is not None else [])
    n_state = len(leaves)

    def reference(x, *rest, fused: bool = True):
        s = pytree.tree_unflatten(list(rest[:n_state]), spec)
        m = rest[n_state] if mask is not None else None
        if body is not None:
            out, final = body(x, s, m)
            return (out, *pytree.tree_leaves(final))
        done = steps.sequence(cell, x, s, m, masked_output) if fused else None  # one node
        out, final = done if done is not None else \
            cell.unroll(x, s, m, masked_output, None, fast=False)
        return (out, *pytree.tree_leaves(final))

    params = list(cell.parameters())
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*flat, *params))
    key = _key(flat, params, spec, mask is not None, masked_output, grad, name)
    with _lock:
        shapes = _store.setdefault(cell, OrderedDict())
        entry = shapes.get(key)
        if entry is None:
            shapes[key] = _SEEN
            while len(shapes) > PER_CELL:
                shapes.popitem(last=False)
        else:
            shapes.move_to_end(key)
    if entry is None or entry == _FAILED:
        if first is not None:
            return first()
        out, *final = reference(*flat, fused=False)  # a first call compiles nothing
    else:
        if entry == _SEEN:
            try:
                on = inputs.device
                with torch.cuda.device(on) if on.type == "cuda" else contextlib.nullcontext():
                    entry = _Graph(reference, cell, flat, params, grad)
            except RuntimeError as err:
                with _lock:
                    shapes[key] = _FAILED
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise GraphCaptureError(f"CUDA graph capture failed: {first}") from err
            with _lock:
                shapes[key] = entry
        if entry.bwd is None:
            with entry.using():
                entry.forward(flat)
                out, *final = [o.clone() for o in entry.static_out]
        else:
            out, *final = _Replay.apply(entry, *flat, *params)
    return out, pytree.tree_unflatten(final, spec)


def clear(cell=None) -> None:
    """Drop the captured graphs (of ``cell``, or of every cell) and their memory pools."""
    with _lock:
        if cell is None:
            _store.clear()
        else:
            _store.pop(cell, None)
