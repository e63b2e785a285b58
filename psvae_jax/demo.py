"""The embedded default: all stages, tiny, on generated shapes, on this CPU -> report.json.

  python -m psvae_jax.demo --outdir=runs/demo   (what launch/demo.sh runs)
  python -m psvae_jax.demo --outdir=runs/fmnist --data=fashion_mnist   (real images, class-
      conditioned: psvae_jax/experiments/demo_classes.py; launch/demo.sh OUT --data=fashion_mnist
      installs Debian's dataset-fashion-mnist first when it is missing)
  python -m psvae_jax.demo --outdir=runs/mine --data=folder --data_dir=DIR  (DIR/train, DIR/test
      class folders)

Stage 1 (S-VAE), stage 2 (PS-VAE, warm-started from stage 1) and stage 3 (DiT in the
stage-2 latent, text-conditioned) train in one process (imports and JAX start-up paid
once); each stage is also runnable on its own through `python -m psvae_jax.main` with the
same configs (`configs/svae.py:tiny`, `configs/psvae.py:tiny`, `configs/dit.py:tiny`).
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging

from psvae_jax import cli

_OUTDIR = flags.DEFINE_string("outdir", "runs/demo", "Output directory.")
_STEPS_SCALE = flags.DEFINE_float("steps_scale", 1.0, "Multiplies every stage's steps (tests).")
_CACHE_IMAGES = flags.DEFINE_integer("cache_images", 12800, "Shapes images in the latent cache.")
_ENCODER = flags.DEFINE_string(
    "encoder_weights",
    "",
    "Stage 1's representation encoder: a Hugging Face Dinov2 directory (e.g. the one "
    "python -m psvae_jax.experiments.rep_encoder trains); default: the tiny config's random ViT.",
)
_DATA = flags.DEFINE_enum(
    "data", "shapes", ["shapes", "fashion_mnist", "folder"], "What the demo trains on."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", "", "--data=folder: a folder with train/ and test/ class subfolders."
)
_IDX_DIR = flags.DEFINE_string(
    "idx_dir",
    "/usr/share/datasets/fashion-mnist",
    "--data=fashion_mnist: the IDX files (Debian package dataset-fashion-mnist).",
)


def _scaled(config, scale: float):
  if scale != 1.0:
    for k in ("num_train_steps", "eval_every", "ckpt_every", "log_every"):
      if config[k] > 0:  # 0 means never; it stays 0
        config[k] = max(1, int(round(config[k] * scale)))
  return config


def _proxy_figures(outdir: str) -> dict:
  """The demo's fid_proxy / rfid_proxy: trains the proxy into OUTDIR/fid_proxy.safetensors,
  then runs the fid and rfid evaluators of configs/eval.py:demo on OUTDIR/dit (figures also
  land in OUTDIR/dit/metrics.json and its TensorBoard events)."""
  from psvae_jax.experiments import figures  # pylint: disable=g-import-not-at-top
  from psvae_jax.shapes import proxy  # pylint: disable=g-import-not-at-top

  path = os.path.join(outdir, "fid_proxy.safetensors")
  t0 = time.time()
  info = proxy.train_proxy(path, steps=60, num_images=768)
  out = figures.fid_figures(os.path.join(outdir, "dit"), path)
  out["proxy_accuracy"] = info["proxy_accuracy"]
  out["seconds_fid_proxy"] = time.time() - t0
  return out


def _class_demo(out: str) -> None:
  """--data=fashion_mnist | folder: psvae_jax/experiments/demo_classes.py -> OUT/report.json."""
  from psvae_jax.experiments import demo_classes  # pylint: disable=g-import-not-at-top

  if _DATA.value == "fashion_mnist":
    if not os.path.isdir(_IDX_DIR.value):
      raise app.UsageError(
          f"--idx_dir={_IDX_DIR.value} does not exist: install Debian's dataset-fashion-mnist "
          "(apt-get install dataset-fashion-mnist; launch/demo.sh does it) or point --idx_dir "
          "at the four *-ubyte.gz files."
      )
    data_dir = demo_classes.prepare_fashion_mnist(out, _IDX_DIR.value)
  elif not _DATA_DIR.value:
    raise app.UsageError("--data=folder needs --data_dir=DIR (DIR/train, DIR/test class folders).")
  else:
    data_dir = _DATA_DIR.value
  report = demo_classes.run(out, data_dir, _STEPS_SCALE.value)
  with open(f"{out}/report.json", "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  print(json.dumps(report["summary"], indent=2))


def main(argv):
  del argv
  cli.quiet_libraries()  # Orbax / CLU INFO lines only with -v 1
  from psvae_jax import runtime  # pylint: disable=g-import-not-at-top

  runtime.initialize("off")
  if _DATA.value != "shapes":
    _class_demo(_OUTDIR.value)
    return
  from configs import psvae as psvae_config  # pylint: disable=g-import-not-at-top
  from configs import svae as svae_config  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top
  # The shapes world: data.source="shapes", its adherence checker, the "proxy" features.
  from psvae_jax import shapes_plugin  # pylint: disable=g-import-not-at-top

  shapes_plugin.register()
  t0 = time.time()
  out = _OUTDIR.value
  report = {}

  c1 = _scaled(svae_config.get_config("tiny"), _STEPS_SCALE.value)
  if _ENCODER.value:  # stage 2 restores the encoder (and its frozen copy) from stage 1
    c1.model.encoder.weights = _ENCODER.value
  report["encoder_weights"] = _ENCODER.value or "random"
  m1 = loop.train_and_evaluate(c1, f"{out}/svae")
  report["stage1"] = m1
  report["seconds_stage1"] = time.time() - t0

  c2 = _scaled(psvae_config.get_config("tiny"), _STEPS_SCALE.value)
  c2.init_from = f"{out}/svae"
  m2 = loop.train_and_evaluate(c2, f"{out}/psvae")
  report["stage2"] = m2
  report["seconds_stage2"] = time.time() - t0 - report["seconds_stage1"]

  for k in ("psnr", "ssim", "semantic_cos", "recon_adherence"):
    report[k] = m2.get(k)
  report["psnr_stage1"] = m1.get("psnr")

  # Stage 3: a frozen, random-initialised CLIP-shaped text encoder over the shapes words
  # (psvae_jax/shapes/text.py says why), then the DiT in the PS-VAE latent.
  t3 = time.time()
  from configs import dit as dit_config  # pylint: disable=g-import-not-at-top
  from psvae_jax.shapes import text as shapes_text  # pylint: disable=g-import-not-at-top

  text_dir = shapes_text.build_demo_text_encoder(
      f"{out}/text_encoder", shapes_text.shapes_vocabulary()
  )
  from psvae_jax.experiments import stage3  # pylint: disable=g-import-not-at-top

  c3 = _scaled(dit_config.get_config("tiny"), _STEPS_SCALE.value)
  c3.text_encoder = text_dir
  m3, _ = stage3.train_on_latent_cache(
      c3, f"{out}/psvae", f"shapes:num={_CACHE_IMAGES.value}", f"{out}/latents", f"{out}/dit"
  )
  report["stage3"] = m3
  # The DiT's periodic eval reads the validation split (half training compositions, half "val"
  # held-out ones): what tuning may look at. report.json's generation figures are the test split's.
  report["val_adherence"] = m3.get("adherence")
  report["val_adherence_cfg1"] = m3.get("adherence_cfg1")
  report["sample_settings"] = dict(
      steps=c3.sample.steps,
      guidance_scale=c3.sample.guidance_scale,
      eta=c3.sample.eta,
      guidance_interval=list(c3.sample.guidance_interval),
      num_val_prompts=c3.eval.num_images,
  )
  report["seconds_stage3"] = time.time() - t3
  # FID with a shapes-trained proxy feature net (NOT comparable with Inception FID).
  report.update(_proxy_figures(out))
  # Generation, inpainting and editing on held-out "test" compositions (experiments/figures.py):
  # fractions with their standard errors and counts; grids and captions in OUT/test/.
  t_test = time.time()
  from psvae_jax import api  # pylint: disable=g-import-not-at-top
  from psvae_jax.experiments import figures  # pylint: disable=g-import-not-at-top

  report["test"] = figures.test_figures(api.load(f"{out}/dit"), f"{out}/test")
  report["seconds_test"] = time.time() - t_test
  report["seconds"] = time.time() - t0
  with open(f"{out}/report.json", "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  logging.info("report: %s", json.dumps(report, indent=2, sort_keys=True))
  print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}, indent=2))
  print(figures.summary_table(report["test"]))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("demo"))
