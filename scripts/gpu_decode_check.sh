#!/usr/bin/env bash
# One device call's worth of checks for the decode path on a GPU host (docs/gpu-results.md records what it gave):
# build, the decode/kernel tests, compute-sanitizer memcheck on the inference kernels, then `carve bench decode`
# (and, with HF=1, transformers' eager decode beside it). Results go to OUT (default $OUT).
#
#   scripts/gpu_decode_check.sh [OUT]        # carry .deps (scripts/gpu_host_build.sh bundle)
#   QUICK=1: batch-1 latency at 1K and 103K only (no largest-batch search, no plot)
#   TESTS=0: build without tests and skip them and memcheck (a speed-only call: with BASE_SRC and VARIANTS, a call
#     that runs the tests can pass the 600 s a device call is given)
#   BASE_SRC=DIR: also build the source tree in DIR (e.g. `git archive main | tar -x -C .scratch/base`, carried)
#     without tests, in parallel, and run the quick bench this tree, DIR, this tree with CARVE_DEPENDENT_LAUNCH=0,
#     this tree again: a before/after in one call, and what the overlapped launches alone give
#     (SERIAL=0 leaves out the run with CARVE_DEPENDENT_LAUNCH=0 when the call is short of time)
#   VARIANTS='VAR=VALUE ...': after the quick or full bench, the quick bench once more with each setting in turn,
#     then once more as it is (e.g. VARIANTS='CARVE_DEPENDENT_LAUNCH=0'; branch gemv-persistent-grid used
#     CARVE_GEMV_BLOCKS_PER_SM=0, 2 and 6)
#   NCU=1: per-kernel times of one decode step (ncu, 4 layers, 1K, launched one by one) for teacher and linear
#   NCU_DETAIL=1: ncu's speed-of-light, memory, occupancy and warp-stall sections for the products of the linear
#     student's last decode step (2 layers, launched one by one): why a product reads below the copy bandwidth
# Logs and the quick benches' raw files come back in logs.tgz (scripts/gpu_check_common.sh says why); the full run's
# JSON, text and plot come back as they are.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${OUT:?give an output folder or set OUT}}
# shellcheck source=scripts/gpu_check_common.sh
source "$ROOT/scripts/gpu_check_common.sh"

gpu_check_build

gpu_check_tests \
  '*Decode*:*KvCache*:InferenceKernels*:MambaStep*:Ragged*:*Teacher*:*Student*:*E2e*' \
  'InferenceKernels*:MambaStep*:DecodeAttention*:DecodeGraph.Students*:DecodeGraph.Ragged*'

quick_bench() {  # BINARY_DIR NAME [VAR=VALUE...]: the variables are set for the bench
  step "bench decode (quick) $2 ${*:3}"
  env "${@:3}" "$1/carve" bench decode --contexts 1024,103000 --batch-contexts '' --prompt 0 \
    --json "$out/bench_$2.json" > "$out/bench_$2.txt" 2>&1
  echo "bench rc=$?" | tee -a "$summary"
  grep -E "^(teacher|hybrid|linear)|^ +[0-9]" "$out/bench_$2.txt" | tee -a "$summary"
}

if [ -n "${BASE_SRC:-}" ]; then
  quick_bench "$build" this1
  quick_bench "$base_build" base
  [ "${SERIAL:-1}" = 1 ] && quick_bench "$build" this_serial CARVE_DEPENDENT_LAUNCH=0
  quick_bench "$build" this2
elif [ "${QUICK:-0}" = 1 ]; then
  quick_bench "$build" decode
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
  echo "bench rc=$?" | tee -a "$summary"
  python3 "$ROOT/scripts/plot_decode.py" "$out/bench_decode.json" "$out/decode.png" >> "$summary" 2>&1
  tail -40 "$out/bench_decode.txt"
fi

if [ -n "${VARIANTS:-}" ]; then
  for variant in $VARIANTS; do
    quick_bench "$build" "this_${variant//[^A-Za-z0-9]/_}" "$variant"
  done
  quick_bench "$build" this_again
fi

ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
if [ "${NCU:-0}" = 1 ]; then
  for model in teacher linear; do
    step "ncu $model"
    timeout 150 "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv "$build/carve" bench decode \
      --models "$model" --layers 4 --contexts 1024 --steps 1 --warmup 2 --prompt 0 --batch-contexts '' \
      --cuda-graphs false > "$out/ncu_$model.csv" 2> "$out/ncu_$model.err"
    echo "ncu rc=$?" | tee -a "$summary"
    python3 "$ROOT/scripts/ncu_kernel_times.py" "$out/ncu_$model.csv" --last 40 > "$out/ncu_$model.txt" 2>&1
  done
fi

if [ "${NCU_DETAIL:-0}" = 1 ]; then
  step "ncu detail linear"
  # 2 layers: 9 products a step (4 a layer and the LM head); 3 steps (2 warm-up), so the last step's are 19-27.
  timeout 200 "$ncu" --clock-control none -k regex:gemv_kernel --launch-skip 18 --launch-count 9 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    --section WarpStateStats "$build/carve" bench decode --models linear --layers 2 --contexts 1024 --steps 1 \
    --warmup 2 --prompt 0 --batch-contexts '' --cuda-graphs false > "$out/ncu_detail_linear.txt" 2>&1
  echo "ncu detail rc=$?" | tee -a "$summary"
fi

publish bench_decode.json bench_decode.txt decode.png hf_decode.json
step "done"
