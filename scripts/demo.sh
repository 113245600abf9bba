#!/usr/bin/env bash
# The main job on the built-in example, end to end on two CPU processes (README's first command):
#   synthetic visual question answering (carve synth) -> the shipped teacher's activation cache (carve precompute)
#   -> stages 1, 2 and 3 of four students under mpirun -np 2 (carve distill, configs/demo.ini): the hybrid (attention
#      kept in one layer of four, head-interleaved) and the linear student seeded by mimic, and both seeded at random
#   -> teacher and students side by side on held-out scenes (carve eval), with the required shares checked
#   -> the loss curves of every stage as a PNG.
# The students are exported by their stage-3 runs (RUN/<student>/stage3/student); eval loads them from there.
# Everything lands in runs/demo (or $DEMO_RUN). Builds first when build/carve is missing (scripts/setup.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CARVE=${CARVE:-$ROOT/build/carve}
[ -x "$CARVE" ] || scripts/setup.sh
RUN=${DEMO_RUN:-runs/demo}
TEACHER=examples/synth-vqa/teacher
MPI=(mpirun --allow-run-as-root --oversubscribe -np 2)
PYTHON=/usr/bin/python3; [ -x "$PYTHON" ] || PYTHON=python3
START=$(date +%s)
step() { echo; echo "== demo [$(( $(date +%s) - START )) s]: $*"; }

rm -rf "$RUN"
mkdir -p "$RUN"
step "synthetic scenes, questions and answers"
"$CARVE" synth --out "$RUN/data" --train 8000 --eval 500
step "the teacher's activation cache (2 MPI ranks)"
"${MPI[@]}" "$CARVE" precompute --teacher $TEACHER --samples "$RUN/data/train.h5" --out "$RUN/cache" --layers all \
  --top-k 16 --batch-tokens 512 --shard-tokens 65536 --threads 1

STUDENTS=(hybrid:AMMM:mimic linear:MMMM:mimic hybrid-random:AMMM:random linear-random:MMMM:random)
for entry in "${STUDENTS[@]}"; do
  IFS=: read -r name layout seed <<< "$entry"
  for stage in 1 2 3; do
    step "$name student ($layout, seeded by $seed): stage $stage"
    "${MPI[@]}" "$CARVE" distill --config configs/demo.ini --cache "$RUN/cache" --stage $stage --layout $layout \
      --seed $seed --out "$RUN/$name" 2>&1 | grep -v '\[config\]'
  done
done

step "evaluation on held-out scenes"
"$CARVE" eval --teacher $TEACHER --samples "$RUN/data/eval.h5" --out "$RUN/eval.json" \
  --student hybrid="$RUN/hybrid/stage3/student" --student linear="$RUN/linear/stage3/student" \
  --student hybrid-random="$RUN/hybrid-random/stage3/student" \
  --student linear-random="$RUN/linear-random/stage3/student" \
  --require hybrid=0.95 --require linear=0.85 --worse-than hybrid-random=hybrid --worse-than linear-random=linear \
  2>&1 | grep -v '\[config\]' || { echo "demo: a required share was missed (see above)"; FAILED=1; }

step "loss curves"
"$PYTHON" scripts/plot_losses.py "$RUN/losses.png" hybrid="$RUN/hybrid" linear="$RUN/linear" \
  hybrid-random="$RUN/hybrid-random" linear-random="$RUN/linear-random"
step "done: scores in $RUN/eval.json, curves in $RUN/losses.png, students in $RUN/<student>/stage3/student"
exit ${FAILED:-0}
