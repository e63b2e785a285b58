"""DiT FLOPs: XLA's cost_analysis vs the analytic count, and achieved FLOP/s (MFU on accelerators).

  python bench/flops.py            # DiT-S/2 and B/2 at 256 tokens: compiled FLOPs vs analytic,
                                   # then timing
  python bench/flops.py --quick    # FLOP check only for S/2 and B/2, a short S/2 timing
  python bench/flops.py --sizes S B L XL --batch 8 --dtype bfloat16   # e.g. on a GPU/TPU

Analytic multiply-accumulates per image, N tokens, width D, depth L, MLP ratio 4, patch p, C
channels:
  per block   12 N D^2 (qkv 3, proj 1, MLP 8)  +  2 N^2 D (QK^T, AV)
              +  6 D^2 (adaLN on the condition)
  outside     N p^2 C D (patchify) + 256 D + D^2 (timestep MLP) + 2 D^2 (final adaLN)
              + N D p^2 C (head)
FLOPs = 2 x MACs (the DiT paper's "Gflops" are MACs: S/2 6.06, B/2 23.01 at 256 px -> 12.1 and 46.0
GFLOPs). XLA also counts element-wise work (softmax, GELU, LayerNorm, residuals), ~1% here. The
check passes when the compiled count is within 5% of both the analytic count and the paper's figure.

MFU = achieved FLOP/s / peak, with the compiled FLOPs of the timed function (forward, or with
--train the production train step: loop.train_step with DiTTask.loss,
bench/_common.production_dit_step) and the bf16 dense peak of the device (table below); on CPU only
achieved GFLOP/s is printed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from bench import _common  # pylint: disable=g-import-not-at-top
from psvae_jax.models import dit as dit_lib  # pylint: disable=g-import-not-at-top
from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

# bf16 dense peak TFLOP/s per chip (vendor figures, no sparsity).
PEAK_TFLOPS = {
    "H100 SXM": 989.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}
PAPER_GFLOPS = {"S": 12.1, "B": 46.0}  # DiT paper Table 4 (MACs) x 2, patch 2 at 256 px.


def peak_tflops(device_kind: str) -> float | None:
  """The table's peak for a jax ``device_kind`` string (longest matching key), or None."""
  kind = device_kind.lower().replace("-", " ")
  best = None
  for k, v in PEAK_TFLOPS.items():
    if k.lower() in kind and (best is None or len(k) > len(best[0])):
      best = (k, v)
  return best[1] if best else None


# The analytic count (the docstring's formula) lives beside the model: psvae_jax.aot uses it too.
analytic_flops = dit_lib.analytic_flops


def _model(size: str, dtype):
  from psvae_jax.models import dit  # pylint: disable=g-import-not-at-top

  return dit.DiT(
      **dit.dit_config(size), patch_size=2, cond_type="class", num_classes=1000, dtype=dtype
  )


