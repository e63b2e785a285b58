#!/usr/bin/env bash
# The embedded default: trains the tiny pipeline on generated shapes on this CPU and
# writes OUT_DIR/{svae,psvae,text_encoder,latents,dit,test}/ and OUT_DIR/report.json.
# Usage: launch/demo.sh [OUT_DIR] [flags...]   (default runs/demo)
#        launch/demo.sh OUT_DIR --data=fashion_mnist   real images, class-conditioned
#          (psvae_jax/demo_classes.py); installs Debian's dataset-fashion-mnist when its files
#          are missing and apt-get is there (as root), else says how to get them.
#        launch/demo.sh OUT_DIR --encoder_weights=DIR   stage 1 on a trained representation
#          encoder (python -m psvae_jax.shapes.rep_encoder --out=DIR)
set -euo pipefail
OUT="${1:-runs/demo}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
IDX_DIR=/usr/share/datasets/fashion-mnist
for arg in "${@:2}"; do
  case "$arg" in --idx_dir=*) IDX_DIR="${arg#--idx_dir=}" ;; esac
done
for arg in "${@:2}"; do
  if [ "$arg" = "--data=fashion_mnist" ] && [ ! -f "$IDX_DIR/train-images-idx3-ubyte.gz" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      echo "[psvae] installing dataset-fashion-mnist (Debian package) for $IDX_DIR" >&2
      apt-get install -y -q dataset-fashion-mnist >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q dataset-fashion-mnist >&2; }
    else
      echo "[psvae] Fashion-MNIST not found in $IDX_DIR: run 'sudo apt-get install" \
        "dataset-fashion-mnist' (Debian/Ubuntu), or download the four *-ubyte.gz files of" \
        "github.com/zalandoresearch/fashion-mnist and pass --idx_dir=DIR." >&2
      exit 1
    fi
  fi
done
. "$(dirname "$0")/_env.sh"
python -m psvae_jax.demo --outdir="$OUT" "${@:2}"
