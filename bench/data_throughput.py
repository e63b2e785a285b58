"""Benchmark: input pipeline and latent-cache throughput against the train steps they feed.

  python bench/data_throughput.py [--images=photos|synthetic] [--num_jpegs=256] \
      [--workers=0,1,2] [--seconds=5]

Images: `photos` (default) writes scikit-image's bundled photographs (astronaut, coffee, chelsea,
rocket, the Hubble deep field, retina, motorcycles, ...: 300 to 1411 px, colour and greyscale) as
quality-90 JPEGs at their own sizes, cycled to --num_jpegs files; `synthetic` writes smooth random
~256 px JPEGs. Prints images/s of
  * the grain pipeline (decode + random crop + flip + resize + batch) from the image folder and
    from the same images prepared as ArrayRecord (`python -m psvae_jax.data.prepare`; the tfds
    path), with each --workers count (images/s and per worker), to 256 px and to the tiny 32 px;
  * the train steps the pipeline feeds, here: the stage-2 tiny step (configs/psvae.py:tiny,
    production `loop.train_step`) at --stage2_batch and the stage-3 tiny step
    (bench/_common.production_dit_step, class-conditioned, on cached 8x8x16 latents);
  * what one GPU would consume at the paper's stage 2: XLA's FLOP count per image of the
    production dinov2_b step (256 px) against an H100's bf16 peak (989 TFLOP/s) at --mfu;
  * reading a latent cache (`build_latent_iterator`) and encoding on the fly with the tiny
    autoencoder (random weights: the speed does not depend on them);
and the ratios, e.g. `ratio pipeline(folder, 256px)/gpu_stage2 workers=2: 0.41` (how much of one
GPU's appetite the CPU workers feed) and `ratio cache_read/encode: 12.0`.
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

_NUM_JPEGS = flags.DEFINE_integer("num_jpegs", 256, "JPEG files to write.")
_IMAGES = flags.DEFINE_enum("images", "photos", ["photos", "synthetic"], "What the JPEGs show.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Pipeline batch size (the tiny configs' is 32).")
_STAGE2_BATCH = flags.DEFINE_integer("stage2_batch", 8, "Batch of the timed stage-2 step.")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Measuring time per figure.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker-process counts to measure.")
_SIZES = flags.DEFINE_list("sizes", ["256", "32"], "Pipeline output sizes (px).")
_MFU = flags.DEFINE_float("mfu", 0.35, "The GPU's model-FLOP utilisation (issue 19's target).")
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


def write_photos(folder: pathlib.Path, num: int) -> list[str]:
  """scikit-image's bundled photographs (shorter side >= 256 px) as JPEGs, cycled to `num` files;
  returns the photo names used."""
  import skimage  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  data = pathlib.Path(skimage.__file__).parent / "data"
  names = (
      "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg",
      "retina.jpg", "motorcycle_left.png", "motorcycle_right.png", "ihc.png", "camera.png",
      "moon.png", "brick.png", "grass.png", "gravel.png", "coins.png",
  )  # fmt: skip
  photos = []
  for name in names:
    if (data / name).is_file():
      im = Image.open(data / name).convert("RGB")
      if min(im.size) >= 256:
        photos.append((name, im))
  if not photos:
    raise SystemExit(f"no scikit-image photos under {data}")
  for i in range(num):
    photos[i % len(photos)][1].save(folder / f"{i:04d}.jpg", quality=90)
  return [n for n, _ in photos]


def rate(next_batch: Callable[[], Any], batch_size: int, seconds: float, warmup: int = 2) -> float:
  """Images per second of repeatedly calling next_batch (after warm-up calls)."""
  for _ in range(warmup):
    next_batch()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or count < 3:
    next_batch()
    count += 1
  return count * batch_size / (time.perf_counter() - start)


def pipeline_rate(source: dict, image_size: int, workers: int) -> float:
  """source: {"source": "folder", "path": DIR} or {"source": "tfds", "tfds_name", "path"}."""
  from psvae_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  cfg = dict(
      **source,
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


def _step_rate(step, state, batch, consts, batch_size: int) -> float:
  from bench import _common  # pylint: disable=g-import-not-at-top

  return rate(_common.StepRunner(step, state, batch, consts), batch_size, _SECONDS.value)


def stage2_images_per_second() -> float:
  """The production tiny stage-2 train step (bench/_common.production_stage2_step), jitted, on
  all devices, at --stage2_batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bench import _common  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

  b = _STAGE2_BATCH.value
  _, task, tx, step, shapes = _common.production_stage2_step("tiny", b)
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {k: jnp.asarray(rng.uniform(-1, 1, v), jnp.float32) for k, v in shapes.items()}
  return _step_rate(step, state, batch, task.constants(), b)


