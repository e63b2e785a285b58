"""A representation encoder that means something in the shapes world, trained by the project.

  python -m psvae_jax.experiments.rep_encoder --out=runs/shapes_dinov2 [--steps=1200]

The demo's default "DINOv2" is a random ViT: its features carry no semantics, so the semantic
loss of stages 1-2 has nothing to preserve. This trains a DINOv2-shaped ViT of the `tiny`
encoder's shape (32 px, 4 px patches, 64 wide, 3 blocks) supervised per patch token, as a
segmentation: each token's features must say which shape and which colour (or background) covers
its 4x4 px patch, through one linear map shared by all tokens (a shape is not visible in 4x4
px: the token must gather it from its neighbours). Training scenes are TRAINING compositions
only (`world.sample_scene_in(rng, "train")`). It is saved as a Hugging Face Dinov2 directory
(config.json + model.safetensors, `weights.dinov2.save_dinov2`) that goes through the same
import as real DINOv2 weights: `--config.model.encoder.weights=DIR` on configs/svae.py:tiny,
and transformers' `Dinov2Model.from_pretrained(DIR)`.

Linear probes on the frozen features (ridge regression; fit on one set of scenes, penalty chosen
on a second, accuracy with its standard error on a third) report, beside the same probes on a
random ViT of the same shape (the demo's encoder): per token, the shape and the colour of the
object covering it (object tokens only; one read-out shared by all tokens), and per image, the
object's position from the mean-pooled features. OUT/probe.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from psvae_jax import cli
from psvae_jax.experiments import representation
from psvae_jax.models import vit
from psvae_jax.shapes import world
from psvae_jax.weights import dinov2 as dinov2_weights

IMAGE_SIZE = 32
NUM_SHAPE, NUM_COLOR = len(world.SHAPES) + 1, len(world.COLORS) + 1  # + "nothing there"


def encoder_module() -> vit.DinoV2:
  """The `tiny` autoencoder encoder's shape (representation.tiny_vit)."""
  return representation.tiny_vit(IMAGE_SIZE)


