"""A feature network trained on the user's own labelled data: FID, rFID and class accuracy
without Inception weights (what papers on small datasets such as Fashion-MNIST or CIFAR do).

  python -m psvae_jax.evals.feature_net --data=folder:path=DATA --out=runs/classifier.safetensors \
      [--image_size=32] [--steps=800] [--batch_size=128] [--seed=0]

Trains a small convnet classifier on the train split of --data (a `KIND:ARGS` spec as for the
latent cache, `psvae_jax.data.specs.parse_data_spec`; the data must have class labels). A
stratified 10% of the train split is held out as a validation split, which picks the checkpoint
(evaluated every `eval_every` steps); the test (eval) split, never seen in training or selection,
gives the reported accuracy with its sample count and standard error. Writes the weights (OUT,
safetensors) and OUT's sidecar OUT.json (class names, image size, accuracies, counts).

The penultimate 128-d features serve FID / rFID as feature kind "classifier"
(`psvae_jax.evals.features`, `--config.classifier_weights=OUT`), and the logits the
"class_accuracy" evaluator: the share of generated samples the classifier assigns to the class
they were generated for. Its FID numbers are comparable only between runs scored with the same
classifier file, never with Inception FID.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors.numpy import save_file

from psvae_jax import parallel
from psvae_jax import pixels
from psvae_jax import runtime
from psvae_jax.data import pipeline
from psvae_jax.data import provenance
from psvae_jax.data import specs
from psvae_jax.data import subsets
from psvae_jax.weights import common

FEATURE_DIM = 128
KIND = "classifier"


class Classifier(nn.Module):
  """uint8-range images (B, H, W, 3) -> (features (B, 128), logits (B, num_classes)).

  Images are resized to `image_size` first, so any input size is accepted.
  """

  num_classes: int
  image_size: int = 32
  width: int = 16

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = pixels.to_float(images)
    if x.shape[1:3] != (self.image_size, self.image_size):
      x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, 3), "bilinear")
    # 32 px: 32x32x16 -> 16x16x32 -> 8x8x64 -> 8x8x64 (~10 MFLOP per image forward).
    for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (4, 1))):
      x = nn.Conv(self.width * mult, (3, 3), strides=stride, name=f"conv{i}")(x)
      x = nn.relu(nn.GroupNorm(num_groups=8, name=f"norm{i}")(x))
    feats = nn.relu(nn.Dense(FEATURE_DIM, name="fc")(jnp.mean(x, axis=(1, 2))))
    return feats, nn.Dense(self.num_classes, name="head")(feats)


def sidecar_path(weights: str) -> str:
  return weights + ".json"


def _accuracy(apply: Callable, params, images: np.ndarray, labels: np.ndarray, batch: int):
  correct = []
  for i in range(0, len(images), batch):
    logits = apply(params, images[i : i + batch])
    correct.append(np.asarray(jnp.argmax(logits, -1)) == labels[i : i + batch])
  hits = np.concatenate(correct).astype(np.float64)
  se = float(hits.std(ddof=1) / np.sqrt(len(hits))) if len(hits) > 1 else float("nan")
  return float(hits.mean()), se


def train(
    data_spec: str,
    out: str,
    *,
    image_size: int = 32,
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 5e-3,
    eval_every: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
  """Trains the classifier (module docstring) and writes OUT and OUT.json; returns the sidecar.

  Raises:
    ValueError: the data have no class labels, or a split is empty.
  """
  t0 = time.time()
  data_cfg = specs.parse_data_spec(data_spec, image_size)
  train_set = pipeline.read_split(data_cfg, "train")
  test_set = pipeline.read_split(data_cfg, "eval")
  class_names = provenance.describe_splits(data_cfg)["class_names"]  # checked across the splits
  if not class_names or (train_set["label"] < 0).any():
    raise ValueError(f"--data={data_spec!r}: a classifier needs class labels (class folders).")
  images = pixels.to_uint8(train_set["image"])
  labels = train_set["label"].astype(np.int32)
  rest, val = subsets.split(labels, max(len(class_names), len(labels) // 10), seed)
  test_images, test_labels = pixels.to_uint8(test_set["image"]), test_set["label"].astype(np.int32)
  logging.info(
      "classifier: read %d train, %d test images in %.1f s",
      len(labels),
      len(test_labels),
      time.time() - t0,
  )

  mesh = parallel.make_mesh(-1, 1)
  parallel.check_batch_divides_mesh(batch_size, mesh)
  module = Classifier(num_classes=len(class_names), image_size=image_size)
  params = module.init(jax.random.key(seed), images[:1])["params"]
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
  opt = tx.init(params)
  image_sharding, label_sharding = parallel.batch_sharding(mesh, 4), parallel.batch_sharding(
      mesh, 1
  )

  @jax.jit
  def step(params, opt, x, y):
    def loss_fn(p):
      _, logits = module.apply({"params": p}, x)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  apply = jax.jit(lambda p, x: module.apply({"params": p}, x)[1])
  rng = np.random.default_rng(seed)
  best = (-1.0, params, 0)
  for i in range(1, steps + 1):
    idx = rest[rng.integers(0, len(rest), batch_size)]
    flip = rng.random(batch_size) < 0.5  # horizontal flips: clothes and most photos allow them
    x = np.where(flip[:, None, None, None], images[idx][:, :, ::-1], images[idx])
    x, y = jax.device_put(x, image_sharding), jax.device_put(labels[idx], label_sharding)
    params, opt, loss = step(params, opt, x, y)
    if i % eval_every == 0 or i == steps:
      val_acc, _ = _accuracy(apply, params, images[val], labels[val], 500)
      logging.info("classifier step %d: loss %.4f, validation accuracy %.4f", i, loss, val_acc)
      if val_acc > best[0]:
        best = (val_acc, params, i)
  val_acc, params, best_step = best
  test_acc, test_se = _accuracy(apply, params, test_images, test_labels, 500)
  meta = {
      "kind": KIND,
      "class_names": class_names,
      "image_size": image_size,
      "feature_dim": FEATURE_DIM,
      "data": data_spec,
      "steps": steps,
      "best_step": best_step,
      "num_train": int(len(rest)),
      "num_validation": int(len(val)),
      "validation_accuracy": val_acc,
      "num_test": int(len(test_labels)),
      "test_accuracy": test_acc,
      "test_accuracy_se": test_se,
      "seconds": time.time() - t0,
  }
  save_file({k: np.asarray(v) for k, v in common.flatten(params).items()}, out)
  with open(sidecar_path(out), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  logging.info("classifier -> %s: %s", out, meta)
  return meta


def load(weights: str) -> tuple[Classifier, Any, dict[str, Any]]:
  """(module, params, sidecar) of a trained classifier; ValueError names what is wrong."""
  try:
    with open(sidecar_path(weights), encoding="utf-8") as f:
      meta = json.load(f)
  except OSError as e:
    raise ValueError(
        f"Classifier sidecar {sidecar_path(weights)!r} cannot be read ({e}): train one with "
        "python -m psvae_jax.evals.feature_net --data=... --out=..."
    ) from None
  module = Classifier(num_classes=len(meta["class_names"]), image_size=int(meta["image_size"]))
  size = int(meta["image_size"])
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  params = common.build_params(
      common.read_state_dict(weights), abstract, what=f"classifier {weights}"
  )
  return module, params, meta


def load_feature_net(weights: str, image_size: int) -> tuple[Callable, int]:
  """(jitted uint8 images -> (B, 128) features, 128): the "classifier" feature net loader."""
  del image_size  # the classifier resizes to its own size
  module, params, _ = load(weights)
  return runtime.no_grad_jit(
      functools.partial(lambda p, x: module.apply({"params": p}, x)[0], params)
  ), (FEATURE_DIM)


def load_logits(weights: str) -> tuple[Callable, list[str]]:
  """(jitted uint8 images -> (B, K) logits, class names) for the class_accuracy evaluator."""
  module, params, meta = load(weights)
  fn = runtime.no_grad_jit(
      functools.partial(lambda p, x: module.apply({"params": p}, x)[1], params)
  )
  return fn, list(meta["class_names"])


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  try:
    meta = train(
        f.data,
        f.out,
        image_size=f.image_size,
        steps=f.steps,
        batch_size=f.batch_size,
        seed=f.seed,
    )
  except ValueError as e:
    raise SystemExit(f"feature_net: {e}") from None
  print(
      f"{f.out}: test accuracy {meta['test_accuracy']:.4f} +- {meta['test_accuracy_se']:.4f} "
      f"(n={meta['num_test']}; validation {meta['validation_accuracy']:.4f}, "
      f"n={meta['num_validation']}; {len(meta['class_names'])} classes)"
  )


if __name__ == "__main__":
  flags.DEFINE_string("data", None, "KIND:ARGS data spec with class labels, e.g. folder:path=DIR.")
  flags.DEFINE_string("out", None, "Output weights (.safetensors); the sidecar is OUT.json.")
  flags.DEFINE_integer("image_size", 32, "Input side the classifier works at.")
  flags.DEFINE_integer("steps", 800, "Training steps.")
  flags.DEFINE_integer("batch_size", 128, "Batch size (divisible by the device count).")
  flags.DEFINE_integer("seed", 0, "Seed (init, batches, validation split).")
  flags.mark_flags_as_required(["data", "out"])
  app.run(main)
