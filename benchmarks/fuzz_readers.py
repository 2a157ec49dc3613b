"""Long fuzz run of every file reader: mutated files must give a model or ``FormatError``.

    python benchmarks/fuzz_readers.py --inputs 2000 [--seed 0]

For each format (TF checkpoint index and data shard, rnnkit native of cells and of a Keras
model, Keras ``.keras`` and ``.weights.h5``, PyTorch state_dict files through ``rnnkit
inspect``'s reader, and a ConvLSTM model as ``.keras`` and native) a valid sample is
written, then mutated: truncations, byte flips, zeroed ranges, inserted junk and overwritten
4/8-byte fields set to huge values (declared sizes).
Each mutated input is read with a time limit and an address-space limit. Anything but success
or ``rnnkit.io.FormatError`` — another exception, a hang, a memory blow-up — is a failure,
printed with its input so it can be replayed. The summary table is what
``benchmarks/RESULTS.md`` records.
"""

from __future__ import annotations

import argparse
import collections
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import rnnkit as rk
from rnnkit import io
from rnnkit.io import FormatError

LIMIT_S = 10
LIMIT_BYTES = 6 * 2**30


def _samples(folder: Path) -> dict:
    """Write one valid file of each format; return name -> (files to mutate, reader)."""
    rk.reset_default_graph()
    x = torch.randn(2, 3, 4)
    cell = rk.MultiRNNCell([rk.GRUCell(3), rk.LSTMCell(3, use_peepholes=True)])
    rk.dynamic_rnn(cell, x)
    io.write_tf_checkpoint(folder / "tf" / "model", {v.name[:-2]: v.detach() for v in rk.global_variables()})
    io.save_native(folder / "cell.safetensors", cell)
    model = _keras_model()
    model(x)
    io.save_keras(model, folder / "model.keras")
    io.save_keras(model, folder / "model.weights.h5")
    io.save_native(folder / "model.safetensors", model)
    torch.save(torch.nn.LSTM(4, 3).state_dict(), folder / "lstm.pt")
    conv = _conv_model()
    conv(torch.randn(2, 3, 5, 4, 2))
    io.save_keras(conv, folder / "conv.keras")
    io.save_native(folder / "conv.safetensors", conv)

    def keras_weights(path):
        rk.reset_default_graph()
        fresh = _keras_model()
        fresh(x)
        return io.load_keras(path, model=fresh)

    def torch_weights(path):
        from rnnkit.io import inspect as inspect_files

        return inspect_files.inspect_file(path)

    return {
        "tf index": ([folder / "tf" / "model.index"], io.read_checkpoint, folder / "tf" / "model"),
        "tf data": ([folder / "tf" / "model.data-00000-of-00001"], io.read_checkpoint,
                    folder / "tf" / "model"),
        "native": ([folder / "cell.safetensors"], _load_native, folder / "cell.safetensors"),
        "native Keras": ([folder / "model.safetensors"], _load_native, folder / "model.safetensors"),
        ".keras": ([folder / "model.keras"], io.load_keras, folder / "model.keras"),
        ".weights.h5": ([folder / "model.weights.h5"], keras_weights, folder / "model.weights.h5"),
        "torch .pt": ([folder / "lstm.pt"], torch_weights, folder / "lstm.pt"),
        "ConvLSTM .keras": ([folder / "conv.keras"], io.load_keras, folder / "conv.keras"),
        "ConvLSTM native": ([folder / "conv.safetensors"], _load_native,
                            folder / "conv.safetensors"),
    }


def _keras_model():
    """Masking, an LSTM and a stack of cells (``RNN([cells])``: nested configs and weights)."""
    L = rk.layers
    return L.Sequential([L.Masking(), L.LSTM(3, return_sequences=True),
                         L.RNN([L.GRUCell(2), L.SimpleRNNCell(2)])])


