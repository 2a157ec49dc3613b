"""rnnkit's fast paths (oneDNN, the fused kernel) against its reference loop and torch.nn, in one run.

    .venv/bin/python benchmarks/bench_rnn.py [--repeats 7] [--quick] [--malloc steady] [--gpu-only]

For each shape (batch B, time T, hidden H = input depth) and cell, it times forward (no grad)
and forward+backward (``sum(outputs * g)`` backpropagated to inputs and weights) and prints
milliseconds (median of ``--repeats`` runs, the paths of one row group timed round-robin so
that load from other processes falls on all alike, each timed run right after an untimed one
of the same path) and the speed ratio against the
torch.nn module with the same math (``torch.nn.LSTM``; ``torch.nn.GRU`` for both GRUs: the
nearest peer, although it is the reset-after variant). Also: the first call of a new shape
(primitive creation), a variable-length batch against the same batch padded, and two models
with dropout, in training (``--dropout``: that section alone): TF1's stacked language model
(``MultiRNNCell`` of ``DropoutWrapper``-ed LSTMs), its wrappers' dropout on the whole sequence
or step by step, and a Keras ``LSTM(dropout=...)``, its input mask on the whole sequence or in
the reference loop, each against torch.nn with the same dropout. Where torch
sees a CUDA device, a GPU section (``gpu``) does the same on it: rnnkit's cuDNN path (torch's
fused ops) or reference loop against torch.nn on that device.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import allocator
import torch

import rnnkit as rk

SHAPES = [(32, 100, 64), (32, 100, 256), (32, 100, 512), (1, 500, 256)]


def _interleaved(fns: list[Callable[[], None]], repeats: int) -> list[float]:
    """Median milliseconds of each function, timed round-robin so that load from other
    processes on a shared machine falls on all of them alike; each timed call follows an
    untimed call of the same function (a function run right after another one pays for the
    caches that one evicted: 10-40% at H64, measured, and always the same function would pay).
    The fastest run of each is kept in ``_BEST`` (on a machine with bursts of load, the least
    disturbed run)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times, strict=True):
            fn()
            start = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - start)
    _BEST[:] = [1e3 * min(acc) for acc in times]
    return [1e3 * statistics.median(acc) for acc in times]


_BEST: list[float] = []


def _keras_case(x: torch.Tensor, fast):
    """``rk.layers.LSTM`` (Keras gate order: its kernels are the oneDNN weights as they are)."""
    layer = rk.layers.LSTM(x.shape[-1], return_sequences=True, fast=fast)
    layer(x.detach().cpu())
    layer.to(x.device)
    params = list(layer.parameters())

    def forward():
        with torch.no_grad():
            layer(x)

    def train():
        torch.autograd.grad(layer(x).sum(), [x, *params])

    return forward, train


def _rnnkit_case(make_cell, x: torch.Tensor, fast, lengths=None):
    if make_cell == "keras":
        return _keras_case(x, fast)
    rk.reset_default_graph()
    cell = make_cell(x.shape[-1])
    cell.ensure_built(x.shape[-1], torch.float32)
    cell.to(x.device)
    params = list(cell.parameters())

    def forward():
        with torch.no_grad():
            rk.dynamic_rnn(cell, x, sequence_length=lengths, fast=fast)

    def train():
        out, _ = rk.dynamic_rnn(cell, x, sequence_length=lengths, fast=fast)
        torch.autograd.grad(out.sum(), [x, *params])

    return forward, train


def _torch_case(module: torch.nn.Module, x: torch.Tensor):
    params = list(module.parameters())

    def forward():
        with torch.no_grad():
            module(x)

    def train():
        out, _ = module(x)
        torch.autograd.grad(out.sum(), [x, *params])

    return forward, train


