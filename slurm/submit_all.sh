#!/usr/bin/env bash
# Submits the whole distillation as dependent SLURM jobs: [synth ->] precompute -> stage 1 -> stage 2 -> stage 3,
# each starting only when the one before it completed (--dependency=afterok), and a failure cancelling the ones after
# it (--kill-on-invalid-dep=yes). Jobs that stop on SLURM's warning requeue themselves and resume (slurm/*.sbatch).
#
#   slurm/submit_all.sh                       the built-in example: examples/synth-vqa/teacher, configs/demo.ini,
#                                             samples written by `carve synth` into $CARVE_RUN/data
#   CARVE_TEACHER=DIR CARVE_SAMPLES=train.h5 CARVE_LAYOUT=AMMMAMMM CARVE_RUN=runs/hybrid CARVE_NTASKS=16 \
#     CARVE_SBATCH_ARGS="--partition gpu --time 12:00:00 --gpus-per-task 1" slurm/submit_all.sh
#
# Prints one line per job, "<name> <job id>" (also written to $CARVE_RUN/slurm/jobs.txt); each job's output is
# $CARVE_RUN/slurm/<job name>-<job id>.out. Submitting again is safe: a complete cache or stage is not redone, an
# unfinished one resumes.
#
# Environment:
#   CARVE_RUN             run folder (default runs/slurm-example); the students are CARVE_RUN/stage<N>/student
#   CARVE_TEACHER         teacher folder; unset: the built-in example
#   CARVE_SAMPLES         sample file (required with CARVE_TEACHER; the example's is CARVE_RUN/data/train.h5)
#   CARVE_CACHE           activation cache folder (default CARVE_RUN/cache)
#   CARVE_CONFIG          recipe file for every stage (the example: configs/demo.ini; otherwise none)
#   CARVE_LAYOUT          student layout (the example: AMMM; otherwise required unless CARVE_CONFIG gives it)
#   CARVE_LAYER_GROUPS    layer groups of stages 1-2 (must divide CARVE_NTASKS)
#   CARVE_NTASKS          tasks (MPI ranks) of every job but synth (default 2)
#   CARVE_SBATCH_ARGS     more sbatch options for every job, split on spaces (partition, account, time, nodes, ...)
#   CARVE_PRECOMPUTE_ARRAY the precompute as a job array of this many jobs (default 1: one job)
#   CARVE_PRECOMPUTE_ARGS more `carve precompute` options (the example: --batch-tokens 512 --shard-tokens 65536)
#   CARVE_DISTILL_ARGS    more `carve distill` options for stages 1, 2 and 3
#   CARVE_STAGE1_ARGS, CARVE_STAGE2_ARGS, CARVE_STAGE3_ARGS   more options for one stage (after the above)
#   CARVE_SYNTH_TRAIN, CARVE_SYNTH_EVAL   the example's training and evaluation samples (default 8000 and 500)
#   CARVE                 the carve binary (default build/carve); CARVE_LAUNCHER etc.: slurm/common.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ME="submit_all.sh"
die() { echo "$ME: error: $*" >&2; exit 1; }
case "${1:-}" in
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "no arguments expected (got '$1'): parameters come from the environment (--help lists them)" ;;
esac
command -v sbatch >/dev/null || die "sbatch not found: this needs SLURM (scripts/slurm_localhost.sh sets up a" \
  "local one)"

# Absolute paths: the jobs run in the folder sbatch was called from, which need not be this one.
abs() { realpath -m -- "$1"; }

export CARVE_ROOT=$ROOT
CARVE=$(abs "${CARVE:-$ROOT/build/carve}")
export CARVE
[ -x "$CARVE" ] || die "CARVE=$CARVE is not an executable carve binary (build it: scripts/setup.sh)"
RUN=$(abs "${CARVE_RUN:-$ROOT/runs/slurm-example}")
NTASKS=${CARVE_NTASKS:-2}
[[ "$NTASKS" =~ ^[1-9][0-9]*$ ]] || die "CARVE_NTASKS='$NTASKS': expected a positive number of tasks"

EXAMPLE=0
if [ -z "${CARVE_TEACHER:-}" ]; then
  # The built-in example: the shipped teacher, the demo's recipe, synthetic samples.
  EXAMPLE=1
  [ -z "${CARVE_SAMPLES:-}" ] || die "CARVE_SAMPLES is set but CARVE_TEACHER is not: give both, or neither for the" \
    "built-in example"
  TEACHER=$ROOT/examples/synth-vqa/teacher
  SAMPLES=$RUN/data/train.h5
  CONFIG=$(abs "${CARVE_CONFIG:-$ROOT/configs/demo.ini}")
  LAYOUT=${CARVE_LAYOUT:-AMMM}
  PRECOMPUTE_ARGS=${CARVE_PRECOMPUTE_ARGS:---batch-tokens 512 --shard-tokens 65536}
