#!/usr/bin/env bash
# One GPU round in one call, for a session lent a GPU machine (its torch has CUDA; it has no
# oneDNN wheel, so the CPU paths are not in play): the GPU tests, then the GPU section of the
# benchmark, each under its own time limit, logs under $OUT (or ./gpu_round).
#
#   bash benchmarks/gpu_round.sh [tests-s] [steps-tests-s] [bench-s] [ab-steps-s] [profile-s]
#
# Defaults 200, 150, 170, 100 and 40 s; the two test groups run at the same time, so the whole
# round takes at most 510 s, inside one 10-minute device call (about 150 s in session 12). The fused steps' tests compile many
# Triton kernel variants on a fresh machine, one after another in a process, so they run in 8
# processes at once. $OUT receives six files (the device tool brings back at most eight):
# machine.txt, tests.txt, steps_tests.txt (every shard's log, one after another), bench.txt,
# ab_steps.txt and profile.txt (where a call's host and GPU time go at H64,
# benchmarks/profile_gpu.py --host); the shards' working files stay in a temporary folder.
set -u
out="${OUT:-gpu_round}"
mkdir -p "$out"
work="$(mktemp -d)"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
shards=8
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version())"
  "$py" -c "import triton; print('triton', triton.__version__)"
  nproc
} > "$out/machine.txt" 2>&1
start=$(date +%s)
( timeout "${1:-200}" "$py" -m pytest -q --maxfail=5 tests/test_gpu.py tests/test_graphs.py \
    tests/test_cudnn_path.py tests/test_io_cudnn.py tests/test_compile.py > "$out/tests.txt" 2>&1
  echo "tests: exit $? after $(( $(date +%s) - start )) s" >> "$out/tests.txt" ) &
"$py" -m pytest -q --collect-only tests/test_steps.py 2>/dev/null | grep '::' > "$work/ids.txt"
for k in $(seq 0 $((shards - 1))); do
  awk -v k="$k" -v n="$shards" 'NR % n == k' "$work/ids.txt" > "$work/ids_$k.txt"
  [ -s "$work/ids_$k.txt" ] || { echo "no tests collected" > "$work/log_$k.txt"; continue; }
  timeout "${2:-150}" "$py" -m pytest -q --maxfail=5 $(cat "$work/ids_$k.txt") \
    > "$work/log_$k.txt" 2>&1 &
done
wait
{
  echo "steps tests: $(wc -l < "$work/ids.txt") tests in $shards shards, done after" \
       "$(( $(date +%s) - start )) s; each shard's last line:"
  for k in $(seq 0 $((shards - 1))); do echo "shard $k: $(tail -n 1 "$work/log_$k.txt")"; done
  for k in $(seq 0 $((shards - 1))); do echo; echo "=== shard $k"; cat "$work/log_$k.txt"; done
} > "$out/steps_tests.txt"
timeout "${3:-170}" "$py" benchmarks/bench_rnn.py --gpu-only --repeats 5 > "$out/bench.txt" 2>&1
echo "bench: exit $?" >> "$out/bench.txt"
timeout "${4:-100}" "$py" benchmarks/ab_steps.py --repeats 5 --fused-steps > "$out/ab_steps.txt" 2>&1
echo "ab_steps: exit $?" >> "$out/ab_steps.txt"
timeout "${5:-40}" "$py" benchmarks/profile_gpu.py --host --top 4 --cases lstm-h64-fwd lstm-h64 \
  clip-h64 tf1gru-h64 2>&1 | grep -v USDT > "$out/profile.txt"
rm -rf "$work"
tail -n 3 "$out/tests.txt"
head -n 9 "$out/steps_tests.txt"
cat "$out/bench.txt" "$out/ab_steps.txt"
grep -v "^    py\|^    host" "$out/profile.txt"
