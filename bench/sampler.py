"""DDIM-50 with CFG: our one-jit lax.scan sampler vs a Python loop over a jitted step vs diffusers'
loop.

  python bench/sampler.py            # batch 1 and 8, 3 alternating rounds of fresh processes
  python bench/sampler.py --quick    # smoke run: batch 1, 5 steps, 2 repetitions, one round

The model is the class-conditional DiT-S width (384, 6 heads), depth 4, patch 2 on a 16x16x4 latent
(the configuration of PERF-NOTES), the same weights on both sides; CFG 7.5 runs cond + uncond as one
2B batch in every implementation; eta = 0. Implementations:

  scan      psvae_jax.diffusion.samplers.ddim_sample: the whole sampler (all steps) in one jit,
            lax.scan of length --scan-length (default: the library's 1000,
            psvae_jax/diffusion/settings.MAX_STEPS; the SampleSettings, steps, guidance_scale,
            eta and seed among them, are traced: one compile for all). Measured on the 2-core
            CPU (2026-12-05, DDIM-50): scan length 1000 vs 50 per image 640 vs 678 ms at batch 1,
            517 vs 537 ms at batch 8: the 950 skipped iterations cost nothing measurable, so the
            library keeps one length.
  loop      a Python loop over one jitted DDIM+CFG step
  diffusers diffusers' DDIMScheduler (linear betas, "leading" spacing) + DiTTransformer2DModel,
            torch eager

First a check that scan and diffusers produce the same latents (relative error printed), then the
compile count of the scan sampler over several steps/guidance_scale/eta/seed values: the sampler
must be traced once (the model function counts its traces) and no backend compile (jax.monitoring
events) may happen after the first call (the first call's count also includes tiny helper
computations such as building the PRNG key). Per image latency = median over repetitions of one full
sample / batch. Prints `ratio diffusers/scan batch=1: 2.10` and `ratio loop/scan batch=1: ...` per
batch size.
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
from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

LATENT, CHANNELS, PATCH, WIDTH, HEADS, NUM_CLASSES, DEPTH = 16, 4, 2, 384, 6, 1000, 4
CFG = 7.5


def _inputs(batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((batch, LATENT, LATENT, CHANNELS)).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, (batch,)).astype(np.int32)
  return z, y


def _jax_model():
  import jax  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import dit  # pylint: disable=g-import-not-at-top

  model = dit.DiT(**_common.dit_kwargs(DEPTH, WIDTH, HEADS, NUM_CLASSES, PATCH))
  z, y = _inputs(1)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), z, np.zeros(1, np.float32), labels=y)
  )
  params = _common.random_params(shapes["params"], seed=1)
  model_fn = lambda p, z, t, c: model.apply({"params": p}, z, t, labels=c["labels"])
  return params, model_fn


def _scan_sampler(model_fn, max_steps: int):
  from psvae_jax.diffusion import samplers  # pylint: disable=g-import-not-at-top

  def sample(params, sched, z, cond, uncond, s):
    return samplers.ddim_sample(
        functools.partial(model_fn, params), sched, z, cond, uncond, s, max_steps=max_steps
    )

  return runtime.no_grad_jit(sample)  # as the library compiles its sampler


def _settings(steps, guidance_scale, eta=0.0, seed=0):
  from psvae_jax.diffusion import samplers  # pylint: disable=g-import-not-at-top

  s = samplers.SampleSettings(steps=steps, guidance_scale=guidance_scale, eta=eta, seed=seed)
  return samplers.traced(s)


def _loop_sampler(model_fn):
  """A Python loop over one jitted DDIM step (eta = 0) with CFG as one 2B batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from psvae_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top

  @jax.jit
  def step(params, sched, z, both, t, t_prev, guidance_scale):
    z2 = jnp.concatenate([z, z])
    eps = model_fn(params, z2, jnp.full((z2.shape[0],), t, jnp.float32), both)
    e_c, e_u = jnp.split(eps, 2)
    eps = e_u + guidance_scale * (e_c - e_u)
    a_t, a_prev = schedules.alpha_cumprod_at(sched, t), schedules.alpha_cumprod_at(sched, t_prev)
    z0 = (z - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    return jnp.sqrt(a_prev) * z0 + jnp.sqrt(1.0 - a_prev) * eps

  def sample(params, sched, z, cond, uncond, num_steps, guidance_scale):
    from psvae_jax.diffusion import samplers  # pylint: disable=g-import-not-at-top

    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
    ts = samplers.ddim_timesteps(num_steps)
    ratio = 1000 // num_steps
    for t in ts:
      z = step(params, sched, z, both, np.int32(t), np.int32(t - ratio), np.float32(guidance_scale))
    return z

  return sample


def _ddim_scheduler(num_steps: int):
  from diffusers import DDIMScheduler  # pylint: disable=g-import-not-at-top

  sched = DDIMScheduler(
      num_train_timesteps=1000,
      beta_schedule="linear",
      beta_start=1e-4,
      beta_end=0.02,
      clip_sample=False,
      set_alpha_to_one=True,
      steps_offset=0,
      timestep_spacing="leading",
      prediction_type="epsilon",
  )
  sched.set_timesteps(num_steps)
  return sched


def _diffusers_sample(tmodel, z_nhwc, y, num_steps, guidance_scale):
  import torch  # pylint: disable=g-import-not-at-top

  sched = _ddim_scheduler(num_steps)
  z = torch.from_numpy(np.ascontiguousarray(z_nhwc.transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(np.concatenate([y, np.full_like(y, NUM_CLASSES)]).astype(np.int64))
  with torch.inference_mode():
    for t in sched.timesteps:
      z2 = torch.cat([z, z])
      eps = tmodel(z2, timestep=t.expand(z2.shape[0]).float(), class_labels=labels).sample
      e_c, e_u = eps.chunk(2)
      z = sched.step(e_u + guidance_scale * (e_c - e_u), t, z, eta=0.0).prev_sample
  return z.numpy().transpose(0, 2, 3, 1)


def _torch_model(params):
  tmodel = _common.make_torch_dit(DEPTH, WIDTH, HEADS, NUM_CLASSES, PATCH, LATENT, CHANNELS).eval()
  _common.params_to_torch(params, tmodel, WIDTH, PATCH, CHANNELS)
  return tmodel


def worker(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from psvae_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top

  params, model_fn = _jax_model()
  z, y = _inputs(args.batch)
  cond, uncond = {"labels": y}, {"labels": np.full_like(y, NUM_CLASSES)}
  sched = schedules.linear_schedule()
  n = args.num_steps
  MAX_STEPS = args.scan_length  # pylint: disable=invalid-name
  out: dict = dict(impl=args.impl, batch=args.batch)
  if args.impl == "check":
    traces = []
    counting_fn = lambda *a: (traces.append(1), model_fn(*a))[
        1
    ]  # Runs once per trace of the sampler.
    counter = runtime.CompileCounter()
    scan = _scan_sampler(counting_fn, MAX_STEPS)
    t0 = time.perf_counter()
    ours = np.asarray(scan(params, sched, z, cond, uncond, _settings(n, CFG)))
    first = counter.count
    out["first_call_s"] = time.perf_counter() - t0
    for steps, guidance_scale, eta, seed in (
        (max(n // 2, 1), 3.0, 0.0, 1),
        (n, 1.0, 0.5, 2),
        (MAX_STEPS, 7.5, 1.0, 3),
    ):
      settings = _settings(steps, guidance_scale, eta, seed)
      scan(params, sched, z, cond, uncond, settings).block_until_ready()
    out["compiles_first"], out["compiles_after"], out["traces"] = (
        first,
        counter.count - first,
        len(traces),
    )
    ref = _diffusers_sample(_torch_model(params), z, y, n, CFG)
    out["rel_err"] = _common.relative(ours, ref)
    loop = np.asarray(_loop_sampler(model_fn)(params, sched, z, cond, uncond, n, CFG))
    out["loop_rel_err"] = _common.relative(loop, ref)
    out["median_s"] = 0.0
    return out

  if args.impl == "scan":
    scan = _scan_sampler(model_fn, MAX_STEPS)
    settings = _settings(n, CFG)
    t0 = time.perf_counter()
    compiled = scan.lower(params, sched, z, cond, uncond, settings).compile()
    out["compile_s"] = time.perf_counter() - t0
    params_d = jax.device_put(params)
    run = lambda: compiled(params_d, sched, z, cond, uncond, settings).block_until_ready()
  elif args.impl == "loop":
    counter = runtime.CompileCounter()
    loop = _loop_sampler(model_fn)
    params_d = jax.device_put(params)
    t0 = time.perf_counter()
    loop(params_d, sched, z, cond, uncond, n, CFG).block_until_ready()
    out["compile_s"] = time.perf_counter() - t0  # First call: compile + one sample (upper bound).
    out["compiles"] = counter.count
    run = lambda: loop(params_d, sched, z, cond, uncond, n, CFG).block_until_ready()
  else:
    import torch  # pylint: disable=g-import-not-at-top

    tmodel = _torch_model(params)
    run = lambda: _diffusers_sample(tmodel, z, y, n, CFG)
    out["threads"] = torch.get_num_threads()
    out["compile_s"] = 0.0
  res = _common.time_steps(run, args.reps, args.warmup)
  out.update(res)
  out["per_image_s"] = res["median_s"] / args.batch
  return out


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  ap.add_argument("--num-steps", type=int, default=50)
  ap.add_argument(
      "--scan-length",
      type=int,
      default=0,
      help="the scan sampler's length (0: the library's, psvae_jax/diffusion/settings.MAX_STEPS = "
      "1000; the steps beyond --num-steps are skipped by lax.cond)",
  )
  ap.add_argument("--reps", type=int, default=10, help="timed full samples per run (median)")
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument(
      "--quick", action="store_true", help="smoke run: batch 1, 5 steps, 2 reps, one round"
  )
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--impl", default="scan", help=argparse.SUPPRESS)
  ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
  _common.add_load_args(ap)
  args = ap.parse_args()
  if not args.scan_length:
    from psvae_jax.diffusion import settings  # pylint: disable=g-import-not-at-top  (no JAX)

    args.scan_length = settings.MAX_STEPS
  if args.worker:
    _common.emit(worker(args))
    return
  if args.quick:
    args.batches, args.num_steps, args.reps, args.warmup, args.rounds, args.idle_timeout = (
        [1],
        5,
        2,
        1,
        1,
        0.0,
    )
  script = os.path.abspath(__file__)
  print(
      f"DDIM-{args.num_steps} CFG {CFG} (scan length {args.scan_length}), DiT-S width depth "
      f"{DEPTH}, patch {PATCH}, "
      f"{LATENT}x{LATENT}x"
      f"{CHANNELS}; {args.reps} timed samples per run, {args.rounds} round(s); machine load now "
      f"{_common.machine_load():.0%}",
      flush=True,
  )
  summary = []
  for batch in args.batches:
    base = [
        "--scan-length",
        str(args.scan_length),
        "--batch",
        str(batch),
        "--num-steps",
        str(args.num_steps),
        "--reps",
        str(args.reps),
        "--warmup",
        str(args.warmup),
    ]
    chk = _common.run_worker(script, base + ["--impl", "check"])
    one_compile = chk["traces"] == 1 and chk["compiles_after"] == 0
    print(
        f"batch {batch}: scan vs diffusers rel err {chk['rel_err']:.1e}, loop vs diffusers "
        f"{chk['loop_rel_err']:.1e}; scan compiles: {chk['compiles_first']} on the first call, "
        f"{chk['compiles_after']} more over 3 other (steps, guidance_scale, eta, seed); "
        f"the sampler was traced "
        f"{chk['traces']}x -> "
        f"{'OK (exactly one compile)' if one_compile else 'FAIL'}",
        flush=True,
    )
    jobs = {
        name: (lambda b=base, name=name: _common.run_worker(script, b + ["--impl", name]))
        for name in ("scan", "loop", "diffusers")
    }
    summary.append((batch, _common.alternate(jobs, args.rounds, args.max_load, args.idle_timeout)))

  _common.report(
      summary,
      "batch",
      lambda batch: f"batch={batch}",
      [("diffusers", "scan", "diffusers/scan"), ("loop", "scan", "loop/scan")],
      key="per_image_s",
      value_header="per-image ms",
  )


if __name__ == "__main__":
  main()
