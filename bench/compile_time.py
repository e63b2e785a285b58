"""Compile time of a deep DiT's training step: blocks unrolled vs one `nn.scan` (and remat).

  python bench/compile_time.py  # DiT-XL/2 and B/2, unrolled vs scan, remat none
  python bench/compile_time.py --sizes XL --remat full --rounds 2

Each measurement runs in a fresh process (no in-memory or persistent compilation cache: the
worker turns `jax_compilation_cache_dir` off) and AOT-lowers and compiles the production stage-3
step (loop.train_step with DiTTask.loss: forward + backward + AdamW + EMA, class-conditional,
patch 2 on a 32x32x4 latent-cache batch, batch 8, fp32; bench/_common.production_dit_step) from
abstract shapes only, so nothing is allocated: it measures XLA's work, which is what a user waits
for before step 1 on any backend (GPU/TPU compile times scale with the same HLO size). Prints

  compile DiT-XL/2 remat=none unrolled: 11.1 s  scan: 3.7 s  ratio unrolled/scan: 2.96

(measured on the 2-core development CPU, --rounds 2, on the earlier hand-written step without
the EMA and optimizer groups; not yet re-measured on the production step) and the optimized HLO's
line counts. The step time of the two forms is what bench/dit_train_vs_torch.py
(`--dit scan_blocks=true`) and bench/gpu_bench.py measure.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before _common imports jax (it reads it then)
import _common  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def worker(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", None)
  jax.config.update("jax_enable_compilation_cache", False)

  config = _common.dit_class_config(
      args.size,
      args.batch,
      scan_blocks=args.scan,
      remat=args.remat != "none",
      remat_policy="full" if args.remat == "none" else args.remat,
  )
  b, lat = args.batch, args.latent
  task, tx, step = _common.production_dit_step(config, (lat, lat, 4))
  state = jax.eval_shape(
      functools.partial(loop.create_train_state, task=task, tx=tx), jax.random.key(0)
  )
  consts = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), task.constants())
  batch = {
      "latent": jax.ShapeDtypeStruct((b, lat, lat, 4), jnp.float32),
      "label": jax.ShapeDtypeStruct((b,), jnp.int32),
  }
  params = state.params

  t0 = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=0).lower(state, batch, consts)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  hlo = compiled.as_text() or ""
  _common.emit(
      dict(
          size=args.size,
          scan=args.scan,
          remat=args.remat,
          lower_s=lower_s,
          compile_s=compile_s,
          hlo_lines=hlo.count("\n"),
          params=int(sum(v.size for v in jax.tree.leaves(params))),
      )
  )


def main() -> None:
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--size", default="XL", help=argparse.SUPPRESS)
  ap.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--sizes", default="XL,B", help="comma-separated DiT sizes")
  ap.add_argument("--remat", default="none", choices=["none", "full", "dots_saveable"])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--latent", type=int, default=32, help="latent side (patch 2: (side/2)^2 tokens)")
  ap.add_argument("--rounds", type=int, default=1, help="fresh-process repeats per form (median)")
  _common.add_load_args(ap)
  args = ap.parse_args()
  if args.worker:
    worker(args)
    return
  script = os.path.abspath(__file__)
  rows = []
  for size in args.sizes.split(","):
    common = [
        "--size",
        size,
        "--remat",
        args.remat,
        "--batch",
        str(args.batch),
        "--latent",
        str(args.latent),
    ]
    jobs = {
        "unrolled": lambda c=common: _common.run_worker(script, c),
        "scan": lambda c=common: _common.run_worker(script, c + ["--scan"]),
    }
    runs = {k: [] for k in jobs}
    for r in range(args.rounds):  # alternating order, each on an idle machine
      for name in (list(jobs) if r % 2 == 0 else list(jobs)[::-1]):
        _common.wait_for_idle(args.max_load, args.idle_timeout)
        res = jobs[name]()
        print(
            f"  round {r + 1}/{args.rounds} DiT-{size}/2 {name:>8}: lower {res['lower_s']:.1f} s "
            f"+ compile {res['compile_s']:.1f} s",
            flush=True,
        )
        runs[name].append(res)
    med = {k: statistics.median(r["compile_s"] + r["lower_s"] for r in v) for k, v in runs.items()}
    hlo = {k: v[0]["hlo_lines"] for k, v in runs.items()}
    print(
        f"compile DiT-{size}/2 remat={args.remat} unrolled: {med['unrolled']:.1f} s  "
        f"scan: {med['scan']:.1f} s  ratio unrolled/scan: {med['unrolled'] / med['scan']:.2f}  "
        f"(HLO lines {hlo['unrolled']} vs {hlo['scan']}; lower+compile, median of {args.rounds})",
        flush=True,
    )
    rows.append((size, med, runs))
  print("\n| DiT | remat | unrolled lower+compile s | scan lower+compile s | ratio | params |")
  print("|---|---|---|---|---|---|")
  for size, med, runs in rows:
    print(
        f"| {size}/2 | {args.remat} | {med['unrolled']:.1f} | {med['scan']:.1f} | "
        f"{med['unrolled'] / med['scan']:.2f} | {runs['unrolled'][0]['params'] / 1e6:.0f} M |"
    )


if __name__ == "__main__":
  main()
