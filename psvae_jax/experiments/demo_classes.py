"""The real-image embedded default: the tiny chain, class-conditioned, on a labelled image folder.

  launch/demo.sh OUT --data=fashion_mnist     (installs / converts Fashion-MNIST, then runs this)
  python -m psvae_jax.demo --outdir=OUT --data=folder --data_dir=DIR   (any train/ + test/ class
                                                                       folders)

Stages 1-2 (S-VAE, PS-VAE: configs/{svae,psvae}.py:tiny) train on DIR/train; the DiT
(configs/dit.py:tiny_class) on a latent cache of it. A classifier (psvae_jax/evals/feature_net.py)
trained on DIR/train (validation split of it) judges the samples. OUT/report.json gets, on the
whole test split: PS-VAE PSNR / SSIM with a bicubic baseline at the latent's spatial size, rFID;
and for class-balanced samples: FID and classifier accuracy at guidance scale 1 and at the default,
with sample counts and standard errors; OUT/class_grid.png shows one row per class.
"""

from __future__ import annotations

import json
import os
import time
from absl import logging

from configs import dit as dit_config
from configs import eval as eval_config
from configs import psvae as psvae_config
from configs import svae as svae_config
from psvae_jax import api
from psvae_jax import frozen_psvae
from psvae_jax.experiments import class_figures
from psvae_jax.experiments import stage3
from psvae_jax.data import idx
from psvae_jax.data import pipeline
from psvae_jax.evals import feature_net
from psvae_jax.evals import runner
from psvae_jax.train import loop

FASHION_MNIST_IDX = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
# Steps of each stage at steps_scale 1, chosen to keep the demo near 15 minutes on 2 cores.
STEPS = {"svae": 250, "psvae": 450, "dit": 2500, "classifier": 800}
NUM_EVAL_SAMPLES = 1000  # class-balanced samples per guidance scale (FID, accuracy)
GRID_PER_CLASS = 8


def prepare_fashion_mnist(out: str, src: str = FASHION_MNIST_IDX) -> str:
  """OUT/data: 10,000 train / 1,000 test images (seeded, stratified) as class folders."""
  data_dir = os.path.join(out, "data")
  idx.convert(src, data_dir, num_train=10_000, num_test=1_000, seed=0, names="fashion_mnist")
  return data_dir


def _folder(config, data_dir: str):
  config.data.update(source="folder", path=data_dir, num_train=0, num_eval=0)
  return config