else
  TEACHER=$(abs "$CARVE_TEACHER")
  [ -n "${CARVE_SAMPLES:-}" ] || die "CARVE_SAMPLES is not set: expected the sample file to distil on (HDF5)"
  SAMPLES=$(abs "$CARVE_SAMPLES")
  [ -f "$SAMPLES" ] || die "CARVE_SAMPLES=$SAMPLES: no such file"
  CONFIG=${CARVE_CONFIG:+$(abs "$CARVE_CONFIG")}
  LAYOUT=${CARVE_LAYOUT:-}
  [ -n "$LAYOUT" ] || [ -n "$CONFIG" ] || die "CARVE_LAYOUT is not set: expected the student layout (e.g." \
    "AMMMAMMM), or a CARVE_CONFIG that gives it"
  PRECOMPUTE_ARGS=${CARVE_PRECOMPUTE_ARGS:-}
fi
[ -f "$TEACHER/config.json" ] || die "CARVE_TEACHER=$TEACHER: no config.json there (expected a checkpoint folder)"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "CARVE_CONFIG=$CONFIG: no such file"
CACHE=$(abs "${CARVE_CACHE:-$RUN/cache}")
if [ -n "${CARVE_LAYER_GROUPS:-}" ]; then
  [[ "$CARVE_LAYER_GROUPS" =~ ^[1-9][0-9]*$ ]] && [ $((NTASKS % CARVE_LAYER_GROUPS)) = 0 ] ||
    die "CARVE_LAYER_GROUPS=$CARVE_LAYER_GROUPS: expected a divisor of CARVE_NTASKS=$NTASKS"
fi

LOGS=$RUN/slurm
mkdir -p "$LOGS"   # sbatch does not create the folder of --output
read -r -a SBATCH_EXTRA <<< "${CARVE_SBATCH_ARGS:-}"
: > "$LOGS/jobs.txt"

# submit NAME DEPENDENCY SCRIPT-OR-WRAP... : one job, its id printed and recorded. Job parameters travel in the
# environment (sbatch's default --export=ALL), which, unlike --export=NAME=value lists, allows commas in values.
LAST=""
submit() {
  local name=$1 after=$2; shift 2
  local dep=()
  [ -z "$after" ] || dep=(--dependency="afterok:$after" --kill-on-invalid-dep=yes)
  local id
  id=$(sbatch --parsable --job-name="carve-$name" --output="$LOGS/%x-%j.out" "${dep[@]}" "${SBATCH_EXTRA[@]}" "$@") ||
    die "sbatch refused the $name job (see its message above)"
  id=${id%%;*}   # --parsable prints "id" or "id;cluster"
  echo "$name $id" | tee -a "$LOGS/jobs.txt"
  LAST=$id
}

# Common job parameters (read by slurm/*.sbatch).
export CARVE_TEACHER=$TEACHER CARVE_CACHE=$CACHE CARVE_RUN=$RUN CARVE_LAYOUT=$LAYOUT CARVE_CONFIG=$CONFIG
export CARVE_SAMPLES=$SAMPLES

if [ "$EXAMPLE" = 1 ] && [ ! -f "$SAMPLES" ]; then
  # The example's samples, one small single-task job (seconds).
  synth=$(printf '%q ' "$CARVE" synth --out "$RUN/data" --train "${CARVE_SYNTH_TRAIN:-8000}" \
    --eval "${CARVE_SYNTH_EVAL:-500}")
  submit synth "" --ntasks=1 --wrap="set -e; $synth"
fi

# The recipe (CARVE_CONFIG) is distill's: precompute has options of its own (CARVE_PRECOMPUTE_ARGS).
# CARVE_PRECOMPUTE_ARRAY=N > 1: the precompute as a job array of N jobs of CARVE_NTASKS tasks each.
ARRAY=${CARVE_PRECOMPUTE_ARRAY:-1}
[[ "$ARRAY" =~ ^[1-9][0-9]*$ ]] || die "CARVE_PRECOMPUTE_ARRAY=$ARRAY: expected a number of array tasks (1: no array)"
array_args=()
[ "$ARRAY" = 1 ] || array_args=(--array="0-$((ARRAY - 1))" --output="$LOGS/%x-%A_%a.out")
CARVE_CONFIG="" CARVE_ARGS=$PRECOMPUTE_ARGS submit precompute "$LAST" --ntasks="$NTASKS" "${array_args[@]}" \
  "$ROOT/slurm/precompute.sbatch"
for stage in 1 2; do
  extra_var=CARVE_STAGE${stage}_ARGS
  CARVE_STAGE=$stage CARVE_ARGS="${CARVE_DISTILL_ARGS:-} ${!extra_var:-}" \
    submit "stage$stage" "$LAST" --ntasks="$NTASKS" "$ROOT/slurm/stage12.sbatch"
done
CARVE_ARGS="${CARVE_DISTILL_ARGS:-} ${CARVE_STAGE3_ARGS:-}" \
  submit stage3 "$LAST" --ntasks="$NTASKS" "$ROOT/slurm/stage3.sbatch"
echo "$ME: submitted; outputs in $LOGS, the student will be $RUN/stage3/student"
