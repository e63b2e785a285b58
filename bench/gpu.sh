#!/usr/bin/env bash
# Accelerator benchmark suite (issue 8): one command on a CUDA machine.
#
#   bench/gpu.sh            # full run on a CUDA GPU (bf16): prints RESULT lines with img/s and MFU
#   bench/gpu.sh --dry-run  # tiny shapes on any backend (CPU too): checks every case lowers, compiles, runs
#
# Cases: DiT-B/2 and DiT-XL/2 bf16 train step (256 tokens, batch 128 and 256) with XLA vs cuDNN attention
# (jax.nn.dot_product_attention(implementation=...)), remat none (B) / dots_saveable (XL); DDIM-50 CFG latency
# (batch 1) and throughput (batch 32); DINOv2-L/14 encode and the conv pixel decoder's decode in images/s;
# the production stage-2 (PS-VAE dinov2_b, 256 px) train step at batch 32 and 64, img/s and MFU.
# A case that fails (e.g. out of memory, or cuDNN attention unavailable) prints FAILED and the suite goes on.
# Output is also written to runs/bench_gpu_<time>.log.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
if [ -z "$DRY" ] && [ -z "${PSVAE_SKIP_ENV:-}" ]; then
  REQS="${REQS:-requirements-gpu.txt}"
  [ -f "$ROOT/$REQS" ] || REQS=requirements.txt
  # shellcheck disable=SC1091
  REQS="$REQS" . "$ROOT/launch/_env.sh"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR-$ROOT/.cache/jax}"
  [ -x "$ROOT/.venv/bin/python" ] && . "$ROOT/.venv/bin/activate"
fi
cd "$ROOT"
set -e
if [ -z "$DRY" ]; then
  python - <<'EOF'
import jax
d = jax.devices()[0]
print(f"[gpu.sh] backend {d.platform}: {jax.device_count()} x {d.device_kind}")
if d.platform != "gpu":
  raise SystemExit("[gpu.sh] no CUDA GPU visible to jax; use --dry-run to check the scripts on CPU")
EOF
fi
set +e
mkdir -p runs
LOG="runs/bench_gpu_$(date +%Y%m%d_%H%M%S).log"
run() {
  echo "== $*" | tee -a "$LOG"
  if ! python bench/gpu_bench.py "$@" $DRY 2>&1 | tee -a "$LOG" | grep -E "^RESULT|Error|error:" ; then
    echo "FAILED: $*" | tee -a "$LOG"
  fi
}
ATTN=(xla cudnn)
[ -n "$DRY" ] && ATTN=(xla)  # cuDNN attention needs a CUDA GPU.
for attn in "${ATTN[@]}"; do
  for b in 128 256; do
    run train --size B --batch "$b" --attention "$attn" --remat none
    run train --size XL --batch "$b" --attention "$attn" --remat dots_saveable
  done
done
run train --size XL --batch 256 --attention "${ATTN[-1]}" --remat full
run sample --size XL --batch 1
run sample --size XL --batch 32
run encode --batch 64 --dtype bfloat16
run decode --batch 64 --dtype bfloat16
run stage2 --batch 32 --dtype bfloat16
run stage2 --batch 64 --dtype bfloat16
echo "[gpu.sh] done; full output in $LOG"
grep -E "^RESULT" "$LOG"
