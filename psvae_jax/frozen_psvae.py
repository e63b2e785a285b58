"""The trained, frozen PS-VAE that stage 3 and inference use: a stage-1/2 workdir (or export)
loaded for encoding and decoding (stage 3, the latent cache, the API).

  ae = load_autoencoder("runs/demo/psvae")
  mu, logvar = ae.encode(images)          # (B, h, w, C), images (B, H, W, 3) in [-1, 1]
  z = ae.normalize(mu)                    # per-channel (z - mean) / std, from latent_stats.npz
  images = ae.decode(ae.denormalize(z))   # (B, H', W', 3) in about [-1, 1]

normalize / denormalize take `sample`: True (default, as diffusion.latent_sample) uses the
statistics of the sampled latent z = mu + sigma * eps, False those of mu; a DiT must be
sampled with the statistics it was trained with (psvae_jax/latent_stats.py);
`latent_normalization` picks them for a stage-3 config (training and `psvae_jax.api`), which
reads them from the DiT workdir's own copy (`load_autoencoder(..., stats_dir=...)`).
The module-level `normalize` / `denormalize` (and `Autoencoder.encode_normalized_with`) are the
one formula, also used with the stage-3 constants by `psvae_jax.generation.Generator`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from psvae_jax import builders
from psvae_jax import checkpoint
from psvae_jax import latent_stats
from psvae_jax import parallel
from psvae_jax import runtime
from psvae_jax import workdir as workdir_lib
from psvae_jax.models.autoencoder import PSVAE


def normalize(z: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Per-channel (z - mean) / std: the latent stage 3 trains and samples in."""
  return (z - mean) / std


def denormalize(z: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Inverse of `normalize`: z * std + mean."""
  return z * std + mean


@dataclasses.dataclass
class Autoencoder:
  """A frozen PS-VAE: module, EMA params (sharded on `mesh`), config and latent statistics."""

  model: PSVAE
  params: Any
  config: ml_collections.ConfigDict
  stats: latent_stats.LatentStats | None = None  # None: no latent_stats.npz yet
  stats_dir: str = ""  # the directory `stats` were read from ("": not read from a file)

  @property
  def latent_channels(self) -> int:
    return self.config.model.latent_channels

  @property
  def image_size(self) -> int:
    return self.config.data.image_size

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    s = self.image_size
    mu, _ = jax.eval_shape(
        self.encode_with, self.params, jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
    )
    return tuple(mu.shape[1:])

  @functools.partial(jax.jit, static_argnums=0)
  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.model.apply({"params": self.params}, images, method=PSVAE.encode)

  def encode_with(self, params, images):
    """Pure variant for use inside other jitted functions."""
    return self.model.apply({"params": params}, images, method=PSVAE.encode)

  def encode_normalized_with(self, params, images, mean, std):
    """Images in [-1, 1] -> `normalize`d posterior means (B, h, w, C); pure (for jit)."""
    mu, _ = self.encode_with(params, images)
    return normalize(mu, mean, std)

  def decode_with(self, params, z):
    return self.model.apply({"params": params}, z, method=PSVAE.decode)

  @functools.partial(runtime.no_grad_jit, static_argnums=0)
  def decode(self, z: jax.Array) -> jax.Array:
    return self.model.apply({"params": self.params}, z, method=PSVAE.decode)

  def normalization(self, sample: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std), float32 (C,): of sampled z if `sample`, else of mu."""
    if self.stats is None:
      raise ValueError(
          "This autoencoder workdir has no latent_stats.npz (stages 1 and 2 write it at "
          "the end of training)."
      )
    return self.stats.select(sample)

  def normalize(self, z: jax.Array, sample: bool = True) -> jax.Array:
    mean, std = self.normalization(sample)
    return normalize(z, jnp.asarray(mean), jnp.asarray(std))

  def denormalize(self, z: jax.Array, sample: bool = True) -> jax.Array:
    mean, std = self.normalization(sample)
    return denormalize(z, jnp.asarray(mean), jnp.asarray(std))

  def __hash__(self):
    return id(self)

  def __eq__(self, other):
    return self is other


def load_autoencoder(
    workdir: str,
    mesh: jax.sharding.Mesh | None = None,
    min_shard_size: int = 2**16,
    stats_dir: str | None = None,
) -> Autoencoder:
  """Restores a stage-1/2 workdir's EMA params, sharded over `mesh` (default: all devices).

  The latent statistics are read from `stats_dir` (a DiT workdir's own copy, see
  latent_stats.stats_dir), by default from `workdir`.
  """
  config = workdir_lib.read_config(workdir)
  if config.stage not in ("svae", "psvae"):
    raise ValueError(f"{workdir} holds a {config.stage!r} run, not an autoencoder.")
  mesh = mesh or parallel.make_mesh(-1, 1)
  model = builders.build_psvae(config.model, dtype=jnp.dtype(config.dtype))
  s = config.data.image_size
  dummy = jnp.zeros((1, s, s, 3))
  abstract = jax.eval_shape(model.init, jax.random.key(0), dummy)["params"]
  disc = builders.build_discriminator(config)  # trained beside it (loss.adv > 0): not loaded
  if disc is not None and not checkpoint.is_export(workdir):
    abstract["disc"] = jax.eval_shape(disc.init, jax.random.key(0), dummy)["params"]
  shardings = parallel.param_shardings(abstract, mesh, min_size=min_shard_size)
  params = checkpoint.restore_params(
      workdir, parallel.with_shardings(abstract, shardings), key="ema_params"
  )
  params.pop("disc", None)
  stats_dir = stats_dir or workdir
  return Autoencoder(model, params, config, latent_stats.load(stats_dir), str(stats_dir))


def latent_normalization(config, ae: Autoencoder) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) stage 3 normalises with: the statistics of what it trains on.

  Encoding on the fly trains on sampled z (diffusion.latent_sample=True) or on mu; a latent
  cache always yields sampled z. Warns when that latent, normalised, has a std outside
  latent_stats.NORMALIZED_STD_RANGE (judged from the cache's own statistics on a cache).
  """
  sample = bool(config.diffusion.latent_sample)
  on_cache = config.data.source == "latents"
  if on_cache and not sample:
    raise ValueError(
        "--config.diffusion.latent_sample=False trains on mu, but a latent cache "
        "(data.source=latents) yields sampled z = mu + sigma * eps: keep "
        "latent_sample=True or encode images on the fly."
    )
  source = ae.stats_dir or config.autoencoder
  if ae.stats is None:
    raise ValueError(f"{source} has no {workdir_lib.LATENT_STATS}: finish its stage 2 first.")
  mean, std = ae.normalization(sample)
  data, where = ae.stats, f"{source}/{workdir_lib.LATENT_STATS}"
  cached = latent_stats.load(config.data.path) if on_cache else None
  if cached is not None and not cached.legacy:
    data, where = cached, f"{config.data.path}/{workdir_lib.LATENT_STATS}"
  if not (data.legacy and sample):  # (select has warned: z's statistics are unknown)
    latent_stats.check_normalized(
        *data.select(sample),
        mean,
        std,
        f"{'sampled z' if sample else 'mu'} as {where} describes it",
    )
  used = "mu" if not sample or ae.stats.legacy else "z"
  logging.info(
      "Stage 3 trains on %s, normalised with the '%s' statistics of %s:\n%s",
      "sampled z" if sample else "mu",
      used,
      source,
      latent_stats.describe(ae.stats),
  )
  return mean, std
