#!/usr/bin/env bash
# The main job on the built-in example. Until the distillation pipeline lands, this is the most complete path that
# exists: load the bundled tiny teacher, print its summary and a greedy continuation, carve a seeded hybrid student
# out of it (attention kept in layer 0, Mamba-2 mixers seeded by mimic elsewhere) and continue the same prompts with
# the undistilled student, then pack the tiny example's samples and precompute the teacher's activation cache with
# two MPI ranks (run folder: runs/demo). Distillation itself is not built yet.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARVE=${CARVE:-$ROOT/build/carve}
cd "$ROOT"
"$CARVE" inspect --model tests/fixtures/teachers/llama
"$CARVE" generate --config configs/demo_generate.ini --out runs/demo
"$CARVE" convert --teacher tests/fixtures/teachers/llama --layout AMM --seed mimic --out runs/demo/student --overwrite
"$CARVE" generate --config configs/demo_generate.ini --model runs/demo/student --out runs/demo/student-generate
# The data path: the built-in tiny example (samples with image features) packed, validated, and the teacher's
# activation cache precomputed by two MPI ranks, then verified.
PYTHON=/usr/bin/python3; [ -x "$PYTHON" ] || PYTHON=python3
"$PYTHON" tools/make_tiny_example.py --out runs/demo/example
"$PYTHON" tools/pack_samples.py runs/demo/example/samples.jsonl --vocab-size 96 --image-token-id 95 \
  --out runs/demo/train.h5
"$CARVE" data validate runs/demo/train.h5 --teacher tests/fixtures/teachers/llama
rm -rf runs/demo/cache
mpirun --allow-run-as-root --oversubscribe -np 2 "$CARVE" precompute --teacher tests/fixtures/teachers/llama \
  --samples runs/demo/train.h5 --out runs/demo/cache --layers all --top-k 8 --shard-tokens 512 --batch-tokens 256
"$CARVE" cache verify runs/demo/cache --teacher tests/fixtures/teachers/llama --samples runs/demo/train.h5
# Stages 1 and 2 of the hybrid student on 2 processes, one layer group each (a rerun resumes; start afresh here).
rm -rf runs/demo/distill
for stage in 1 2; do
  mpirun --allow-run-as-root --oversubscribe -np 2 "$CARVE" distill --stage $stage \
    --teacher tests/fixtures/teachers/llama --cache runs/demo/cache --out runs/demo/distill --layout AMM \
    --layer-groups 2 --steps 40 --batch-tokens 256 --log-every 10
done
"$CARVE" generate --config configs/demo_generate.ini --model runs/demo/distill/stage2/student \
  --out runs/demo/distill/generate
echo "demo: resolved configuration saved in runs/demo/config.ini"
