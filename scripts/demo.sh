#!/usr/bin/env bash
# The main job on the built-in example. Until the distillation pipeline lands, this is the most complete path that
# exists: load the bundled tiny teacher, print its summary and a greedy continuation (run folder: runs/demo).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARVE=${CARVE:-$ROOT/build/carve}
cd "$ROOT"
"$CARVE" inspect --model tests/fixtures/teachers/llama
"$CARVE" generate --config configs/demo_generate.ini --out runs/demo
echo "demo: resolved configuration saved in runs/demo/config.ini"
