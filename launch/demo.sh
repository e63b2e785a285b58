#!/usr/bin/env bash
# The embedded default: trains the tiny pipeline on generated shapes on this CPU and
# writes OUT_DIR/{svae,psvae,text_encoder,latents,dit,test}/ and OUT_DIR/report.json.
# Usage: launch/demo.sh [OUT_DIR] [flags...]   (default runs/demo)
#        launch/demo.sh OUT_DIR --data=fashion_mnist   real images, class-conditioned
#          (psvae_jax/experiments/demo_classes.py); installs Debian's dataset-fashion-mnist when its files
#          are missing and apt-get is there (as root), else says how to get them.
#        launch/demo.sh OUT_DIR --encoder_weights=DIR   stage 1 on a trained representation
#          encoder (python -m psvae_jax.experiments.rep_encoder --out=DIR)
set -euo pipefail
OUT="${1:-runs/demo}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
. "$(dirname "$0")/_fashion_mnist.sh" "${@:2}"
. "$(dirname "$0")/_env.sh"
python -m psvae_jax.demo --outdir="$OUT" "${@:2}"