def _steps(config, steps: int, scale: float):
  steps = max(1, int(round(steps * scale)))
  config.num_train_steps = steps
  config.eval_every = config.ckpt_every = steps  # one eval and one checkpoint, at the end
  config.log_every = max(1, min(config.log_every, steps // 4))
  return config


def ensure_classifier(path: str, data_dir: str, image_size: int, steps_scale: float = 1.0) -> dict:
  """Trains the judging classifier on DATA_DIR's train split into PATH unless its sidecar exists;
  returns the sidecar's figures (accuracies, counts, best step)."""
  if not os.path.exists(feature_net.sidecar_path(path)):
    feature_net.train(
        f"folder:path={data_dir}",
        path,
        image_size=image_size,
        steps=max(20, int(round(STEPS["classifier"] * steps_scale))),
    )
  with open(feature_net.sidecar_path(path), encoding="utf-8") as f:
    meta = json.load(f)
  keys = ("test_accuracy", "test_accuracy_se", "num_test", "validation_accuracy")
  keys += ("num_validation", "num_train", "best_step")
  return {k: meta[k] for k in keys}


def run(out: str, data_dir: str, steps_scale: float = 1.0) -> dict:
  """Trains the chain into OUT/{svae,psvae,latents,dit}, evaluates it; returns the report."""
  t0 = time.time()
  report: dict = {"data": data_dir}

  c1 = _steps(_folder(svae_config.get_config("tiny"), data_dir), STEPS["svae"], steps_scale)
  report["stage1"] = loop.train_and_evaluate(c1, f"{out}/svae")
  report["seconds_stage1"] = time.time() - t0

  t = time.time()
  c2 = _steps(_folder(psvae_config.get_config("tiny"), data_dir), STEPS["psvae"], steps_scale)
  c2.init_from = f"{out}/svae"
  report["stage2"] = loop.train_and_evaluate(c2, f"{out}/psvae")
  report["seconds_stage2"] = time.time() - t

  t = time.time()
  ae = frozen_psvae.load_autoencoder(f"{out}/psvae")
  load_s = time.time() - t
  c3 = _steps(dit_config.get_config("tiny_class"), STEPS["dit"], steps_scale)
  c3.eval.num_images = 100  # the end-of-training grids; the figures come from the evaluation
  report["stage3"], cache_s = stage3.train_on_latent_cache(
      c3,
      f"{out}/psvae",
      f"folder:path={data_dir}",
      f"{out}/latents",
      f"{out}/dit",
      ae=ae,
      batch_size=250,
  )
  report["seconds_cache"] = load_s + cache_s
  report["seconds_stage3"] = time.time() - t - report["seconds_cache"]

  t = time.time()
  clf = f"{out}/classifier.safetensors"
  report["classifier"] = ensure_classifier(clf, data_dir, ae.image_size, steps_scale)
  report["seconds_classifier"] = time.time() - t

  t = time.time()
  cfg = eval_config.get_config("classes")
  cfg.classifier_weights = clf
  n = max(10, int(round(NUM_EVAL_SAMPLES * min(1.0, steps_scale * 10))))
  for name in ("fid", "class_accuracy", "class_accuracy_cfg1"):
    cfg.evals[name].num_samples = n
  r = runner.evaluate(f"{out}/dit", cfg)
  report["evaluation"] = r
  report["seconds_evaluation"] = time.time() - t

  # The whole test split (what PSNR / SSIM / rFID above used) for the bicubic baseline.
  test = pipeline.build_eval_set(runner.eval_data_config(ae.config.data, "", ae.image_size), 0)
  side = int(ae.latent_shape[0])
  report["bicubic_baseline"] = class_figures.bicubic_baseline(test["image"], side)

  pipe = api.load(f"{out}/dit")
  rows = [pipe.generate(labels=[c] * GRID_PER_CLASS, seed=c) for c in range(len(pipe.class_names))]
  report["class_grid"] = class_figures.class_grid(
      rows, pipe.class_names, os.path.join(out, "class_grid.png")
  )
  report["summary"] = _summary(report, r, side, ae.latent_shape)
  report["seconds"] = time.time() - t0
  logging.info("class demo: %s", json.dumps(report["summary"], indent=1))
  return report


def _summary(report: dict, r: dict, side: int, latent_shape) -> dict:
  """The headline figures, flat (what the demo prints)."""
  base = report["bicubic_baseline"]
  return {
      "psnr": r["psnr/psnr"],
      "ssim": r["ssim/ssim"],
      "num_test_images": r["psnr/num_images"],
      f"bicubic_{side}px_psnr": base["psnr"],
      f"bicubic_{side}px_ssim": base["ssim"],
      "latent_shape": list(latent_shape),
      "rfid_classifier": r["rfid/rfid"],
      "fid_classifier": r["fid/fid"],
      "fid_num_samples": r["fid/num_samples"],
      "fid_num_reference": r["fid/num_reference"],
      "class_accuracy": r["class_accuracy/accuracy"],
      "class_accuracy_se": r["class_accuracy/accuracy_se"],
      "class_accuracy_guidance_scale": r["class_accuracy/guidance_scale"],
      "class_accuracy_cfg1": r["class_accuracy_cfg1/accuracy"],
      "class_accuracy_cfg1_se": r["class_accuracy_cfg1/accuracy_se"],
      "class_accuracy_num_samples": r["class_accuracy/num_samples"],
      "classifier_test_accuracy": report["classifier"]["test_accuracy"],
  }
