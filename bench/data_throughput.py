"""Benchmark: input pipeline and latent-cache throughput against the train steps they feed.

  python bench/data_throughput.py [--num_jpegs=256] [--batch_size=32] [--seconds=5]

Prints images/s of
  * the grain pipeline (decode + random crop + flip + batch) over ~256 px JPEGs written
    to a temp dir, with 0 and 2 worker processes, for a 256 px output and for the tiny
    configs' 32 px output (JPEG draft decoding makes the latter cheaper);
  * the stage-2 tiny train step (configs/psvae.py:tiny, `loop.train_step` under jax.jit)
    and stage 3 (n/a until it exists: see `stage3_images_per_second`);
  * reading a latent cache (`build_latent_iterator`) and encoding on the fly with the
    same tiny autoencoder (random weights: the speed does not depend on them);
and the ratios `pipeline / train step` and `cache read / encode`, e.g.
  ratio pipeline/stage2_tiny workers=0: 12.3
Run on an idle machine: the figures are wall-clock rates.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

_NUM_JPEGS = flags.DEFINE_integer("num_jpegs", 256, "JPEG files to generate.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size (the tiny configs' is 32).")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Measuring time per figure.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker-process counts to measure.")
_CACHE_SIZE = flags.DEFINE_integer("cache_size", 512, "Images in the latent cache.")


def write_jpegs(folder: pathlib.Path, num: int) -> None:
  """Smooth random ~256 px JPEGs (various aspect ratios), like photos in file size."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for i in range(num):
    width = int(rng.integers(256, 341))
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, 256), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 8, (256, width, 3))
    pixels = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)


def rate(next_batch: Callable[[], Any], batch_size: int, seconds: float, warmup: int = 2) -> float:
  """Images per second of repeatedly calling next_batch (after warm-up calls)."""
  for _ in range(warmup):
    next_batch()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or count < 3:
    next_batch()
    count += 1
  return count * batch_size / (time.perf_counter() - start)


def pipeline_rate(folder: pathlib.Path, image_size: int, workers: int) -> float:
  from psvae_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  cfg = dict(
      source="folder",
      path=str(folder),
      image_size=image_size,
      num_train=0,
      num_eval=0,
      seed=0,
      crop="random",
      random_flip=True,
      num_workers=workers,
      prefetch=2,
  )
  it = pipeline.build_train_iterator(cfg, global_batch_size=_BATCH.value, seed=0)
  try:
    return rate(lambda: next(it), _BATCH.value, _SECONDS.value, warmup=3 + 2 * workers)
  finally:
    if hasattr(it, "close"):
      it.close()


def stage2_images_per_second() -> float:
  """The tiny stage-2 train step (as in psvae_jax/train/loop.py), jitted, on all devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import psvae  # pylint: disable=g-import-not-at-top
  from psvae_jax import parallel  # pylint: disable=g-import-not-at-top
  from psvae_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop, optim, tasks  # pylint: disable=g-import-not-at-top

  config = psvae.get_config("tiny")
  config.batch_size = _BATCH.value
  mesh = parallel.make_mesh(-1, 1)
  try:
    task = tasks.get_task(config, mesh)
  except TypeError:  # Older signature: get_task(config).
    task = tasks.get_task(config)
  tx = optim.make_optimizer(
      config.optim,
      config.num_train_steps,
      functools.partial(optim.label_params, groups=task.param_groups),
  )
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  consts = task.constants()
  step = jax.jit(
      functools.partial(loop.train_step, task=task, tx=tx, config=config), donate_argnums=0
  )
  it = pipeline.build_train_iterator(config.data, global_batch_size=_BATCH.value, seed=0)
  batch = parallel.to_global(next(it), mesh)
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step(holder["state"], batch, consts)
    jax.block_until_ready(metrics)

  return rate(one_step, _BATCH.value, _SECONDS.value)


def stage3_images_per_second() -> float | None:
  """TODO(stage 3): time the tiny DiT train step on cached latents, as stage 2 above.

  Return images/s of `loop.train_step` for configs/dit.py:tiny with batches from
  `latents.build_latent_iterator`; None prints "n/a".
  """
  return None


def tiny_autoencoder() -> Any:
  """The tiny S-VAE (configs/svae.py:tiny) with random weights, as load_autoencoder gives."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import svae  # pylint: disable=g-import-not-at-top
  from psvae_jax import autoencoders  # pylint: disable=g-import-not-at-top
  from psvae_jax import builders  # pylint: disable=g-import-not-at-top

  config = svae.get_config("tiny")
  model = builders.build_psvae(config.model, dtype=jnp.float32)
  size = config.data.image_size
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  return autoencoders.Autoencoder(model, params, config)


