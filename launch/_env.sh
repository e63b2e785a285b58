# Sourced by the launch scripts: creates/updates .venv from the pinned requirements.
# REQS selects the requirements file (default requirements.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQS="${REQS:-requirements.txt}"
VENV="${PSVAE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[psvae] creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
STAMP="$VENV/.installed-$(basename "$REQS")-$(cat "$ROOT/$REQS" "$ROOT/requirements.txt" | sha1sum | cut -c1-12)"
# The test requirements include the runtime ones: a venv installed for tests serves runtime scripts.
TEST_STAMP="$VENV/.installed-requirements-test.txt-$(cat "$ROOT/requirements-test.txt" "$ROOT/requirements.txt" | sha1sum | cut -c1-12)"
if [ "$REQS" = requirements.txt ] && [ -f "$TEST_STAMP" ]; then
  STAMP="$TEST_STAMP"
fi
if [ ! -f "$STAMP" ]; then
  echo "[psvae] installing $REQS into $VENV (first run takes a few minutes)" >&2
  python -m pip install --quiet --upgrade pip >&2
  python -m pip install --quiet -r "$ROOT/$REQS" >&2
  touch "$STAMP"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Persistent XLA compilation cache (read by psvae_jax/runtime.py); set it empty to turn it off.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR-$ROOT/.cache/jax}"
cd "$ROOT"
