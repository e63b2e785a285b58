"""Our DiT train step (forward + backward + AdamW) vs diffusers' DiTTransformer2DModel, same config, same CPU.

  python bench/dit_train_vs_torch.py                    # depth 4 and 12, batch 16, 3 alternating rounds
  python bench/dit_train_vs_torch.py --torch-compile    # also torch.compile (35-57 s compile per run)
  python bench/dit_train_vs_torch.py --quick            # smoke run: depth 4, few steps, one round

DiT-S width (384, 6 heads), patch 2 on a 16x16x4 latent (64 tokens), class conditioning, fp32, AdamW
(lr 1e-4, weight decay 0.01). The loss is mean((model(x_t, t, y) - noise)^2) on one fixed batch, so both
sides do exactly the same work. First, one process builds both models with the same weights and checks the
loss (<= 1e-5 relative) and gradients agree. Then every (implementation, depth) runs in a fresh process,
alternating jax/torch; each takes the median of >= 20 timed steps after warm-up; compile time is reported
apart (jax: AOT lower + compile; torch.compile: first step minus the median). Each run also reports the
CPU share other processes took while it was timing (from /proc/stat); runs above --max-load are marked
DISTURBED and left out of the medians. Prints per depth:

  ratio torch/jax depth=12 batch=16: 1.07

(torch eager median / jax median; > 1 means ours is faster), plus `ratio torch.compile/jax ...` with
--torch-compile. Extra XLA flags for the jax runs: --xla-flags="--xla_cpu_..." (passed as XLA_FLAGS).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from bench import _common  # pylint: disable=g-import-not-at-top

LATENT, CHANNELS, PATCH, WIDTH, HEADS, NUM_CLASSES = 16, 4, 2, 384, 6, 1000
LR, WEIGHT_DECAY = 1e-4, 0.01


def _batch(batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, LATENT, LATENT, CHANNELS)).astype(np.float32)
  noise = rng.standard_normal(x.shape).astype(np.float32)
  t = rng.integers(0, 1000, (batch,)).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, (batch,)).astype(np.int32)
  return x, t, y, noise


# ---------------------------------------------------------------- jax


def _jax_setup(depth: int, batch: int, dit_overrides: dict | None = None):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from psvae_jax.models import dit  # pylint: disable=g-import-not-at-top

  model = dit.DiT(**_common.dit_kwargs(depth, WIDTH, HEADS, NUM_CLASSES, PATCH), **(dit_overrides or {}))
  x, t, y, noise = _batch(batch)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, labels=y))["params"]
  params = _common.random_params(shapes, seed=1)
  tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

  def loss_fn(p, x, t, y, noise):
    pred = model.apply({"params": p}, x, t, labels=y)
    return jnp.mean(jnp.square(pred - noise))

  def train_step(p, opt_state, x, t, y, noise):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, t, y, noise)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  return model, params, tx, loss_fn, train_step, (x, t, y, noise)


def jax_worker(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  _, params, tx, _, train_step, data = _jax_setup(args.depth, args.batch, _overrides(args))
  params = jax.device_put(params)
  opt_state = jax.jit(tx.init)(params)
  data = jax.device_put(data)
  t0 = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, *data).compile()
  compile_s = time.perf_counter() - t0
  state = [params, opt_state]

  def step():
    state[0], state[1], loss = compiled(state[0], state[1], *data)
    loss.block_until_ready()

  res = _common.time_steps(step, args.steps, args.warmup)
  flops = (compiled.cost_analysis() or {})
  flops = flops[0] if isinstance(flops, (list, tuple)) else flops
  res.update(compile_s=compile_s, impl="jax", depth=args.depth, batch=args.batch,
             step_gflop=float(flops.get("flops", 0.0)) / 1e9, threads=_common.NCPU,
             xla_flags=os.environ.get("XLA_FLAGS", ""))
  return res


def _overrides(args) -> dict:
  out = {}
  for item in args.dit or []:
    k, v = item.split("=", 1)
    out[k] = {"true": True, "false": False, "none": None}.get(v.lower(), v)
  return out


# ---------------------------------------------------------------- torch


def _torch_setup(depth: int, batch: int):
  import torch  # pylint: disable=g-import-not-at-top
  model = _common.make_torch_dit(depth, WIDTH, HEADS, NUM_CLASSES, PATCH, LATENT, CHANNELS)
  model.train()
  x, t, y, noise = _batch(batch)
  to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  data = (to_nchw(x), torch.from_numpy(t), torch.from_numpy(y.astype(np.int64)), to_nchw(noise))
  return model, data


def torch_worker(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  model, (x, t, y, noise) = _torch_setup(args.depth, args.batch)
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  fwd = torch.compile(model) if args.impl == "torch_compile" else model

  def step():
    opt.zero_grad(set_to_none=True)
    pred = fwd(x, timestep=t, class_labels=y).sample
    loss = torch.mean(torch.square(pred - noise))
    loss.backward()
    opt.step()
    return loss

  t0 = time.perf_counter()
  step()
  first_s = time.perf_counter() - t0
  res = _common.time_steps(step, args.steps, max(args.warmup - 1, 0))
  res.update(compile_s=max(first_s - res["median_s"], 0.0) if args.impl == "torch_compile" else 0.0,
             impl=args.impl, depth=args.depth, batch=args.batch, threads=torch.get_num_threads())
  return res


# ---------------------------------------------------------------- equality check


def check_worker(args) -> dict:
  """Same weights -> same loss (and gradients) in both; returns relative errors."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  _, params, _, loss_fn, _, (x, t, y, noise) = _jax_setup(args.depth, args.batch, _overrides(args))
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, x, t, y, noise)
  tmodel, (tx_, tt, ty, tn) = _torch_setup(args.depth, args.batch)
  _common.params_to_torch(params, tmodel, WIDTH, PATCH, CHANNELS)
  n_jax = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  # diffusers holds the timestep/label embedders once per block; count them once.
  per_block_emb = sum(p.numel() for p in tmodel.transformer_blocks[0].norm1.emb.parameters())
  n_torch = sum(p.numel() for p in tmodel.parameters()) - (args.depth - 1) * per_block_emb
  pred = tmodel(tx_, timestep=tt, class_labels=ty).sample
  tloss = torch.mean(torch.square(pred - tn))
  tloss.backward()
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(grads)[0]}
  grad_err = max(_common.relative(flat[k], v) for k, v in _common.torch_block_grads_to_ours(tmodel).items())
  return dict(loss_jax=float(loss), loss_torch=float(tloss), loss_rel=abs(float(loss) - float(tloss)) /
              abs(float(tloss)), grad_rel=grad_err, params_jax=n_jax, params_torch=n_torch, median_s=0.0)


