#!/usr/bin/env bash
# One device call's worth of checks for the decode path on a GPU host (docs/gpu-results.md records what it gave):
# build, the decode/kernel tests, compute-sanitizer memcheck on the inference kernels, then `carve bench decode`
# (and, with HF=1, transformers' eager decode beside it). Results go to OUT (default $OUT).
#
#   scripts/gpu_decode_check.sh [OUT]        # carry .deps (scripts/gpu_host_build.sh bundle)
#   QUICK=1: batch-1 latency at 1K and 103K only (no largest-batch search, no plot)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${OUT:?give an output folder or set OUT}}
build=${BUILD_DIR:-/tmp/bg}
mkdir -p "$out"

step() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$out/summary.txt"; }

step build
"$ROOT/scripts/gpu_host_build.sh" build "$build" > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
# shellcheck source=/dev/null
source "$ROOT/scripts/gpu_host_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/summary.txt"

filter='*Decode*:*KvCache*:InferenceKernels*:MambaStep*:Ragged*:*Teacher*:*Student*:*E2e*'
step "tests $filter"
"$build/tests/carve_tests" --gtest_filter="$filter" > "$out/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$out/summary.txt"
grep -E "^\[  (PASSED|FAILED|SKIPPED) \]|Failure" "$out/tests.log" | head -40 | tee -a "$out/summary.txt"

step memcheck
compute-sanitizer --tool memcheck "$build/tests/carve_tests" \
  --gtest_filter='InferenceKernels*:MambaStep*:DecodeAttention*:DecodeGraph.Students*:DecodeGraph.Ragged*' \
  > "$out/memcheck.log" 2>&1
echo "memcheck rc=$?" | tee -a "$out/summary.txt"
grep -E "ERROR SUMMARY" "$out/memcheck.log" | tee -a "$out/summary.txt"

if [ "${QUICK:-0}" = 1 ]; then
  step "bench decode (quick)"
  "$build/carve" bench decode --contexts 1024,103000 --batch-contexts '' --prompt 0 --json "$out/bench_decode.json" \
    > "$out/bench_decode.txt" 2>&1
  echo "bench rc=$?" | tee -a "$out/summary.txt"
else
  hf=()
  if [ "${HF:-0}" = 1 ]; then
    step "transformers decode"
    python3 "$ROOT/scripts/bench_hf_decode.py" --contexts 1024,103000 --steps 5 --json "$out/hf_decode.json" \
      > "$out/hf_decode.txt" 2>&1 && hf=(--hf-json "$out/hf_decode.json")
  fi
  step "bench decode"
  "$build/carve" bench decode --batch-contexts 1024,32768,103000 --steps 16 "${hf[@]}" --json "$out/bench_decode.json" \
    > "$out/bench_decode.txt" 2>&1
  echo "bench rc=$?" | tee -a "$out/summary.txt"
  python3 "$ROOT/scripts/plot_decode.py" "$out/bench_decode.json" "$out/decode.png" >> "$out/summary.txt" 2>&1
fi
tail -40 "$out/bench_decode.txt"
step done
