"""ctypes bindings to oneDNN 3.2's RNN primitives (``libdnnl.so.3`` from the ``onednn-cpu-gomp``
wheel), on torch tensors' memory, with no copy of torch's private oneDNN.

Only what the fast path needs (the library, its engine and stream: ``rnnkit.fast.library``):
memory descriptors made from shapes and strides or left to the primitive, reorders, and forward
(inference or training, with workspace) and backward primitives for ``vanilla_rnn``, ``gru``,
``lbr_gru`` and ``lstm`` (peepholes, projection), single layer, unidirectional left to right,
float32. Primitives are built once per shape (``RNNShape``) and
cached. The enum values and argument numbers are oneDNN 3.x's C API (``dnnl_types.h``).

Layouts (oneDNN names; batch second): ``src_layer``/``dst_layer`` ``tnc`` ``[T, B, C]``;
states ``ldnc`` ``[1, 1, B, C]``; bias ``ldgo``; peepholes ``ldgo`` ``[1, 1, 3, H]`` (i, f, o).
The weights (``weights_layer``/``weights_iter`` ``[1, 1, in, G, H]``, the ``[in, G*H]`` matrices
of ``Canonical``, and the projection ``[1, 1, H, P]``) are given to each primitive in the layout
it prefers (``format_tag::any``: padded ``ldigo`` for training, blocked for the brgemm inference
kernel, transposed for backward); ``_Primitive.reorder`` makes it from plain ``ldigo``/``ldio``.
Their gradients are plain.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from rnnkit.fast.library import OneDNNError as OneDNNError
from rnnkit.fast.library import _ExecArg, _state, check, library
from rnnkit.fast.library import load_error as load_error
from rnnkit.fast.scratch import scratch

_F32 = 3
_FWD_TRAINING, _FWD_INFERENCE, _BACKWARD = 64, 96, 128
_LEFT2RIGHT = 1
_QUERY_WORKSPACE_MD, _QUERY_SCRATCHPAD_MD, _QUERY_EXEC_ARG_MD = 135, 136, 255
_FORMAT_ANY = 1  # dnnl_format_tag_any
_SCRATCHPAD_USER = 1
ACTIVATIONS = {"relu": 0x20, "tanh": 0x21, "logistic": 0x29}  # dnnl_eltwise_*

SRC_LAYER, SRC_ITER, SRC_ITER_C = 1, 2, 3
DST_LAYER, DST_ITER, DST_ITER_C = 17, 18, 19
WEIGHTS_LAYER, WEIGHTS_ITER, WEIGHTS_PEEPHOLE, WEIGHTS_PROJECTION, BIAS = 33, 34, 35, 36, 41
WORKSPACE, SCRATCHPAD = 64, 80
FROM, TO = 1, 17  # reorder arguments (DNNL_ARG_SRC, DNNL_ARG_DST)
DIFF = 128  # DNNL_ARG_DIFF_x = DIFF + DNNL_ARG_x

GATES = {"rnn": 1, "gru": 3, "lbr_gru": 3, "lstm": 4}


def _md(lib, dims: tuple[int, ...], strides: tuple[int, ...]) -> ctypes.c_void_p:
    """A plain float32 memory descriptor with ``strides``."""
    md, n = ctypes.c_void_p(), len(dims)
    d, s = (ctypes.c_int64 * n)(*dims), (ctypes.c_int64 * n)(*strides)
    check(lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), n, d, _F32, s),
          "dnnl_memory_desc_create_with_strides")
    return md


def _any(lib, dims: tuple[int, ...]) -> ctypes.c_void_p:
    """A float32 memory descriptor leaving the layout to the primitive (``format_tag::any``)."""
    md, n = ctypes.c_void_p(), len(dims)
    check(lib.dnnl_memory_desc_create_with_tag(ctypes.byref(md), n, (ctypes.c_int64 * n)(*dims),
                                               _F32, _FORMAT_ANY),
          "dnnl_memory_desc_create_with_tag")
    return md


def _dense(dims: tuple[int, ...], order: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Strides of a dense layout whose axes, outermost first, are ``order`` (default row-major)."""
    order = order or tuple(range(len(dims)))
    strides, step = [0] * len(dims), 1
    for axis in reversed(order):
        strides[axis] = step
        step *= dims[axis]
    return tuple(strides)


