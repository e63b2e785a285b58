"""Grain input pipeline: training batch iterator and a fixed evaluation set.

Train pipeline (per JAX process):
  source -> this process's contiguous shard -> seeded shuffle, repeated
  forever (reshuffled each epoch) -> decode / resize / crop / flip (uint8,
  per record; undecodable records become None) -> skip None records (counted)
  -> batch (drop remainder; to float32 in [-1, 1]) -> optional worker
  processes -> `BatchIterator`.

Batches are dicts of numpy arrays: "image" float32 (b, H, W, 3) in [-1, 1],
"caption" object array (b,) of str, "label" int32 (b,) (-1 when unlabelled),
with b = global_batch_size // jax.process_count().

The iterator is checkpointable: `get_state()` / `set_state()`, and
`iterator_checkpoint_args` gives the Orbax args for an item of a
CheckpointManager that uses grain's handler.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

from absl import logging
import grain
import numpy as np
from PIL import Image

from psvae_jax.data import sources

Record = dict[str, Any]
Batch = dict[str, np.ndarray]

_NUM_BAD = "num_bad"  # Per-record count of bad records skipped before it.
_MAX_CONSECUTIVE_BAD = 1000


def _load_image(record: Record, image_size: int) -> np.ndarray:
  """Decoded RGB pixels of a record: uint8 (H, W, 3)."""
  image = record.get("image")
  if isinstance(image, np.ndarray):
    if image.ndim == 2:
      image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
      raise ValueError(f"Bad image array shape {image.shape}.")
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    return np.asarray(image[..., :3], dtype=np.uint8)
  if isinstance(image, (bytes, bytearray)):
    pil = Image.open(io.BytesIO(image))
  elif "path" in record:
    pil = Image.open(record["path"])
  else:
    raise ValueError(f"Record has no pixels: keys {sorted(record)}.")
  with pil:
    pil.draft("RGB", (image_size, image_size))  # Fast JPEG downscaled decode.
    return np.asarray(pil.convert("RGB"), dtype=np.uint8)


def _resize_crop(image: np.ndarray, image_size: int, crop: str,
                 rng: np.random.Generator | None) -> np.ndarray:
  """Resizes the shorter side to image_size (bicubic) and crops the square."""
  height, width = image.shape[:2]
  if (height, width) == (image_size, image_size):
    return image
  scale = image_size / min(height, width)
  new_h = max(image_size, round(height * scale))
  new_w = max(image_size, round(width * scale))
  if (new_h, new_w) != (height, width):
    # PIL filters with a support scaled by the ratio: antialiased downscaling.
    image = np.asarray(Image.fromarray(image).resize(
        (new_w, new_h), Image.Resampling.BICUBIC))
  if crop == "random" and rng is not None:
    top = int(rng.integers(0, new_h - image_size + 1))
    left = int(rng.integers(0, new_w - image_size + 1))
  else:
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
  return image[top:top + image_size, left:left + image_size]


class Preprocess(grain.transforms.RandomMap):
  """Record -> {"image": uint8 (S, S, 3), "caption", "label"} or None if bad."""

  def __init__(self, image_size: int, crop: str = "center",
               random_flip: bool = False):
    if crop not in ("center", "random"):
      raise ValueError(f"crop must be 'center' or 'random', got {crop!r}.")
    self._image_size = int(image_size)
    self._crop = crop
    self._random_flip = bool(random_flip)

  def random_map(self, element: Record,
                 rng: np.random.Generator | None) -> Record | None:
    try:
      image = _load_image(element, self._image_size)
      image = _resize_crop(image, self._image_size, self._crop, rng)
    except Exception as e:  # pylint: disable=broad-exception-caught
      # Any undecodable / malformed input is skipped (and counted) downstream.
      logging.warning("Skipping bad record %s: %r",
                      element.get("path", "<in-memory>"), e)
      return None
    if self._random_flip and rng is not None and rng.random() < 0.5:
      image = image[:, ::-1]
    return {"image": np.ascontiguousarray(image),
            "caption": str(element.get("caption", "")),
            "label": np.int32(element.get("label", -1))}


class _SkipNoneIterator(grain.DatasetIterator):
  """Drops None elements, recording how many were dropped before each one."""

  def __next__(self) -> Record:
    skipped = 0
    while True:
      element = next(self._parent)
      if element is not None:
        return {**element, _NUM_BAD: np.int32(skipped)}
      skipped += 1
      if skipped >= _MAX_CONSECUTIVE_BAD:
        raise RuntimeError(
            f"{skipped} consecutive bad records: is the data source broken?")

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class _SkipNoneIterDataset(grain.IterDataset):
  """IterDataset view of `_SkipNoneIterator` (runs inside workers)."""

  def __iter__(self) -> _SkipNoneIterator:
    return _SkipNoneIterator(self._parent.__iter__())


def _collate(records: Sequence[Record]) -> Batch:
  """Stacks records: image uint8 -> float32 (b, S, S, 3) in [-1, 1]."""
  images = np.stack([r["image"] for r in records])  # (b, S, S, 3) uint8
  captions = np.empty(len(records), dtype=object)  # (b,) of str
  captions[:] = [r["caption"] for r in records]
  return {
      "image": images.astype(np.float32) / np.float32(127.5) - np.float32(1),
      "caption": captions,
      "label": np.array([r["label"] for r in records], dtype=np.int32),
      _NUM_BAD: np.array([r[_NUM_BAD] for r in records], dtype=np.int32),
  }


class BatchIterator(grain.DatasetIterator):
  """Yields training batches and counts the bad records that were skipped.

  State (`get_state`) is the grain pipeline state plus the bad-record count;
  it is JSON-serializable, as grain's Orbax checkpoint handler requires.
  """

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self.num_bad_records = 0

  def __next__(self) -> Batch:
    batch = dict(next(self._parent))
    num_bad = int(batch.pop(_NUM_BAD).sum())
    if num_bad:
      self.num_bad_records += num_bad
      logging.warning("Skipped %d bad records (%d in total).", num_bad,
                      self.num_bad_records)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._parent.get_state(),
            "num_bad_records": self.num_bad_records}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["pipeline"])
    self.num_bad_records = int(state.get("num_bad_records", 0))

  def __str__(self) -> str:
    return f"BatchIterator(num_bad_records={self.num_bad_records})"


def _preprocess_from_cfg(data_cfg: Any) -> Preprocess:
  random_flip = bool(sources.cfg_get(data_cfg, "random_flip", False))
  if random_flip and sources.cfg_get(data_cfg, "source") == "shapes":
    raise ValueError("random_flip must be off for shapes: captions say "
                     "left/right.")
  return Preprocess(
      image_size=int(sources.cfg_get(data_cfg, "image_size")),
      crop=sources.cfg_get(data_cfg, "crop", "center") or "center",
      random_flip=random_flip)


def build_train_iterator(data_cfg: Any, *, global_batch_size: int,
                         seed: int) -> BatchIterator:
  """Infinite, seeded, checkpointable iterator of this process's batches.

  Args:
    data_cfg: data config (see `sources.get_source`) with optional `crop`
      ("center" | "random"), `random_flip`, `num_workers` (0: in-process),
      `prefetch` (batches buffered per worker / in-process), `num_threads`
      (reader threads per process). Worker processes are spawned and read
      absl flags, so the program must have parsed them (absl.app.run does).
    global_batch_size: batch size over all JAX processes.
    seed: shuffle / augmentation seed, in [0, 2**32 - 2].

  Returns:
    A `BatchIterator` of dicts: "image" float32 (b, S, S, 3) in [-1, 1],
    "caption" object (b,) of str, "label" int32 (b,).

  Raises:
    ValueError: if global_batch_size is not divisible by the process count or
      this process's shard is empty.
  """
  shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if global_batch_size <= 0 or global_batch_size % shard.shard_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple "
        f"of jax.process_count()={shard.shard_count}.")
  batch_size = global_batch_size // shard.shard_count
  preprocess = _preprocess_from_cfg(data_cfg)
  num_workers = int(sources.cfg_get(data_cfg, "num_workers", 0) or 0)
  prefetch = max(1, int(sources.cfg_get(data_cfg, "prefetch", 2) or 1))
  num_threads = int(sources.cfg_get(data_cfg, "num_threads", 8) or 0)

  source = sources.get_source(data_cfg, "train")
  shard_size = len(source) // shard.shard_count  # Equal shards (drop rest).
  if shard_size == 0:
    raise ValueError(f"{source!r} has fewer records than processes.")
  start = shard.shard_index * shard_size
  ds = grain.MapDataset.source(source)[start:start + shard_size]
  ds = ds.shuffle(seed=seed).repeat(None)  # Reshuffled every epoch.
  ds = ds.random_map(preprocess, seed=seed + 1)
  it_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads,
                        prefetch_buffer_size=max(batch_size * prefetch,
                                                 num_threads)),
      allow_nones=True)
  it_ds = _SkipNoneIterDataset(it_ds)
  it_ds = it_ds.batch(batch_size, drop_remainder=True, batch_fn=_collate)
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=prefetch))
  logging.info("Train pipeline: %r, shard %d/%d (%d records), batch %d, "
               "%d workers.", source, shard.shard_index, shard.shard_count,
               shard_size, batch_size, num_workers)
  return BatchIterator(iter(it_ds))


def iterator_checkpoint_args(iterator: grain.DatasetIterator, save: bool):
  """Orbax args for a CheckpointManager item holding the iterator state.

  Usage: `manager.save(step, args=ocp.args.Composite(
  data=iterator_checkpoint_args(it, save=True), ...))`, and on restore
  `iterator_checkpoint_args(it, save=False)`: grain's handler then calls
  `it.set_state(...)` in place. Each process writes its own JSON file.

  Args:
    iterator: the iterator returned by `build_train_iterator`.
    save: True for `CheckpointSave`, False for `CheckpointRestore`.
  """
  try:
    args_cls = (grain.checkpoint.CheckpointSave if save
                else grain.checkpoint.CheckpointRestore)
  except AttributeError as e:  # grain defines them only if orbax imports.
    raise ImportError("grain's Orbax checkpoint args need orbax-checkpoint."
                      ) from e
  return args_cls(iterator)


def build_eval_set(data_cfg: Any, num_images: int) -> dict[str, Any]:
  """The first `num_images` good records of the held-out split.

  Deterministic: center crop, no flip, no shuffling.

  Args:
    data_cfg: data config (see `sources.get_source`).
    num_images: number of images.

  Returns:
    {"image": float32 (N, S, S, 3) in [-1, 1], "caption": list of N str}.
  """
  source = sources.get_source(data_cfg, "eval")
  preprocess = Preprocess(int(sources.cfg_get(data_cfg, "image_size")))
  records = []
  for index in range(len(source)):
    if len(records) == num_images:
      break
    record = preprocess.random_map(source[index], None)
    if record is not None:
      records.append(record)
  if len(records) < num_images:
    raise ValueError(f"Asked for {num_images} eval images but {source!r} has "
                     f"only {len(records)} good ones.")
  images = np.stack([r["image"] for r in records])  # (N, S, S, 3) uint8
  return {"image": images.astype(np.float32) / np.float32(127.5) - 1.0,
          "caption": [r["caption"] for r in records]}