CELLS = {
    "LSTM (BasicLSTMCell)": (lambda h: rk.BasicLSTMCell(h), "lstm"),
    "LSTM (Keras layer)": ("keras", "lstm"),
    "LSTM peephole+proj": (lambda h: rk.LSTMCell(h, use_peepholes=True, num_proj=h // 2),
                           "lstm_proj"),
    "GRU TF1 (reset before)": (lambda h: rk.GRUCell(h), "gru"),
    "GRU reset after": (lambda h: rk.GRUCell(h, reset_after=True), "gru"),
    "LSTM cell_clip": (lambda h: rk.LSTMCell(h, cell_clip=3.0), "lstm"),
    "LSTM layer norm": (lambda h: rk.LayerNormLSTMCell(h), "lstm"),
}


def _path(make, x: torch.Tensor) -> str:
    """The fast path ``dispatch`` picks for this cell (Keras layers: their cell's)."""
    if make == "keras":
        cell = rk.layers.LSTM(x.shape[-1]).cell
    else:
        rk.reset_default_graph()
        cell = make(x.shape[-1])
    cell.ensure_built(x.shape[-1], torch.float32)
    return rk.fast.explain(cell.to(x.device), x).path


def _peer(kind: str, h: int) -> torch.nn.Module:
    if kind == "lstm":
        return torch.nn.LSTM(h, h, batch_first=True)
    if kind == "lstm_proj":
        return torch.nn.LSTM(h, h, batch_first=True, proj_size=h // 2)
    return torch.nn.GRU(h, h, batch_first=True)


_HEADER = (f"{'B,T,H':<12}{'cell':<24}{'path':<11}{'fwd ms':>9}{'f+b ms':>9}{'fwd x':>8}"
           f"{'f+b x':>8}{'best x':>9}")


def _synced(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``fn``, waiting for the GPU's queue to drain on a CUDA device."""
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)

    return run


def _group(shape: tuple[int, int, int], cells: list[str], repeats: int, device: torch.device,
           reference: bool, fast: bool | str = True) -> None:
    """The rows of one shape: each torch.nn peer once, then each cell's fast path (``fast``:
    "auto" where some cells have none) and with ``reference`` its reference loop too, timed
    round-robin with the peer."""
    B, T, H = shape
    x = torch.randn(B, T, H, device=device, requires_grad=True)
    peers: dict[str, tuple[float, float, float]] = {}
    for name in cells:
        make, kind = CELLS[name]
        cases = [_rnnkit_case(make, x, fast)]
        paths = [_path(make, x)]
        if reference:
            cases.append(_rnnkit_case(make, x, False))
            paths.append("reference")
        if kind not in peers:
            cases.insert(0, _torch_case(_peer(kind, H).to(device), x))
        if device.type == "cuda":  # the graph path captures a shape at its second call
            for case in cases:
                for fn in (*case, *case):
                    fn()
        fwd = _interleaved([_synced(c[0], device) for c in cases], repeats)
        train = _interleaved([_synced(c[1], device) for c in cases], repeats)
        rows = list(zip(fwd, train, _BEST, strict=True))
        if kind not in peers:
            peers[kind] = rows[0]
            _row(B, T, H, f"torch.nn ({kind})", "torch", rows[0], rows[0])
        for path, times in zip(paths, rows[-len(paths):], strict=True):
            _row(B, T, H, name, path, times, peers[kind])


def run(repeats: int, quick: bool) -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"oneDNN: {rk.fast.load_error() or 'loaded'}")
    print(_HEADER + "   (x = torch.nn time / this time, medians; best x: fastest f+b runs)")
    for shape in SHAPES[:1] if quick else SHAPES:
        _group(shape, list(CELLS), repeats, torch.device("cpu"), reference=True)
    _first_call()
    _varlen(repeats)
    dropout_models(repeats)
    if torch.cuda.is_available():
        gpu(repeats)


def _row(B, T, H, name, path, times, peer) -> None:
    print(f"{f'{B},{T},{H}':<12}{name:<24}{path:<11}{times[0]:>9.1f}{times[1]:>9.1f}"
          f"{peer[0] / times[0]:>8.2f}{peer[1] / times[1]:>8.2f}{peer[2] / times[2]:>9.2f}")


def _first_call() -> None:
    """Seconds for the first forward+backward of a shape never seen (primitive creation)."""
    x = torch.randn(16, 37, 96, requires_grad=True)
    for name, (make, _) in CELLS.items():
        if make == "keras":
            continue
        rk.reset_default_graph()
        cell = make(96)
        start = time.perf_counter()
        out, _ = rk.dynamic_rnn(cell, x, fast=True)
        out.sum().backward()
        print(f"first call, new shape B16 T37 H96, {name}: {time.perf_counter() - start:.3f} s")


def _varlen(repeats: int) -> None:
    """B32 T100 H256, lengths spread over 10..100: sorted segments against the padded batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 100, 256, requires_grad=True)
    lengths = torch.randint(10, 101, (32,), generator=g)
    useful = lengths.sum().item() / (32 * 100)
    for name in ("LSTM (BasicLSTMCell)", "GRU TF1 (reset before)", "LSTM cell_clip"):
        make = CELLS[name][0]
        padded, varlen = _rnnkit_case(make, x, True), _rnnkit_case(make, x, True, lengths)
        fwd = _interleaved([padded[0], varlen[0]], repeats)
        train = _interleaved([padded[1], varlen[1]], repeats)
        best = _BEST[0] / _BEST[1]
        padded, varlen = (fwd[0], train[0]), (fwd[1], train[1])
        print(f"variable length B32 T100 H256 ({useful:.0%} useful steps), {name}: padded "
              f"{padded[0]:.1f} / {padded[1]:.1f} ms, with sequence_length {varlen[0]:.1f} / "
              f"{varlen[1]:.1f} ms (fwd / f+b): {padded[1] / varlen[1]:.2f}x (best runs "
              f"{best:.2f}x)")


STACKS = [(20, 35, 650), (32, 100, 256)]  # PTB's "medium" model (Zaremba et al.), ours


def dropout_models(repeats: int) -> None:
    """In training, forward+backward: two LSTM layers, each in a ``DropoutWrapper`` (output keep
    0.5; then variational output and state dropout, the state's the fused kernels' state mask;
    and the same for two TF1 GRU layers), the wrappers on the whole sequence (each layer on its
    fast path) and step by step (the reference loop, as before they could), against
    ``torch.nn.LSTM(num_layers=2, dropout=0.5)`` (or ``GRU``) with dropout on its output too
    (the same math but the state's; other masks); then ``rk.layers.LSTM`` with ``dropout=0.3``
    (one input mask for all steps), and with ``recurrent_dropout=0.3`` too (masks
    per gate on ``x`` and ``h``: the fused kernels), and ``rk.layers.GRU`` with both, on the fast
    path and on the reference loop, against torch.nn's LSTM or GRU on inputs dropped by one
    mask (torch.nn has no recurrent dropout); then one ``LayerNormLSTMCell`` with candidate
    dropout (keep 0.9) on the fused kernels and on the reference loop, against itself without
    dropout and torch.nn.LSTM."""
    from rnnkit.cells import wrappers

    for (B, T, H), (kind, what, options) in itertools.product(STACKS, WRAPPED):
        x = torch.randn(B, T, H, requires_grad=True)
        rk.reset_default_graph()
        make = rk.BasicLSTMCell if kind == "LSTM" else rk.GRUCell
        stack = rk.MultiRNNCell([rk.DropoutWrapper(make(H), **options) for _ in range(2)])
        stack.ensure_built(H, torch.float32)
        params = list(stack.parameters())

        def ours(whole: bool, stack=stack, params=params, x=x):
            def train():
                wrappers.WHOLE_SEQUENCE = whole
                try:
                    out, _ = rk.dynamic_rnn(stack, x)
                finally:
                    wrappers.WHOLE_SEQUENCE = True
                torch.autograd.grad(out.sum(), [x, *params])
            return train

        peer = getattr(torch.nn, kind)(H, H, num_layers=2, dropout=0.5, batch_first=True)
        peer_params = list(peer.parameters())

        def theirs(peer=peer, peer_params=peer_params, x=x):
            out = torch.nn.functional.dropout(peer(x)[0], 0.5)
            torch.autograd.grad(out.sum(), [x, *peer_params])

        t_peer, t_whole, t_steps = _interleaved([theirs, ours(True), ours(False)], repeats)
        path = rk.fast.explain(stack, x).path
        print(f"2-layer {kind}, {what}, training, B{B} T{T} H{H}, f+b ms: torch.nn "
              f"{t_peer:.1f}, wrappers on the whole sequence ({path}) {t_whole:.1f}, step by "
              f"step (reference) {t_steps:.1f}: {t_steps / t_whole:.2f}x faster, "
              f"{t_peer / t_whole:.2f}x torch.nn")
    for (B, T, H), (kind, options) in itertools.product(STACKS, KERAS_DROPOUT):
        x = torch.randn(B, T, H, requires_grad=True)
        layer = getattr(rk.layers, kind)(H, return_sequences=True, **options)
        layer(x)
        params = list(layer.parameters())

        def keras(fast, layer=layer, params=params, x=x):
            def train():
                layer.fast = fast
                torch.autograd.grad(layer(x, training=True).sum(), [x, *params])
            return train

        peer = getattr(torch.nn, kind)(H, H, batch_first=True)
        peer_params = list(peer.parameters())

        def theirs(peer=peer, peer_params=peer_params, x=x):
            keep = torch.nn.functional.dropout(torch.ones(x.shape[0], 1, x.shape[2]), 0.3)
            torch.autograd.grad(peer(x * keep)[0].sum(), [x, *peer_params])

        t_peer, t_fast, t_ref = _interleaved([theirs, keras("auto"), keras(False)], repeats)
        args = ", ".join(f"{k}={v}" for k, v in options.items())
        print(f"Keras {kind}({args}), training, B{B} T{T} H{H}, f+b ms: torch.nn (input dropout "
              f"only) {t_peer:.1f}, fast path ({_keras_path(layer, x)}) {t_fast:.1f}, reference "
              f"loop {t_ref:.1f}: {t_ref / t_fast:.2f}x faster, {t_peer / t_fast:.2f}x torch.nn")
    for B, T, H in STACKS:
        x = torch.randn(B, T, H, requires_grad=True)
        rk.reset_default_graph()
        cell = rk.LayerNormLSTMCell(H, dropout_keep_prob=0.9, input_size=H)
        params = list(cell.parameters())

        def norm(fast, keep, cell=cell, params=params, x=x):
            def train():
                cell.dropout_keep_prob = keep
                out, _ = rk.dynamic_rnn(cell, x, fast=fast)
                torch.autograd.grad(out.sum(), [x, *params])
            return train

        peer = torch.nn.LSTM(H, H, batch_first=True)
        peer_params = list(peer.parameters())

        def lstm(peer=peer, peer_params=peer_params, x=x):
            torch.autograd.grad(peer(x)[0].sum(), [x, *peer_params])

        t_peer, t_plain, t_fast, t_ref = _interleaved(
            [lstm, norm("auto", 1.0), norm("auto", 0.9), norm(False, 0.9)], repeats)
        print(f"LayerNormLSTMCell(dropout_keep_prob=0.9), training, B{B} T{T} H{H}, f+b ms: "
              f"fused {t_fast:.1f} (without dropout {t_plain:.1f}), reference loop {t_ref:.1f}: "
              f"{t_ref / t_fast:.2f}x faster; torch.nn.LSTM (no layer norm) {t_peer:.1f}")


_GAL = {"output_keep_prob": 0.5, "state_keep_prob": 0.5, "variational_recurrent": True}
WRAPPED = [("LSTM", "output dropout 0.5", {"output_keep_prob": 0.5}),
           ("LSTM", "variational output and state dropout 0.5 (Gal)", _GAL),
           ("GRU", "variational output and state dropout 0.5 (Gal)", _GAL),
           ("LSTM", "output and state dropout 0.5, new masks every step",
            {"output_keep_prob": 0.5, "state_keep_prob": 0.5})]
KERAS_DROPOUT = [("LSTM", {"dropout": 0.3}), ("LSTM", {"dropout": 0.3, "recurrent_dropout": 0.3}),
                 ("GRU", {"dropout": 0.3, "recurrent_dropout": 0.3})]


def _keras_path(layer, x: torch.Tensor) -> str:
    """The path a Keras layer's training call takes (its masks drawn)."""
    from rnnkit.fast import dispatch

    seen, decide = [], dispatch.decide

    def spy(*args, **kwargs):
        decision = decide(*args, **kwargs)
        seen.append(decision.path)
        return decision

    dispatch.decide = spy
    try:
        with torch.no_grad():
            layer.fast = "auto"
            layer(x, training=True)
    finally:
        dispatch.decide = decide
    return ", ".join(seen)


GPU_CELLS = ["LSTM (BasicLSTMCell)", "LSTM (Keras layer)", "GRU reset after",
             "GRU TF1 (reset before)", "LSTM peephole+proj", "LSTM cell_clip", "LSTM layer norm"]


def _packed_peer(module: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor):
    """torch.nn's own variable-length run, f+b: the batch packed from its lengths (read on the
    host, as ``pack_padded_sequence`` needs them), run, and padded back."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    params = list(module.parameters())

    def train():
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = module(packed)
        out = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        torch.autograd.grad(out.sum(), [x, *params])

    return train


def gpu(repeats: int, device: str = "cuda") -> None:
    """The GPU section: rnnkit (cuDNN through torch's fused ops where the math allows, else the
    reference loop) against torch.nn on the same device, same shapes, fixed and variable
    lengths."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else device
    print(f"\nGPU section: {name}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}, TF32: cuDNN {torch.backends.cudnn.allow_tf32}, "
          f"matmul {torch.backends.cuda.matmul.allow_tf32}")
    print(_HEADER + "   (x = torch.nn on the same device / this time)")
    g = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        _group(shape, GPU_CELLS, repeats, dev, reference=False, fast="auto")
    x = torch.randn(32, 100, 256, device=dev, requires_grad=True)
    lengths = torch.randint(10, 101, (32,), generator=g).to(dev)
    for cell_name in ("LSTM (BasicLSTMCell)", "GRU reset after", "GRU TF1 (reset before)"):
        make, kind = CELLS[cell_name]
        padded, varlen = _rnnkit_case(make, x, True), _rnnkit_case(make, x, True, lengths)
        packed = _packed_peer(_peer(kind, 256).to(dev), x, lengths)
        for fn in (padded[1], varlen[1], packed) * 2:
            fn()
        train = _interleaved([_synced(f, dev) for f in (padded[1], varlen[1], packed)],
                             repeats)
        print(f"variable length B32 T100 H256, {cell_name}: padded {train[0]:.2f} ms, with "
              f"sequence_length {train[1]:.2f} ms (f+b): {train[0] / train[1]:.2f}x; torch.nn "
              f"{kind} on a PackedSequence {train[2]:.2f} ms ({train[2] / train[1]:.2f}x)")
    for cell_name in GPU_CELLS[3:]:  # the graph path: eager, captured, replayed
        rk.reset_default_graph()
        train = _synced(_rnnkit_case(CELLS[cell_name][0], x, True)[1], dev)
        took = []
        for _ in range(3):
            start = time.perf_counter()
            train()
            took.append(time.perf_counter() - start)
        print(f"first calls B32 T100 H256, {cell_name} (f+b): eager {took[0]:.3f} s, capture "
              f"{took[1]:.3f} s, replay {took[2]:.3f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="first shape only")
    parser.add_argument("--gpu-only", action="store_true", help="the GPU section alone")
    parser.add_argument("--dropout", action="store_true", help="the models with dropout alone")
    parser.add_argument("--malloc", choices=["glibc", "steady"], default="glibc",
                        help="steady: glibc keeps large freed buffers for reuse "
                             "(benchmarks/allocator.py)")
    args = parser.parse_args()
    if args.malloc == "steady":
        allocator.steady()
    print(f"malloc: {args.malloc}")
    if args.gpu_only:
        if not torch.cuda.is_available():
            parser.exit(2, "--gpu-only: no CUDA device here (torch.cuda.is_available() is "
                           "False)\n")
        gpu(args.repeats)
    elif args.dropout:
        dropout_models(args.repeats)
    else:
        run(args.repeats, args.quick)
