#!/usr/bin/env bash
# One GPU round in one call, for a session lent a GPU machine (its torch has CUDA; it has no
# oneDNN wheel, so the CPU paths are not in play): the GPU tests, then the GPU section of the
# benchmark, each under its own time limit, logs under $OUT (or ./gpu_round).
#
#   bash benchmarks/gpu_round.sh [tests-s] [steps-tests-s] [bench-s] [ab-steps-s]
#
# Defaults 200, 100, 170 and 100 s: together under one 10-minute device call. The fused steps'
# tests compile many Triton kernel variants on a fresh machine, so they run on their own, in
# shards (a failing shard's log: steps_tests_K.txt).
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
# The fused steps' tests in 4 processes at once: on a fresh machine their time is Triton compiling
# kernel variants one after another (196 specializations in tests/test_steps_compile.py alone).
"$py" -m pytest -q --collect-only tests/test_steps.py 2>/dev/null | grep '::' > "$out/steps_ids.txt"
for k in 0 1 2 3; do
  awk -v k="$k" 'NR % 4 == k' "$out/steps_ids.txt" > "$out/steps_ids_$k.txt"
  [ -s "$out/steps_ids_$k.txt" ] || { echo "shard $k: no tests collected" > "$out/steps_tests_$k.txt"; continue; }
  timeout "${2:-100}" "$py" -m pytest -q --maxfail=5 $(cat "$out/steps_ids_$k.txt") \
    > "$out/steps_tests_$k.txt" 2>&1 &
done
wait
for k in 0 1 2 3; do
  tail -n 1 "$out/steps_tests_$k.txt"
done > "$out/steps_tests.txt"
echo "steps tests: $(wc -l < "$out/steps_ids.txt") tests in 4 shards" >> "$out/steps_tests.txt"
timeout "${3:-170}" "$py" benchmarks/bench_rnn.py --gpu-only --repeats 5 > "$out/bench.txt" 2>&1
echo "bench: exit $?" >> "$out/bench.txt"
timeout "${4:-100}" "$py" benchmarks/ab_steps.py --repeats 5 > "$out/ab_steps.txt" 2>&1
echo "ab_steps: exit $?" >> "$out/ab_steps.txt"
tail -n 3 "$out/tests.txt" "$out/steps_tests.txt"
cat "$out/bench.txt" "$out/ab_steps.txt"
