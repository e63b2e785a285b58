#!/usr/bin/env bash
# The PS-VAE ablation at CPU scale (issue 17; psvae_jax/experiments/ablation.py): pixel VAE, S-VAE, PS-VAE
# and PS-VAE on a random encoder, the same DiT budget in each latent; writes OUT_DIR/
# {ablation.json,ablation.md,ablation.png,tb/} (~25-30 min on 2 CPU cores). Not part of the tests.
# Usage: launch/ablation.sh [OUT_DIR] [flags...]   (default runs/ablation; e.g. --dit_steps=2000)
#        launch/ablation.sh OUT_DIR --data=fashion_mnist   the same on Fashion-MNIST, class-
#          conditioned, judged by a classifier (installs dataset-fashion-mnist as demo.sh does)
set -euo pipefail
OUT="${1:-runs/ablation}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
. "$(dirname "$0")/_fashion_mnist.sh" "${@:2}"
. "$(dirname "$0")/_env.sh"
python -m psvae_jax.experiments.ablation --outdir="$OUT" "${@:2}"
