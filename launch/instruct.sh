#!/usr/bin/env bash
# Instruction editing at CPU scale (issue 18; psvae_jax/experiments/instruct_report.py): trains the
# demo into OUT_DIR/demo when it is missing (its PS-VAE, and its text DiT as the SDEdit
# baseline), then a source-conditioned DiT on (source, instruction, target) triples at the same
# budget; writes OUT_DIR/{instruct.json,*_test.png,dit/} (~25 min on 2 CPU cores with the demo).
# Usage: launch/instruct.sh [OUT_DIR] [flags...]   (default runs/instruct)
set -euo pipefail
OUT="${1:-runs/instruct}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
. "$(dirname "$0")/_env.sh"
if [ ! -f "$OUT/demo/report.json" ]; then
  python -m psvae_jax.demo --outdir="$OUT/demo"
fi
python -m psvae_jax.experiments.instruct_report --outdir="$OUT" --demo="$OUT/demo" "${@:2}"
