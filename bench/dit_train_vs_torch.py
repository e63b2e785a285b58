"""Our production DiT train step vs the same step in torch on diffusers' DiTTransformer2DModel, same
CPU.

  python bench/dit_train_vs_torch.py                    # depth 4 and 12, batch 16,
                                                        # 3 alternating rounds
  python bench/dit_train_vs_torch.py --torch-compile    # also torch.compile
                                                        # (35-57 s compile per run)
  python bench/dit_train_vs_torch.py --quick            # smoke run: depth 4, few steps, one round

Model: DiT-S width (384, 6 heads) at --depth, patch 2 on a 16x16x4 latent (64 tokens), 1000 classes,
fp32; both sides train from one fixed latent-cache batch {"latent", "label"} (the work does not
depend on the values). The config is configs/dit.py:S_class (bench/_common.dit_class_config), so per
step:

  jax    the production step itself: bench/_common.production_dit_step = loop.train_step with
         DiTTask.loss and optim.make_optimizer, jitted with the state donated. It folds the step
         into the rng; normalises the latent (identity statistics); draws condition dropout
         (p_uncond 0.1 -> the null class), t ~ U{0..999} and noise; q_sample with the linear-beta
         schedule (T 1000); DiT forward; eps-prediction MSE; backward; global grad norm;
         clip_by_global_norm(1.0) + AdamW (b1 0.9, b2 0.99, eps 1e-8, weight decay 0, warmup +
         cosine lr, peak 1e-4) through optax.multi_transform (one "default" group); the EMA update
         (decay min(0.9999, (1+step)/(10+step))); the non-finite guard (loss and grad norm finite,
         else every state leaf keeps its old value via jnp.where: a select over params, Adam moments
         and EMA); the metrics loss, latent std, grad norm.
  torch  the same in eager torch (or torch.compile of the model with --torch-compile): normalise;
         torch.rand < p_uncond -> null class; torch.randint t; torch.randn_like noise; q_sample by
         diffusers' DDPMScheduler.add_noise (the same schedule: checked below); forward; per-example
         MSE, mean; backward; clip_grad_norm_(1.0, foreach); torch.optim.AdamW(foreach=True, the
         same hyper-parameters) with a LambdaLR of the same warmup + cosine; EMA by
         torch._foreach_lerp_; the latent's std.
         The non-finite guard is a host branch (`if isfinite(loss) and isfinite(grad_norm)`) that
         skips the optimizer and EMA: free on CPU, where torch has already synchronised, whereas the
         jax step always pays for the selects (XLA may fuse them into the update).

Left out on both sides: data loading (one fixed batch on the device), metrics logging, checkpoints.

First, one process builds both models with the same weights and checks, on a plain MSE at fixed x_t,
t and labels, that loss and gradients agree (<= 1e-5 relative), and that q_sample agrees (our
schedule vs diffusers'). Then every (implementation, depth) runs in a fresh process, alternating
jax/torch; each takes the median of >= 20 timed steps after warm-up; compile time is reported apart
(jax: AOT lower + compile; torch.compile: first step minus the median). Each run also reports the
CPU share other processes took while it was timing (from /proc/stat); runs above --max-load are
marked DISTURBED and left out of the medians. Prints per depth:

  ratio torch/jax depth=12 batch=16: 1.07

(torch eager median / jax median; > 1 means ours is faster; this figure was measured on the earlier
hand-written steps, plain MSE + AdamW on fixed t and noise, not yet on the production step), plus
`ratio torch.compile/jax ...` with --torch-compile. Extra XLA flags for the jax runs:
--xla-flags="--xla_cpu_..." (passed as XLA_FLAGS). --dit KEY=VALUE sets config.model fields of the
jax side (remat, remat_policy, scan_blocks, attention_impl).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bench import _common  # pylint: disable=g-import-not-at-top
from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

LATENT, CHANNELS, PATCH, WIDTH, HEADS, NUM_CLASSES = 16, 4, 2, 384, 6, 1000


def _batch(batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, LATENT, LATENT, CHANNELS)).astype(np.float32)
  noise = rng.standard_normal(x.shape).astype(np.float32)
  t = rng.integers(0, 1000, (batch,)).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, (batch,)).astype(np.int32)
  return x, t, y, noise


def _overrides(args) -> dict:
  out = {}
  for item in args.dit or []:
    k, v = item.split("=", 1)
    out[k] = {"true": True, "false": False, "none": None}.get(v.lower(), v)
  return out


def _config(args):
  """configs/dit.py:S_class at --depth, patch 2, batch --batch, fp32, with the --dit overrides."""
  config = _common.dit_class_config(
      "S", args.batch, patch=PATCH, depth=args.depth, **_overrides(args)
  )
  assert config.model.num_classes == NUM_CLASSES
  return config


# ---------------------------------------------------------------- jax: the production step


def jax_worker(args) -> dict:
  config = _config(args)
  task, tx, step = _common.production_dit_step(config, (LATENT, LATENT, CHANNELS))
  x, _, y, _ = _batch(args.batch)
  batch = jax.device_put({"latent": x, "label": y})
  consts = jax.device_put(task.constants())
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(
      jax.random.key(config.seed)
  )
  run = _common.StepRunner(step, state, batch, consts)
  compiled, compile_s = run.compiled, run.compile_s

  res = _common.time_steps(run, args.steps, args.warmup)
  flops = compiled.cost_analysis() or {}
  flops = flops[0] if isinstance(flops, (list, tuple)) else flops
  res.update(
      compile_s=compile_s,
      impl="jax",
      depth=args.depth,
      batch=args.batch,
      step_gflop=float(flops.get("flops", 0.0)) / 1e9,
      threads=_common.NCPU,
      skipped=int(run.state.skipped),
      xla_flags=os.environ.get("XLA_FLAGS", ""),
  )
  return res


# ---------------------------------------------------------------- torch: the same step by hand
# (torch and diffusers are imported only in the processes that use them: a jax worker loads
# neither.)


def _torch_model(depth: int):
  model = _common.make_torch_dit(depth, WIDTH, HEADS, NUM_CLASSES, PATCH, LATENT, CHANNELS)
  model.train()
  return model


def _to_nchw(a):
  import torch  # pylint: disable=g-import-not-at-top

  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def _ddpm(config):
  """diffusers' DDPM schedule equal to the config's (linear betas; checked in check_worker)."""
  import diffusers  # pylint: disable=g-import-not-at-top

  d = config.diffusion
  if d.objective != "eps" or d.schedule != "linear":
    raise ValueError(
        f"the torch step mirrors eps-prediction with linear betas, not {d.objective}/"
        f"{d.schedule}"
    )
  return diffusers.DDPMScheduler(
      num_train_timesteps=d.num_timesteps,
      beta_start=d.beta_start,
      beta_end=d.beta_end,
      beta_schedule="linear",
  )


def _lr_factor(o, total_steps: int, count: int) -> float:
  """optim.schedule (optax warmup_cosine_decay_schedule) / peak lr, at optimizer step `count`."""
  warmup = max(o.warmup_steps, 1)
  if count < warmup:
    return count / warmup
  decay = max(total_steps, warmup + 1) - warmup
  cosine = 0.5 * (1.0 + math.cos(math.pi * min(count - warmup, decay) / decay))
  return (1.0 - o.min_lr_ratio) * cosine + o.min_lr_ratio


def _torch_step(config, model, latent, labels, compile_model: bool = False):
  """The production step's work in torch (see the module docstring); returns (step, counters)."""
  import torch  # pylint: disable=g-import-not-at-top

  o, d = config.optim, config.diffusion
  if o.lr_groups:
    raise ValueError("per-group learning rates are not mirrored in the torch step")
  params = list(model.parameters())
  opt = torch.optim.AdamW(
      params, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay, foreach=True
  )
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, functools.partial(_lr_factor, o, config.num_train_steps)
  )
  ema = [p.detach().clone() for p in params]
  ddpm = _ddpm(config)
  mean = torch.zeros(1, CHANNELS, 1, 1)  # identity latent statistics, as production_dit_step's
  std = torch.ones(1, CHANNELS, 1, 1)
  fwd = torch.compile(model) if compile_model else model
  counters = {"step": 0, "skipped": 0}

  def step():
    opt.zero_grad(set_to_none=True)
    z0 = (latent - mean) / std
    b = z0.shape[0]
    drop = torch.rand(b) < d.p_uncond
    cond = torch.where(drop, NUM_CLASSES, labels)  # the null class row
    t = torch.randint(0, d.num_timesteps, (b,))
    noise = torch.randn_like(z0)
    z_t = ddpm.add_noise(z0, noise, t)
    pred = fwd(z_t, timestep=t.float(), class_labels=cond).sample
    loss = torch.mean(torch.square(pred.float() - noise).flatten(1).mean(1))
    loss.backward()
    if o.grad_clip > 0:
      grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip, foreach=True)
    else:
      grad_norm = torch.linalg.vector_norm(
          torch.stack(torch._foreach_norm([p.grad for p in params]))
      )
    if torch.isfinite(loss) and torch.isfinite(grad_norm):  # else skip (production: keep state)
      opt.step()
      sched.step()
      n = counters["step"]
      decay = min(config.ema_decay, (1.0 + n) / (10.0 + n))  # train/state.ema_decay
      with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1.0 - decay)  # e + (1 - decay) (p - e)
    else:
      counters["skipped"] += 1
    counters["step"] += 1
    return loss, z0.std()

  return step, counters


