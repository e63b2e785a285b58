"""Inception-v3 (FID) feature extraction throughput on this machine, and FID-50K projected on a GPU.

  python bench/fid_throughput.py [--batch=8] [--seconds=20] [--gpu_tflops=495] [--mfu=0.35]

Random weights (the speed does not depend on them), uint8 299x299 inputs (no resize), one
jit. Prints images/s here, GFLOP per image from XLA's cost_analysis, and the projected wall
time of FID-50K feature extraction (50,000 generated images; the reference statistics are
cached) on a GPU of `gpu_tflops` dense fp32/TF32 peak at `mfu` utilisation. Sampling the
50K images is not included (see bench/sampler.py).
"""

import argparse
import time

import jax
import numpy as np


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seconds", type=float, default=20.0)
  p.add_argument("--gpu_tflops", type=float, default=495.0, help="H100 SXM TF32 dense peak")
  p.add_argument("--mfu", type=float, default=0.35)
  args = p.parse_args()
  from psvae_jax.weights import inception  # pylint: disable=g-import-not-at-top

  module, params = inception.random_inception(0)
  x = np.random.default_rng(0).integers(0, 256, (args.batch, 299, 299, 3), np.uint8)
  fn = jax.jit(lambda p, x: module.apply({"params": p}, x))
  t0 = time.time()
  compiled = fn.lower(params, x).compile()
  compile_s = time.time() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  gflop = float(cost.get("flops", 0.0)) / 1e9 / args.batch
  compiled(params, x).block_until_ready()  # warm-up
  n, t0 = 0, time.time()
  while time.time() - t0 < args.seconds:
    compiled(params, x).block_until_ready()
    n += args.batch
  ips = n / (time.time() - t0)
  gpu_ips = args.gpu_tflops * 1e12 * args.mfu / (gflop * 1e9)
  print(
      f"backend {jax.default_backend()} devices {jax.device_count()} batch {args.batch} "
      f"compile {compile_s:.1f} s"
  )
  print(
      f"inception 299px: {ips:.2f} images/s here ({gflop:.2f} GFLOP/image, "
      f"{ips * gflop:.1f} GFLOP/s achieved)"
  )
  print(f"FID-50K features here: {50_000 / ips / 3600:.2f} h")
  print(
      f"projected FID-50K features on a {args.gpu_tflops:g} TFLOP/s GPU at {args.mfu:.0%} MFU: "
      f"{gpu_ips:.0f} images/s, {50_000 / gpu_ips:.1f} s"
  )


if __name__ == "__main__":
  main()
