"""oneDNN's RNN primitives as a ``torch.autograd.Function``, and the mapping from ``Canonical``.

``run(Weights(p), x, state)`` runs one full-length, left-to-right, single-layer sequence on
oneDNN. ``Weights`` turns ``Canonical`` into oneDNN's plain tensors with ordinary
(differentiable) torch ops, so autograd carries the gradients back to the cell's variables; the
primitive's own backward computes the rest. Each primitive reads the weight matrices in the
layout it prefers (``onednn._Primitive.reorder``); those copies are cached per weight tensor and
its ``_version`` counter, so a cell whose ``Canonical`` matrices are views of its variables
(Keras cells, and TF1 LSTM cells, whose kernel keeps its gate blocks i, j, f, o: the gather into
oneDNN's order is made with the layout) lays them out once per optimizer step, and one that
builds them per call (a TF1 GRU gathers its kernels into one matrix) once per unroll, shared by
every primitive that wants that layout (the forward and backward of every segment). A TF1
cell's kernel, whose row blocks are ``W`` and ``U``, goes into the Functions whole (``Weights.joint``),
so its gradient is written into one buffer: from two zero-padded slice gradients summed by
autograd, 0.3-0.7 ms a call at H256. Variable-length batches run in ``rnnkit.fast.packed``.

oneDNN's gate order is Keras's (LSTM i, f, g(c~), o; GRU z(u), r, c(o)). ``lbr_gru`` takes
four bias blocks ``(b_u, b_r, b_o, b_hc)``: the recurrent biases of z and r fold into the
first two.
Training workspaces come from a pool (``workspaces``), except under ``swap_memory``, where
checkpointing must be free to drop them (``Weights(pooled=False)``).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import replace

import torch
from torch.autograd.function import once_differentiable

from rnnkit.activations import name_of
from rnnkit.cells.base import LSTMStateTuple
from rnnkit.cells.equations import Canonical, inverse_order, reorder_blocks
from rnnkit.fast import onednn as dnnl
from rnnkit.fast.scratch import scratch

_ACT = {"tanh": "tanh", "relu": "relu", "sigmoid": "logistic"}


class WorkspacePool:
    """Workspaces go from a training forward to its backward and, once autograd frees that
    graph, back here, so a training loop reuses the same (already faulted-in) pages instead of
    mapping fresh ones each step; at most ``keep_bytes`` are kept idle."""

    def __init__(self, keep_bytes: int = 256 << 20):
        self.keep_bytes, self._free, self._lock = keep_bytes, [], threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            for k, buf in enumerate(self._free):
                if buf.numel() == nbytes:
                    return self._free.pop(k)
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, buf: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buf)
            while sum(b.numel() for b in self._free) > self.keep_bytes:
                self._free.pop(0)


workspaces = WorkspacePool()


def cell_kind(p: Canonical) -> str:
    """The oneDNN cell serving ``p``: ``rnn``, ``gru`` (reset before), ``lbr_gru`` or ``lstm``."""
    if p.kind == "gru":
        return "lbr_gru" if p.reset_after else "gru"
    return p.kind


class _Layouts:
    """Weight matrices in primitives' layouts, per source tensor (weakly: an entry goes with its
    tensor's storage owner) and kept while the source's memory and ``_version`` are unchanged
    (in-place updates and ``.data`` replacement are seen; writes through ``p.data``, which has
    a version counter of its own, are not, as for autograd's own saved-tensor checks)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[weakref.ref, list]] = {}

    def get(self, prim: dnnl._Primitive, arg: int, t: torch.Tensor,
            order: tuple[int, ...] | None = None) -> torch.Tensor:
        """``t`` (gate blocks gathered by ``order`` first, if given) in ``prim``'s layout for
        weights argument ``arg``."""
        if arg not in prim.relaid and order is None:
            return t
        base = t if t._base is None else t._base
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t._version, order)
        with self._lock:
            ref, entries = self._entries.get(id(base), (None, None))
            if ref is None or ref() is not base:
                entries = []
                self._entries[id(base)] = (weakref.ref(base), entries)
                weakref.finalize(base, self._entries.pop, id(base), None)
            entries[:] = [e for e in entries if e[1] == key[3]]  # drop older versions
            for e_key, _, e_prim, e_arg, buf in entries:
                if e_key == key and e_arg == arg and prim.same_layout(e_prim, arg):
                    return buf
        plain = t.detach() if order is None else reorder_blocks(t.detach(), order).contiguous()
        buf = prim.reorder(arg, plain)
        with self._lock:
            entries.append((key, key[3], prim, arg, buf))
            del entries[:-8]
        return buf


