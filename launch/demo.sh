#!/usr/bin/env bash
# The embedded default: trains the tiny pipeline on generated shapes on this CPU and
# writes OUT_DIR/{svae,psvae}/ workdirs and OUT_DIR/report.json.
# Usage: launch/demo.sh [OUT_DIR]   (default runs/demo)
set -euo pipefail
OUT="${1:-runs/demo}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
. "$(dirname "$0")/_env.sh"
python -m psvae_jax.demo --outdir="$OUT" "${@:2}"
