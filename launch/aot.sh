#!/usr/bin/env bash
# Compiles a config's production programs for a TPU slice on this machine (no TPU needed) and
# reports per-chip HBM, fit and a roofline: python -m psvae_jax.aot in its own compile-only venv
# (.venv-tpu: requirements-tpu.txt, jax[tpu] with libtpu; created on first use), so the CPU venv
# and the test suite's JAX are untouched.
# Usage: launch/aot.sh --config=configs/dit.py:paper --topology=v5e-64 [--search] [--json=PATH]
#        launch/aot.sh --config=configs/dit.py:paper --topology=h100-8   # one 8-GPU host (below)
#        launch/aot.sh --install-only      # create / update .venv-tpu and exit
# Exit status: 0 every program fits, 2 one does not (named), 1 bad input.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PSVAE_VENV="${PSVAE_TPU_VENV:-$ROOT/.venv-tpu}"
REQS=requirements-tpu.txt . "$ROOT/launch/_env.sh"
# psvae_jax's XLA:CPU flags are for CPU programs; this process compiles for TPU.
export PSVAE_XLA_CPU_DEFAULTS=0
export JAX_COMPILATION_CACHE_DIR=""
# NVIDIA targets (--topology=h100-N) compile with XLA's GPU compiler from jax's CUDA plugin, without
# a GPU: the plugin alone (~0.5 GB), not the CUDA wheels it names as dependencies (4.4 GB, only
# needed to run), hence --no-deps.
if [[ " $* " == *" --topology=h100"* ]] && ! python -c "import jax_plugins.xla_cuda12" 2>/dev/null; then
  echo "[psvae] installing jax's CUDA compiler plugin into $VENV (compile-only, no CUDA libraries)" >&2
  python -m pip install --quiet --no-deps jax-cuda12-pjrt==0.10.2 jax-cuda12-plugin==0.10.2 >&2
fi
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
exec python -m psvae_jax.aot "$@"
