#!/usr/bin/env bash
# Runs one command on every worker of a Cloud TPU VM pod slice (creating or reusing it).
#
# Usage: launch/tpu_pod.sh [options] -- CMD...
#   --name NAME          TPU VM name (default $TPU_NAME or psvae)
#   --zone ZONE          (default $ZONE or us-central2-b)
#   --type TYPE          accelerator type (default v4-32)
#   --version V          runtime version (default tpu-ubuntu2204-base)
#   --project P          (default: gcloud's configured project)
#   --preemptible        a preemptible (spot) VM
#   --queued             request through queued-resources (waits until ACTIVE)
#   --no-install         skip copying the repo and installing requirements
#   --logdir DIR         per-worker logs (default runs/tpu_logs/NAME)
#   --delete             delete the TPU (or queued resource) and exit
#   --no-aot-check       skip the compile check below
# Before it creates or uses the slice, a `python -m psvae_jax.main --config=...` command is
# compiled for --type on this machine (launch/aot.sh --programs=train: the TPU compiler, no TPU
# needed; minutes for a paper-size step): a config whose train step does not fit the chips' HBM
# is refused in one line naming the program and the HBM it needs. PSVAE_AOT overrides the checker.
# Example:
#   launch/tpu_pod.sh --name psvae --type v4-32 --preemptible -- \
#     python -m psvae_jax.main --config=configs/psvae.py:dinov2_b --workdir=gs://BUCKET/psvae \
#       --config.init_from=gs://BUCKET/svae \
#       --config.lpips.vgg=/ckpt/vgg16-397923af.pth --config.lpips.heads=/ckpt/lpips_vgg_v0.1.pth
# The same command runs on --worker=all; jax.distributed.initialize() auto-detects the pod
# (main's --distributed=auto), process 0 writes metrics/config/samples, all processes write
# checkpoints (use a gs:// workdir every worker can reach). On preemption the TPU sends
# SIGTERM; all processes save at the same step and exit 0: re-run this script to resume.
# Compiled programs persist in ~/psvae/.cache/jax on each worker (JAX_COMPILATION_CACHE_DIR),
# so a resumed run skips most of its compile time. GCLOUD=... overrides the gcloud binary.
set -euo pipefail
NAME="${TPU_NAME:-psvae}"; ZONE="${ZONE:-us-central2-b}"; TYPE="v4-32"
VERSION="tpu-ubuntu2204-base"; PROJECT=""; PREEMPTIBLE=0; QUEUED=0; INSTALL=1; LOGDIR=""; DELETE=0
AOT_CHECK=1
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --type) TYPE="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --logdir) LOGDIR="$2"; shift 2 ;;
    --delete) DELETE=1; shift ;;
    --no-aot-check) AOT_CHECK=0; shift ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOGDIR="${LOGDIR:-$ROOT/runs/tpu_logs/$NAME}"
G=("${GCLOUD:-gcloud}" compute tpus)
COMMON=(--zone="$ZONE")
[ -n "$PROJECT" ] && COMMON+=(--project="$PROJECT")

if [ "$DELETE" = 1 ]; then
  if [ "$QUEUED" = 1 ]; then
    "${G[@]}" queued-resources delete "$NAME-qr" "${COMMON[@]}" --force --quiet
  else
    "${G[@]}" tpu-vm delete "$NAME" "${COMMON[@]}" --quiet
  fi
  exit 0
fi
[ $# -gt 0 ] || { echo "tpu_pod.sh: give the command after --" >&2; exit 2; }

# The compile check (see the header): only for a training command of this project.
if [ "$AOT_CHECK" = 1 ] && [[ " $* " == *" psvae_jax.main "* ]]; then
  CONFIG_ARGS=()
  for arg in "$@"; do
    case "$arg" in --config=*|--config.*) CONFIG_ARGS+=("$arg") ;; esac
  done
  echo "[tpu_pod] compiling the train step for $TYPE on this machine (--no-aot-check skips)" >&2
  set +e
  AOT_OUT="$(${PSVAE_AOT:-bash "$ROOT/launch/aot.sh"} "${CONFIG_ARGS[@]}" --topology="$TYPE" \
    --programs=train 2>&1)"
  AOT_RC=$?
  set -e
  if [ "$AOT_RC" != 0 ]; then
    LINE="$(grep '^error: ' <<<"$AOT_OUT" | head -1)"
    echo "tpu_pod.sh: refusing to start on $TYPE: ${LINE:-compile check failed (exit $AOT_RC)} (--no-aot-check skips this check)" >&2
    exit 2
  fi
  grep -E '^(train|per chip|program)' <<<"$AOT_OUT" >&2 || true
