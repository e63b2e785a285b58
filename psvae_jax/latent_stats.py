"""Per-channel latent statistics (DIR/latent_stats.npz): what stage 3 normalises with.

Stage 2 measures them after training (`compute`, called by the autoencoder task's `finish`),
the latent-cache writer over its cache; the DiT trains on (z - mean) / std. A DiT workdir
keeps its own copy of its autoencoder's file (`keep_copy`, `stats_dir`). A file holds the
statistics of both latents stage 3 can train on, per channel, float32 (C,):

  mean, std         the sampled latent z = mu + sigma * eps: diffusion.latent_sample=True (the
                    default), and every latent cache read for training
  mu_mean, mu_std   the posterior mean mu: diffusion.latent_sample=False
  latent            "sample", naming what mean/std describe
  num_images        images asked for (config.latent_stats_images); images_seen: measured
  step              the autoencoder's training step they describe (-1: unknown)

The statistics of z are those of its distribution, with no noise drawn: E[z] = E[mu] and
Var[z] = Var[mu] + E[sigma^2]. Files written before this format hold only mean/std, and those
describe mu: `load` reads them as mu's (`LatentStats.legacy`), and `select(sample=True)` falls
back to them with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from psvae_jax import parallel
from psvae_jax import workdir as workdir_lib

NORMALIZED_STD_RANGE = (0.5, 2.0)  # a normalised latent's std outside this earns a warning
_MIN_STD = 1e-6


@dataclasses.dataclass(frozen=True)
class LatentStats:
  """Per-channel statistics of mu and of the sampled z, float32 (C,) each."""

  mu_mean: np.ndarray
  mu_std: np.ndarray
  sample_mean: np.ndarray | None = None  # None in a file of the old format (mu only)
  sample_std: np.ndarray | None = None
  num_images: int = 0
  images_seen: int = 0
  step: int = -1

  @property
  def legacy(self) -> bool:
    """True for a file of the old format: its mean/std describe mu, z's are unknown."""
    return self.sample_mean is None

  def select(self, sample: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the latent stage 3 trains on: sampled z if `sample`, else mu."""
    if not sample:
      return self.mu_mean, self.mu_std
    if self.legacy:
      logging.warning(
          "latent_stats.npz holds the statistics of mu only (written before sampled-z "
          "statistics), but the DiT trains on sampled z (diffusion.latent_sample=True): "
          "normalising with mu's. Delete it and re-run the stage-2 command to measure z's."
      )
      return self.mu_mean, self.mu_std
    return self.sample_mean, self.sample_std


@dataclasses.dataclass(frozen=True)
class Moments:
  """Running per-channel moments over latent positions: count, mean of mu, centred sum of
  squares of mu (m2) and sum of sigma^2 (var_sum). float64; merged as Chan et al. do."""

  count: float = 0.0
  mean: Any = 0.0
  m2: Any = 0.0
  var_sum: Any = 0.0

  @classmethod
  def of(cls, mu: np.ndarray, var: np.ndarray) -> Moments:
    """Moments of host arrays mu and sigma^2, (..., C)."""
    c = mu.shape[-1]
    mu = np.asarray(mu, np.float64).reshape(-1, c)
    mean = mu.mean(0)
    return cls(
        mu.shape[0],
        mean,
        np.square(mu - mean).sum(0),
        np.asarray(var, np.float64).reshape(-1, c).sum(0),
    )

  def merge(self, other: Moments) -> Moments:
    if not other.count:
      return self
    if not self.count:
      return other
    n = self.count + other.count
    delta = other.mean - self.mean
    return Moments(
        n,
        self.mean + delta * other.count / n,
        self.m2 + other.m2 + np.square(delta) * self.count * other.count / n,
        self.var_sum + other.var_sum,
    )

  def to_vector(self, channels: int) -> np.ndarray:
    """[count, mean (C), m2 (C), var_sum (C)], e.g. to gather over processes."""
    return np.concatenate(
        [
            [self.count],
            *(
                np.broadcast_to(np.asarray(v, np.float64), channels)
                for v in (self.mean, self.m2, self.var_sum)
            ),
        ]
    )

  @classmethod
  def from_vector(cls, v: np.ndarray) -> Moments:
    count, rest = v[0], v[1:].reshape(3, -1)
    return cls(float(count), *rest)

  def stats(self, **meta) -> LatentStats:
    """LatentStats of mu and of z = mu + sigma * eps; meta: num_images, images_seen, step."""
    if not self.count:
      raise ValueError("No latent was measured.")
    mu_var = self.m2 / self.count
    z_var = mu_var + self.var_sum / self.count
    f32 = lambda x: np.asarray(x, np.float32)
    return LatentStats(
        f32(self.mean),
        f32(np.sqrt(np.maximum(mu_var, _MIN_STD**2))),
        f32(self.mean),
        f32(np.sqrt(np.maximum(z_var, _MIN_STD**2))),
        **meta,
    )


def batch_moments(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """(3, C) float32 of one batch: mean of mu, centred sum of squares of mu, sum of sigma^2."""
  c = mu.shape[-1]
  mu = mu.reshape(-1, c).astype(jnp.float32)  # (B*h*w, C)
  mean = jnp.mean(mu, 0)
  return jnp.stack(
      [
          mean,
          jnp.sum(jnp.square(mu - mean), 0),
          jnp.sum(jnp.exp(logvar.reshape(-1, c).astype(jnp.float32)), 0),
      ]
  )


@functools.lru_cache(maxsize=4)
def _moments_fn(encode: Callable[..., Any], mesh: jax.sharding.Mesh) -> Callable[..., jax.Array]:
  """One jitted (params, images) -> batch_moments per (encode, mesh): compiled once per shape."""
  return jax.jit(lambda p, x: batch_moments(*encode(p, x)), out_shardings=parallel.replicated(mesh))


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def compute(
    encode: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]],
    params: Any,
    batches: Iterator[dict[str, np.ndarray]],
    mesh: jax.sharding.Mesh,
    num_batches: int,
    *,
    num_images: int = 0,
    step: int = -1,
    log_every_s: float = 10.0,
) -> LatentStats:
  """Statistics over `num_batches` batches of `batches` (per-process {"image": ...}).

  The batches become global arrays sharded over the mesh; `encode(params, images) ->
  (mu, logvar)` and the moments run as one jitted program (compiled on the first batch, once
  per `encode` and shape: pass the same function, e.g. a bound method, to reuse it).
  Progress (images, rate, ETA) is logged every `log_every_s` seconds.
  """
  fn = _moments_fn(encode, mesh)
  total = Moments()
  pending, seen, per_position = None, 0, 0
  t0 = last = time.monotonic()
  for i in range(num_batches):
    x = parallel.to_global(next(batches), mesh)["image"]
    out = fn(params, x)  # dispatched; the previous batch's figures are fetched meanwhile
    if i == 0:
      mu_shape = jax.eval_shape(encode, params, x)[0].shape  # (B, h, w, C)
      per_position = int(np.prod(mu_shape[1:-1]))
      jax.block_until_ready(out)
      logging.info(
          "latent_stats: first batch (with compiling) in %.1f s; %d batches of %d "
          "images (%d asked).",
          time.monotonic() - t0,
          num_batches,
          x.shape[0],
          num_images,
      )
      t0 = last = time.monotonic()
    if pending is not None:
      total = total.merge(_host_moments(*pending))
    pending, seen = (out, x.shape[0] * per_position), seen + x.shape[0]
    now = time.monotonic()
    if i and (now - last >= log_every_s or i == num_batches - 1):
      rate = (seen - x.shape[0]) / max(now - t0, 1e-9)  # after the first batch
      logging.info(
          "latent_stats: %d/%d images, %.1f images/s, ETA %s.",
          seen,
          num_batches * x.shape[0],
          rate,
          _duration((num_batches - i - 1) * x.shape[0] / max(rate, 1e-9)),
      )
      last = now
  total = total.merge(_host_moments(*pending))
  return total.stats(num_images=num_images, images_seen=seen, step=step)


def _host_moments(rows: jax.Array, count: int) -> Moments:
  mean, m2, var_sum = np.asarray(jax.device_get(rows), np.float64)
  return Moments(count, mean, m2, var_sum)


def save(directory: str, stats: LatentStats) -> None:
  """Writes DIRECTORY/latent_stats.npz (process 0 only)."""
  if jax.process_index() != 0:
    return
  if stats.legacy:
    raise ValueError("Refusing to write latent statistics without the sampled z's.")
  with (epath.Path(directory) / workdir_lib.LATENT_STATS).open("wb") as f:
    np.savez(
        f,
        mean=stats.sample_mean,
        std=stats.sample_std,
        mu_mean=stats.mu_mean,
        mu_std=stats.mu_std,
        latent="sample",
        num_images=stats.num_images,
        images_seen=stats.images_seen,
        step=stats.step,
    )


def load(directory: str) -> LatentStats | None:
  """DIRECTORY/latent_stats.npz (either format), or None when there is none."""
  path = epath.Path(directory) / workdir_lib.LATENT_STATS
  if not path.exists():
    return None
  with path.open("rb") as f, np.load(f) as data:
    if "mu_mean" not in data:  # the old format: mean/std of mu
      return LatentStats(data["mean"], data["std"])
    if str(data["latent"]) != "sample":
      raise ValueError(f"{path}: latent={data['latent']}, expected 'sample'.")
    return LatentStats(
        data["mu_mean"],
        data["mu_std"],
        data["mean"],
        data["std"],
        num_images=int(data["num_images"]),
        images_seen=int(data["images_seen"]),
        step=int(data["step"]),
    )


def stats_dir(dit_dir: str, autoencoder_dir: str) -> str:
  """The directory a DiT's latent statistics are read from: its own copy (`keep_copy`) if it
  has one, else (a DiT trained before copies were kept) its autoencoder's."""
  return dit_dir if (epath.Path(dit_dir) / workdir_lib.LATENT_STATS).exists() else autoencoder_dir


def keep_copy(autoencoder_dir: str, dit_dir: str) -> str:
  """Gives a DiT workdir its own copy of the autoencoder's latent_stats.npz; returns stats_dir.

  Stage 3 calls it when it starts: process 0 copies the file unless the DiT workdir already
  holds one (a resumed run keeps the copy it trained with, even if stage 2 has since
  re-measured its statistics). Training and `psvae_jax.api` then normalise with the copy.
  Nothing is copied while the autoencoder has no statistics.
  """
  src, dst = (
      epath.Path(autoencoder_dir) / workdir_lib.LATENT_STATS,
      epath.Path(dit_dir) / workdir_lib.LATENT_STATS,
  )
  if jax.process_index() == 0:
    if not dst.exists() and src.exists():
      tmp = dst.with_name(workdir_lib.LATENT_STATS + ".tmp")
      tmp.write_bytes(src.read_bytes())
      tmp.rename(dst)  # readers see no file or the whole file
      logging.info("latent_stats: copied %s to %s; this DiT normalises with the copy.", src, dst)
    elif dst.exists() and src.exists() and dst.read_bytes() != src.read_bytes():
      logging.warning(
          "latent_stats: %s differs from %s; this DiT keeps the copy it trained with.", src, dst
      )
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"latent_stats_copy:{dit_dir}")
  return stats_dir(dit_dir, autoencoder_dir)


