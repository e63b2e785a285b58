"""Latent cache writer: encodes a dataset once with a frozen PS-VAE (absl app).

  python -m psvae_jax.data.cache --autoencoder=runs/demo/psvae --out=runs/demo/latents \
      --data=shapes:num=2048 [--batch_size=256] [--dtype=bfloat16|float16|float32] \
      [--store=mean_std|sample] [--split=train]

`--data` names a source as `KIND:ARGS`, ARGS being comma-separated `key=value` fields of
the data config (configs/common.py `c.data`), the first of which may be a bare value:
  shapes:num=2048,seed=0                  synthetic shapes (num = data.num_train)
  folder:/data/images,num_train=10000     an image folder (a bare directory also works)
  tfds:imagenet2012,path=/data/tfds,label_captions=true
                                          a prepared tfds dataset (path = data_dir)
`image_size` defaults to the autoencoder's (a different one is an error); images are
center-cropped, never flipped. Bad records are skipped and counted in meta.json.

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
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
from array_record.python import array_record_module
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from configs import common
from psvae_jax import autoencoders
from psvae_jax import cli
from psvae_jax import latent_stats
from psvae_jax import parallel
from psvae_jax import runtime
from psvae_jax.data import config
from psvae_jax.data import iterators
from psvae_jax.data import latents
from psvae_jax.data import pipeline
from psvae_jax.data import sources
from psvae_jax.data import specs


def define_flags() -> None:
  """Defines the app's flags (not at import, so other apps can import this module)."""
  flags.DEFINE_string("autoencoder", None, "Trained PS-VAE workdir.")
  flags.DEFINE_string("data", None, "Source spec, e.g. shapes:num=2048 (see above).")
  flags.DEFINE_string("out", None, "Output directory of the cache.")
  flags.DEFINE_integer("batch_size", 256, "Global encoding batch size.")
  flags.DEFINE_enum("dtype", "bfloat16", list(latents.DTYPES), "Stored dtype.")
  flags.DEFINE_enum(
      "store",
      "mean_std",
      ["mean_std", "sample"],
      "Store mu and std (sampled at read time) or one sample.",
  )
  flags.DEFINE_enum("split", "train", ["train", "eval"], "Source split.")
  flags.DEFINE_integer("seed", 0, "Seed of --store=sample.")
  flags.mark_flags_as_required(["autoencoder", "data", "out"])


# `KIND:ARGS` data specs (psvae_jax/data/specs.py; the name kept for callers of this module).
parse_data_spec = specs.parse_data_spec


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
  cfg = config.resolve(data_cfg)
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
    ae: a loaded autoencoder (`autoencoders.load_autoencoder`).
    data_cfg: data config (e.g. from `parse_data_spec`); image_size = ae.image_size.
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


def main(argv: list[str]) -> None:
  del argv
  cli.quiet_libraries()  # Orbax INFO lines only with -v 1; the cache's progress lines stay
  runtime.initialize()
  f = flags.FLAGS
  # Input errors before any work, in one line: an existing cache, a missing autoencoder or data.
  if (pathlib.Path(f.out).expanduser() / latents.META_FILE).exists():
    sys.exit(
        f"cache: error: {f.out} already holds a latent cache; remove it or pick another --out."
    )
  if not (pathlib.Path(f.autoencoder).expanduser() / "config.json").is_file():
    sys.exit(
        f"cache: error: --autoencoder={f.autoencoder} is not a trained workdir (no config.json)."
    )
  ae = autoencoders.load_autoencoder(f.autoencoder)
  try:
    data_cfg = parse_data_spec(f.data, ae.image_size)
    sources.get_source(data_cfg, f.split)  # the data exist and can be listed
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"cache: error: {e}")
  write_cache(
      ae,
      data_cfg,
      f.out,
      batch_size=f.batch_size,
      dtype=f.dtype,
      store=f.store,
      split=f.split,
      seed=f.seed,
      autoencoder_dir=f.autoencoder,
  )


if __name__ == "__main__":
  # Run as a program: the demo's shapes world provides data.source="shapes" (--data=shapes:...).
  # Not when imported: the library does not depend on psvae_jax.shapes.
  from psvae_jax.shapes import plugin as shapes_plugin  # pylint: disable=g-import-not-at-top

  shapes_plugin.register()
  define_flags()
  app.run(main, flags_parser=cli.flags_parser("cache"))
