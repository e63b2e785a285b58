#!/usr/bin/env bash
# N local processes on this machine, each with K simulated CPU devices: the local stand-in
# for a TPU pod slice or a multi-node GPU job (same code path: jax.distributed, gloo
# collectives, process 0 writes metrics/config/samples, every process joins checkpoints).
#
# Usage: launch/cpu_multiprocess.sh N [-k K] [--port P] [--logdir DIR] [--timeout S] CMD...
#   e.g. launch/cpu_multiprocess.sh 2 -k 2 python -m psvae_jax.main \
#          --config=configs/svae.py:tiny --workdir=runs/mp --config.batch_size=8
# Each process gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID and
# XLA_FLAGS=--xla_force_host_platform_device_count=K; its output goes to
# LOGDIR/process_<i>.log (default: runs/cpu_multiprocess). PSVAE_HEARTBEAT_TIMEOUT_S (default
# 10 here) is how long the others wait before aborting when one process dies. Exits with
# the first non-zero exit code of any process (0 when all succeed). SIGTERM/SIGINT to this
# script is forwarded to every process (a simulated preemption). PSVAE_NO_VENV=1 skips the
# venv setup (the tests use their own interpreter).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n 2,16p "$0" >&2; exit 2; fi
N="$1"; shift
K=1; PORT=""; LOGDIR=""; TIMEOUT=0
while [ $# -gt 0 ]; do
  case "$1" in
    -k) K="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --logdir) LOGDIR="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "cpu_multiprocess.sh: no command given" >&2; exit 2; }
if [ -z "${PSVAE_NO_VENV:-}" ]; then
  . "$(dirname "$0")/_env.sh"
else
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "$PORT" ]; then
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
LOGDIR="${LOGDIR:-runs/cpu_multiprocess}"
mkdir -p "$LOGDIR"
PIDS=()
forward() {
  echo "[cpu_multiprocess] forwarding $1 to ${#PIDS[@]} processes" >&2
  for p in "${PIDS[@]}"; do kill -s "$1" "$p" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
trap 'forward INT' INT
for ((i = 0; i < N; i++)); do
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" \
  PSVAE_HEARTBEAT_TIMEOUT_S="${PSVAE_HEARTBEAT_TIMEOUT_S:-10}" \
  XLA_FLAGS="--xla_force_host_platform_device_count=$K ${PSVAE_EXTRA_XLA_FLAGS:-}" \
    "$@" >"$LOGDIR/process_$i.log" 2>&1 &
  PIDS+=("$!")
done
echo "${PIDS[*]}" >"$LOGDIR/pids"
echo "[cpu_multiprocess] $N processes x $K devices, coordinator 127.0.0.1:$PORT, pids ${PIDS[*]}, logs $LOGDIR/process_*.log" >&2
START=$SECONDS
RC=0
# Poll instead of `wait PID` so that forwarded signals are handled while waiting.
declare -A DONE=()
while [ "${#DONE[@]}" -lt "$N" ]; do
  for ((i = 0; i < N; i++)); do
    [ -n "${DONE[$i]:-}" ] && continue
    p="${PIDS[$i]}"
    if ! kill -0 "$p" 2>/dev/null; then
      set +e; wait "$p"; code=$?; set -e
      DONE[$i]=$code
      echo "[cpu_multiprocess] process $i exited with $code after $((SECONDS - START)) s" >&2
      if [ "$code" -ne 0 ] && [ "$RC" -eq 0 ]; then RC=$code; fi
    fi
  done
  if [ "$TIMEOUT" -gt 0 ] && [ $((SECONDS - START)) -ge "$TIMEOUT" ]; then
    echo "[cpu_multiprocess] timeout after $TIMEOUT s: killing the remaining processes" >&2
    forward KILL; RC=124; wait || true; break
  fi
  sleep 0.2
done
if [ "$RC" -ne 0 ]; then
  echo "[cpu_multiprocess] FAILED (exit $RC); last lines of each log:" >&2
  for ((i = 0; i < N; i++)); do
    echo "--- process $i ---" >&2; grep -v '^    @' "$LOGDIR/process_$i.log" | tail -n 5 >&2 || true
  done
fi
exit "$RC"