def is_current(directory: str, num_images: int, step: int) -> bool:
  """True when DIRECTORY holds statistics of both latents over `num_images` at `step`."""
  stats = load(directory)
  return (
      stats is not None
      and not stats.legacy
      and stats.num_images == num_images
      and stats.step == step
  )


def _figures(x: np.ndarray) -> str:
  return np.array2string(
      np.asarray(x),
      max_line_width=100,
      threshold=10_000,
      formatter={"float_kind": lambda v: f"{v:.3g}"},
  )


def describe(stats: LatentStats) -> str:
  """Readable lines: min/median/max of each statistic, then every channel's figure."""
  rows = [
      ("z mean", stats.sample_mean),
      ("z std", stats.sample_std),
      ("mu mean", stats.mu_mean),
      ("mu std", stats.mu_std),
  ]
  rows = [(name, v) for name, v in rows if v is not None]
  head = (
      f"latent_stats over {stats.images_seen or '?'} images (step {stats.step}), "
      "per channel min / median / max:"
  )
  lines = [head] + [
      f"  {name:8s} {np.min(v):.3g} / {np.median(v):.3g} / {np.max(v):.3g}" for name, v in rows
  ]
  lines += [f"  {name}: {_figures(v)}" for name, v in rows]
  return "\n".join(lines)


def check_normalized(
    data_mean: np.ndarray, data_std: np.ndarray, mean: np.ndarray, std: np.ndarray, what: str
) -> float:
  """The std of latents with statistics (data_mean, data_std) once normalised with (mean, std)
  (root mean square over channels, about 0); warns when it leaves NORMALIZED_STD_RANGE."""
  per_channel = (np.square(data_std) + np.square(data_mean - mean)) / np.square(std)  # (C,)
  value = float(np.sqrt(np.mean(per_channel)))
  lo, hi = NORMALIZED_STD_RANGE
  if not lo <= value <= hi:
    ratio = np.asarray(data_std) / np.asarray(std)
    logging.warning(
        "Normalised latent std %.3g is outside [%g, %g] (%s; per-channel std ratio min/median/"
        "max %.3g/%.3g/%.3g): the DiT's latent scale does not match its noise.",
        value,
        lo,
        hi,
        what,
        np.min(ratio),
        np.median(ratio),
        np.max(ratio),
    )
  return value
