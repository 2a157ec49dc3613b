#!/usr/bin/env bash
# One GPU round in one call, for a session lent a GPU machine (its torch has CUDA; it has no
# oneDNN wheel, so the CPU paths are not in play): the GPU tests, then the GPU section of the
# benchmark, each under its own time limit, logs under $OUT (or ./gpu_round).
#
#   bash benchmarks/gpu_round.sh [tests-s] [steps-tests-s] [bench-s] [ab-steps-s]
#
# Defaults 200, 100, 170 and 100 s: together under one 10-minute device call. The fused steps'
# tests compile many Triton kernel variants on a fresh machine, so they run on their own.
set -u
out="${OUT:-gpu_round}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version())"
  "$py" -c "import triton; print('triton', triton.__version__)"
} > "$out/machine.txt" 2>&1
timeout "${1:-200}" "$py" -m pytest -q --maxfail=5 tests/test_gpu.py tests/test_graphs.py \
  tests/test_cudnn_path.py tests/test_io_cudnn.py tests/test_compile.py > "$out/tests.txt" 2>&1
echo "tests: exit $?" >> "$out/tests.txt"
timeout "${2:-100}" "$py" -m pytest -q --maxfail=5 tests/test_steps.py > "$out/steps_tests.txt" 2>&1
echo "steps tests: exit $?" >> "$out/steps_tests.txt"
timeout "${3:-170}" "$py" benchmarks/bench_rnn.py --gpu-only --repeats 5 > "$out/bench.txt" 2>&1
echo "bench: exit $?" >> "$out/bench.txt"
timeout "${4:-100}" "$py" benchmarks/ab_steps.py --repeats 5 > "$out/ab_steps.txt" 2>&1
echo "ab_steps: exit $?" >> "$out/ab_steps.txt"
tail -n 3 "$out/tests.txt" "$out/steps_tests.txt"
cat "$out/bench.txt" "$out/ab_steps.txt"