# ---------------------------------------------------------------- parent


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--depths", type=int, nargs="+", default=[4, 12])
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--steps", type=int, default=20, help="timed steps per run (median)")
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--rounds", type=int, default=3, help="alternating fresh-process runs per implementation")
  ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to compile)")
  ap.add_argument("--no-torch", action="store_true", help="jax only (for A/B of jax variants)")
  ap.add_argument("--no-check", action="store_true")
  ap.add_argument("--xla-flags", default=None, help="XLA_FLAGS for the jax runs")
  ap.add_argument("--dit", action="append", help="DiT attribute override for jax, e.g. --dit remat=true")
  ap.add_argument("--quick", action="store_true", help="smoke run: depth 4, 3 steps, 1 round, no idle wait")
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
  print(f"DiT-S width {WIDTH} ({HEADS} heads), patch {PATCH}, {LATENT}x{LATENT}x{CHANNELS} latent, batch "
        f"{args.batch}, fp32, AdamW; {args.steps} timed steps after {args.warmup} warm-up, {args.rounds} "
        f"round(s); {_common.NCPU} CPU cores; machine load now {_common.machine_load():.0%}", flush=True)
  summary = []
  for depth in args.depths:
    dargs = common + ["--depth", str(depth)]
    if not args.no_check and not args.no_torch:
      chk = _common.run_worker(script, dargs + ["--check"], env=jax_env)
      ok = chk["loss_rel"] <= 1e-5
      print(f"depth {depth} equality: params {chk['params_jax']:,} (jax) vs {chk['params_torch']:,} (torch), "
            f"loss {chk['loss_jax']:.6f} vs {chk['loss_torch']:.6f}, rel {chk['loss_rel']:.1e}; gradients "
            f"rel {chk['grad_rel']:.1e} -> {'OK' if ok else 'MISMATCH'}", flush=True)
      if not ok:
        raise SystemExit("the two models do not compute the same function; ratios would be meaningless")
    jobs = {"jax": lambda d=dargs: _common.run_worker(script, d + ["--impl", "jax"], env=jax_env)}
    if not args.no_torch:
      jobs["torch"] = lambda d=dargs: _common.run_worker(script, d + ["--impl", "torch"])
      if args.torch_compile:
        jobs["torch_compile"] = lambda d=dargs: _common.run_worker(script, d + ["--impl", "torch_compile"])
    results = _common.alternate(jobs, args.rounds, args.max_load, args.idle_timeout)
    summary.append((depth, results))

  print("\n| depth | impl | median step ms (clean runs) | compile s | others' CPU share | GFLOP/s |")
  print("|---|---|---|---|---|---|")
  for depth, results in summary:
    for impl, runs in results.items():
      med, n = _common.clean_median(runs)
      all_med = sorted(r["median_s"] for r in runs)[len(runs) // 2]
      comp = sorted(r.get("compile_s", 0.0) for r in runs)[len(runs) // 2]
      load = max(r["other_load"] for r in runs)
      gflop = runs[0].get("step_gflop") or 0.0
      shown = f"{med * 1e3:.1f} ({n}/{len(runs)})" if med else f"{all_med * 1e3:.1f} (all DISTURBED)"
      rate = f"{gflop / (med or all_med):.0f}" if gflop else ""
      print(f"| {depth} | {impl} | {shown} | {comp:.1f} | max {load:.0%} | {rate} |")
  print()
  for depth, results in summary:
    jax_med, _ = _common.clean_median(results["jax"])
    for impl, label in (("torch", "torch"), ("torch_compile", "torch.compile")):
      if impl not in results:
        continue
      t_med, _ = _common.clean_median(results[impl])
      if jax_med and t_med:
        print(f"ratio {label}/jax depth={depth} batch={args.batch}: {t_med / jax_med:.2f}")
      else:
        a = sorted(r["median_s"] for r in results[impl])[len(results[impl]) // 2]
        b = sorted(r["median_s"] for r in results["jax"])[len(results["jax"]) // 2]
        print(f"ratio {label}/jax depth={depth} batch={args.batch}: {a / b:.2f} (DISTURBED: machine was busy, "
              f"not a valid measurement)")


if __name__ == "__main__":
  main()
