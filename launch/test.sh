#!/usr/bin/env bash
# Installs the pinned test requirements into .venv (if needed) and runs the test suite.
# Usage: launch/test.sh [pytest args...]
set -euo pipefail
REQS=requirements-test.txt . "$(dirname "$0")/_env.sh"
# The TPU compiler's venv (.venv-tpu: libtpu over .venv) for tests/test_aot.py; PSVAE_TEST_TPU=0
# skips both.
if [ "${PSVAE_TEST_TPU:-1}" != "0" ]; then
  bash launch/aot.sh --install-only
fi
set +e
# PSVAE_TEST_WORKERS (default 2: CI's 2 cores) pytest-xdist workers; 0 runs in this process.
WORKERS="${PSVAE_TEST_WORKERS:-2}"
XDIST=()
if [ "$WORKERS" != "0" ]; then
  XDIST=(-n "$WORKERS" --dist loadgroup)
fi
python -m pytest -q -ra --durations=10 "${XDIST[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[psvae] pytest collected no tests: failing." >&2
  exit 1
fi
exit "$rc"