def stage3_images_per_second() -> float:
  """The production tiny stage-3 step (class-conditioned, 8x8x16 latents as the demo's cache
  gives) at --batch_size."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bench import _common  # pylint: disable=g-import-not-at-top
  from psvae_jax.train import loop  # pylint: disable=g-import-not-at-top

  b, shape = _BATCH.value, (8, 8, 16)
  config = _common.dit_class_config("tiny", b)
  task, tx, step = _common.production_dit_step(config, shape)
  state = jax.jit(functools.partial(loop.create_train_state, task=task, tx=tx))(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {
      "latent": jnp.asarray(rng.standard_normal((b, *shape)), jnp.float32),
      "label": jnp.asarray(rng.integers(0, 1000, (b,)), jnp.int32),
  }
  return _step_rate(step, state, batch, task.constants(), b)


def gpu_stage2_images_per_second() -> tuple[float, float]:
  """(images/s, GFLOP per image) one H100 would train at the paper's stage 2 at --mfu."""
  from bench import _common  # pylint: disable=g-import-not-at-top
  from bench import flops  # pylint: disable=g-import-not-at-top

  per_image = _common.stage2_flops_per_image("dinov2_b", 8)
  return _MFU.value * flops.peak_tflops("H100") * 1e12 / per_image, per_image / 1e9


def tiny_autoencoder() -> Any:
  """The tiny S-VAE (configs/svae.py:tiny) with random weights, as load_autoencoder gives."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import svae  # pylint: disable=g-import-not-at-top
  from psvae_jax import frozen_psvae  # pylint: disable=g-import-not-at-top
  from psvae_jax import builders  # pylint: disable=g-import-not-at-top

  config = svae.get_config("tiny")
  model = builders.build_psvae(config.model, dtype=jnp.float32)
  size = config.data.image_size
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  return frozen_psvae.Autoencoder(model, params, config)


def cache_rates(ae: Any, workdir: pathlib.Path) -> tuple[float, float]:
  """(cache read images/s, on-the-fly encode images/s) at the same batch size."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from psvae_jax.data import cache, latents, specs  # pylint: disable=g-import-not-at-top

  size = ae.image_size
  data_cfg = specs.parse_data_spec(f"shapes:num={_CACHE_SIZE.value}", size)
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
  from psvae_jax import shapes_plugin  # pylint: disable=g-import-not-at-top

  shapes_plugin.register()  # data.source="shapes" (the tiny configs, the latent cache)
  print(
      f"devices: {jax.device_count()} x {jax.devices()[0].platform}, "
      f"cpus: {os.cpu_count()}, pipeline batch {_BATCH.value}"
  )
  workers_list, sizes = [int(w) for w in _WORKERS.value], [int(v) for v in _SIZES.value]
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    (tmp / "jpegs").mkdir()
    if _IMAGES.value == "photos":
      used = write_photos(tmp / "jpegs", _NUM_JPEGS.value)
      print(f"{_NUM_JPEGS.value} JPEGs of {len(used)} scikit-image photos: {', '.join(used)}")
    else:
      write_jpegs(tmp / "jpegs", _NUM_JPEGS.value)
      print(f"{_NUM_JPEGS.value} synthetic ~256 px JPEGs")
    from psvae_jax.data import prepare  # pylint: disable=g-import-not-at-top

    prepare.convert(str(tmp / "jpegs"), str(tmp / "tfds"), name="bench_jpegs")
    paths = {
        "folder": {"source": "folder", "path": str(tmp / "jpegs")},
        "arrayrecord": {"source": "tfds", "tfds_name": "bench_jpegs", "path": str(tmp / "tfds")},
    }
    pipe = {}
    for name, source in paths.items():
      for workers in workers_list:
        for out in sizes:
          r = pipe[name, workers, out] = pipeline_rate(source, out, workers)
          per = f", {r / workers:.1f} per worker" if workers else " (in-process)"
          print(
              f"pipeline {name} -> {out}px, random crop + flip, workers={workers}: "
              f"{r:.1f} images/s{per}"
          )
    stage2 = stage2_images_per_second()
    stage3 = stage3_images_per_second()
    gpu, gflop = gpu_stage2_images_per_second()
    print(f"stage2_tiny train step (32 px, batch {_STAGE2_BATCH.value}): {stage2:.1f} images/s")
    print(f"stage3_tiny train step (8x8x16 latents, batch {_BATCH.value}): {stage3:.1f} images/s")
    print(
        f"gpu_stage2 (dinov2_b, 256 px): {gflop:.0f} GFLOP per image (XLA's count of the "
        f"production step) -> {gpu:.0f} images/s on one H100 at {_MFU.value:.0%} MFU"
    )
    for name in paths:
      for workers in workers_list:
        for consumer, consumed, out in (
            ("stage2_tiny", stage2, 32),
            ("gpu_stage2", gpu, 256),
        ):
          if out in sizes:
            value = pipe[name, workers, out] / consumed
            print(f"ratio pipeline({name}, {out}px)/{consumer} workers={workers}: {value:.2f}")
    busiest = max(workers_list)
    if busiest:
      per_worker = pipe["arrayrecord", busiest, 256] / busiest
      print(
          f"workers one GPU needs at 256 px (ArrayRecord, {per_worker:.0f} images/s per "
          f"worker here): {gpu / per_worker:.1f}"
      )
    read, encode = cache_rates(tiny_autoencoder(), tmp)
    print(
        f"latent cache read: {read:.1f} images/s; tiny encode on the fly: {encode:.1f} images/s; "
        f"stage3_tiny consumes {stage3:.1f}"
    )
    print(f"ratio cache_read/encode: {read / encode:.1f}")
    print(f"ratio cache_read/stage3_tiny: {read / stage3:.1f}")


if __name__ == "__main__":
  app.run(main)