def scenes(num: int, seed: int, split: str = "train", num_objects: int | None = None):
  """`num` rendered scenes of a composition split: uint8 images (num, S, S, 3), per patch token
  the shape and colour ids of the object covering at least half of it (num, h, w), 0 =
  background, and the scenes' objects."""
  g = IMAGE_SIZE // encoder_module().patch_size
  images, shapes, colors, objs = [], [], [], []
  for i in range(num):
    background, objects = world.scene(i, seed, split, num_objects)
    images.append(world.render(objects, IMAGE_SIZE, background))
    s, c = np.zeros((g, g), np.int32), np.zeros((g, g), np.int32)
    for o in objects:
      alone = world.render([dataclasses.replace(o, color="white")], IMAGE_SIZE)[..., 0] / 255.0
      cover = alone.reshape(g, IMAGE_SIZE // g, g, IMAGE_SIZE // g).mean((1, 3))  # (g, g)
      s[cover >= 0.5] = world.SHAPES.index(o.shape) + 1
      c[cover >= 0.5] = list(world.COLORS).index(o.color) + 1
    shapes.append(s)
    colors.append(c)
    objs.append(objects)
  return np.stack(images), np.stack(shapes), np.stack(colors), objs


class _Head(nn.Module):
  """Patch features (B, h, w, D) -> per-token logits (B, h, w, shapes + colours): one linear
  map shared by every token."""

  @nn.compact
  def __call__(self, feats):
    return nn.Dense(NUM_SHAPE + NUM_COLOR)(feats)


def train(steps: int = 1200, batch_size: int = 64, num_images: int = 8192, seed: int = 0):
  """(module, params, info): the encoder trained on the attributes of training compositions."""
  import optax  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  module, head = encoder_module(), _Head()
  images, shapes, colors, _ = scenes(num_images, seed=seed + 1000)
  x = representation.normalize(images)
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"enc": module.init(k1, x[:1])["params"]}
  params["head"] = head.init(k2, module.apply({"params": params["enc"]}, x[:1]))["params"]
  if steps < 1:
    raise ValueError(f"steps={steps} must be >= 1.")
  warmup = min(50, steps // 10)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, warmup, max(steps, warmup + 1))
  tx = optax.adamw(schedule, weight_decay=1e-4)
  opt = tx.init(params)

  def loss_fn(p, xb, sb, cb):
    logits = head.apply({"params": p["head"]}, module.apply({"params": p["enc"]}, xb))
    ce = optax.softmax_cross_entropy_with_integer_labels
    # Object tokens are ~13% of all: weighted to carry half the loss.
    w = jnp.where(sb > 0, 6.0, 1.0)
    per_token = ce(logits[..., :NUM_SHAPE], sb) + ce(logits[..., NUM_SHAPE:], cb)
    return (w * per_token).sum() / w.sum()

  @jax.jit
  def step(p, o, xb, sb, cb):
    loss, g = jax.value_and_grad(loss_fn)(p, xb, sb, cb)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  rng = np.random.default_rng(seed)
  loss = float("nan")
  for _ in range(steps):
    idx = rng.integers(0, num_images, batch_size)
    params, opt, loss = step(params, opt, x[idx], shapes[idx], colors[idx])
  info = {"train_seconds": time.time() - t0, "final_loss": float(loss), "steps": steps}
  return module, params["enc"], info


def features(apply: Any, params: Any, images: np.ndarray) -> np.ndarray:
  """Frozen patch features: uint8 (B, S, S, 3) -> float64 (B, h, w, D); `apply(params, x)` is
  the encoder's jitted forward (made once per probe: each new jit compiles again)."""
  out = [
      np.asarray(apply(params, representation.normalize(images[i : i + 256])))
      for i in range(0, len(images), 256)
  ]
  return np.concatenate(out).astype(np.float64)


def linear_probe(
    module: vit.DinoV2, params: Any, num_fit: int = 512, num_test: int = 512, seed: int = 0
) -> dict[str, dict[str, float]]:
  """Linear read-outs of a ViT's frozen features (`probe_features`; position from the
  mean-pooled tokens)."""
  apply = jax.jit(lambda p, x: module.apply({"params": p}, x))
  return probe_features(
      lambda images: features(apply, params, images), num_fit, num_test, seed, pool=True
  )


def probe_features(
    feature_fn: Callable[[np.ndarray], np.ndarray],
    num_fit: int = 512,
    num_test: int = 512,
    seed: int = 0,
    pool: bool = True,
) -> dict[str, dict[str, float]]:
  """Linear read-outs of frozen features on scenes of training compositions.

  feature_fn: uint8 images (B, 32, 32, 3) -> features (B, 8, 8, D) on the 4 px token grid (an
  encoder's patch tokens, or an autoencoder's latent: psvae_jax/experiments/ablation.py).
  shape / colour: per token, of the object covering it (object tokens only), one read-out for
  all tokens (samples: tokens; the s.e. treats them as independent, so it is optimistic);
  position: per single-object image, from the mean-pooled tokens (`pool`) or all of them
  flattened (a latent, whose layout is the position). {name: {mean, se, n}}."""
  sets = {}
  for name, n, s in (("fit", num_fit, 1), ("val", 256, 2), ("test", num_test, 3)):
    images, shapes, colors, objs = scenes(n, seed=seed * 100 + s + 2000)
    f = np.asarray(feature_fn(images), np.float64)
    if f.shape[:3] != shapes.shape:
      raise ValueError(f"features {f.shape} are not on the {shapes.shape[1:]} token grid")
    on = shapes > 0
    single = np.array([len(o) == 1 for o in objs])
    whole = f[single].mean((1, 2)) if pool else f[single].reshape(int(single.sum()), -1)
    sets[name] = {
        "shape": (f[on], shapes[on] - 1),
        "colour": (f[on], colors[on] - 1),
        "position": (
            whole,
            np.array([world.POSITIONS.index(o[0].position) for o, one in zip(objs, single) if one]),
        ),
    }
  return {
      k: representation.ridge_probe(sets["fit"][k], sets["val"][k], sets["test"][k])
      for k in sets["fit"]
  }


def build(out_dir: str, steps: int = 1200, seed: int = 0) -> dict:
  """Trains, saves (Hugging Face Dinov2 directory) and probes; returns and writes probe.json."""
  module, params, info = train(steps=steps, seed=seed)
  dinov2_weights.save_dinov2(out_dir, module, params, IMAGE_SIZE)
  loaded_module, loaded = dinov2_weights.load_dinov2(out_dir)  # what the autoencoder will read
  random_params = module.init(jax.random.key(seed + 7), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))
  report = {
      "trained": linear_probe(loaded_module, loaded, seed=seed),
      "random": linear_probe(module, random_params["params"], seed=seed),
      "training": info,
  }
  with open(os.path.join(out_dir, "probe.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  return report


def define_flags() -> None:
  """The CLI's flags (defined when run as a program only: importing must not claim --out)."""
  flags.DEFINE_string("out", None, "Directory to write (config.json, model.safetensors).")
  flags.DEFINE_integer("steps", 1200, "Training steps (batch 64).")
  flags.DEFINE_integer("seed", 0, "Seed.")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  if not f.out or f.steps < 1:
    sys.exit("rep_encoder: error: give --out=DIR and --steps >= 1. (--help lists the flags)")
  report = build(f.out, f.steps, f.seed)
  print(f"rep_encoder: wrote {f.out} ({report['training']['train_seconds']:.0f} s)")
  for attr in ("shape", "colour", "position"):
    t, r = report["trained"][attr], report["random"][attr]
    print(
        f"  linear probe {attr:8s} trained {t['mean']:.3f} ± {t['se']:.3f}   "
        f"random ViT {r['mean']:.3f} ± {r['se']:.3f}  (n={t['n']})"
    )


if __name__ == "__main__":
  define_flags()
  cli.quiet_by_default()
  app.run(main, flags_parser=cli.flags_parser("rep_encoder"))
