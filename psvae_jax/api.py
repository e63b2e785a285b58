"""Python API: load a trained stage-3 workdir and generate, encode and decode.

  from psvae_jax import api
  pipe = api.load("runs/demo/dit")
  images = pipe.generate(["a red circle on the left and a blue square on the right"], seed=0)
  z = pipe.encode(images)            # normalised latents (B, h, w, C)
  again = pipe.decode(z)             # uint8 (B, H, W, 3)
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from psvae_jax import autoencoders
from psvae_jax import checkpoint
from psvae_jax import parallel


class Pipeline:
  """A trained DiT with its frozen PS-VAE and text encoder, sharded over a mesh."""

  def __init__(self, workdir: str, mesh: jax.sharding.Mesh | None = None):
    from psvae_jax.train.tasks import dit as dit_task  # pylint: disable=g-import-not-at-top
    config = autoencoders.read_config(workdir)
    if config.stage != "dit":
      raise ValueError(f"{workdir} holds a {config.stage!r} run; api.load wants a stage-3 (dit) "
                       "workdir.")
    self.mesh = mesh or parallel.make_mesh(-1, 1)
    self.config = config
    self.task = dit_task.DiTTask(config, self.mesh)
    self.gen = self.task.gen
    abstract, _ = jax.eval_shape(self.task.init, jax.random.key(0))
    shardings = parallel.param_shardings(abstract, self.mesh, min_size=config.shard_min_size)
    self.params = checkpoint.restore_params(
        workdir, parallel.with_shardings(abstract, shardings), key="ema_params")
    consts = self.task.constants()
    self.consts = jax.device_put(consts, parallel.param_shardings(
        consts, self.mesh, min_size=config.shard_min_size))

  @property
  def image_size(self) -> int:
    return self.task.ae.image_size

  def generate(self, prompts: Sequence[str] | None = None, steps: int = 50, cfg: float = 7.5,
               eta: float = 0.0, seed: int = 0, labels: Sequence[int] | None = None,
               cfg_rescale: float | None = None,
               guidance_interval: tuple[float, float] | None = None) -> np.ndarray:
    """Prompts (or class labels) -> uint8 images (N, H, W, 3). Same seed, same images.

    cfg_rescale: guidance rescale phi (None: the model config's sample.cfg_rescale).
    guidance_interval: (lo, hi) noise levels (1 = pure noise) where cfg applies, scale 1 elsewhere
      (None: the model config's sample.guidance_interval; (0, 1) = every step).
    """
    if prompts is not None and isinstance(prompts, str):
      prompts = [prompts]
    return self.gen.generate(self.params, self.consts, prompts=prompts, labels=labels,
                             steps=steps, cfg=cfg, eta=eta, seed=seed, cfg_rescale=cfg_rescale,
                             guidance_interval=guidance_interval)

  def _put(self, x: np.ndarray) -> jax.Array:
    n = x.shape[0]
    pad = (-n) % self.mesh.size
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    return jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim)), n

  @functools.partial(jax.jit, static_argnums=0)
  def _encode(self, consts, x):
    return self.gen.encode(consts, x)

  def encode(self, images: np.ndarray) -> np.ndarray:
    """uint8 (or [-1, 1] float) images at the model's resolution -> normalised latents."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
      x = x.astype(np.float32) / 127.5 - 1.0
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"Images must be {self.image_size}x{self.image_size}, got {x.shape[1:3]}.")
    xs, n = self._put(x.astype(np.float32))
    return np.asarray(jax.device_get(self._encode(self.consts, xs)))[:n]

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Normalised latents (B, h, w, C) -> uint8 images."""
    zs, n = self._put(np.asarray(latents, np.float32))
    return self.gen.to_images(self.consts, zs)[:n]


def load(dit_dir: str, mesh: jax.sharding.Mesh | None = None) -> Pipeline:
  """Loads a stage-3 workdir (its config names the autoencoder and text encoder dirs)."""
  return Pipeline(dit_dir, mesh)


__all__ = ["Pipeline", "load"]
