# shellcheck shell=bash
# Shared by slurm/*.sbatch (sourced, not run): how a carve job starts its MPI ranks inside the allocation, checks
# that MPI's world is the job's tasks, passes SLURM's warning signal on to the ranks and requeues itself when carve
# stopped early with a checkpoint. Bash; the sourcing script has already set -euo pipefail.
#
# Environment read here (all optional):
#   CARVE              the carve binary (default $CARVE_ROOT/build/carve)
#   CARVE_LAUNCHER     auto (default), srun or mpirun. auto: srun when this SLURM has the PMIx plugin
#                      (`srun --mpi=list`), mpirun otherwise. Debian's and most Open MPI builds start under
#                      `srun --mpi=pmix`; `--mpi=pmi2` needs an MPI built with SLURM's PMI2 (Debian's is not).
#   CARVE_SRUN_MPI     srun's --mpi plugin (default pmix)
#   CARVE_MPIRUN       the mpirun to use (default mpirun from PATH); inside an allocation it starts the job's tasks
#   CARVE_LAUNCHER_ARGS  extra words for srun or mpirun (split on spaces)
#   CARVE_NP           ranks to start (default $SLURM_NTASKS; anything else is refused: MPI's world must be the job)
#   CARVE_MAX_REQUEUES requeue at most this many times (default 20), so a job that never progresses cannot loop
#   CARVE_WORLD_WAIT   seconds to wait for carve's world-size line before giving up on checking it early (default 900)

_ME=${CARVE_JOB_KIND:-carve job}
carve_say() { echo "[slurm $_ME $(date +%T)] $*"; }
carve_die() { echo "[slurm $_ME] error: $*" >&2; exit 1; }

# need VAR "what it is": stop with a message naming the variable when it is unset or empty.
need() {
  local name=$1 what=$2
  [ -n "${!name:-}" ] || carve_die "$name is not set: expected $what (pass it in the environment or with" \
    "sbatch --export=ALL,$name=...)"
}

# The job's basics: inside SLURM, a carve binary, a task count; prints what the job is.
carve_job_init() {
  [ -n "${SLURM_JOB_ID:-}" ] || carve_die "SLURM_JOB_ID is not set: submit this script with sbatch, not run it"
  CARVE=${CARVE:-$CARVE_ROOT/build/carve}
  [ -x "$CARVE" ] || carve_die "CARVE=$CARVE is not an executable carve binary (build it: scripts/setup.sh, or" \
    "set CARVE to one)"
  NTASKS=${SLURM_NTASKS:-}
  [[ "$NTASKS" =~ ^[0-9]+$ ]] || carve_die "SLURM_NTASKS='$NTASKS': expected the job's task count (give sbatch" \
    "--ntasks or -n)"
  RESTART=${SLURM_RESTART_COUNT:-0}
  carve_say "job $SLURM_JOB_ID (${SLURM_JOB_NAME:-}) on ${SLURM_JOB_NODELIST:-?}: $NTASKS tasks, run $((RESTART + 1))" \
    "(restarts so far: $RESTART), carve $CARVE"
}

# The launcher's words in LAUNCH, for CARVE_NP (= SLURM_NTASKS) ranks.
_carve_launcher() {
  local np=${CARVE_NP:-$NTASKS} kind=${CARVE_LAUNCHER:-auto} mpi=${CARVE_SRUN_MPI:-pmix}
  [[ "$np" =~ ^[0-9]+$ ]] || carve_die "CARVE_NP='$np': expected a number of ranks"
  # The check that MPI's world is what SLURM started, before anything runs: the launcher is asked for exactly the
  # job's tasks (after the run, carve's own world-size line is checked as well).
  [ "$np" = "$NTASKS" ] || carve_die "CARVE_NP=$np but SLURM started $NTASKS tasks (SLURM_NTASKS): MPI's world" \
    "must be the job's tasks; change sbatch --ntasks instead"
  if [ "$kind" = auto ]; then
    if srun --mpi=list 2>&1 | grep -qw "$mpi"; then kind=srun; else kind=mpirun; fi
  fi
  local extra=()
  read -r -a extra <<< "${CARVE_LAUNCHER_ARGS:-}"
  case "$kind" in
    srun)
      # --kill-on-bad-exit: one rank failing ends the step rather than leaving the others blocked in a collective.
      LAUNCH=(srun --mpi="$mpi" --ntasks="$np" --kill-on-bad-exit=1 "${extra[@]}") ;;
    mpirun)
      local mpirun=${CARVE_MPIRUN:-mpirun}
      command -v "$mpirun" >/dev/null || carve_die "CARVE_MPIRUN=$mpirun: not found (CARVE_LAUNCHER=mpirun)"
      # Open MPI refuses root unless told; harmless for other MPIs (CI containers run as root).
      export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      LAUNCH=("$mpirun" -np "$np" "${extra[@]}") ;;
    *) carve_die "CARVE_LAUNCHER='$kind': expected auto, srun or mpirun" ;;
  esac
}

