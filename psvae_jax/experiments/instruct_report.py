"""Instruction editing at CPU scale: a source-conditioned DiT against SDEdit (issue 18).

  python -m psvae_jax.experiments.instruct_report --outdir=runs/instruct --demo=runs/demo
  (launch/instruct.sh OUT trains the demo into OUT/demo first when it is missing)

The demo's PS-VAE and its text DiT (`configs/dit.py:tiny`, 3000 steps on captioned scenes) are the
baseline: SDEdit of the source image towards the *target's caption*. The instruction model
(`configs/dit.py:tiny_instruct`) is the same DiT at the same budget (3000 steps, batch 64) in the
same latent, trained on (source, instruction, target) triples (`instruct.py`) from a latent cache
of the pairs, reading the source latent on its channels and the instruction as its text. It starts
from the demo's text-to-image DiT (`--config.init_from`: the source's new input channels zero, the
words both vocabularies know keep their embeddings), as InstructPix2Pix starts from Stable
Diffusion; `--from_text_to_image=false` trains it from scratch.

Measured on triples no training or tuning saw, each a fraction with its standard error:
  success    the checker accepts the target caption, and for move / remove nothing is left where
             the object was (`instruct.success`);
  preserved  two-object scenes: the object the instruction does not name is still there as it was
             (`instruct.preserved`);
  edit_ok    both (what the tuning maximises);
  target_psnr  PSNR against the rendered target (background, exact sizes and offsets: what a
             caption does not say), mean and standard error.
Settings are chosen on the "val" split (held-out instruction keys and compositions, a separate
index range): the instruction model's image guidance scale s_I and SDEdit's strength. The test
figures are then read once on "test" triples (held-out keys / compositions never trained or tuned
on) and on new triples of the training distribution ("seen").
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from psvae_jax import cli

_OUTDIR = flags.DEFINE_string("outdir", "runs/instruct", "Output directory.")
_DEMO = flags.DEFINE_string(
    "demo", "", "A trained demo (launch/demo.sh OUT): its psvae/, text DiT dit/ (the baseline)."
)
_STEPS = flags.DEFINE_integer("dit_steps", 0, "Instruction DiT steps (0: the demo DiT's).")
_FROM_T2I = flags.DEFINE_bool(
    "from_text_to_image",
    True,
    "The instruction DiT starts from the demo's text-to-image DiT (--config.init_from, as "
    "InstructPix2Pix starts from Stable Diffusion); false: from scratch.",
)
_CACHE = flags.DEFINE_integer("cache_pairs", 12800, "Training triples in the latent cache.")
_NUM = flags.DEFINE_integer("num_eval", 256, "Triples per evaluation group (val: half).")
_IMAGE_SCALES = flags.DEFINE_list("image_scales", ["1", "1.5", "3"], "s_I values tuned on val.")
_STRENGTHS = flags.DEFINE_list("strengths", ["0.5", "0.7", "0.9"], "SDEdit strengths tuned on val.")

VAL_OFFSET, TEST_OFFSET = 40_000_000, 50_000_000  # triple indices (training: [0, cache_pairs))


def triples(split: str, num: int, offset: int, seed: int = 0):
  from psvae_jax.shapes import instruct  # pylint: disable=g-import-not-at-top

  return [instruct.triple(offset + i, seed, split) for i in range(num)]


def score(images: np.ndarray, ts) -> dict:
  """success / preserved / edit_ok rates and target PSNR of edits `images` of triples `ts`."""
  from psvae_jax import editing  # pylint: disable=g-import-not-at-top
  from psvae_jax.experiments import figures  # pylint: disable=g-import-not-at-top
  from psvae_jax.shapes import instruct  # pylint: disable=g-import-not-at-top

  size = images.shape[1]
  ok = [instruct.success(im, t) for im, t in zip(images, ts)]
  kept = [instruct.preserved(im, t) for im, t in zip(images, ts)]
  psnr = [editing.psnr(im, t.images(size)[1]) for im, t in zip(images, ts)]
  by_op = {}
  for op in instruct.OPS:
    hits = [o for o, t in zip(ok, ts) if t.op == op]
    if hits:
      by_op[op] = figures.rate(hits)
  return {
      "success": figures.rate(ok),
      "preserved": figures.rate([k for k in kept if k is not None]),
      "edit_ok": figures.rate([o and k is not False for o, k in zip(ok, kept)]),
      "target_psnr": figures._mean_se(psnr),  # pylint: disable=protected-access
      "success_by_op": by_op,
  }


def run_instruct(pipe, ts, image_scale: float, seed: int = 0) -> np.ndarray:
  size = pipe.image_size
  src = np.stack([t.images(size)[0] for t in ts])
  return pipe.instruct(
      src, [t.instruction for t in ts], image_guidance_scale=image_scale, seed=seed
  )


def run_sdedit(pipe, ts, strength: float, seed: int = 0) -> np.ndarray:
  size = pipe.image_size
  src = np.stack([t.images(size)[0] for t in ts])
  return pipe.edit(src, [t.target_caption for t in ts], strength=strength, seed=seed)


def _train(out: str, demo: str) -> dict:
  """The instruction DiT at the demo DiT's budget; returns its training figures."""
  # pylint: disable=g-import-not-at-top
  from configs import dit as dit_config
  from psvae_jax.experiments import stage3
  from psvae_jax.shapes import instruct
  from psvae_jax.shapes import text as shapes_text

  # pylint: enable=g-import-not-at-top
  text_dir = shapes_text.build_demo_text_encoder(f"{out}/text_encoder", instruct.vocabulary())
  c = dit_config.get_config("tiny_instruct")
  base = json.loads(open(f"{demo}/dit/config.json", encoding="utf-8").read())
  c.num_train_steps = _STEPS.value or int(base["num_train_steps"])
  c.batch_size = int(base["batch_size"])
  c.text_encoder = text_dir
  if _FROM_T2I.value:
    c.init_from = f"{demo}/dit"
  spec = f"shapes_instruct:num={_CACHE.value}"
  return stage3.train_on_latent_cache(c, f"{demo}/psvae", spec, f"{out}/latents", f"{out}/dit")[0]


