"""Small representation encoders trained by the project, and linear probes of frozen features.

  enc = representation.build_for_classes("runs/fmnist_dinov2", "folder:path=DATA")  # + probe.json

The PS-VAE method needs a representation encoder whose features mean something (DINOv2 at paper
size). At CPU scale the project trains one: a DINOv2-shaped ViT of the `tiny` autoencoder
encoder's shape (`tiny_vit`: 32 px, 4 px patches, 64 wide, 3 blocks), saved as a Hugging Face
Dinov2 directory (config.json + model.safetensors) that goes through the same import as real
DINOv2 weights (`--config.model.encoder.weights=DIR`). Two worlds have one:

  * the shapes world: psvae_jax/experiments/rep_encoder.py (per-token shape and colour);
  * any labelled image folder (the Fashion-MNIST ablation, `--data=fashion_mnist` of
    psvae_jax/experiments/ablation.py): `train_on_classes` supervises EVERY patch token with the
    image's class through one linear map shared by all tokens (so each token must gather its
    image's class from the others, as DINOv2's patch tokens carry their image's semantics), with
    horizontal flips.

`ridge_probe` is the linear read-out both use: ridge regression onto one-hot targets, fitted on
one set, its penalty chosen on a second, accuracy with its standard error on a third.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from psvae_jax import pixels
from psvae_jax.data import pipeline
from psvae_jax.data import provenance
from psvae_jax.data import specs
from psvae_jax.data import subsets
from psvae_jax.models import autoencoder
from psvae_jax.models import vit
from psvae_jax.weights import dinov2 as dinov2_weights

IMAGE_SIZE = 32


def tiny_vit(image_size: int = IMAGE_SIZE) -> vit.DinoV2:
  """The `tiny` autoencoder encoder's shape (configs/svae.py: 64 wide, 3 blocks, 2 heads)."""
  kw = vit.dinov2_config("tiny")
  kw.update(num_layers=3, pos_grid=image_size // kw["patch_size"])
  return vit.DinoV2(**kw)


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 (B, S, S, 3) -> ImageNet-normalised float32, as the autoencoder feeds its encoder."""
  mean, std = np.asarray(autoencoder.IMAGENET_MEAN), np.asarray(autoencoder.IMAGENET_STD)
  return (images.astype(np.float32) / 255.0 - mean) / std


def _ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
  """Ridge regression (n, d) -> one-hot (n, k), primal form: (weights (d, k), feature mean)."""
  mean = x.mean(0)
  xc = x - mean
  w = np.linalg.solve(xc.T @ xc + lam * len(xc) * np.eye(xc.shape[1]), xc.T @ y)
  return w, mean


def ridge_probe(fit, val, test) -> dict[str, float]:
  """(features (n, d), int labels (n,)) of three sets -> {mean, se, n}: accuracy on `test` of
  the ridge read-out whose penalty scored best on `val`."""
  k = int(max(fit[1].max(), val[1].max(), test[1].max())) + 1
  scale = float((fit[0] ** 2).sum(1).mean() / fit[0].shape[1])
  best = None
  for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
    w, mean = _ridge_fit(fit[0], np.eye(k)[fit[1]], lam * scale)
    acc = np.mean(np.argmax((val[0] - mean) @ w, 1) == val[1])
    if best is None or acc > best[0]:
      best = (acc, w, mean)
  _, w, mean = best
  hits = np.argmax((test[0] - mean) @ w, 1) == test[1]
  p = float(hits.mean())
  return {"mean": p, "se": float(np.sqrt(p * (1 - p) / len(hits))), "n": int(len(hits))}


# ---- a labelled image folder -------------------------------------------------------------------
def read_labelled(data_spec: str, image_size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
  """{"train_images", "train_labels", "test_images", "test_labels"} (uint8 / int32) of a
  labelled `KIND:ARGS` data spec (class folders); ValueError when it has no class labels."""
  cfg = specs.parse_data_spec(data_spec, image_size)
  train, test = pipeline.read_split(cfg, "train"), pipeline.read_split(cfg, "eval")
  if not provenance.describe_splits(cfg)["class_names"] or (train["label"] < 0).any():
    raise ValueError(f"{data_spec!r}: a class representation encoder needs class labels.")
  return {
      "train_images": pixels.to_uint8(train["image"]),
      "train_labels": np.asarray(train["label"], np.int32),
      "test_images": pixels.to_uint8(test["image"]),
      "test_labels": np.asarray(test["label"], np.int32),
  }


class _TokenHead(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, feats):  # (B, h, w, D) -> (B, h, w, classes): one map for every token
    return nn.Dense(self.num_classes)(feats)


def train_on_classes(
    data: dict[str, np.ndarray], steps: int = 1200, batch_size: int = 64, seed: int = 0
) -> tuple[vit.DinoV2, Any, dict]:
  """(module, params, info): `tiny_vit` trained to say its image's class from every token."""
  import optax  # pylint: disable=g-import-not-at-top

  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1.")
  t0 = time.time()
  images, labels = data["train_images"], data["train_labels"]
  num_classes = int(labels.max()) + 1
  module, head = tiny_vit(images.shape[1]), _TokenHead(num_classes)
  x0 = normalize(images[:1])
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"enc": module.init(k1, x0)["params"]}
  params["head"] = head.init(k2, module.apply({"params": params["enc"]}, x0))["params"]
  warmup = min(50, steps // 10)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, warmup, max(steps, warmup + 1))
  tx = optax.adamw(schedule, weight_decay=1e-4)
  opt = tx.init(params)

  def loss_fn(p, xb, yb):
    logits = head.apply({"params": p["head"]}, module.apply({"params": p["enc"]}, xb))
    y = jnp.broadcast_to(yb[:, None, None], logits.shape[:3])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, o, xb, yb):
    loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  rng = np.random.default_rng(seed)
  loss = float("nan")
  for _ in range(steps):
    idx = rng.integers(0, len(labels), batch_size)
    flip = rng.random(batch_size) < 0.5
    xb = np.where(flip[:, None, None, None], images[idx][:, :, ::-1], images[idx])
    params, opt, loss = step(params, opt, normalize(xb), labels[idx])
  info = {"train_seconds": time.time() - t0, "final_loss": float(loss), "steps": steps}
  return module, params["enc"], info


