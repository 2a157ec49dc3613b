"""Differential fuzz run against real TensorFlow and Keras: random programs, run by rnnkit and by them.

    python benchmarks/fuzz_oracle.py --programs 200 [--family tf1|keras] [--seed 0] [--per-run 50]

Each program (``tests/fuzz_programs.py``) runs in rnnkit twice, on the fast paths
(``fast="auto"``) and on the reference loop (``fast=False``), and once in the oracle, in a
subprocess:
- ``tf1``: random cells, stacks, options, drivers, shapes and lengths, against
  ``tf.compat.v1`` in graph mode, with rnnkit's weights in a TF checkpoint rnnkit writes and
  TF's ``Saver`` restores; and TF's own initial values, saved by TF, restored by rnnkit;
- ``keras``: random models of recurrent layers (cells, stacks, ``Bidirectional``, masks,
  returned and passed states, ConvLSTM1D, token ids, stateful models), against Keras 3 on the
  TF backend, with Keras's random weights copied in order; and their files both ways: rnnkit
  reads what Keras 3 (``.keras``) and tf.keras (``.h5``) saved, also after a round trip
  through its native file, and Keras 3 reads what rnnkit saved.
Weight names, outputs, final states and the gradients of a fixed loss with respect to inputs,
initial states and every weight must agree to 1e-5. A program rnnkit refuses while the oracle
runs it (or the other way round) is a failure too. Failures are
printed with their program, so each can be replayed. Needs the ``oracle`` extra (TensorFlow).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import keras_harness as kh  # noqa: E402
import numpy as np  # noqa: E402
import tf1_harness as tf1  # noqa: E402
import torch  # noqa: E402
from fuzz_programs import keras_programs, tf1_programs  # noqa: E402
from tf_oracle import run_tf  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

import rnnkit as rk  # noqa: E402

MODES = {"auto": None, "reference": False}


def _report(failures: dict, name: str, src: str, shape: str, out) -> None:
    if src in failures:
        print(f"--- {name} ({shape})\n{src}" + "\n".join(failures[src]), file=out)


def _ours(progs: dict, run_one) -> dict[str, dict]:
    """rnnkit's runs of every program in both modes, by mode: results, or the traceback of what
    raised."""
    ours: dict[str, dict] = {mode: {} for mode in MODES}
    for k, (name, src) in enumerate(progs.items()):
        for mode, fast in MODES.items():
            torch.manual_seed(k)  # the same weights in both modes: TF loads one set
            try:
                ours[mode][name] = run_one(name, src, fast)
            except Exception:  # reported with the program, unless the oracle refuses it too
                ours[mode][name] = traceback.format_exc(limit=-3)
    return ours


def _compare(name: str, src: str, ours: dict, oracle: dict, mismatches, failures: dict) -> None:
    """Both modes' runs of one program against the oracle's; a program both refuse agrees."""
    for mode in MODES:
        got = ours[mode][name]
        if isinstance(got, str):
            if name + "|error" not in oracle:
                failures.setdefault(src, []).append(f"{mode}: rnnkit raised {got}")
        else:
            failures.setdefault(src, []).extend(f"{mode}: {f}"
                                                for f in mismatches(name, got, oracle))
    if not failures.get(src):
        failures.pop(src, None)


def fuzz_tf1(progs: dict, arrays: dict, failures: dict, out, long: bool = False) -> None:
    """TF1 programs: rnnkit first (its weights go to TF as a TF checkpoint rnnkit writes and
    TF's Saver restores), then TF, which also saves a checkpoint of its own initial values for
    rnnkit to restore into the same program: both must give TF's outputs."""
    ours = _ours(progs, lambda name, src, fast: tf1.run_rnnkit(name, src, arrays, fast))
    ran = {name: r for name, r in ours["reference"].items() if not isinstance(r, str)}
    # long sequences: 1e-3 of each tensor's scale (float32 rounding grows with the steps, in TF
    # as in rnnkit; measured against float64 in RESULTS.md)
    compare = functools.partial(tf1.mismatches, tol=1e-3, scaled=True) if long else tf1.mismatches
    with tempfile.TemporaryDirectory() as tmp:
        tf = run_tf(tf1.tf_script(progs), tf1.tf_feed(arrays, ran, tmp))
        for name, src in progs.items():
            _compare(name, src, ours, tf, compare, failures)
            found = _restored(name, src, arrays, tf) if name + "|saved" in tf else []
            if found:
                failures.setdefault(src, []).extend(found)
            _report(failures, name, src, f"inputs {arrays[name + '|X'].shape}, lengths "
                                         f"{arrays[name + '|L'].tolist()}", out)


def _restored(name: str, src: str, arrays: dict, tf: dict) -> list[str]:
    """What differs between TF's outputs at its initial values and rnnkit's, restoring TF's
    checkpoint of them into the same program."""
    try:
        got = tf1.run_rnnkit(name, src, arrays, restore=tf[name + "|saved"])["leaves"]
    except Exception:  # a failure to report, with its program
        return [f"TF's checkpoint restored: rnnkit raised {traceback.format_exc(limit=-3)}"]
    want = [tf[f"{name}|initial|{k}"] for k in range(len(got)) if f"{name}|initial|{k}" in tf]
    if len(want) != len(got) or f"{name}|initial|{len(got)}" in tf:
        return [f"TF's checkpoint restored: {len(got)} outputs, TF {len(want)}+"]
    return [f"TF's checkpoint restored: leaf {k}: max difference {np.abs(a - b).max():.3g}"
            for k, (a, b) in enumerate(zip(got, want, strict=True))
            if not np.allclose(a, b, rtol=1e-5, atol=1e-5)]


def fuzz_keras(progs: dict, arrays: dict, failures: dict, out) -> None:
    """Keras programs: Keras 3 first (its weights go to rnnkit), then rnnkit. Files too: rnnkit
    reads what Keras 3 (``.keras``) and tf.keras (``.h5``) saved of each model, and Keras 3 reads
    what rnnkit saved; each must give its writer's outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        theirs = run_tf(kh.keras_script(progs, save=tmp), arrays, legacy_keras=False)
        legacy = run_tf(kh.keras_script(progs, save=tmp, legacy=True), arrays)
        ours = _ours(progs, lambda name, src, fast: kh.run_rnnkit(name, src, arrays, theirs, fast))
        written = {}
        for name, src in progs.items():
            _compare(name, src, ours, theirs, kh.mismatches, failures)
            for path, oracle in ((Path(tmp, f"{name}.keras"), theirs), (Path(tmp, f"{name}.h5"), legacy)):
                if path.exists():
                    found = _file_outputs(name, path, arrays, oracle, kh.calls(src))
                    failures.setdefault(src, []).extend(f"{path.suffix} file: {f}" for f in found)
            model = ours["reference"][name]
            if not isinstance(model, str):
                written[name] = str(Path(tmp, f"{name}.rnnkit.keras"))
                try:
                    rk.io.save_keras(model["model"], written[name])
                except ValueError as e:  # what Keras 3 files cannot say is refused, not written
                    del written[name]
                    if "no Keras 3 equivalent" not in str(e):
                        failures.setdefault(src, []).append(f"save_keras raised {e!r}")
        back = run_tf(kh.load_script(written, {name: kh.calls(progs[name]) for name in written}),
                      arrays, legacy_keras=False) if written else {}
        for name in written:
            found = kh.mismatches(name, {"leaves": ours["reference"][name]["leaves"]}, back)
            failures.setdefault(progs[name], []).extend(f"rnnkit's .keras in Keras 3: {f}"
                                                        for f in found)
        for name, src in progs.items():
            if not failures.get(src):
                failures.pop(src, None)
            _report(failures, name, src, f"inputs {arrays[name + '|X'].shape}", out)


def _file_outputs(name: str, path: Path, arrays: dict, oracle: dict, calls: int) -> list[str]:
    """What differs between the framework's own outputs (at the last of ``calls`` calls) and
    rnnkit's from the file the framework saved, and from that model saved again as an rnnkit
    native file and loaded back."""
    x = torch.from_numpy(arrays[name + "|X"])
    native = path.with_suffix(path.suffix + ".safetensors")
    found = []
    for what in ("", "native "):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Keras 3's mask rule, said once per layer
                model = rk.io.load_keras(path) if not what else rk.io.load(native)
                for _ in range(calls):
                    outs = model(x)
                if not what:
                    rk.io.save_native(native, model)
        except Exception:  # a failure to report: the framework saved and ran this model
            return found + [f"{what}rnnkit could not load it: {traceback.format_exc(limit=-2)}"]
        leaves = [t.detach().numpy() for t in pytree.tree_leaves(outs)]
        found += [what + f for f in kh.mismatches(name, {"leaves": leaves}, oracle)]
    return found


FAMILIES = {"tf1": (tf1_programs, fuzz_tf1), "keras": (keras_programs, fuzz_keras)}


def run(programs: int, seed: int = 0, per_run: int = 50, family: str = "tf1",
        out=sys.stdout, long: bool = False) -> dict[str, list[str]]:
    """Fuzz ``programs`` programs of ``family`` from ``seed`` (one TF process per ``per_run``;
    ``long``: TF1 programs over sequences of 33 to 101 steps); return each failing program's
    source with what differed, printing them as found."""
    draw, fuzz = FAMILIES[family]
    option = {"long": True} if long else {}  # the TF1 family's only
    failures: dict[str, list[str]] = {}
    for done in range(0, programs, per_run):
        progs, arrays = draw(seed * 1_000_003 + done, min(per_run, programs - done), **option)
        fuzz(progs, arrays, failures, out, **option)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-run", type=int, default=50)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="tf1")
    parser.add_argument("--long", action="store_true", help="TF1 programs over 33-101 steps")
    args = parser.parse_args()
    if args.long and args.family != "tf1":
        parser.error("--long is for --family tf1")
    start = time.perf_counter()
    failures = run(args.programs, args.seed, args.per_run, args.family, long=args.long)
    print(f"{args.programs} {args.family} programs (seed {args.seed}) in "
          f"{time.perf_counter() - start:.0f} s: {len(failures)} failing")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
