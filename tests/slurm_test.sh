#!/usr/bin/env bash
# The SLURM scripts on a real SLURM (slurmctld + slurmd; scripts/slurm_localhost.sh starts a one-node one here):
#  1. slurm/submit_all.sh submits the built-in example with tiny sizes as dependent jobs, synth -> precompute (a job
#     array of 2) -> stage 1 (2 layer groups) -> stage 2 -> stage 3 (srun or mpirun, as slurm/common.sh picks); every job must end
#     COMPLETED with its outputs, and every carve job must report an MPI world of SLURM_NTASKS ranks.
#  2. Preemption: the same stage 3 again (same start, same settings; launched with mpirun this time) gets SLURM's
#     warning signal mid-stage (scancel --signal=USR1 --batch, as --signal=B:USR1@N does before the time limit); it
#     must checkpoint, exit 75, requeue itself, resume from the checkpoint and export a student byte-identical to
#     the uninterrupted stage 3 of step 1.
# Run by ctest (tests/CMakeLists.txt): slurm_test.sh CARVE SOURCE WORK. Exits 77 (ctest: skipped) when sbatch is
# not installed, and fails when it is but no controller answers.
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 CARVE SOURCE_DIR WORK_DIR" >&2; exit 2; }
CARVE=$(realpath -- "$1")
SOURCE=$(realpath -- "$2")
WORK=$(realpath -m -- "$3")
TIMEOUT=${CARVE_SLURM_TEST_TIMEOUT:-600}   # seconds for the whole test
STEPS3=${CARVE_SLURM_TEST_STEPS:-150}      # stage-3 steps: long enough (10-20 s on 2 cores) to be stopped mid-way
START=$(date +%s)

