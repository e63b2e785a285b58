#!/usr/bin/env bash
# Runs a command in the project's environment (.venv with the pinned requirements, created on
# first use; PYTHONPATH at the repository root), from the repository root (relative paths in
# the command are taken from there).
# Usage: launch/run.sh python -m psvae_jax.sample --workdir=runs/demo/dit --prompt=... --out=a.png
set -euo pipefail
. "$(dirname "$0")/_env.sh"
exec "$@"