def class_probe(
    feature_fn: Callable[[np.ndarray], np.ndarray],
    data: dict[str, np.ndarray],
    num_fit: int = 2000,
    num_val: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
  """Linear read-out of the class from features: `feature_fn(uint8 images) -> (B, ...)`,
  flattened per image. Fitted on a stratified draw of `num_fit` training images, penalty chosen
  on another `num_val`, accuracy on the whole test split. {mean, se, n}."""
  labels = data["train_labels"]
  rest, val = subsets.split(labels, min(num_val, len(labels) // 4), seed)
  fit = rest[subsets.stratified(labels[rest], min(num_fit, len(rest)), seed + 1)]

  def feats(images):
    out = [np.asarray(feature_fn(images[i : i + 256])) for i in range(0, len(images), 256)]
    f = np.concatenate(out).astype(np.float64)
    return f.reshape(len(f), -1)

  return ridge_probe(
      (feats(data["train_images"][fit]), labels[fit]),
      (feats(data["train_images"][val]), labels[val]),
      (feats(data["test_images"]), data["test_labels"]),
  )


def pooled_features(module: vit.DinoV2, params: Any) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 images -> the ViT's mean-pooled patch features (B, D), jitted once."""
  apply = jax.jit(lambda p, x: module.apply({"params": p}, x).mean((1, 2)))
  return lambda images: apply(params, normalize(images))


def build_for_classes(out_dir: str, data_spec: str, steps: int = 1200, seed: int = 0) -> dict:
  """Trains `train_on_classes` on `data_spec`'s train split, saves it as a Hugging Face Dinov2
  directory, probes it (and a random ViT of the same shape) and writes OUT_DIR/probe.json."""
  data = read_labelled(data_spec)
  module, params, info = train_on_classes(data, steps=steps, seed=seed)
  size = data["train_images"].shape[1]
  dinov2_weights.save_dinov2(out_dir, module, params, size)
  loaded_module, loaded = dinov2_weights.load_dinov2(out_dir)  # what the autoencoder will read
  random_params = module.init(jax.random.key(seed + 7), jnp.zeros((1, size, size, 3)))["params"]
  report = {
      "trained": {"class": class_probe(pooled_features(loaded_module, loaded), data, seed=seed)},
      "random": {"class": class_probe(pooled_features(module, random_params), data, seed=seed)},
      "training": info,
      "data": data_spec,
  }
  with open(os.path.join(out_dir, "probe.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  return report