say() { echo "[slurm_test $(( $(date +%s) - START )) s] $*"; }
JOBS=()   # every job this test submitted, cancelled on the way out if still queued or running
dump() {
  local id f
  for id in "${JOBS[@]}"; do
    echo "---- scontrol show job $id ----"
    scontrol show job "$id" 2>&1 || true
  done
  for f in "$WORK"/run/slurm/*.out "$WORK"/preempt-*.out; do
    [ -f "$f" ] || continue
    echo "---- $f ----"
    grep -v '\[config\]' "$f" || true
  done
  f=$(scontrol show config 2>/dev/null | awk '$1 == "SlurmctldLogFile" {print $3}') || true
  if [ -n "$f" ] && [ -f "$f" ]; then echo "---- last 30 lines of $f ----"; tail -n 30 "$f"; fi
}
fail() { echo "slurm_test: FAILED: $*" >&2; dump >&2; exit 1; }
cleanup() {
  local id
  for id in "${JOBS[@]}"; do
    case "$(job_field "$id" JobState)" in PENDING|RUNNING|REQUEUED|SUSPENDED|CONFIGURING|COMPLETING)
      scancel "$id" 2>/dev/null || true ;; esac
  done
}
trap cleanup EXIT

if ! command -v sbatch >/dev/null; then
  echo "slurm_test: SKIPPED: sbatch is not installed (scripts/slurm_localhost.sh installs and starts a local SLURM)"
  exit 77
fi
for b in scontrol sinfo scancel srun; do
  command -v "$b" >/dev/null || fail "sbatch is installed but $b is not (install slurm-client)"
done
scontrol ping 2>/dev/null | grep -q "is UP" || fail "sbatch is installed but no slurmctld answers 'scontrol ping':" \
  "start the local SLURM with scripts/slurm_localhost.sh (scripts/setup.sh does)"
sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)' ||
  fail "no usable node (sinfo: $(sinfo -h -N -o '%N %T' 2>&1 | tr '\n' ' ')): scripts/slurm_localhost.sh --status"
[ -x "$CARVE" ] || fail "CARVE=$CARVE is not an executable"

# job_field ID NAME: one field of `scontrol show job` (kept an hour after the job ends: MinJobAge in slurm.conf).
job_field() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }

# wait_done ID: until the job has COMPLETED; any other end (or the test's deadline) fails the test.
wait_done() {
  local id=$1 state reason
  while :; do
    state=$(job_field "$id" JobState)
    reason=$(job_field "$id" Reason)
    case "$state" in
      COMPLETED) return 0 ;;
      FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)
        fail "job $id ($(job_field "$id" JobName)) ended $state (exit code $(job_field "$id" ExitCode))" ;;
      "") fail "job $id: scontrol show job knows nothing of it" ;;
    esac
    [ "$reason" != DependencyNeverSatisfied ] || fail "job $id waits on a dependency that failed"
    [ $(( $(date +%s) - START )) -lt "$TIMEOUT" ] || fail "job $id still $state after the test's ${TIMEOUT} s" \
      "(CARVE_SLURM_TEST_TIMEOUT)"
    sleep 1
  done
}

# expect FILE REGEX WHAT: the job output FILE must have a line matching REGEX.
expect() { grep -qE -- "$2" "$1" || fail "$1: no line matches '$2' ($3)"; }

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

# ---- 1. the built-in example as dependent jobs ------------------------------------------------------------------
say "submitting the built-in example (slurm/submit_all.sh)"
export CARVE CARVE_ROOT=$SOURCE   # the jobs find slurm/common.sh there (they run in $WORK)
# CARVE_* variables of the caller's environment would change what is tested; only the launcher's are kept.
unset CARVE_TEACHER CARVE_SAMPLES CARVE_CACHE CARVE_CONFIG CARVE_LAYOUT CARVE_INIT CARVE_ARGS CARVE_SBATCH_ARGS \
  CARVE_NP CARVE_STAGE
submitted=$(CARVE_RUN=$WORK/run CARVE_NTASKS=2 CARVE_LAYER_GROUPS=2 CARVE_SYNTH_TRAIN=300 CARVE_SYNTH_EVAL=20 \
  CARVE_PRECOMPUTE_ARRAY=2 CARVE_PRECOMPUTE_ARGS="--batch-tokens 512 --shard-tokens 4096 --threads 1" \
  CARVE_DISTILL_ARGS="--log-every 10 --threads 1" CARVE_STAGE1_ARGS="--steps 20" CARVE_STAGE2_ARGS="--steps 20" \
  CARVE_STAGE3_ARGS="--steps $STEPS3" "$SOURCE/slurm/submit_all.sh") || fail "slurm/submit_all.sh failed"
echo "$submitted"
declare -A ID
while read -r name id; do
  [[ "$id" =~ ^[0-9]+$ ]] || continue
  ID[$name]=$id
  JOBS+=("$id")
done <<< "$submitted"
for name in synth precompute stage1 stage2 stage3; do
  [ -n "${ID[$name]:-}" ] || fail "submit_all.sh printed no '$name <job id>' line"
done

# ---- 2. the same stage 3, stopped by SLURM's warning signal and requeued ---------------------------------------
PRE=$WORK/preempt
id=$(CARVE_RUN=$PRE CARVE_INIT=$WORK/run/stage2/student CARVE_TEACHER=$SOURCE/examples/synth-vqa/teacher \
  CARVE_CACHE=$WORK/run/cache CARVE_CONFIG=$SOURCE/configs/demo.ini CARVE_LAYOUT=AMMM CARVE_LAUNCHER=mpirun \
  CARVE_ARGS="--log-every 10 --threads 1 --steps $STEPS3" \
  sbatch --parsable --ntasks=2 --job-name=carve-preempt --output="$WORK/preempt-%j.out" \
    --dependency="afterok:${ID[stage2]}" --kill-on-invalid-dep=yes "$SOURCE/slurm/stage3.sbatch") ||
  fail "sbatch slurm/stage3.sbatch (the preempted run) failed"
id=${id%%;*}
JOBS+=("$id")
ID[preempt]=$id
say "submitted the preempted stage 3 as job $id"

for name in synth precompute stage1 stage2; do
  wait_done "${ID[$name]}"
  say "$name (job ${ID[$name]}) COMPLETED"
done

# Mid-stage: once the preempted job's ranks report step 10 (their stop handler is installed by then; --log-every 10).
OUT=$WORK/preempt-$id.out
while :; do
  [ "$(job_field "$id" JobState)" != COMPLETED ] || fail "the preempted job finished before it could be signalled" \
    "(raise CARVE_SLURM_TEST_STEPS)"
  if [ -f "$OUT" ]; then
    step=$(grep -oE "step [0-9]+/$STEPS3 " "$OUT" | tail -n1 | grep -oE '[0-9]+' | head -n1) || true
    [ "${step:-0}" -lt 10 ] || break   # a few steps in, so that the stop is mid-stage, not at its start
  fi
  case "$(job_field "$id" JobState)" in FAILED|CANCELLED|TIMEOUT|NODE_FAIL) wait_done "$id" ;; esac
  [ $(( $(date +%s) - START )) -lt "$TIMEOUT" ] || fail "job $id never reported a training step"
  sleep 0.5
done
say "preempt job $id is training: scancel --signal=USR1 --batch $id"
scancel --signal=USR1 --batch "$id" || fail "scancel --signal=USR1 --batch $id failed"
grep -q "student written" "$OUT" && fail "the preempted job finished before the signal (raise CARVE_SLURM_TEST_STEPS)"

wait_done "${ID[stage3]}"
say "stage3 (job ${ID[stage3]}) COMPLETED"
wait_done "$id"
say "preempt (job $id) COMPLETED after $(job_field "$id" Restarts) restart(s)"

# ---- checks -----------------------------------------------------------------------------------------------------
R=$WORK/run
for f in data/train.h5 cache/manifest.json stage1/student/model.safetensors stage2/student/model.safetensors \
         stage3/student/model.safetensors stage3/student/config.json; do
  [ -s "$R/$f" ] || fail "$R/$f is missing or empty"
done
outputs=("$R/slurm/carve-precompute-${ID[precompute]}_0.out" "$R/slurm/carve-precompute-${ID[precompute]}_1.out")
for name in stage1 stage2 stage3; do outputs+=("$R/slurm/carve-$name-${ID[$name]}.out"); done
for out in "${outputs[@]}"; do
  expect "$out" "world size 2 = SLURM_NTASKS 2" "MPI's world checked against the job's tasks"
  expect "$out" "\] done$" "the job script's end"
done
# The precompute ran as a job array of 2: each task computed its part, the one that finished last the manifest.
for part in 0 1; do
  expect "$R/slurm/carve-precompute-${ID[precompute]}_$part.out" "rank done \(part $part/2\)" "array task $part's part"
done
cat "${outputs[@]:0:2}" | grep -qE "wrote .*manifest.json" || fail "no precompute array task wrote the manifest"
expect "$R/slurm/carve-stage1-${ID[stage1]}.out" "on 2 processes = 2 layer groups x 1 replicas" "the stage-1 grid"
grep -q "stopped at step" "$R/slurm/carve-stage3-${ID[stage3]}.out" && fail "the reference stage 3 was interrupted"

expect "$OUT" "got SIGUSR1" "the batch shell got the warning signal"
expect "$OUT" "stopped at step [0-9]+ of $STEPS3 on a signal" "every rank stopped with a checkpoint"
expect "$OUT" "carve exited with status 75" "carve's exit status on a stop"
expect "$OUT" "requeueing job $id" "the job requeued itself"
expect "$OUT" "run 2 \(restarts so far: 1\)" "the requeued job ran again"
expect "$OUT" "world size 2 = SLURM_NTASKS 2" "MPI's world checked against the job's tasks"
stopped=$(grep -oE "stopped at step [0-9]+ of" "$OUT" | head -n1 | grep -oE '[0-9]+')
expect "$OUT" "resuming from .*step_0*$stopped at step $stopped of $STEPS3" "the rerun resumed from the checkpoint"
[ "$(job_field "$id" Restarts)" = 1 ] || fail "job $id restarted $(job_field "$id" Restarts) times, expected 1"

cmp "$R/stage3/student/model.safetensors" "$PRE/stage3/student/model.safetensors" ||
  fail "the stage-3 student stopped at step $stopped and resumed differs from the uninterrupted one"
say "PASSED: the example's jobs completed; stage 3 stopped at step $stopped of $STEPS3 by SIGUSR1, requeued," \
  "resumed and exported a student byte-identical to the uninterrupted run"
