#!/usr/bin/env bash
# Remakes the shipped teacher of the built-in example (examples/synth-vqa/teacher): 20,000 synthetic scenes, then
# `carve pretrain` of a llama-family model (hidden 64, 4 layers, 4 heads / 2 KV heads, MLP 172, 260 byte-level
# tokens) with cross-entropy on the answers. About 5 minutes on 2 CPU cores. The result matches the shipped files up
# to float rounding (thread counts change the order of sums); its config.json records the command and scores.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARVE=${CARVE:-$ROOT/build/carve}
DATA=${1:-$ROOT/runs/example-teacher-data}
OUT=${2:-$ROOT/examples/synth-vqa/teacher}
"$CARVE" synth --out "$DATA" --train 20000 --eval 1000
"$CARVE" pretrain --samples "$DATA/train.h5" --eval "$DATA/eval.h5" --out "$OUT" --steps 4000 --batch-tokens 512 \
  --eval-every 500 --overwrite