fi

state() { "${G[@]}" tpu-vm describe "$NAME" "${COMMON[@]}" --format='value(state)' 2>/dev/null || true; }
if [ -n "$(state)" ]; then
  echo "[tpu_pod] reusing $NAME ($(state))" >&2
elif [ "$QUEUED" = 1 ]; then
  FLAGS=(--node-id="$NAME" --accelerator-type="$TYPE" --runtime-version="$VERSION")
  [ "$PREEMPTIBLE" = 1 ] && FLAGS+=(--spot)
  "${G[@]}" queued-resources create "$NAME-qr" "${COMMON[@]}" "${FLAGS[@]}"
  echo "[tpu_pod] waiting for queued resource $NAME-qr" >&2
  until [ "$("${G[@]}" queued-resources describe "$NAME-qr" "${COMMON[@]}" \
           --format='value(state.state)')" = "ACTIVE" ]; do sleep 30; done
else
  FLAGS=(--accelerator-type="$TYPE" --version="$VERSION")
  [ "$PREEMPTIBLE" = 1 ] && FLAGS+=(--preemptible)
  "${G[@]}" tpu-vm create "$NAME" "${COMMON[@]}" "${FLAGS[@]}"
fi

SSH=("${G[@]}" tpu-vm ssh "$NAME" "${COMMON[@]}" --worker=all)
if [ "$INSTALL" = 1 ]; then
  echo "[tpu_pod] copying the repo and installing on all workers" >&2
  tar -C "$ROOT" --exclude=.venv --exclude=runs --exclude=.git --exclude=.pytest_cache -czf /tmp/psvae_src.tgz .
  "${G[@]}" tpu-vm scp /tmp/psvae_src.tgz "$NAME":/tmp/psvae_src.tgz "${COMMON[@]}" --worker=all
  "${SSH[@]}" --command='mkdir -p ~/psvae && tar -C ~/psvae -xzf /tmp/psvae_src.tgz &&
    cd ~/psvae && python3 -m venv .venv && . .venv/bin/activate &&
    sed "s/^jax\[cpu\]==/jax[tpu]==/" requirements.txt > /tmp/req_tpu.txt &&
    pip install -q -r /tmp/req_tpu.txt'
fi

mkdir -p "$LOGDIR"
QUOTED="$(printf '%q ' "$@")"
echo "[tpu_pod] running on all workers of $NAME: $QUOTED (logs: $LOGDIR/worker_*.log)" >&2
# Each worker's output, prefixed by gcloud with its worker id, is split into its own log.
set +e
"${SSH[@]}" --command="set -o pipefail && cd ~/psvae && . .venv/bin/activate && export PYTHONPATH=\$PWD && export JAX_COMPILATION_CACHE_DIR=\${JAX_COMPILATION_CACHE_DIR:-\$PWD/.cache/jax} && $QUOTED 2>&1 | sed -u \"s/^/[worker \$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)] /\"" \
  2>&1 | tee "$LOGDIR/all.log" | while IFS= read -r line; do
    w="$(sed -n 's/^\[worker \([0-9]*\)\].*/\1/p' <<<"$line")"
    echo "$line" >>"$LOGDIR/worker_${w:-unknown}.log"
    [ "${w:-0}" = 0 ] && echo "$line"
  done
RC=${PIPESTATUS[0]}
set -e
echo "[tpu_pod] exit $RC (non-zero if any worker failed)" >&2
exit "$RC"