def compiled_forward_flops(size: str, latent: int = 32, batch: int = 1, dtype=None) -> float:
  """cost_analysis()["flops"] of the jitted forward (lowered on shapes: nothing allocated)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  model = _model(size, dtype or jnp.float32)
  x = jax.ShapeDtypeStruct((batch, latent, latent, 4), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  params = jax.eval_shape(
      lambda: model.init(
          jax.random.key(0),
          jnp.zeros(x.shape),
          jnp.zeros(batch),
          labels=jnp.zeros(batch, jnp.int32),
      )
  )["params"]
  fwd = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, labels=y))
  cost = fwd.lower(params, x, t, y).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / batch


def measure(
    size: str, batch: int, latent: int, dtype_name: str, train: bool, steps: int, warmup: int
):
  """Times the forward (or the production train step) and returns (compiled FLOPs per call, timing
  dict)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, latent, latent, 4)).astype(np.float32)
  y = rng.integers(0, 1000, (batch,)).astype(np.int32)
  if train:  # loop.train_step with DiTTask.loss (noise, t, condition dropout, AdamW, EMA)
    config = _common.dit_class_config(size, batch, dtype=dtype_name)
    task, tx, step = _common.production_dit_step(config, (latent, latent, 4))
    batch_ = jax.device_put({"latent": x, "label": y})
    consts = jax.device_put(task.constants())
    state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch_, consts).compile()
    holder = [state]

    def run():
      holder[0], metrics = compiled(holder[0], batch_, consts)
      metrics["loss"].block_until_ready()

  else:
    model = _model(size, jnp.dtype(dtype_name))
    t = rng.integers(0, 1000, (batch,)).astype(np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, labels=y))["params"]
    params = jax.device_put(_common.random_params(shapes, seed=1, scale=0.02))
    data = jax.device_put((x, t, y))
    compiled = (
        jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, labels=y))
        .lower(params, *data)
        .compile()
    )
    run = lambda: compiled(params, *data).block_until_ready()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]), _common.time_steps(run, steps, warmup)


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--sizes", nargs="+", default=["S", "B"])
  ap.add_argument("--batch", type=int, default=8, help="batch of the timed run")
  ap.add_argument(
      "--latent", type=int, default=32, help="latent side (32 -> 256 tokens at patch 2)"
  )
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--train", action="store_true", help="time the train step instead of the forward")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--no-timing", action="store_true")
  ap.add_argument("--quick", action="store_true")
  _common.add_load_args(ap)
  args = ap.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import dit  # pylint: disable=g-import-not-at-top

  if args.quick:
    args.steps, args.warmup, args.batch = 3, 1, 2

  print(
      "| model | tokens | compiled GFLOP/img | analytic GFLOP/img | paper "
      "| compiled/analytic | check |"
  )
  print("|---|---|---|---|---|---|---|")
  ok_all = True
  tokens = (args.latent // 2) ** 2
  for size in args.sizes:
    cfg = dit.dit_config(size)
    ours = compiled_forward_flops(size, args.latent)
    ana = analytic_flops(cfg["width"], cfg["depth"], tokens)
    paper = PAPER_GFLOPS.get(size) if tokens == 256 else None
    ok = abs(ours / ana - 1) < 0.05 and (paper is None or abs(ours / 1e9 / paper - 1) < 0.05)
    ok_all &= ok
    print(
        f"| DiT-{size}/2 | {tokens} | {ours / 1e9:.2f} | {ana / 1e9:.2f} | {paper or '-'} | "
        f"{ours / ana:.3f} | {'OK (within 5%)' if ok else 'FAIL'} |",
        flush=True,
    )

  if not args.no_timing:
    dev = jax.devices()[0]
    peak = peak_tflops(dev.device_kind) if dev.platform != "cpu" else None
    what = "production train step (fwd+bwd+AdamW+EMA)" if args.train else "forward"
    print(
        f"\n{what}, batch {args.batch}, {args.dtype}, device {dev.device_kind} ({dev.platform}); "
        f"machine load now {_common.machine_load():.0%}"
    )
    print("| model | ms / call | img/s | achieved TFLOP/s | peak | MFU | others' CPU share |")
    print("|---|---|---|---|---|---|---|")
    for size in (args.sizes[:1] if args.quick else args.sizes):
      flops, res = measure(
          size, args.batch, args.latent, args.dtype, args.train, args.steps, args.warmup
      )
      rate = flops / res["median_s"]
      mfu = f"{rate / (peak * 1e12):.1%}" if peak else "- (CPU: GFLOP/s only)"
      flag = " DISTURBED" if res["other_load"] > args.max_load else ""
      print(
          f"| DiT-{size}/2 | {res['median_s'] * 1e3:.1f} | {args.batch / res['median_s']:.1f} | "
          f"{rate / 1e12:.4f} ({rate / 1e9:.0f} GFLOP/s) | {peak or '-'} | {mfu} | "
          f"{res['other_load']:.0%}{flag} |",
          flush=True,
      )
  if not ok_all:
    raise SystemExit("compiled FLOPs are not within 5% of the analytic count")


if __name__ == "__main__":
  main()