# The world size carve reports in log file $2, for kind $1 (distill | precompute); empty when it did not say yet.
#   distill stages 1-2: "... layers on N processes = G layer groups x R replicas"
#   distill stage 3:    "...; N data-parallel processes; global batch ..."
#   precompute:         every rank of a multi-process world tags its lines [rK]; "rank done" comes from each rank.
# Ranks that each started as a world of one (the launcher's PMI did not reach MPI) print world 1, and untagged.
_carve_world() {
  local kind=$1 log=$2 sizes
  case "$kind" in
    distill)
      sizes=$(grep -oE '(layers on [0-9]+ processes =|; [0-9]+ data-parallel processes)' "$log" 2>/dev/null |
              grep -oE '[0-9]+' | sort -u) || true
      [ -n "$sizes" ] || return 0
      # Several different sizes (or singletons): report the smallest, which cannot match a job of more tasks.
      echo "$sizes" | sort -n | head -n1 ;;
    precompute)
      if grep -qE '^\[precompute\]' "$log" 2>/dev/null; then echo 1; return 0; fi  # untagged: a world of one
      grep -q 'rank done' "$log" 2>/dev/null || return 0
      grep -oE '^\[r[0-9]+\]\[precompute\] rank done' "$log" | sort -u | wc -l ;;
  esac
}

