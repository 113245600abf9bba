#!/usr/bin/env bash
# One device call's worth of checks for the SSD training kernels (issue 7) on a GPU host; docs/gpu-results.md records
# what it gave. Results go to OUT (default $OUT); carry .deps (scripts/gpu_host_build.sh bundle).
#
#   scripts/gpu_kernels_check.sh [OUT]
#   TESTS=0: build without tests and skip them and memcheck (a speed-only call)
#   SHAPES=hovle,long: the shapes of `carve bench kernels` (default: all four of the issue)
#   BASE_SRC=DIR: also build the source tree in DIR (e.g. `git archive main | tar -x -C .scratch/base`, carried)
#     without tests, in parallel, and bench this tree, DIR, this tree again: a before/after in one call
#   TRITON=1: also run mamba_ssm's Triton kernel first (.third_party/mamba and .third_party/einops, carried)
#   RACECHECK=FILTER: also compute-sanitizer's racecheck (shared memory hazards) on the tests FILTER matches
#   NCU=1: per-kernel times of one forward and backward at NCU_SHAPE (default hovle; ncu, one launch at a time)
#   NCU_KERNEL='REGEX[@SKIP][;REGEX[@SKIP]...]': ncu's speed-of-light, memory, occupancy, warp-stall and source
#     sections for the first launch matching each REGEX at NCU_SHAPE after SKIP matching ones (ncu matches the function
#     name without template arguments: chunk_pair_tc_kernel@2 is the backward's dx, after the forward alone's and the
#     training forward's output), and its per-line SASS table (where the stalls are)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-${OUT:?give an output folder or set OUT}}
shapes=${SHAPES:-hovle,phi2,mamba2-2.7b,long}
# shellcheck source=scripts/gpu_check_common.sh
source "$ROOT/scripts/gpu_check_common.sh"

gpu_check_build

gpu_check_tests 'SsdKernel.*:ConvKernel.*:GatedNormKernel.*:*Mixer*:*Student*' \
  'SsdKernel.*:ConvKernel.*:GatedNormKernel.*'

triton=()
if [ "${TRITON:-0}" = 1 ]; then
  step "triton"
  PYTHONPATH="$ROOT/.third_party/mamba:$ROOT/.third_party/einops" python3 "$ROOT/scripts/bench_triton_ssd.py" \
    --shapes "$shapes" --json "$out/triton.json" > "$out/triton.txt" 2>&1 && triton=(--triton-json "$out/triton.json")
  tail -8 "$out/triton.txt" | tee -a "$summary"
fi

bench() {  # BINARY_DIR NAME
  step "bench kernels $2"
  "$1/carve" bench kernels --shapes "$shapes" --reference false "${triton[@]}" --json "$out/bench_$2.json" \
    > "$out/bench_$2.txt" 2>&1
  echo "bench rc=$?" | tee -a "$summary"
  grep -v '^ *$' "$out/bench_$2.txt" | tail -14 | tee -a "$summary"
}
bench "$build" this
if [ -n "${BASE_SRC:-}" ]; then
  bench "$base_build" base
  bench "$build" this_again
fi

ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
ncu_shape=${NCU_SHAPE:-hovle}
one_run=(bench kernels --shapes "$ncu_shape" --reference false --warmup 0 --repeat 1)
if [ "${NCU:-0}" = 1 ]; then
  step "ncu kernel times, $ncu_shape"
  timeout 200 "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv "$build/carve" "${one_run[@]}" \
    > "$out/ncu_times.csv" 2> "$out/ncu_times.err"
  echo "ncu rc=$?" | tee -a "$summary"
  python3 "$ROOT/scripts/ncu_kernel_times.py" "$out/ncu_times.csv" --last 60 > "$out/ncu_times.txt" 2>&1
  tail -30 "$out/ncu_times.txt" | tee -a "$summary"
fi

if [ -n "${NCU_KERNEL:-}" ]; then
  # Several regexes separated by ';': one detail report each (ncu_detail_1.txt, ...).
  IFS=';' read -ra ncu_kernels <<< "$NCU_KERNEL"
  i=0
  for entry in "${ncu_kernels[@]}"; do
    i=$((i + 1))
    regex=${entry%@*}
    skip=0
    [ "$regex" != "$entry" ] && skip=${entry##*@}
    step "ncu detail $i: $regex, after $skip"
    timeout 240 "$ncu" --clock-control none -k "regex:$regex" --launch-skip "$skip" --launch-count 1 \
      --import-source yes --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
      --section LaunchStats --section WarpStateStats --section SourceCounters -f -o "/tmp/ncu_detail_$i" \
      "$build/carve" "${one_run[@]}" \
      > "$out/ncu_detail_$i.log" 2>&1
    echo "ncu detail rc=$?" | tee -a "$summary"
    "$ncu" -i "/tmp/ncu_detail_$i.ncu-rep" --print-details all > "$out/ncu_detail_$i.txt" 2>&1
    # Per SASS line: where the warps stall (the columns of the source page).
    "$ncu" -i "/tmp/ncu_detail_$i.ncu-rep" --page source --csv --print-source sass > "$out/ncu_source_sass_$i.csv" 2>&1
    "$ncu" -i "/tmp/ncu_detail_$i.ncu-rep" --page source --csv --print-source cuda > "$out/ncu_source_cuda_$i.csv" 2>&1
    echo "source pages: $(wc -l < "$out/ncu_source_sass_$i.csv") sass lines, $(wc -l < "$out/ncu_source_cuda_$i.csv") cuda lines" \
      | tee -a "$summary"
  done
fi

# The logs, the ncu tables and the benches' files come back in logs.tgz (scripts/gpu_check_common.sh).
step "done"
