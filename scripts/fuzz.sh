#!/usr/bin/env bash
# Builds carve's libFuzzer targets with clang (tests/fuzz/, into build-fuzz/) and runs each for a set time.
#
#   scripts/fuzz.sh [--seconds N] [--no-build] [TARGET...]     (default: 60 s each; targets: all)
#
# Targets: safetensors config ini samples manifest shard (tests/fuzz/<name>.cpp). Each run starts from the seeds in
# tests/fuzz/corpus/<name>/ and the inputs in tests/fuzz/regressions/<name>/ and grows a working corpus in
# build-fuzz/corpus/<name>/ (not committed). Crash, timeout and out-of-memory inputs are copied to
# tests/fuzz/regressions/<name>/, where the GoogleTest FuzzRegressions replays them in the normal build.
# Exit status 1 when any target found something. Needs clang with its libFuzzer and sanitizer runtimes (Debian:
# clang and libclang-rt-14-dev) besides the build dependencies of carve itself.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-fuzz
seconds=60
do_build=1
targets=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=(safetensors config ini samples manifest shard)

if [[ $do_build == 1 ]]; then
  if [[ ! -f $build/build.ninja ]]; then
    CC=${CC:-clang} CXX=${CXX:-clang++} cmake -S "$root/tests/fuzz" -B "$build" -G Ninja >/dev/null
  fi
  # At most two jobs: the machine is shared.
  cmake --build "$build" -j2 --target "${targets[@]/#/fuzz_}"
fi

# Leaks are checked per input; symbolized reports.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

rows=()
status=0
for name in "${targets[@]}"; do
  bin=$build/fuzz_$name
  work=$build/corpus/$name
  artifacts=$build/artifacts/$name
  log=$build/logs/$name.log
  seeds=$root/tests/fuzz/corpus/$name
  regressions=$root/tests/fuzz/regressions/$name
  mkdir -p "$work" "$artifacts" "$(dirname "$log")" "$seeds"
  rm -f "$artifacts"/*
  inputs=("$work" "$seeds")
  [[ -d $regressions ]] && inputs+=("$regressions")
  echo "== $name: ${seconds}s ($log)"
  set +e
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "${inputs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  stat() { grep -m1 "^stat::$1:" "$log" | awk '{print $2}'; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  new=$(stat new_units_added)
  final=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+).*/cov \1, ft \2/')
  found=$(find "$artifacts" -type f | wc -l)
  if [[ $found -gt 0 ]]; then
    mkdir -p "$regressions"
    cp "$artifacts"/* "$regressions"/
    status=1
  elif [[ $rc -ne 0 ]]; then
    echo "   $name exited with $rc and left no input; see $log" >&2
    found="rc $rc"
    status=1
  fi
  rows+=("$name|${execs:-?}|${rate:-?}|${new:-?}|${final:-?}|$found")
done

echo
printf '%-12s %12s %8s %6s %-22s %s\n' target executions exec/s new coverage crashes
for row in "${rows[@]}"; do
  IFS='|' read -r t e r n c f <<<"$row"
  printf '%-12s %12s %8s %6s %-22s %s\n' "$t" "$e" "$r" "$n" "$c" "$f"
done
exit $status