def main(argv):
  del argv
  cli.quiet_libraries()
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("off")
  # pylint: disable=g-import-not-at-top
  from psvae_jax import api
  from psvae_jax import writers
  from psvae_jax import shapes_plugin as plugin

  # pylint: enable=g-import-not-at-top
  plugin.register()
  out, demo = _OUTDIR.value, _DEMO.value or os.path.join(_OUTDIR.value, "demo")
  for need in ("psvae/config.json", "dit/config.json"):
    if not os.path.isfile(os.path.join(demo, need)):
      raise app.UsageError(f"--demo={demo} has no {need}: train it with launch/demo.sh {demo}.")
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  report = {"train": _train(out, demo), "seconds_train": time.time() - t0}
  models = {"instruct": api.load(f"{out}/dit"), "sdedit": api.load(f"{demo}/dit")}
  runs = {"instruct": run_instruct, "sdedit": run_sdedit}
  grid = {
      "instruct": [float(v) for v in _IMAGE_SCALES.value],
      "sdedit": [float(v) for v in _STRENGTHS.value],
  }
  n = _NUM.value
  val = triples("val", n // 2, VAL_OFFSET)
  report["val"], report["chosen"] = {}, {}
  for name, settings in grid.items():
    rows = {}
    for v in settings:
      rows[f"{v:g}"] = score(runs[name](models[name], val, v), val)
      logging.info("val %s %g: %s", name, v, rows[f"{v:g}"]["edit_ok"])
    report["val"][name] = rows
    report["chosen"][name] = max(settings, key=lambda v: rows[f"{v:g}"]["edit_ok"]["mean"])
  groups = {"test": triples("test", n, TEST_OFFSET), "seen": triples("train", n, TEST_OFFSET)}
  report["test"] = {}
  for name in grid:
    v = report["chosen"][name]
    report["test"][name] = {}
    for group, ts in groups.items():
      images = runs[name](models[name], ts, v)
      report["test"][name][group] = score(images, ts)
      if group == "test":
        src = np.stack([t.images(images.shape[1])[0] for t in ts[:16]])
        tgt = np.stack([t.images(images.shape[1])[1] for t in ts[:16]])
        tiles = np.stack([src, images[:16], tgt], 1).reshape(-1, *src.shape[1:])
        writers.save_png(f"{out}/{name}_test.png", writers.grid(tiles, cols=6))
        with open(f"{out}/{name}_test.txt", "w", encoding="utf-8") as f:
          f.write("(source, edit, target) triples, row-major, two per row:\n")
          f.write(
              "".join(
                  f"{i}: {t.instruction} -> {t.target_caption}\n" for i, t in enumerate(ts[:16])
              )
          )
  report["settings"] = {
      "num_eval": n,
      "num_val": len(val),
      "instruct_guidance_scale": models["instruct"].sample_settings().guidance_scale,
      "sdedit_guidance_scale": models["sdedit"].sample_settings().guidance_scale,
      "steps": 50,
  }
  report["seconds"] = time.time() - t0
  with open(f"{out}/instruct.json", "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  print(summary(report))


def summary(report: dict) -> str:
  """A markdown table of the test figures."""
  lines = [
      "| method | setting | group | success | preserved | edit_ok | target PSNR |",
      "|---|---|---|---|---|---|---|",
  ]
  fmt = lambda r: f"{r['mean']:.3f} ± {r['se']:.3f} (n={r['n']})"
  for name, groups in report["test"].items():
    label = "s_I" if name == "instruct" else "strength"
    for group, r in groups.items():
      lines.append(
          f"| {name} | {label} {report['chosen'][name]:g} | {group} | {fmt(r['success'])} | "
          f"{fmt(r['preserved'])} | {fmt(r['edit_ok'])} | {r['target_psnr']['mean']:.2f} ± "
          f"{r['target_psnr']['se']:.2f} |"
      )
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("instruct_report"))
