"""The shared-block generator's sampler with and without the text cache (models/fusion.py).

  python bench/fusion_cache.py            # 3 rounds, alternating
  python bench/fusion_cache.py --quick    # smoke run

In the fusion generator the text tokens attend only to the text, so their keys and values depend
on neither t nor the latent: `text_cache` computes them once per prompt and each sampler step
runs only the latent tokens. Both variants are the whole Euler + CFG sampler in one jit (one
lax.scan); the model is Qwen2-shaped (width 256, 4 layers, 4 heads, 2 KV heads), random weights,
a 77-token prompt and a 16x16x8 latent at patch 2 (64 latent tokens), DDT head width 512, depth
2. Prints the per-image latency of each and `ratio recompute/cache`, and the largest difference
between the two samples (they compute the same thing).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
from jax import flatten_util  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from psvae_jax.diffusion import samplers  # pylint: disable=g-import-not-at-top
from psvae_jax.models import fusion  # pylint: disable=g-import-not-at-top

BACKBONE = dict(
    vocab_size=1000,
    hidden_size=256,
    intermediate_size=704,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
)
TEXT, LATENT, CHANNELS = 77, 16, 8


def build(batch: int, steps: int):
  model = fusion.FusionGenerator(BACKBONE, patch_size=2, head_width=512, head_depth=2, head_heads=8)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, LATENT, LATENT, CHANNELS)).astype(np.float32)
  ids = rng.integers(1, BACKBONE["vocab_size"], (batch, TEXT)).astype(np.int32)
  mask = (np.arange(TEXT)[None] < rng.integers(8, TEXT, (batch, 1))).astype(np.int32)
  t = np.full((batch,), 500.0, np.float32)
  params = jax.jit(model.init)(jax.random.key(0), x, t, ids, mask)["params"]
  flat, unravel = flatten_util.ravel_pytree(params)
  params = unravel(flat + 0.02 * jax.random.normal(jax.random.key(1), flat.shape))
  s = samplers.traced(samplers.SampleSettings(steps=steps, guidance_scale=4.0, shift=3.0))
  yes, no = np.zeros(batch, bool), np.ones(batch, bool)

  @jax.jit
  def recompute(params, x, ids, mask, s):
    fn = lambda z, tt, c: model.apply({"params": params}, z, tt, **c)
    on = {"input_ids": ids, "attention_mask": mask, "drop": yes}
    off = {**on, "drop": no}
    return samplers.euler_sample(fn, x, on, off, s, max_steps=steps)

  @jax.jit
  def cached(params, x, ids, mask, s):
    text = lambda drop: model.apply({"params": params}, ids, mask, drop, method=model.text_cache)
    fn = lambda z, tt, c: model.apply({"params": params}, z, tt, text_cache=c)
    return samplers.euler_sample(fn, x, text(yes), text(no), s, max_steps=steps)

  return (recompute, cached), (params, x, ids, mask, s)


def time_it(fn, args, reps: int) -> float:
  fn(*args).block_until_ready()  # compile
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=25)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--quick", action="store_true")
  a = p.parse_args()
  if a.quick:
    a.batch, a.steps, a.reps, a.rounds = 2, 2, 1, 1
  (recompute, cached), args = build(a.batch, a.steps)
  diff = float(jnp.max(jnp.abs(recompute(*args) - cached(*args))))
  rows = {"recompute": [], "cache": []}
  for _ in range(a.rounds):
    rows["recompute"].append(time_it(recompute, args, a.reps) / a.batch)
    rows["cache"].append(time_it(cached, args, a.reps) / a.batch)
  med = {k: float(np.median(v)) for k, v in rows.items()}
  print(
      f"Euler-{a.steps} + CFG, batch {a.batch}, text {TEXT} tokens + {(LATENT // 2) ** 2} latent "
      f"tokens, {jax.devices()[0].platform}"
  )
  for k, v in med.items():
    print(f"  {k:10s} {v * 1e3:8.1f} ms per image   (rounds: {[round(x * 1e3) for x in rows[k]]})")
  print(f"ratio recompute/cache: {med['recompute'] / med['cache']:.2f}")
  print(f"max |difference| of the samples: {diff:.2e}")


if __name__ == "__main__":
  main()