def torch_worker(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  x, _, y, _ = _batch(args.batch)
  step, counters = _torch_step(
      _config(args),
      _torch_model(args.depth),
      _to_nchw(x),
      torch.from_numpy(y.astype(np.int64)),
      compile_model=args.impl == "torch_compile",
  )
  t0 = time.perf_counter()
  step()
  first_s = time.perf_counter() - t0
  res = _common.time_steps(step, args.steps, max(args.warmup - 1, 0))
  res.update(
      compile_s=max(first_s - res["median_s"], 0.0) if args.impl == "torch_compile" else 0.0,
      impl=args.impl,
      depth=args.depth,
      batch=args.batch,
      threads=torch.get_num_threads(),
      skipped=counters["skipped"],
  )
  return res


# ---------------------------------------------------------------- equality check


def check_worker(args) -> dict:
  """Same weights -> same loss (and gradients) in both, on a plain MSE at fixed x_t, t, labels; and
  the same q_sample (our schedule vs diffusers' DDPMScheduler.add_noise). Relative errors."""
  import torch  # pylint: disable=g-import-not-at-top

  config = _config(args)
  task, _, _ = _common.production_dit_step(config, (LATENT, LATENT, CHANNELS))
  model = task.model  # the DiT the production step trains
  x, t, y, noise = _batch(args.batch)
  shapes = jax.eval_shape(task.init, jax.random.key(0))[0]["dit"]
  params = _common.random_params(shapes, seed=1)

  def loss_fn(p):
    pred = model.apply({"params": p}, x, t, labels=y)
    return jnp.mean(jnp.square(pred - noise))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  tmodel = _torch_model(args.depth)
  _common.params_to_torch(params, tmodel, WIDTH, PATCH, CHANNELS)
  n_jax = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  # diffusers holds the timestep/label embedders once per block; count them once.
  per_block_emb = sum(p.numel() for p in tmodel.transformer_blocks[0].norm1.emb.parameters())
  n_torch = sum(p.numel() for p in tmodel.parameters()) - (args.depth - 1) * per_block_emb
  pred = tmodel(
      _to_nchw(x), timestep=torch.from_numpy(t), class_labels=torch.from_numpy(y.astype(np.int64))
  )
  tloss = torch.mean(torch.square(pred.sample - _to_nchw(noise)))
  tloss.backward()
  tloss = tloss.item()
  flat = {
      "/".join(str(getattr(k, "key", k)) for k in path): v
      for path, v in jax.tree_util.tree_flatten_with_path(grads)[0]
  }
  grad_err = max(
      _common.relative(flat[k], v) for k, v in _common.torch_block_grads_to_ours(tmodel).items()
  )
  z_t = task.objective.sample_x_t(jnp.asarray(x), jnp.asarray(t), jnp.asarray(noise))
  tz_t = _ddpm(config).add_noise(_to_nchw(x), _to_nchw(noise), torch.from_numpy(t.astype(np.int64)))
  return dict(
      loss_jax=float(loss),
      loss_torch=tloss,
      loss_rel=abs(float(loss) - tloss) / abs(tloss),
      grad_rel=grad_err,
      params_jax=n_jax,
      params_torch=n_torch,
      median_s=0.0,
      q_sample_rel=_common.relative(tz_t.numpy().transpose(0, 2, 3, 1), z_t),
  )


# ---------------------------------------------------------------- parent


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--depths", type=int, nargs="+", default=[4, 12])
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--steps", type=int, default=20, help="timed steps per run (median)")
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument(
      "--rounds", type=int, default=3, help="alternating fresh-process runs per implementation"
  )
  ap.add_argument(
      "--torch-compile", action="store_true", help="also time torch.compile (slow to compile)"
  )
  ap.add_argument("--no-torch", action="store_true", help="jax only (for A/B of jax variants)")
  ap.add_argument("--no-check", action="store_true")
  ap.add_argument("--xla-flags", default=None, help="XLA_FLAGS for the jax runs")
  ap.add_argument(
      "--dit", action="append", help="config.model override for jax, e.g. --dit remat=true"
  )
  ap.add_argument(
      "--quick", action="store_true", help="smoke run: depth 4, 3 steps, 1 round, no idle wait"
  )
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--impl", default="jax", help=argparse.SUPPRESS)
  ap.add_argument("--depth", type=int, default=4, help=argparse.SUPPRESS)
  ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
  _common.add_load_args(ap)
  args = ap.parse_args()

  if args.worker:
    fn = check_worker if args.check else {"jax": jax_worker}.get(args.impl, torch_worker)
    _common.emit(fn(args))
    return

  if args.quick:
    args.depths, args.steps, args.warmup, args.rounds, args.idle_timeout = [4], 3, 1, 1, 0.0
  script = os.path.abspath(__file__)
  common = ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
  for o in args.dit or []:
    common += ["--dit", o]
  jax_env = {"XLA_FLAGS": args.xla_flags} if args.xla_flags is not None else None
  print(
      f"DiT-S width {WIDTH} ({HEADS} heads), patch {PATCH}, "
      f"{LATENT}x{LATENT}x{CHANNELS} latent, batch "
      f"{args.batch}, fp32, the production step (configs/dit.py:S_class) vs its torch mirror; "
      f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} "
      f"round(s); {_common.NCPU} CPU cores; machine load now {_common.machine_load():.0%}",
      flush=True,
  )
  summary = []
  for depth in args.depths:
    dargs = common + ["--depth", str(depth)]
    if not args.no_check and not args.no_torch:
      chk = _common.run_worker(script, dargs + ["--check"], env=jax_env)
      ok = max(chk["loss_rel"], chk["grad_rel"], chk["q_sample_rel"]) <= 1e-5
      print(
          f"depth {depth} equality: params {chk['params_jax']:,} (jax) vs "
          f"{chk['params_torch']:,} (torch), "
          f"loss {chk['loss_jax']:.6f} vs {chk['loss_torch']:.6f}, "
          f"rel {chk['loss_rel']:.1e}; gradients "
          f"rel {chk['grad_rel']:.1e}; q_sample rel {chk['q_sample_rel']:.1e} -> "
          f"{'OK' if ok else 'MISMATCH'}",
          flush=True,
      )
      if not ok:
        raise SystemExit(
            "the two sides do not compute the same function; ratios would be meaningless"
        )
    jobs = {"jax": lambda d=dargs: _common.run_worker(script, d + ["--impl", "jax"], env=jax_env)}
    if not args.no_torch:
      jobs["torch"] = lambda d=dargs: _common.run_worker(script, d + ["--impl", "torch"])
      if args.torch_compile:
        jobs["torch_compile"] = lambda d=dargs: _common.run_worker(
            script, d + ["--impl", "torch_compile"]
        )
    results = _common.alternate(jobs, args.rounds, args.max_load, args.idle_timeout)
    summary.append((depth, results))

  _common.report(
      summary,
      "depth",
      lambda depth: f"depth={depth} batch={args.batch}",
      [("torch", "jax", "torch/jax"), ("torch_compile", "jax", "torch.compile/jax")],
  )


if __name__ == "__main__":
  main()
