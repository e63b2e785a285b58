"""The CPU FID proxy: a small classifier trained on the synthetic shapes, used as FID's feature net.

`fid_proxy` / `rfid_proxy` run the same FID code (psvae_jax/evals/fid.py) on the 128-d
penultimate features of this network instead of Inception's pool3. It is trained in
seconds on the shapes data to predict, for each of the 5 positions, which shape (or none)
and which colour (or none) is there, so its features see exactly what the shapes captions
describe. Its numbers are NOT comparable with Inception FID (other features, other scale,
other data); they only rank runs of this demo against each other.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from psvae_jax import pixels
from psvae_jax.shapes import world
from psvae_jax.weights import common

FEATURE_DIM = 128
NUM_POS, NUM_SHAPE, NUM_COLOR = len(world.POSITIONS), len(world.SHAPES) + 1, len(world.COLORS) + 1


class ProxyNet(nn.Module):
  """uint8-range images (B, S, S, 3) -> (features (B, 128), logits (B, 5, 4 + 8))."""

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = pixels.to_float(images)
    for i, (ch, stride) in enumerate(((32, 2), (64, 2), (128, 1))):
      x = nn.relu(nn.Conv(ch, (3, 3), strides=stride, name=f"conv{i}")(x))
    feats = nn.relu(nn.Dense(FEATURE_DIM, name="fc")(x.reshape(x.shape[0], -1)))
    logits = nn.Dense(NUM_POS * (NUM_SHAPE + NUM_COLOR), name="head")(feats)
    return feats, logits.reshape(-1, NUM_POS, NUM_SHAPE + NUM_COLOR)


def caption_labels(caption: str) -> tuple[np.ndarray, np.ndarray]:
  """(shape index (5,), colour index (5,)) per position; 0 = nothing there."""
  shape_idx, color_idx = np.zeros(NUM_POS, np.int32), np.zeros(NUM_POS, np.int32)
  for obj in world.parse_caption(caption):
    p = world.POSITIONS.index(obj.position)
    shape_idx[p] = world.SHAPES.index(obj.shape) + 1
    color_idx[p] = list(world.COLORS).index(obj.color) + 1
  return shape_idx, color_idx


def shapes_dataset(num: int, image_size: int, seed: int) -> dict[str, np.ndarray]:
  imgs, s_lab, c_lab = [], [], []
  for i in range(num):
    img, cap = world.generate(i, image_size, seed=seed)
    s, c = caption_labels(cap)
    imgs.append(img)
    s_lab.append(s)
    c_lab.append(c)
  return {"image": np.stack(imgs), "shape": np.stack(s_lab), "color": np.stack(c_lab)}


def _loss(params, module, batch):
  _, logits = module.apply({"params": params}, batch["image"])
  ls = optax_ce(logits[..., :NUM_SHAPE], batch["shape"])
  lc = optax_ce(logits[..., NUM_SHAPE:], batch["color"])
  return ls + lc


def optax_ce(logits, labels):
  import optax  # pylint: disable=g-import-not-at-top

  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def train_proxy(
    path: str,
    image_size: int = 32,
    num_images: int = 2048,
    steps: int = 150,
    batch_size: int = 64,
    seed: int = 1234,
) -> dict[str, float]:
  """Trains the proxy on shapes (seed distinct from the demo's data) and saves it to `path`.

  Returns: {"proxy_train_seconds", "proxy_accuracy"} (per-position attribute accuracy on
  512 held-out scenes).
  """
  import optax  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  module = ProxyNet()
  data = shapes_dataset(num_images, image_size, seed)
  params = module.init(jax.random.key(seed), data["image"][:1])["params"]
  tx = optax.adam(2e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch):
    loss, g = jax.value_and_grad(_loss)(params, module, batch)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, num_images, batch_size)
    params, opt, loss = step(params, opt, {k: v[idx] for k, v in data.items()})
  held = shapes_dataset(512, image_size, seed + 1)
  _, logits = jax.jit(module.apply)({"params": params}, held["image"])
  acc = float(
      np.mean(
          np.concatenate(
              [
                  np.asarray(jnp.argmax(logits[..., :NUM_SHAPE], -1)) == held["shape"],
                  np.asarray(jnp.argmax(logits[..., NUM_SHAPE:], -1)) == held["color"],
              ]
          )
      )
  )
  save_file({k: np.asarray(v) for k, v in common.flatten(params).items()}, path)
  out = {
      "proxy_train_seconds": time.time() - t0,
      "proxy_accuracy": acc,
      "proxy_final_loss": float(loss),
  }
  logging.info("fid proxy trained: %s -> %s", out, path)
  return out


def load_proxy(path: str, image_size: int = 32) -> tuple[ProxyNet, dict[str, Any]]:
  """(module, params) of a saved proxy; a mismatched file raises ValueError naming entries."""
  module = ProxyNet()
  abstract = jax.eval_shape(
      module.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))
  )["params"]
  return module, common.build_params(
      common.read_state_dict(path), abstract, what=f"fid proxy {path}"
  )


def random_proxy(seed: int = 0, image_size: int = 32) -> tuple[ProxyNet, dict[str, Any]]:
  """Random-init proxy (tests only)."""
  module = ProxyNet()
  return (
      module,
      module.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))["params"],
  )


def feature_fn(module, params):
  """uint8-range images -> (B, 128) features, a pure function for jit."""
  return functools.partial(lambda p, x: module.apply({"params": p}, x)[0], params)


def load_feature_net(path: str, image_size: int) -> tuple[Any, int]:
  """(jitted uint8 images -> (B, 128) features, 128) of a saved proxy: the loader that
  `plugin.register()` registers as the "proxy" feature net (psvae_jax/evals/features.py)."""
  module, params = load_proxy(path, image_size)
  return jax.jit(feature_fn(module, params)), FEATURE_DIM
