#!/usr/bin/env bash
# The main job on the built-in example. Until the distillation pipeline lands, this is the most complete path that
# exists: load the bundled tiny teacher, print its summary and a greedy continuation, carve a seeded hybrid student
# out of it (attention kept in layer 0, Mamba-2 mixers seeded by mimic elsewhere) and continue the same prompts with
# the undistilled student (run folder: runs/demo).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARVE=${CARVE:-$ROOT/build/carve}
cd "$ROOT"
"$CARVE" inspect --model tests/fixtures/teachers/llama
"$CARVE" generate --config configs/demo_generate.ini --out runs/demo
"$CARVE" convert --teacher tests/fixtures/teachers/llama --layout AMM --seed mimic --out runs/demo/student --overwrite
"$CARVE" generate --config configs/demo_generate.ini --model runs/demo/student --out runs/demo/student-generate
echo "demo: resolved configuration saved in runs/demo/config.ini"