def cache_rates(ae: Any, workdir: pathlib.Path) -> tuple[float, float]:
  """(cache read images/s, on-the-fly encode images/s) at the same batch size."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from psvae_jax.data import cache, latents  # pylint: disable=g-import-not-at-top

  size = ae.image_size
  data_cfg = cache.parse_data_spec(f"shapes:num={_CACHE_SIZE.value}", size)
  cache.write_cache(ae, data_cfg, str(workdir / "cache"), batch_size=_BATCH.value)
  x = jnp.asarray(
      np.random.default_rng(0).uniform(-1, 1, (_BATCH.value, size, size, 3)), jnp.float32
  )
  encode = lambda: jax.block_until_ready(ae.encode(x))
  encode_rate = rate(encode, _BATCH.value, _SECONDS.value)
  it = latents.build_latent_iterator(
      {"path": str(workdir / "cache"), "num_train": 0}, global_batch_size=_BATCH.value, seed=0
  )
  read_rate = rate(lambda: next(it), _BATCH.value, _SECONDS.value)
  return read_rate, encode_rate


def main(argv: list[str]) -> None:
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_threefry_partitionable", True)
  from psvae_jax.shapes import plugin as shapes_plugin  # pylint: disable=g-import-not-at-top

  shapes_plugin.register()  # data.source="shapes" (the tiny configs, the latent cache)
  print(
      f"devices: {jax.device_count()} x {jax.devices()[0].platform}, "
      f"cpus: {os.cpu_count()}, batch {_BATCH.value}"
  )
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    (tmp / "jpegs").mkdir()
    write_jpegs(tmp / "jpegs", _NUM_JPEGS.value)
    pipe = {}
    for workers in map(int, _WORKERS.value):
      for out in (256, 32):
        pipe[workers, out] = pipeline_rate(tmp / "jpegs", out, workers)
        print(
            f"pipeline {_NUM_JPEGS.value} x 256px JPEG -> {out}px, random crop + flip, "
            f"workers={workers}: {pipe[workers, out]:.1f} images/s"
        )
    stage2 = stage2_images_per_second()
    stage3 = stage3_images_per_second()
    print(f"stage2_tiny train step (32px, batch {_BATCH.value}): {stage2:.1f} images/s")
    print("stage3_tiny train step: " + ("n/a" if stage3 is None else f"{stage3:.1f} images/s"))
    for workers in map(int, _WORKERS.value):
      for name, consumed in (("stage2_tiny", stage2), ("stage3_tiny", stage3)):
        for out, note in ((32, ""), (256, " (256px output)")):
          value = "n/a" if consumed is None else f"{pipe[workers, out] / consumed:.1f}"
          print(f"ratio pipeline/{name} workers={workers}{note}: {value}")
    read, encode = cache_rates(tiny_autoencoder(), tmp)
    print(
        f"latent cache read: {read:.1f} images/s; tiny encode on the fly: " f"{encode:.1f} images/s"
    )
    print(f"ratio cache_read/encode: {read / encode:.1f}")


if __name__ == "__main__":
  app.run(main)