layouts = _Layouts()


class Weights:
    """A cell's weights for oneDNN, made once per unroll and shared by its calls (the segments of
    a variable-length batch). ``tensors`` are plain and differentiable functions of
    ``Canonical``; ``laid_out`` gives the matrices in a primitive's layouts. A TF1 LSTM's ``W``
    and ``U`` stay views of its kernel, gate blocks in the kernel's order (``order``): the
    Keras-order copy oneDNN reads is made with the layout, cached with it per kernel version,
    and ``stored`` puts the primitive's gradients back in the kernel's order."""

    def __init__(self, p: Canonical, pooled: bool = True):
        self.pooled = pooled  # training workspaces from the pool (False under swap_memory)
        self.order = p.gate_order  # None: W and U already in oneDNN's (Keras) gate order
        b = reorder_blocks(p.b, list(p.gate_order)) if p.gate_order is not None else p.b
        p = replace(p, b=b, gate_order=None)
        self.cell = cell_kind(p)
        self.hidden = p.U.shape[1] // dnnl.GATES[self.cell]
        self.input_size, self.proj = p.W.shape[0], p.U.shape[0]
        self.activation = _ACT.get(name_of(p.activation), "tanh")
        self.tensors = (p.W.contiguous(), p.U.contiguous(),
                        _bias(p, self.cell, self.hidden).contiguous(),
                        torch.cat(p.peepholes).contiguous() if p.peepholes is not None else None,
                        p.P.contiguous() if p.P is not None else None)
        self.joint = joint_kernel(p.W, p.U)

    @property
    def inputs(self) -> tuple[torch.Tensor | None, ...]:
        """What the autograd Functions take as the weights (``tensors``' five slots): a TF1
        cell's whole kernel in the first slot and None in the second where ``W`` and ``U`` are
        its row blocks (``joint``), so that its gradient is made in one buffer, not assembled
        by autograd from two zero-padded slices."""
        if self.joint is None:
            return self.tensors
        return (self.joint, None, *self.tensors[2:])

    def grad_buffers(self, bias: torch.Tensor, peephole: torch.Tensor | None,
                     projection: torch.Tensor | None) -> dict[int, torch.Tensor]:
        """Zeroed weight gradients for a backward primitive to add into (argument number ->
        tensor), ``W``'s and ``U``'s row blocks of one buffer where ``joint``; ``stored``
        turns them into the Functions' gradients."""
        wl, wi = self.tensors[:2]
        if self.joint is None:
            out = {dnnl.WEIGHTS_LAYER: torch.zeros_like(wl),
                   dnnl.WEIGHTS_ITER: torch.zeros_like(wi)}
        else:
            both = wl.new_zeros(self.joint.shape)
            out = {dnnl.WEIGHTS_LAYER: both[:wl.shape[0]], dnnl.WEIGHTS_ITER: both[wl.shape[0]:]}
        out[dnnl.BIAS] = torch.zeros_like(bias)
        if peephole is not None:
            out[dnnl.WEIGHTS_PEEPHOLE] = torch.zeros_like(peephole)
        if projection is not None:
            out[dnnl.WEIGHTS_PROJECTION] = torch.zeros_like(projection)
        return out

    def shape(self, steps: int, batch: int) -> dnnl.RNNShape:
        return dnnl.RNNShape(self.cell, steps, batch, self.input_size, self.hidden, self.proj,
                             peephole=self.tensors[3] is not None,
                             projection=self.tensors[4] is not None, activation=self.activation)

    def laid_out(self, prim: dnnl._Primitive) -> dict[int, torch.Tensor]:
        """The weight matrices (argument number -> tensor) in ``prim``'s layouts (cached)."""
        wl, wi, _, _, wproj = self.tensors
        out = {dnnl.WEIGHTS_LAYER: layouts.get(prim, dnnl.WEIGHTS_LAYER, wl, self.order),
               dnnl.WEIGHTS_ITER: layouts.get(prim, dnnl.WEIGHTS_ITER, wi, self.order)}
        if wproj is not None:
            out[dnnl.WEIGHTS_PROJECTION] = layouts.get(prim, dnnl.WEIGHTS_PROJECTION, wproj)
        return out

    def stored(self, grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The primitive's weight gradients (``grad_buffers``, filled) for the slots of
        ``inputs``: ``W``'s and ``U``'s gate blocks back in the cell's order; where ``joint``,
        the kernel's gradient in the first slot (one buffer) and none in the second."""
        layer, it = grads[dnnl.WEIGHTS_LAYER], grads[dnnl.WEIGHTS_ITER]
        if self.order is not None:
            back = inverse_order(self.order)
            if self.joint is None:
                layer, it = reorder_blocks(layer, back), reorder_blocks(it, back)
            else:  # the blocks go straight into the kernel's rows
                whole = layer.new_empty(self.joint.shape)
                for src, rows in ((layer, whole[:layer.shape[0]]), (it, whole[layer.shape[0]:])):
                    reorder_blocks(src, back, out=rows)
                layer, it = whole, None
        elif self.joint is not None:  # the two are row blocks of one buffer
            layer, it = layer._base, None
        return grads | {dnnl.WEIGHTS_LAYER: layer, dnnl.WEIGHTS_ITER: it}


def joint_kernel(W: torch.Tensor, U: torch.Tensor) -> torch.Tensor | None:
    """The 2-D tensor whose rows are ``W`` then ``U`` (a TF1 cell's kernel: both are row
    blocks of it, views), or None."""
    K = W._base
    if K is None or U._base is not K or K.dim() != 2 or not K.is_contiguous() or \
            W.dim() != 2 or U.dim() != 2 or not (W.is_contiguous() and U.is_contiguous()):
        return None
    rows, cols = W.shape
    if W.shape[1] != K.shape[1] or U.shape[1] != cols or rows + U.shape[0] != K.shape[0]:
        return None
    start = K.data_ptr()
    if W.data_ptr() != start or U.data_ptr() != start + rows * cols * K.element_size():
        return None
    return K


def whole(W: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W`` and ``U`` as an autograd Function takes them: ``(kernel, None)`` where both are row
    blocks of one kernel (``joint_kernel``), so that its gradient is made in one buffer rather
    than summed by autograd from two zero-padded slice gradients; else as they are."""
    kernel = joint_kernel(W, U)
    return (W, U) if kernel is None else (kernel, None)


def blocks(W: torch.Tensor, U: torch.Tensor | None, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``whole``'s pair back as ``(W, U)``: a kernel's first ``rows`` rows and the rest."""
    return (W[:rows], W[rows:]) if U is None else (W, U)


def grad_buffers(W: torch.Tensor, U: torch.Tensor, joint: bool) -> tuple:
    """Uninitialized gradients of ``W`` and ``U`` (``blocks``' pair) for a kernel to write, and
    what the Function returns for its ``(W, U)`` slots: where ``joint``, the two are the row
    blocks of one buffer, returned whole with None."""
    if not joint:
        dW, dU = torch.empty_like(W), torch.empty_like(U)
        return dW, dU, (dW, dU)
    dK = W.new_empty(W.shape[0] + U.shape[0], W.shape[1])
    return dK[:W.shape[0]], dK[W.shape[0]:], (dK, None)


def _bias(p: Canonical, kind: str, H: int) -> torch.Tensor:
    gates = dnnl.GATES[kind]
    b = p.b if p.b is not None else p.W.new_zeros(gates * H)
    if kind != "lbr_gru":
        return b
    if p.b_h is None:
        return torch.cat([b, b.new_zeros(H)])
    return torch.cat([b[:2 * H] + p.b_h[:2 * H], b[2 * H:], p.b_h[2 * H:]])


class _RNN(torch.autograd.Function):
    """oneDNN forward (training, with workspace) and backward for one ``RNNShape``."""

    @staticmethod
    def forward(ctx, shape: dnnl.RNNShape, weights: Weights, x, h0, c0, wl, wi, bias, wp, wproj):
        prims = dnnl.primitives(shape)
        fwd = prims.forward(training=True)
        y, hT, cT, tensors = _outputs_and_args(shape, x, h0, c0, wl, wi, bias, wp, wproj)
        if weights.pooled:
            ws = workspaces.take(fwd.ws_size)
            weakref.finalize(ctx, workspaces.give, ws)  # back to the pool when the graph goes
        else:  # only in saved tensors, which checkpointing (swap_memory) may drop and recompute
            ws = torch.empty(fwd.ws_size, dtype=torch.uint8)
        tensors[dnnl.WORKSPACE] = ws
        tensors.update(weights.laid_out(fwd))
        fwd.execute(tensors)
        ctx.shape, ctx.weights = shape, weights
        ctx.save_for_backward(x, h0, c0, wl, wi, bias, wp, wproj, y, hT, cT, ws)
        return y, hT, cT

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT, dcT):
        shape = ctx.shape
        x, h0, c0, wl, wi, bias, wp, wproj, y, hT, cT, ws = ctx.saved_tensors
        bwd = dnnl.primitives(shape).backward()
        t = {dnnl.SRC_LAYER: x, dnnl.SRC_ITER: h0, dnnl.BIAS: bias, dnnl.DST_LAYER: y,
             dnnl.DST_ITER: hT, dnnl.WORKSPACE: ws, **ctx.weights.laid_out(bwd)}
        diff = {dnnl.DST_LAYER: _grad(dy, y, "onednn-dy"), dnnl.DST_ITER: _grad(dhT, hT)}
        grads = {dnnl.SRC_LAYER: torch.empty_like(x), dnnl.SRC_ITER: torch.empty_like(h0)}
        if shape.cell == "lstm":
            t.update({dnnl.SRC_ITER_C: c0, dnnl.DST_ITER_C: cT})
            diff[dnnl.DST_ITER_C] = _grad(dcT, cT)
            grads[dnnl.SRC_ITER_C] = torch.empty_like(c0)
            if shape.peephole:
                t[dnnl.WEIGHTS_PEEPHOLE] = wp
        wgrads = ctx.weights.grad_buffers(bias, wp if shape.peephole else None,
                                          wproj if shape.projection else None)
        t.update({dnnl.DIFF + k: v for k, v in diff.items()})
        t.update({dnnl.DIFF + k: v for k, v in (grads | wgrads).items()})
        bwd.execute(t)
        g = (grads | ctx.weights.stored(wgrads)).get
        return (None, None, g(dnnl.SRC_LAYER), g(dnnl.SRC_ITER), g(dnnl.SRC_ITER_C),
                g(dnnl.WEIGHTS_LAYER), g(dnnl.WEIGHTS_ITER), g(dnnl.BIAS),
                g(dnnl.WEIGHTS_PEEPHOLE), g(dnnl.WEIGHTS_PROJECTION))


def _grad(g: torch.Tensor | None, like: torch.Tensor, use: str | None = None) -> torch.Tensor:
    """``g`` (zeros if None) in the layout of ``like`` (contiguous), a copy made in the scratch
    buffer for ``use`` if given (read by one primitive call only)."""
    if g is None:
        return torch.zeros_like(like)
    if g.stride() == like.stride():
        return g
    out = torch.empty_like(like) if use is None else \
        scratch(use, like.numel(), like.dtype).view(like.shape)
    return out.copy_(g)


def _outputs_and_args(shape: dnnl.RNNShape, x, h0, c0, wl, wi, bias, wp, wproj):
    T, B, P, H = shape.steps, shape.batch, shape.proj, shape.hidden
    y, hT = x.new_empty(T, B, P), x.new_empty(B, P)
    # the weight matrices (wl, wi) go in the primitive's layouts: the callers add laid_out's
    tensors = {dnnl.SRC_LAYER: x, dnnl.SRC_ITER: h0, dnnl.BIAS: bias, dnnl.DST_LAYER: y,
               dnnl.DST_ITER: hT}
    cT = None
    if shape.cell == "lstm":
        cT = x.new_empty(B, H)
        tensors.update({dnnl.SRC_ITER_C: c0, dnnl.DST_ITER_C: cT})
        if shape.peephole:
            tensors[dnnl.WEIGHTS_PEEPHOLE] = wp
        if shape.projection:
            tensors[dnnl.WEIGHTS_PROJECTION] = wproj
    return y, hT, cT, tensors


def run(weights: Weights, x: torch.Tensor, state) -> tuple[torch.Tensor, object]:
    """Run ``weights`` (``Weights(canonical)``) over time-major ``x`` ``[T, B, depth]`` from
    ``state`` on oneDNN; the caller (``rnnkit.fast.dispatch``) has checked eligibility.

    Returns:
        ``(outputs [T, B, out], final_state)``, the state in the cell's structure.
    """
    shape = weights.shape(x.shape[0], x.shape[1])
    lstm = shape.cell == "lstm"
    h0, c0 = (state.h, state.c) if lstm else (state, None)
    args = [x.contiguous(), h0.contiguous(), c0.contiguous() if lstm else None, *weights.inputs]
    if torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in args):
        y, hT, cT = _RNN.apply(shape, weights, *args)
    else:
        y, hT, cT, tensors = _outputs_and_args(shape, *args)
        fwd = dnnl.primitives(shape).forward(training=False)
        tensors.update(weights.laid_out(fwd))
        fwd.execute(tensors)
    return y, (LSTMStateTuple(cT, hT) if lstm else hT)