@dataclass(frozen=True)
class RNNShape:
    """Everything a primitive depends on. ``proj`` is the state/output width P (= H without
    projection); ``activation`` only matters for ``cell == "rnn"``."""

    cell: str  # "rnn" | "gru" | "lbr_gru" | "lstm"
    steps: int
    batch: int
    input_size: int
    hidden: int
    proj: int
    peephole: bool = False
    projection: bool = False
    activation: str = "tanh"

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def bias_gates(self) -> int:
        return 4 if self.cell == "lbr_gru" else self.gates

    def dims(self) -> dict[int, tuple[int, ...]]:
        """oneDNN argument number -> dims, for every argument this cell has."""
        T, B, I, H, P, G = (self.steps, self.batch, self.input_size, self.hidden, self.proj,
                            self.gates)
        out = {SRC_LAYER: (T, B, I), SRC_ITER: (1, 1, B, P), WEIGHTS_LAYER: (1, 1, I, G, H),
               WEIGHTS_ITER: (1, 1, P, G, H), BIAS: (1, 1, self.bias_gates, H),
               DST_LAYER: (T, B, P), DST_ITER: (1, 1, B, P)}
        if self.cell == "lstm":
            out[SRC_ITER_C] = out[DST_ITER_C] = (1, 1, B, H)
            if self.peephole:
                out[WEIGHTS_PEEPHOLE] = (1, 1, 3, H)
            if self.projection:
                out[WEIGHTS_PROJECTION] = (1, 1, H, P)
        return out


_FWD_ORDER = [SRC_LAYER, SRC_ITER, SRC_ITER_C, WEIGHTS_LAYER, WEIGHTS_ITER, WEIGHTS_PEEPHOLE,
              WEIGHTS_PROJECTION, BIAS, DST_LAYER, DST_ITER, DST_ITER_C]
WEIGHTS = (WEIGHTS_LAYER, WEIGHTS_ITER, WEIGHTS_PROJECTION)  # laid out as the primitive prefers


