"""The latent cache writer: encodes a dataset once with a frozen PS-VAE (`write_cache`,
`ensure_cache`); its CLI is `python -m psvae_jax.cache_latents` (usage there).

Batches are sharded over all devices (parallel.to_global); with several processes each
encodes its contiguous share of the source and writes its own shard file, all processes
running the same number of (padded) steps. The format is described in `latents.py`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import time
from typing import Any

from absl import logging
from array_record.python import array_record_module
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from psvae_jax import latent_stats
from psvae_jax import parallel
from psvae_jax.data import config
from psvae_jax.data import iterators
from psvae_jax.data import latents
from psvae_jax.data import pipeline
from psvae_jax.data import sources


class _Indexed:
  """A source whose records also carry their index."""

  def __init__(self, source: Any):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {**self._source[int(index)], "index": int(index)}


def _records(source: Any, data_cfg: Any, start: int, stop: int, counts: dict[str, int]):
  """Good preprocessed records of source[start:stop], in order; counts the rest."""
  cfg = config.complete(data_cfg)
  preprocess = pipeline.preprocess_from_cfg(cfg, train=False, source=source)
  ds = grain.MapDataset.source(_Indexed(source))[start:stop]
  ds = ds.map(lambda r: {**preprocess.random_map(r, None), "index": r["index"]})
  threads = int(cfg.num_threads or 0)
  read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(64, threads))
  for record in ds.to_iter_dataset(read):
    for kind in record.pop(iterators.KINDS_KEY, ()):
      counts[kind] = counts.get(kind, 0) + 1
    if iterators.SKIP in record:
      counts[record[iterators.SKIP]] = counts.get(record[iterators.SKIP], 0) + 1
      continue
    yield record


@functools.lru_cache(maxsize=8)
def _encode_fn(ae: Any, mesh: jax.sharding.Mesh, store: str, seed: int):
  """Jitted (params, images, step) -> (mu float32, second): std, or a sample."""
  out = parallel.batch_sharding(mesh, 4)

  def encode(params, images, step):
    mu, logvar = ae.encode_with(params, images)  # (B, h, w, C)
    mu = mu.astype(jnp.float32)
    std = jnp.exp(0.5 * logvar.astype(jnp.float32))
    if store == "sample":
      key = jax.random.fold_in(jax.random.key(seed), step)
      return mu, mu + std * jax.random.normal(key, mu.shape, jnp.float32)
    return mu, std

  return jax.jit(encode, out_shardings=(out, out))


def _encoded_batches(
    ae: Any,
    mesh: jax.sharding.Mesh,
    records: Any,
    *,
    local: int,
    num_steps: int,
    store: str,
    seed: int,
):
  """Yields (records, mu, second, source mu or None) per step, the arrays host-local float32
  (n, h, w, C); the source's mu for paired records (their "source_image": instruction editing).

  Every process runs num_steps steps (padding with zero images once its records run
  out), as the sharded encode is one program over all processes.
  """
  encode = _encode_fn(ae, mesh, store, seed)
  spec = parallel.batch_sharding(mesh, 4).spec
  size = ae.image_size
  t0 = time.time()
  paired = None  # whether records carry a source image (known from the first one)
  for step in range(num_steps):
    chunk = [r for _, r in zip(range(local), records)]
    if paired is None and chunk:
      paired = "source_image" in chunk[0]
    keys = ("image", "source_image") if paired else ("image",)
    images = {k: np.zeros((local, size, size, 3), np.float32) for k in keys}  # padding: 0
    if chunk:
      batch = pipeline.collate(chunk)
      for k in keys:
        images[k][: len(chunk)] = batch[k]
    out = {}
    for k in keys:
      x = parallel.to_global({"image": images[k]}, mesh)["image"]
      out[k] = [
          np.asarray(multihost_utils.global_array_to_host_local_array(a, mesh, spec))
          for a in encode(ae.params, x, step)
      ]
    mu, second = out["image"]
    source_mu = out["source_image"][0][: len(chunk)] if paired else None
    if step % 50 == 0 or step + 1 == num_steps:
      rate = (step + 1) / max(time.time() - t0, 1e-9)
      logging.info(
          "cache: batch %d/%d, %.1f batches/s, about %.0f s left.",
          step + 1,
          num_steps,
          rate,
          (num_steps - step - 1) / rate,
      )
    yield chunk, mu[: len(chunk)], second[: len(chunk)], source_mu


def ensure_cache(ae: Any, data_cfg: Any, out_dir: str, **kwargs: Any) -> bool:
  """`write_cache` unless `out_dir` already holds a cache (a re-run keeps it): True if written."""
  if (pathlib.Path(out_dir).expanduser() / latents.META_FILE).exists():
    return False
  write_cache(ae, data_cfg, out_dir, **kwargs)
  return True


def write_cache(
    ae: Any,
    data_cfg: Any,
    out_dir: str,
    *,
    batch_size: int = 256,
    dtype: str = "bfloat16",
    store: str = "mean_std",
    split: str = "train",
    seed: int = 0,
    autoencoder_dir: str = "",
) -> dict[str, Any]:
  """Encodes `data_cfg`'s split with `ae` into `out_dir`; returns the meta dict.

  Args:
    ae: a loaded autoencoder (`frozen_psvae.load_autoencoder`).
    data_cfg: data config (e.g. from `specs.parse_data_spec`); image_size = ae.image_size.
    out_dir: the cache directory (must not hold a cache yet).
    batch_size: global batch size, divisible by the number of devices.
    dtype: stored dtype (a key of latents.DTYPES).
    store: "mean_std" (mu and std) or "sample" (one z = mu + std * eps).
    split: source split.
    seed: noise seed for store="sample".
    autoencoder_dir: the autoencoder's workdir, recorded in meta.json.
  """
  out = pathlib.Path(out_dir).expanduser()
  if (out / latents.META_FILE).exists():
    raise FileExistsError(f"{out} already holds a latent cache; remove it or pick another.")
  out.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh(-1, 1)
  parallel.check_batch_divides_mesh(batch_size, mesh)
  index, count = jax.process_index(), jax.process_count()
  local = iterators.per_process_batch(batch_size, count)
  source = sources.get_source(data_cfg, split)
  start, stop = iterators.shard_bounds(len(source), index, count, drop_remainder=False)
  counts: dict[str, int] = {}
  batches = _encoded_batches(
      ae,
      mesh,
      _records(source, data_cfg, start, stop, counts),
      local=local,
      store=store,
      seed=seed,
      num_steps=math.ceil(math.ceil(len(source) / count) / local),
  )
  writer = array_record_module.ArrayRecordWriter(
      str(out / latents.shard_file_name(index, count)), "group_size:1"
  )
  moments, written, shape, paired = latent_stats.Moments(), 0, None, False
  for chunk, mu, second, source_mu in batches:
    paired = paired or source_mu is not None
    shape = mu.shape[1:]  # (h, w, C)
    for row, record in enumerate(chunk):
      arrays = {"mu": mu[row], "std": second[row]} if store == "mean_std" else {"z": second[row]}
      if source_mu is not None:
        arrays["source_mu"] = source_mu[row]
      writer.write(
          latents.serialize(arrays, record["caption"], record["label"], record["index"], dtype)
      )
    if chunk:  # sigma^2, or for a stored sample its one-draw estimate (z - mu)^2
      var = np.square(second if store == "mean_std" else second - mu)  # (n, h, w, C)
      moments = moments.merge(latent_stats.Moments.of(mu, var))
    written += len(chunk)
  writer.close()
  return _finish(
      out,
      data_cfg,
      moments,
      written,
      shape,
      count,
      counts,
      dict(
          dtype=dtype,
          store=store,
          split=split,
          seed=seed,
          autoencoder=os.path.abspath(autoencoder_dir) if autoencoder_dir else "",
          class_names=list(getattr(source, "class_names", []) or []),
          paired=paired,  # records hold "source_mu" (instruction editing)
      ),
  )


def _finish(
    out: pathlib.Path,
    data_cfg: Any,
    moments: latent_stats.Moments,
    written: int,
    shape: tuple[int, ...],
    count: int,
    counts: dict[str, int],
    options: dict[str, Any],
) -> dict[str, Any]:
  """Gathers totals over processes; process 0 writes latent_stats.npz and meta.json.

  The statistics are those of mu and of the sampled z over the cache (latent_stats.py).
  """
  channels = shape[-1]
  local = np.concatenate(
      [[written], moments.to_vector(channels), [counts.get(name, 0) for name in iterators.COUNTERS]]
  )
  gathered = np.asarray(multihost_utils.process_allgather(local)).reshape(count, -1)
  per_file = gathered[:, 0].astype(int).tolist()
  total = int(sum(per_file))
  if total == 0:
    raise ValueError(f"No usable record in --data ({data_cfg.source}): nothing cached.")
  width = 1 + 3 * channels  # Moments.to_vector
  merged = latent_stats.Moments()
  for row in gathered[:, 1 : 1 + width]:
    merged = merged.merge(latent_stats.Moments.from_vector(row))
  counters = dict(zip(iterators.COUNTERS, gathered[:, 1 + width :].sum(0).astype(int).tolist()))
  meta = {
      "format": latents.FORMAT,
      "shape": list(shape),
      "count": total,
      "files": [latents.shard_file_name(i, count) for i in range(count)],
      "counts": per_file,
      "image_size": int(data_cfg.image_size),
      "data": data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg),
      "counters": {k: v for k, v in counters.items() if v},
      **options,
  }
  if jax.process_index() == 0:
    latent_stats.save(str(out), merged.stats(num_images=total, images_seen=total))
    (out / latents.META_FILE).write_text(json.dumps(meta, indent=2))
  multihost_utils.sync_global_devices("latent_cache_written")
  logging.info(
      "Latent cache %s: %d records %s (%s), skipped/repaired %s.",
      out,
      total,
      shape,
      options["dtype"],
      meta["counters"],
  )
  return meta
