"""The paper's generator against the DiT in the demo world, at the same budget (issue 32).

  python -m psvae_jax.experiments.fusion_report --demo=runs/demo [--outdir=runs/demo/fusion]

The demo (`launch/demo.sh OUT`) trained `configs/dit.py:tiny`: a cross-attention DiT (width 128,
depth 4, patch 2) over a jointly trained CLIP-shaped text encoder, on the latent cache of its
PS-VAE. This trains `configs/dit.py:tiny_fusion` (text and latent tokens through one tiny Qwen2
stack, random-initialised, with the demo's word-level tokenizer, then a DDT head) on the same
cache with the DiT's steps, batch, seed and sampling settings, and measures both on the same
held-out "test" compositions with the same checker (`experiments/figures.test_figures`: the DiT's
figures are the demo's report.json's). Writes OUTDIR/report.json and OUTDIR/table.md: each figure
as mean ± standard error (n), and both models' parameter counts. Step times: bench/fusion_step.py.
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags

from psvae_jax import cli

_DEMO = flags.DEFINE_string(
    "demo", "", "A trained demo (launch/demo.sh OUT): psvae/, latents/, dit/."
)
_OUTDIR = flags.DEFINE_string("outdir", "", "Output directory (default DEMO/fusion).")
_CACHE = flags.DEFINE_integer("cache_images", 12800, "Shapes images in the latent cache (demo's).")


def param_counts(params) -> dict[str, int]:
  """Parameters per top-level entry ("dit", "text") and in all."""
  import jax  # pylint: disable=g-import-not-at-top

  out = {k: int(sum(x.size for x in jax.tree.leaves(v))) for k, v in params.items()}
  out["total"] = sum(out.values())
  return out


def _fmt(v) -> str:
  if isinstance(v, dict) and {"mean", "se", "n"} <= set(v):
    return f"{v['mean']:.3f} ± {v['se']:.3f} (n={v['n']})"
  return "—" if v is None else f"{v}"


def table(dit: dict, fusion: dict, counts: dict) -> str:
  """Markdown: one row per figure both runs have, then the parameter counts."""
  lines = ["| held-out 'test' figure | DiT (tiny) | fusion (tiny_fusion) |", "|---|---|---|"]
  for name, v in dit.items():
    if isinstance(v, dict) and {"mean", "se", "n"} <= set(v) and name in fusion:
      lines.append(f"| {name} | {_fmt(v)} | {_fmt(fusion[name])} |")
  for name in ("dit", "fusion"):
    c = counts[name]
    parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in c.items() if k != "total")
    counts_text = f"{c['total'] / 1e6:.2f}M ({parts})"
    counts[name + "_text"] = counts_text
  lines.append(f"| parameters | {counts['dit_text']} | {counts['fusion_text']} |")
  return "\n".join(lines)


def main(argv):
  del argv
  cli.quiet_libraries()
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("off")
  # pylint: disable=g-import-not-at-top
  from configs import dit as dit_config
  from psvae_jax import api
  from psvae_jax import shapes_plugin as plugin
  from psvae_jax.experiments import figures
  from psvae_jax.experiments import stage3
  from psvae_jax.shapes import text as shapes_text

  # pylint: enable=g-import-not-at-top
  plugin.register()
  demo = _DEMO.value
  out = _OUTDIR.value or os.path.join(demo, "fusion")
  for need in ("psvae/config.json", "dit/config.json", "latents/meta.json"):
    if not os.path.isfile(os.path.join(demo, need)):
      raise app.UsageError(f"--demo={demo!r} has no {need}: train it with launch/demo.sh DIR.")
  os.makedirs(out, exist_ok=True)
  base = json.loads(open(f"{demo}/dit/config.json", encoding="utf-8").read())
  c = dit_config.get_config("tiny_fusion")
  for key in ("num_train_steps", "batch_size", "seed", "log_every", "ckpt_every", "eval_every"):
    c[key] = base[key]
  c.optim.warmup_steps = base["optim"]["warmup_steps"]
  c.generator.weights = shapes_text.build_demo_qwen2(
      f"{out}/qwen2", shapes_text.shapes_vocabulary()
  )
  t0 = time.time()
  train = stage3.train_on_latent_cache(
      c, f"{demo}/psvae", f"shapes:num={_CACHE.value}", f"{demo}/latents", f"{out}/dit"
  )[0]
  seconds_train = time.time() - t0
  pipe = api.load(f"{out}/dit")
  test = figures.test_figures(pipe, f"{out}/test")
  if not os.path.isfile(f"{demo}/report.json"):  # the demo still running: its figures come last
    raise app.UsageError(f"{demo}/report.json is missing: rerun when the demo has finished.")
  demo_report = json.loads(open(f"{demo}/report.json", encoding="utf-8").read())
  counts = {
      "dit": param_counts(api.load(f"{demo}/dit").params),
      "fusion": param_counts(pipe.params),
  }
  report = {
      "fusion": {"test": test, "val": train, "seconds_train_and_val": seconds_train},
      "dit": {"test": demo_report["test"], "val_adherence": demo_report.get("val_adherence")},
      "params": counts,
      "num_train_steps": c.num_train_steps,
      "batch_size": c.batch_size,
  }
  md = table(demo_report["test"], test, dict(counts))
  with open(f"{out}/report.json", "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2, sort_keys=True, default=float)
  with open(f"{out}/table.md", "w", encoding="utf-8") as f:
    f.write(md + "\n")
  print(md)
  print(f"fusion: {seconds_train:.0f} s to train and validate; {out}/report.json")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("fusion_report"))