class _Primitive:
    """One primitive (descriptor, primitive and the memory descriptors it was made with).

    The scratchpad is ours (``scratchpad_mode_user``): one buffer per thread, grown as needed and
    reused, instead of oneDNN allocating (and the OS faulting in) fresh pages on every call.
    ``plain`` holds the plain descriptors of the arguments made with ``format_tag::any``, whose
    chosen layouts ``mds`` has (queried from the descriptor) and ``reorder`` makes.
    """

    def __init__(self, lib, pd: ctypes.c_void_p, mds: dict[int, ctypes.c_void_p],
                 plain: dict[int, ctypes.c_void_p] | None = None, owned: bool = True):
        self.lib, self.pd, self.mds = lib, pd, dict(mds)
        self.plain = dict(plain or {})
        # the queried descriptors below belong to the pd; a reorder's belong to others
        self._owned = [*mds.values(), *self.plain.values()] if owned else []
        self.prim = ctypes.c_void_p()
        self._reorders: dict[int, _Primitive] = {}
        self._mems: dict[int, list] = {}  # arg -> [oneDNN memory, data pointer], reused
        self._busy = threading.Lock()
        self.sizes: dict[int, int] = {}
        try:
            check(lib.dnnl_primitive_create(ctypes.byref(self.prim), pd), "dnnl_primitive_create")
        except OneDNNError:
            self.__del__()
            raise
        for arg in self.plain:
            self.mds[arg] = lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD, arg)
        for arg, query in ((WORKSPACE, _QUERY_WORKSPACE_MD), (SCRATCHPAD, _QUERY_SCRATCHPAD_MD)):
            self.mds[arg] = lib.dnnl_primitive_desc_query_md(pd, query, 0)
        self.sizes = {arg: lib.dnnl_memory_desc_get_size(md) if md else 0
                      for arg, md in self.mds.items()}
        self.ws_size = self.sizes[WORKSPACE]
        self.relaid = {arg for arg, md in self.plain.items()
                       if not lib.dnnl_memory_desc_equal(md, self.mds[arg])}

    def __del__(self):
        lib = self.lib
        for mem, _ in getattr(self, "_mems", {}).values():
            lib.dnnl_memory_destroy(mem)
        self._mems = {}
        if self.prim:
            lib.dnnl_primitive_destroy(self.prim)
            self.prim = None
        if self.pd:
            lib.dnnl_primitive_desc_destroy(self.pd)
            self.pd = None
        for md in self._owned:
            lib.dnnl_memory_desc_destroy(md)
        self._owned = []

    def same_layout(self, other: _Primitive, arg: int) -> bool:
        """Whether ``arg`` has the same layout in ``other`` as here."""
        return bool(self.lib.dnnl_memory_desc_equal(self.mds[arg], other.mds[arg]))

    def reorder(self, arg: int, plain: torch.Tensor) -> torch.Tensor:
        """``plain`` (the contiguous plain tensor of weights argument ``arg``) in this primitive's
        layout for it: a new byte buffer (``plain`` itself when the layout is plain)."""
        if arg not in self.relaid:
            return plain
        step = self._reorders.get(arg)
        if step is None:
            pd = ctypes.c_void_p()
            engine = _state["engine"]
            check(self.lib.dnnl_reorder_primitive_desc_create(
                ctypes.byref(pd), self.plain[arg], engine, self.mds[arg], engine, None),
                "dnnl_reorder_primitive_desc_create")
            step = self._reorders[arg] = _Primitive(
                self.lib, pd, {FROM: self.plain[arg], TO: self.mds[arg]}, owned=False)
        out = torch.empty(self.sizes[arg], dtype=torch.uint8)
        step.execute({FROM: plain, TO: out})
        return out

    def execute(self, tensors: dict[int, torch.Tensor]) -> None:
        """Run on ``tensors`` (argument number -> contiguous float32 CPU tensor or workspace).

        Raises:
            OneDNNError: a tensor is missing, not contiguous, or not of its argument's size (a
                check, not a conversion: oneDNN would read or write out of bounds), or oneDNN
                fails.
        """
        for arg, t in tensors.items():
            if arg not in self.mds or not t.is_contiguous() or \
                    t.numel() * t.element_size() < self.sizes[arg]:
                raise OneDNNError(f"argument {arg}: got a tensor {list(t.shape)} "
                                  f"{t.dtype}, expected {self.sizes.get(arg)} contiguous bytes")
        tensors = dict(tensors)
        if self.sizes.get(SCRATCHPAD):
            tensors[SCRATCHPAD] = scratch("onednn", self.sizes[SCRATCHPAD], torch.uint8,
                                          bounded=False)
        if not self._busy.acquire(blocking=False):  # another thread runs it: memories of its own
            self._run(tensors, {})
            return
        try:
            self._run(tensors, self._mems)
        finally:
            self._busy.release()

    def _run(self, tensors: dict[int, torch.Tensor], mems: dict[int, list]) -> None:
        """Execute with a oneDNN memory per argument, from ``mems`` (``arg -> [memory, data
        pointer]``, kept and repointed between calls) or made for this call only."""
        lib, engine, stream = self.lib, _state["engine"], _state["stream"]
        args, made = (_ExecArg * len(tensors))(), []
        try:
            for k, (arg, t) in enumerate(tensors.items()):
                ptr, entry = t.data_ptr(), mems.get(arg)
                if entry is None:
                    mem = ctypes.c_void_p()
                    check(lib.dnnl_memory_create(ctypes.byref(mem), self.mds[arg], engine,
                                                 ctypes.c_void_p(ptr)), "dnnl_memory_create")
                    entry = [mem, ptr]
                    if mems is self._mems:
                        mems[arg] = entry
                    else:
                        made.append(mem)
                elif entry[1] != ptr:
                    check(lib.dnnl_memory_set_data_handle(entry[0], ctypes.c_void_p(ptr)),
                          "dnnl_memory_set_data_handle")
                    entry[1] = ptr
                args[k].arg, args[k].memory = arg, entry[0]
            check(lib.dnnl_primitive_execute(self.prim, stream, len(tensors), args),
                  "dnnl_primitive_execute")
            check(lib.dnnl_stream_wait(stream), "dnnl_stream_wait")
        finally:
            for mem in made:
                lib.dnnl_memory_destroy(mem)


