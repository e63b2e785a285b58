#!/usr/bin/env bash
# Installs the pinned test requirements into .venv (if needed) and runs the test suite.
# Usage: launch/test.sh [pytest args...]
set -euo pipefail
REQS=requirements-test.txt . "$(dirname "$0")/_env.sh"
set +e
python -m pytest -q -ra --durations=10 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[psvae] pytest collected no tests: failing." >&2
  exit 1
fi
exit "$rc"
