"""Accelerator benchmarks driven by bench/gpu.sh: DiT train step, DDIM-50 CFG sampling, DINOv2-L
encode, pixel-decoder decode; prints img/s and MFU (bf16 peak table in bench/flops.py).

  python bench/gpu_bench.py train --size B --batch 256 --attention cudnn
      [--remat none|dots_saveable|full]
  python bench/gpu_bench.py sample --size XL --batch 32
  python bench/gpu_bench.py encode --batch 64  # DINOv2-L/14 at 224 px
  python bench/gpu_bench.py decode --batch 64  # conv pixel decoder, 16x16x96 latent -> 256 px
  python bench/gpu_bench.py stage2 --batch 32   # the production PS-VAE step (dinov2_b, 256 px)
  ... --dry-run   # tiny shapes, 2 steps: checks everything lowers, compiles and runs (CPU is fine)

Weights are random (throughput does not depend on values); `train` times the production step
(loop.train_step with DiTTask.loss, from its own init) on latent-cache batches. Compile time is
reported apart; the timing is the median of --steps calls after --warmup.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bench import _common  # pylint: disable=g-import-not-at-top
from bench import flops as flops_lib  # pylint: disable=g-import-not-at-top


def _report(
    name: str,
    compiled,
    run,
    batch: int,
    steps: int,
    warmup: int,
    compile_s: float,
    analytic_flops: float | None = None,
) -> None:
  res = _common.time_steps(run, steps, warmup)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  fl = analytic_flops or float((cost or {}).get("flops", 0.0))
  dev = jax.devices()[0]
  peak = flops_lib.peak_tflops(dev.device_kind) if dev.platform != "cpu" else None
  rate = fl / res["median_s"]
  mfu = f"{rate / (peak * 1e12):.1%}" if peak else "-"
  print(
      f"RESULT {name}: {res['median_s'] * 1e3:.2f} ms/call, {batch / res['median_s']:.1f} img/s, "
      f"{rate / 1e12:.2f} TFLOP/s, MFU {mfu} (peak {peak or '-'} TFLOP/s, {dev.device_kind}), "
      f"compile {compile_s:.1f} s",
      flush=True,
  )


def _random_params(model, *args, **kw):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw))["params"]
  return jax.device_put(_common.random_params(shapes, seed=1, scale=0.02))


def _dit(args, dtype):
  from psvae_jax.models import dit  # pylint: disable=g-import-not-at-top

  cfg = dit.dit_config(args.size)
  if args.dry_run:
    cfg = dict(width=64, depth=2, num_heads=2)
  kw = dict(
      cfg,
      patch_size=2,
      cond_type="class",
      num_classes=1000,
      dtype=dtype,
      attention_impl=None if args.attention == "default" else args.attention,
  )
  if args.remat != "none":
    kw.update(remat=True)
    if "remat_policy" in dit.DiT.__dataclass_fields__:
      kw.update(remat_policy=args.remat)
  return dit.DiT(**kw), cfg


def train(args):
  """The production stage-3 step (loop.train_step + DiTTask.loss: noise, timesteps, condition
  dropout, AdamW, EMA) on a class-conditional DiT, from latent-cache batches."""
  import functools  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import dit  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

  b, lat = args.batch, args.latent
  config = _common.dit_class_config(
      "tiny" if args.dry_run else args.size,
      b,
      dtype=args.dtype,
      attention_impl="" if args.attention == "default" else args.attention,
      remat=args.remat != "none",
      remat_policy="full" if args.remat == "none" else args.remat,
  )
  cfg = dit.dit_config(config.model.size)
  task, tx, step = _common.production_dit_step(config, (lat, lat, 4))
  rng = np.random.default_rng(0)
  batch = {
      "latent": jnp.asarray(rng.standard_normal((b, lat, lat, 4)), jnp.float32),
      "label": jnp.asarray(rng.integers(0, 1000, (b,)), jnp.int32),
  }
  consts = task.constants()
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))

  run = _common.StepRunner(step, state, batch, consts)
  compiled, compile_s = run.compiled, run.compile_s

  # MFU on model FLOPs: 3 x analytic forward (no remat recompute counted), as is customary.
  fwd = flops_lib.analytic_flops(cfg["width"], cfg["depth"], (lat // 2) ** 2) * b
  _report(
      f"train DiT-{args.size}/2 {args.dtype} batch {b} attention={args.attention} "
      f"remat={args.remat}",
      compiled,
      run,
      b,
      args.steps,
      args.warmup,
      compile_s,
      3 * fwd,
  )


def sample(args):
  from psvae_jax.diffusion import samplers, schedules  # pylint: disable=g-import-not-at-top
  import functools  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(args.dtype)
  model, cfg = _dit(args, dtype)
  b, lat = args.batch, args.latent
  z = jnp.asarray(np.random.default_rng(0).standard_normal((b, lat, lat, 4)), jnp.float32)
  y = jnp.arange(b, dtype=jnp.int32) % 1000
  params = _random_params(model, z, jnp.zeros(b), labels=y)
  model_fn = lambda p, z, t, c: model.apply({"params": p}, z, t, labels=c["labels"])

  steps = 2 if args.dry_run else 50

  @jax.jit
  def sample_fn(p, z, cond, uncond, s):
    return samplers.ddim_sample(
        functools.partial(model_fn, p),
        schedules.linear_schedule(),
        z,
        cond,
        uncond,
        s,
        max_steps=max(steps, 50),
    )

  s = samplers.traced(samplers.SampleSettings(steps=steps, guidance_scale=7.5))
  cond, uncond = {"labels": y}, {"labels": jnp.full_like(y, 1000)}
  t0 = time.perf_counter()
  compiled = sample_fn.lower(params, z, cond, uncond, s).compile()
  compile_s = time.perf_counter() - t0
  run = lambda: compiled(params, z, cond, uncond, s).block_until_ready()
  fl = flops_lib.analytic_flops(cfg["width"], cfg["depth"], (lat // 2) ** 2) * 2 * b * steps
  _report(
      f"sample DDIM-{steps} CFG DiT-{args.size}/2 {args.dtype} batch {b} (latency = ms/call)",
      compiled,
      run,
      b,
      args.steps,
      args.warmup,
      compile_s,
      fl,
  )


def encode(args):
  from psvae_jax.models import vit  # pylint: disable=g-import-not-at-top

  kw = vit.dinov2_config("tiny" if args.dry_run else "L")
  model = vit.DinoV2(**{**kw, "dtype": jnp.dtype(args.dtype)})
  px = 28 if args.dry_run else 224
  images = jnp.asarray(
      np.random.default_rng(0).standard_normal((args.batch, px, px, 3)), jnp.float32
  )
  _forward(
      f"encode DINOv2-{'tiny' if args.dry_run else 'L'}/14 {px}px {args.dtype} batch {args.batch}",
      model,
      images,
      args,
  )


def _forward(label, model, x, args):
  """Times a jitted inference forward of `model` on random params (compile reported apart)."""
  params = _random_params(model, x)
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
  t0 = time.perf_counter()
  compiled = fn.lower(params, x).compile()
  compile_s = time.perf_counter() - t0
  run = lambda: compiled(params, x).block_until_ready()
  _report(label, compiled, run, args.batch, args.steps, args.warmup, compile_s)


def decode(args):
  from psvae_jax.models import pixel_decoder  # pylint: disable=g-import-not-at-top

  if args.dry_run:
    model = pixel_decoder.ConvDecoder(
        ch=8, ch_mult=(1, 2), num_res_blocks=1, groups=4, dtype=jnp.dtype(args.dtype)
    )
    z_shape = (args.batch, 4, 4, 8)
  else:
    model = pixel_decoder.ConvDecoder(dtype=jnp.dtype(args.dtype))  # LDM decoder: 16x up
    z_shape = (args.batch, 16, 16, 96)
  z = jnp.asarray(np.random.default_rng(0).standard_normal(z_shape), jnp.float32)
  _forward(
      f"decode conv pixel decoder {z_shape[1:]} {args.dtype} batch {args.batch}", model, z, args
  )


def stage2(args):
  """The production stage-2 step (loop.train_step + the PS-VAE task's loss: DINOv2-B encoder
  trained, its frozen copy as target, E_s / D_s, the conv pixel decoder, LPIPS, KL; AdamW, EMA)
  at the paper's dinov2_b config, random weights (tiny config with --dry-run)."""
  import functools  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

  variant = "tiny" if args.dry_run else args.variant
  config, task, tx, step, shapes = _common.production_stage2_step(variant, args.batch, args.dtype)
  rng = np.random.default_rng(0)
  batch = {k: jnp.asarray(rng.uniform(-1, 1, v), jnp.float32) for k, v in shapes.items()}
  consts = task.constants()
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  run = _common.StepRunner(step, state, batch, consts)
  compiled, compile_s = run.compiled, run.compile_s

  # MFU on XLA's FLOP count of the step (forward + backward of everything the step runs).
  _report(
      f"stage2 PS-VAE {variant} {args.dtype} batch {args.batch} ({config.data.image_size} px)",
      compiled,
      run,
      args.batch,
      args.steps,
      args.warmup,
      compile_s,
  )


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("what", choices=["train", "sample", "encode", "decode", "stage2"])
  ap.add_argument("--variant", default="dinov2_b", help="stage2: configs/psvae.py variant")
  ap.add_argument("--size", default="B")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--latent", type=int, default=32, help="latent side (32: 256 tokens at patch 2)")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--attention", default="default", choices=["default", "xla", "cudnn"])
  ap.add_argument("--remat", default="none", choices=["none", "dots_saveable", "full"])
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--dry-run", action="store_true", help="tiny shapes, 2 steps (CPU-friendly)")
  args = ap.parse_args()
  if args.dry_run:
    args.batch, args.latent, args.steps, args.warmup = min(args.batch, 2), 8, 2, 1
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("off")
  cases = {"train": train, "sample": sample, "encode": encode, "decode": decode, "stage2": stage2}
  cases[args.what](args)


if __name__ == "__main__":
  main()
