#!/usr/bin/env bash
# Trains on the CUDA GPUs of this host (one process drives them all), or on several nodes
# (one process per node) when a coordinator is given.
#
# Usage: launch/gpu.sh CMD...                         # one host, all visible GPUs
#        NUM_NODES=2 NODE_RANK=0 COORDINATOR=host0:1234 launch/gpu.sh CMD...   # on node 0
#        NUM_NODES=2 NODE_RANK=1 COORDINATOR=host0:1234 launch/gpu.sh CMD...   # on node 1
# Example:
#   launch/gpu.sh python -m psvae_jax.main --config=configs/dit.py:XL_text --workdir=runs/dit \
#     --config.autoencoder=runs/psvae --config.text_encoder=/ckpt/t5-v1_1-xxl
# Installs requirements-gpu.txt if present (else requirements.txt plus jax[cuda12] at the
# pinned jax version). Under SLURM (srun), jax.distributed auto-detects the job instead.
# Logs go to LOGDIR/node_<rank>.log (default runs/gpu_logs) and to the terminal.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$ROOT/requirements-gpu.txt" ]; then REQS=requirements-gpu.txt; fi
. "$ROOT/launch/_env.sh"
if ! python -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" 2>/dev/null; then
  JAXV="$(python -c 'import jax; print(jax.__version__)')"
  echo "[gpu] installing jax[cuda12]==$JAXV" >&2
  python -m pip install --quiet "jax[cuda12]==$JAXV"
fi
unset JAX_PLATFORMS
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
LOGDIR="${LOGDIR:-$ROOT/runs/gpu_logs}"; mkdir -p "$LOGDIR"
NUM_NODES="${NUM_NODES:-1}"; NODE_RANK="${NODE_RANK:-0}"
if [ "$NUM_NODES" -gt 1 ]; then
  : "${COORDINATOR:?set COORDINATOR=host:port of node 0 for a multi-node run}"
  export JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NUM_NODES" JAX_PROCESS_ID="$NODE_RANK"
fi
echo "[gpu] node $NODE_RANK of $NUM_NODES, $(nvidia-smi -L 2>/dev/null | wc -l) GPUs, log $LOGDIR/node_$NODE_RANK.log" >&2
set +e
"$@" 2>&1 | tee "$LOGDIR/node_$NODE_RANK.log"
RC=${PIPESTATUS[0]}
exit "$RC"