def _conv_model():
    """ConvLSTM layers: kernel sizes, strides, dilations and paddings in the config, and inputs
    with a spatial shape to build from."""
    L = rk.layers
    return L.Sequential([L.ConvLSTM2D(3, (2, 3), padding="same", dilation_rate=(1, 2),
                                      return_sequences=True),
                         L.ConvLSTM2D(2, 2, strides=2)])


def _load_native(path):
    rk.reset_default_graph()
    return io.load(path)


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of ``data`` and a short description of it."""
    n = len(data)
    kind = rng.choice(["truncate", "flip", "zero", "insert", "huge"])
    if kind == "truncate":
        cut = rng.randrange(n)
        return f"truncate at {cut}", data[:cut]
    buf = bytearray(data)
    if kind == "flip":
        spots = [rng.randrange(n) for _ in range(rng.randint(1, 8))]
        for i in spots:
            buf[i] ^= 1 << rng.randrange(8)
        return f"flip bits at {spots}", bytes(buf)
    if kind == "zero":
        lo = rng.randrange(n)
        hi = min(n, lo + rng.randint(1, 64))
        buf[lo:hi] = bytes(hi - lo)
        return f"zero [{lo}:{hi}]", bytes(buf)
    if kind == "insert":
        at = rng.randrange(n)
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        return f"insert {len(junk)} bytes at {at}", bytes(buf[:at]) + junk + bytes(buf[at:])
    at, width = rng.randrange(max(1, n - 8)), rng.choice([4, 8])
    buf[at:at + width] = (0xFF if rng.random() < 0.5 else 0x7F).to_bytes(1, "little") * width
    return f"huge {width}-byte field at {at}", bytes(buf)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run(inputs: int, seed: int, verbose: bool = False) -> dict:
    """Fuzz every format with ``inputs`` mutations each; return counts per format."""
    rng = random.Random(seed)
    signal.signal(signal.SIGALRM, _alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, hard))
    counts: dict[str, collections.Counter] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for fmt, (files, reader, target) in _samples(folder).items():
                counts[fmt] = collections.Counter()
                for target_file in files:
                    original = target_file.read_bytes()
                    backup = folder / "backup.bin"
                    shutil.copyfile(target_file, backup)
                    for _ in range(inputs):
                        what, data = mutate(original, rng)
                        target_file.write_bytes(data)
                        outcome = _read_once(reader, target)
                        counts[fmt][outcome[0]] += 1
                        if outcome[0] not in ("ok", "FormatError") or verbose:
                            print(f"[{fmt}] {what}: {outcome[0]} {outcome[1]}", file=sys.stderr)
                    shutil.copyfile(backup, target_file)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return counts


def _read_once(reader, target) -> tuple[str, str]:
    signal.alarm(LIMIT_S)
    try:
        reader(target)
        return "ok", ""
    except FormatError:
        return "FormatError", ""
    except _Timeout:
        return "hang", f"over {LIMIT_S} s"
    except MemoryError:
        return "memory", "MemoryError"
    except Exception as err:  # the failures this script exists to find
        return type(err).__name__, traceback.format_exc(limit=-4)
    finally:
        signal.alarm(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=500, help="mutations per format (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    counts = run(args.inputs, args.seed, args.verbose)
    print("| format | inputs | valid model | FormatError | other (failures) |")
    print("|---|---|---|---|---|")
    bad_total = 0
    for fmt, c in counts.items():
        bad = sum(v for k, v in c.items() if k not in ("ok", "FormatError"))
        bad_total += bad
        other = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("ok", "FormatError")) or "0"
        print(f"| {fmt} | {sum(c.values())} | {c['ok']} | {c['FormatError']} | {other} |")
    print(f"\n{sum(sum(c.values()) for c in counts.values())} inputs in "
          f"{time.perf_counter() - t0:.0f} s, {bad_total} failures")
    return 1 if bad_total else 0


if __name__ == "__main__":
    sys.exit(main())
