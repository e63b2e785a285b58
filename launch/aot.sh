#!/usr/bin/env bash
# Compiles a config's production programs for a TPU slice on this machine (no TPU needed) and
# reports per-chip HBM, fit and a roofline: python -m psvae_jax.aot with the TPU compiler.
# The compiler lives in .venv-tpu (requirements-tpu.txt: libtpu only), a venv layered over the
# runtime venv (.venv, created here from requirements.txt if missing) by a .pth file, so the CPU
# venv and the test suite's JAX are untouched and the runtime packages are not installed twice.
# Usage: launch/aot.sh --config=configs/dit.py:paper --topology=v5e-64 [--search] [--json=PATH]
#        launch/aot.sh --config=configs/dit.py:paper --topology=h100-8   # one 8-GPU host (below)
#        launch/aot.sh --install-only      # create / update .venv-tpu and exit
# Exit status: 0 every program fits, 2 one does not (named), 1 bad input.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQS=requirements.txt . "$ROOT/launch/_env.sh"  # the runtime venv, activated
RUNTIME_SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BASE_PY="$(python -c 'import sys; print(sys._base_executable)')"
deactivate
TPU_VENV="${PSVAE_TPU_VENV:-$ROOT/.venv-tpu}"
if [ ! -x "$TPU_VENV/bin/python" ]; then
  echo "[psvae] creating virtualenv $TPU_VENV (the TPU compiler over $RUNTIME_SITE)" >&2
  "$BASE_PY" -m venv "$TPU_VENV"
fi
# shellcheck disable=SC1091
. "$TPU_VENV/bin/activate"
TPU_SITE="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$RUNTIME_SITE" > "$TPU_SITE/psvae-runtime.pth"
STAMP="$TPU_VENV/.installed-tpu-$(cat "$ROOT/requirements-tpu.txt" | sha1sum | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "[psvae] installing requirements-tpu.txt (libtpu) into $TPU_VENV" >&2
  python -m pip install --quiet --no-deps -r "$ROOT/requirements-tpu.txt" >&2
  touch "$STAMP"
fi
# psvae_jax's XLA:CPU flags are for CPU programs; this process compiles for TPU.
export PSVAE_XLA_CPU_DEFAULTS=0
export JAX_COMPILATION_CACHE_DIR=""
# NVIDIA targets (--topology=h100-N) compile with XLA's GPU compiler from jax's CUDA plugin, without
# a GPU: the plugin alone (~0.5 GB), not the CUDA wheels it names as dependencies (4.4 GB, only
# needed to run), hence --no-deps.
if [[ " $* " == *" --topology=h100"* ]] && ! python -c "import jax_plugins.xla_cuda12" 2>/dev/null; then
  echo "[psvae] installing jax's CUDA compiler plugin into $TPU_VENV (compile-only, no CUDA libraries)" >&2
  python -m pip install --quiet --no-deps jax-cuda12-pjrt==0.10.2 jax-cuda12-plugin==0.10.2 >&2
fi
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
exec python -m psvae_jax.aot "$@"
