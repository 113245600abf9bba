# Sourced by the gpu_*_check.sh scripts (one device call's worth of checks each): the output folder, the summary,
# and the build of this tree, with the tree in BASE_SRC (when set) built beside it without tests for a
# before/after in the same call. Expects ROOT (the checkout) and out (the output folder) to be set.
#   gpu_check_build [CMAKE ARGS...]: builds this tree into $build (extra CMake arguments for it; without tests when
#     TESTS=0), waits for the base build, sets up the run-time library path and prints the GPU.
#   gpu_check_tests FILTER MEMCHECK_FILTER: the tests matching FILTER (failures into the summary), then
#     compute-sanitizer memcheck on those matching MEMCHECK_FILTER; nothing when TESTS=0 (a speed-only call).

build=${BUILD_DIR:-/tmp/bg}
base_build=/tmp/carve-base
# A device call returns at most 8 files from its output folder: one cut off by its time limit, before its logs were
# packed, returned 8 bench files and not the summary or the test log (docs/gpu-results.md, eleventh session, call 2).
# So every log and raw result goes to a work folder, and each step publishes the summary and an archive of that
# folder (logs.tgz) to the output folder: at most three files there, plus what a script publishes by name.
results=$out
out=$(mktemp -d /tmp/carve-check.XXXXXX)
mkdir -p "$results"
summary="$out/summary.txt"

# publish [FILE...]: the summary, the archive of the work folder, and these files of it, into the output folder.
publish() {
  local f
  for f in "$@"; do [ -f "$out/$f" ] && cp -f "$out/$f" "$results/"; done
  [ -f "$summary" ] && cp -f "$summary" "$results/summary.txt"
  tar czf "$results/logs.tgz.part" -C "$out" --exclude=./summary.txt . 2>/dev/null &&
    mv -f "$results/logs.tgz.part" "$results/logs.tgz"
}

step() {
  echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$summary"
  publish
}

gpu_check_build() {
  step build
  if [ -n "${BASE_SRC:-}" ]; then
    [ -f "$BASE_SRC/CMakeLists.txt" ] || { echo "BASE_SRC=$BASE_SRC: no CMakeLists.txt there" >&2; exit 2; }
    (CARVE_DEPS="$ROOT/.deps" CARVE_CMAKE_ARGS=-DCARVE_TESTS=OFF "$BASE_SRC/scripts/gpu_host_build.sh" build \
       "$base_build" > "$out/build_base.log" 2>&1; echo "base build rc=$?" >> "$out/build_base.log") &
  fi
  local tests=
  [ "${TESTS:-1}" = 0 ] && tests=-DCARVE_TESTS=OFF
  CARVE_CMAKE_ARGS="${CARVE_CMAKE_ARGS:-} $tests $*" "$ROOT/scripts/gpu_host_build.sh" build "$build" > "$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; exit 1; }
  wait
  [ -n "${BASE_SRC:-}" ] && tail -1 "$out/build_base.log" | tee -a "$summary"
  # shellcheck source=/dev/null
  source "$ROOT/scripts/gpu_host_env.sh"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$summary"
}

gpu_check_tests() {
  [ "${TESTS:-1}" = 0 ] && return 0
  step "tests $1"
  "$build/tests/carve_tests" --gtest_filter="$1" > "$out/tests.log" 2>&1
  echo "tests rc=$?" | tee -a "$summary"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) \]" "$out/tests.log" | head -40 | tee -a "$summary"
  grep -E -A6 "Failure$" "$out/tests.log" | head -80 | tee -a "$summary"
  step memcheck
  compute-sanitizer --tool memcheck "$build/tests/carve_tests" --gtest_filter="$2" > "$out/memcheck.log" 2>&1
  echo "memcheck rc=$?" | tee -a "$summary"
  grep -E "ERROR SUMMARY" "$out/memcheck.log" | tee -a "$summary"
  # RACECHECK=FILTER: shared memory hazards (compute-sanitizer racecheck) on the tests FILTER matches (slow: a few
  # small cases, not the whole suite).
  if [ -n "${RACECHECK:-}" ]; then
    step "racecheck $RACECHECK"
    compute-sanitizer --tool racecheck --racecheck-report hazard "$build/tests/carve_tests" \
      --gtest_filter="$RACECHECK" > "$out/racecheck.log" 2>&1
    echo "racecheck rc=$?" | tee -a "$summary"
    grep -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard" "$out/racecheck.log" | head -20 | tee -a "$summary"
  fi
}