# Kills the launcher early when carve's world-size line shows a world other than the job's tasks (ranks each in
# their own world would otherwise all train, writing the same files).
_carve_watch_world() {
  local kind=$1 log=$2 pid=$3 i n
  for ((i = 0; i < ${CARVE_WORLD_WAIT:-900}; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    n=$(_carve_world "$kind" "$log")
    if [ -n "$n" ]; then
      [ "$n" = "$NTASKS" ] && return 0
      echo "$n" > "$log.mismatch"
      kill -TERM "$pid" 2>/dev/null || true
      return 0
    fi
    sleep 1
  done
}

STOP_BY=""           # USR1 (SLURM's warning / scancel --signal=USR1 --batch) or TERM (scancel, time limit)
_SIGNALS=0           # how many signals the traps have handled
_LAUNCHER_PID=""
# What the launcher is sent on either stop signal. distill: SIGUSR1, which srun and mpirun pass on to every rank as
# it is, and which carve treats like SIGTERM (checkpoint, exit 75); SIGTERM itself would make srun kill the step
# ("forcing job termination") before the ranks could checkpoint. precompute has no stop handler: SIGTERM ends it.
_STOP_FORWARD=USR1
_CARVE_LOG=""
_carve_on_signal() {
  local sig=$1
  STOP_BY=$sig
  _SIGNALS=$((_SIGNALS + 1))
  [ -n "$_LAUNCHER_PID" ] || return 0
  if [ "$_STOP_FORWARD" = USR1 ]; then
    # carve distill installs its stop handler just before the first step; a SIGUSR1 before that would end the
    # ranks (the signal's default action). Hold it until carve reports a step (rank 0 reports step 1 only after
    # every rank has taken part in it), or until the launcher is gone.
    if ! grep -qE 'step [0-9]+/[0-9]+' "$_CARVE_LOG" 2>/dev/null; then
      carve_say "got SIG$sig while carve is starting: passing it on once the first step is done"
      while kill -0 "$_LAUNCHER_PID" 2>/dev/null && ! grep -qE 'step [0-9]+/[0-9]+' "$_CARVE_LOG" 2>/dev/null; do
        sleep 1
      done
    fi
  fi
  carve_say "got SIG$sig: asking carve to stop (SIG$_STOP_FORWARD to ${LAUNCH[0]:-the launcher})"
  kill -"$_STOP_FORWARD" "$_LAUNCHER_PID" 2>/dev/null || true
}

# carve_run KIND carve-arguments...: runs carve on the job's tasks, its output in the job's output file; sets
# CARVE_RC to carve's exit status (75: stopped early with a checkpoint). Checks MPI's world against SLURM_NTASKS.
carve_run() {
  local kind=$1; shift
  if [ "$kind" = precompute ]; then _STOP_FORWARD=TERM; fi
  _carve_launcher
  local log
  log=$(mktemp "${TMPDIR:-/tmp}/carve-$SLURM_JOB_ID.XXXXXX.log")
  _CARVE_LOG=$log
  carve_say "running: ${LAUNCH[*]} $CARVE $*"
  # The warning signal comes to this shell (sbatch --signal=B:USR1@N): trap it before anything starts.
  trap '_carve_on_signal USR1' USR1
  trap '_carve_on_signal TERM' TERM
  "${LAUNCH[@]}" "$CARVE" "$@" > "$log" 2>&1 &
  _LAUNCHER_PID=$!
  # Live output into the job's output file; tail ends by itself shortly after the launcher does. The helpers ignore
  # the stop signals, should they be sent to the whole batch step (scancel --full): only the traps act on them.
  ( trap '' USR1 TERM; exec tail -n +1 -f --pid="$_LAUNCHER_PID" "$log" ) &
  local tail_pid=$!
  ( trap '' USR1 TERM; _carve_watch_world "$kind" "$log" "$_LAUNCHER_PID" ) &
  local watch_pid=$!
  # A trapped signal interrupts `wait` (status > 128) whether or not the launcher has ended: wait again, which
  # returns the launcher's own status once it is gone.
  CARVE_RC=0
  local before
  while :; do
    before=$_SIGNALS
    set +e; wait "$_LAUNCHER_PID"; CARVE_RC=$?; set -e
    [ "$CARVE_RC" -gt 128 ] && [ "$_SIGNALS" != "$before" ] && continue
    break
  done
  wait "$tail_pid" 2>/dev/null || true
  kill "$watch_pid" 2>/dev/null || true
  wait "$watch_pid" 2>/dev/null || true
  _LAUNCHER_PID=""

  # MPI's world against the tasks SLURM started.
  local world
  if [ -f "$log.mismatch" ]; then
    world=$(cat "$log.mismatch")
    rm -f "$log" "$log.mismatch"
    carve_die "carve ran in a world of $world process(es), but SLURM started $NTASKS tasks (SLURM_NTASKS):" \
      "the launcher (${LAUNCH[*]}) did not connect them; try CARVE_LAUNCHER=mpirun, or another" \
      "CARVE_SRUN_MPI (srun --mpi=list)"
  fi
  world=$(_carve_world "$kind" "$log")
  rm -f "$log"
  if [ -z "$world" ]; then
    carve_say "carve printed no world size (it stopped before, or had nothing to do); the launcher was asked for" \
      "$NTASKS ranks = SLURM_NTASKS"
  elif [ "$world" != "$NTASKS" ]; then
    carve_die "carve ran in a world of $world process(es), but SLURM started $NTASKS tasks (SLURM_NTASKS)"
  else
    carve_say "world size $world = SLURM_NTASKS $NTASKS"
  fi
  carve_say "carve exited with status $CARVE_RC"
}

# Requeues this job (it comes back pending, starts again after SLURM's requeue delay and carve resumes from the
# checkpoint), unless it has been requeued CARVE_MAX_REQUEUES times already. Does not return.
carve_requeue() {
  local max=${CARVE_MAX_REQUEUES:-20}
  [[ "$max" =~ ^[0-9]+$ ]] || carve_die "CARVE_MAX_REQUEUES='$max': expected a whole number"
  if [ "$RESTART" -ge "$max" ]; then
    carve_say "not requeueing: this job has restarted $RESTART times (CARVE_MAX_REQUEUES=$max); resubmit it to" \
      "resume from the checkpoint"
    exit 75
  fi
  carve_say "requeueing job $SLURM_JOB_ID (scontrol requeue): it resumes where it stopped when it starts again"
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    carve_say "scontrol requeue $SLURM_JOB_ID failed (was the job submitted with --requeue?); resubmit it to resume"
    exit 75
  fi
  # SLURM now ends this run of the job; nothing is left to do.
  exit 0
}

# The end of a job: success, a requeue after an early stop, or carve's failure.
#   $1: yes when carve exits 75 on a stop with a checkpoint (distill), no when a stop leaves only finished work
#       (precompute keeps its finished shards; its ranks are ended on the warning).
carve_finish() {
  local checkpoints=$1
  if [ "$CARVE_RC" = 0 ]; then
    # A warning that came as carve was finishing anyway changes nothing.
    carve_say "done"
    exit 0
  fi
  if [ "$STOP_BY" = TERM ]; then
    # SIGTERM: scancel or the time limit without a warning. Requeueing here would undo a cancel; the checkpoint
    # (distill) or the finished shards (precompute) stay, and the same job submitted again resumes.
    carve_say "stopped on SIGTERM (scancel or the time limit): not requeueing; submit the same job again to resume"
    exit "$CARVE_RC"
  fi
  if [ "$checkpoints" = yes ] && [ "$CARVE_RC" = 75 ]; then
    carve_say "carve stopped early with a checkpoint (status 75)"
    carve_requeue
  fi
  if [ "$checkpoints" = no ] && [ "$STOP_BY" = USR1 ]; then
    carve_say "stopped on the warning signal; finished work is kept"
    carve_requeue
  fi
  carve_die "carve failed with status $CARVE_RC (see its output above)"
}