def _create_pd(lib, shape: RNNShape, prop: int, mds: dict[int, ctypes.c_void_p]
               ) -> ctypes.c_void_p:
    """Call the cell's ``*_primitive_desc_create`` with ``mds`` (absent arguments are NULL)."""
    pd, engine, backward = ctypes.c_void_p(), _state["engine"], prop == _BACKWARD
    order = [a for a in _FWD_ORDER if shape.cell == "lstm" or a not in (
        SRC_ITER_C, DST_ITER_C, WEIGHTS_PEEPHOLE, WEIGHTS_PROJECTION)]
    descs = [mds.get(a) for a in order]
    if backward:
        descs += [mds.get(DIFF + a) for a in order]
    name = {"rnn": "vanilla_rnn", "gru": "gru", "lbr_gru": "lbr_gru", "lstm": "lstm"}[shape.cell]
    fn = getattr(lib, f"dnnl_{name}_{'backward' if backward else 'forward'}_primitive_desc_create")
    attr = ctypes.c_void_p()
    check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "dnnl_primitive_attr_create")
    check(lib.dnnl_primitive_attr_set_scratchpad_mode(attr, _SCRATCHPAD_USER),
          "dnnl_primitive_attr_set_scratchpad_mode")
    tail = [None, attr] if backward else [attr]  # hint_fwd_pd (NULL is allowed), attr
    try:
        if shape.cell == "rnn":
            act = ACTIVATIONS[shape.activation]
            status = fn(ctypes.byref(pd), engine, prop, act, _LEFT2RIGHT, *descs, 0, 0.0, 0.0,
                        *tail)
        else:
            status = fn(ctypes.byref(pd), engine, prop, _LEFT2RIGHT, *descs, 0, *tail)
    finally:
        lib.dnnl_primitive_attr_destroy(attr)  # the descriptor keeps its own copy
    check(status, f"{fn.__name__}({shape})")
    return pd


class RNNPrimitives:
    """Forward (inference and training) and backward primitives for one ``RNNShape``."""

    def __init__(self, shape: RNNShape):
        self.shape = shape
        self.lib = library()
        self._fwd: dict[int, _Primitive] = {}
        self._bwd: _Primitive | None = None

    def forward(self, training: bool) -> _Primitive:
        prop = _FWD_TRAINING if training else _FWD_INFERENCE
        if prop not in self._fwd:
            self._fwd[prop] = self._make(prop)
        return self._fwd[prop]

    def backward(self) -> _Primitive:
        if self._bwd is None:
            self._bwd = self._make(_BACKWARD)
        return self._bwd

    def _make(self, prop: int) -> _Primitive:
        """The primitive with the weights' layouts left to oneDNN (plain ones if that fails)."""
        lib, dims = self.lib, self.shape.dims()
        for any_layout in (True, False):
            mds = {arg: _md(lib, d, _dense(d)) for arg, d in dims.items()
                   if not (any_layout and arg in WEIGHTS)}
            plain = {arg: _md(lib, d, _dense(d)) for arg, d in dims.items()
                     if any_layout and arg in WEIGHTS}
            mds.update({arg: _any(lib, dims[arg]) for arg in plain})
            if prop == _BACKWARD:
                mds.update({DIFF + arg: _md(lib, d, _dense(d)) for arg, d in dims.items()})
            try:
                pd = _create_pd(lib, self.shape, prop, mds)
            except OneDNNError:
                for md in [*mds.values(), *plain.values()]:
                    lib.dnnl_memory_desc_destroy(md)
                if not any_layout:
                    raise
                continue
            for arg in plain:  # the any descriptors are ours; the chosen ones the pd's
                lib.dnnl_memory_desc_destroy(mds.pop(arg))
            return _Primitive(lib, pd, mds, plain)
        raise AssertionError("unreachable")


_lock = threading.Lock()
_cache: OrderedDict[RNNShape, RNNPrimitives] = OrderedDict()
CACHE_SIZE = 512  # shapes; a variable-length batch makes one per segment shape


def primitives(shape: RNNShape) -> RNNPrimitives:
    """The cached primitives for ``shape`` (made on first use; least recently used evicted,
    and destroyed once no running call holds them)."""
    with _lock:
        found = _cache.get(shape)
        if found is not None:
            _cache.move_to_end(shape)
            return found
    found = RNNPrimitives(shape)
    with _lock:
        found = _cache.setdefault(shape, found)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return found
