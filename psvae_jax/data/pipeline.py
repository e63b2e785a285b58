"""Grain input pipeline: training batch iterator and a fixed evaluation set.

Train pipeline (per JAX process):
  source (`sources.get_source`) -> this process's contiguous shard -> seeded shuffle,
  repeated forever (reshuffled each epoch) -> per record: caption repair, decode to RGB
  (`decode.py`), crop (center or random) + resize, flip, tokenization -> skip bad
  records (counted by kind) -> batch (drop remainder; to float32 in [-1, 1]) ->
  optional worker processes -> `iterators.BatchIterator`.

Batches are dicts of numpy arrays, b = global_batch_size // process_count:
  "image"           float32 (b, S, S, 3) in [-1, 1]   S = data.image_size (pixel target)
  "image_enc"       float32 (b, E, E, 3) in [-1, 1]   only if data.encoder_image_size > 0
                    (the same crop and flip as "image", resized to E for the encoder)
  "caption"         object (b,) of str
  "label"           int32 (b,), -1 when unlabelled
  "input_ids"       int32 (b, L)                      only if data.tokenizer is set
  "attention_mask"  int32 (b, L)                      L = data.max_length
  "source_image"    float32 (b, S, S, 3) in [-1, 1]   only for paired records (instruction
  "source_image_enc" ...  (b, E, E, 3)                editing: the source of an edit; "image"
  "target_caption"  object (b,) of str                is its target and "caption" the
                                                      instruction)

A paired record carries its source's pixels as "source_image" (array or encoded bytes) or
"source_path" beside the target's: both get the same crop box and flip, so the source must
have the target's height and width (a pair that does not is skipped as
"skipped_source_mismatch"; an unreadable source is skipped with its decode kind).

Bad records never stop training: they are skipped or repaired, and counted
(`iterator.counters()`, e.g. {"skipped_corrupt": 1, "repaired_caption_truncated": 2});
see `decode.py` and `text.py` for the kinds. Records without a usable caption are kept
with caption "" ("kept_caption_*") or skipped ("skipped_caption_*") per
`data.empty_captions` ("keep" | "skip"); a source that has no captions at all (class
folders without caption files: `has_captions` False) keeps them uncounted. A source with
no usable record fails at construction (`data.probe_records` random records are checked until
one is usable), and the iterator raises if a whole pass over the shard yields none.

The iterator is checkpointable: `get_state()` / `set_state()` restore the exact batch
sequence (and the counters); `iterator_checkpoint_args` gives grain's Orbax args.
A `data.source="latents"` config is served by `latents.build_latent_iterator`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from absl import logging
import grain
import numpy as np

from psvae_jax import pixels
from psvae_jax.data import config
from psvae_jax.data import decode
from psvae_jax.data import iterators
from psvae_jax.data import latents
from psvae_jax.data import sources
from psvae_jax.data import subsets
from psvae_jax.data import text

Record = dict[str, Any]
Batch = dict[str, np.ndarray]
_IMAGE_KEYS = ("image", "image_enc", "source_image", "source_image_enc")
SKIPPED_SOURCE_MISMATCH = "skipped_source_mismatch"  # iterators.COUNTERS


class Preprocess(grain.transforms.RandomMap):
  """Source record -> pixels, caption and tokens; or {SKIP: kind} when unusable."""

  def __init__(
      self,
      image_size: int,
      crop: str,
      random_flip: bool,
      *,
      encoder_image_size: int,
      max_pixels: int,
      min_image_size: int,
      alpha_background: str,
      max_caption_chars: int,
      empty_captions: str,
      tokenizer: text.CaptionTokenizer | None,
      captions: bool = True,
  ):
    """See the data fields of configs/common.py (built by `preprocess_from_cfg`).

    captions: False for a source that has none (class folders without caption files): its
    records' missing captions are then expected, kept as "" and not counted.
    """
    if crop not in ("center", "random"):
      raise ValueError(f"crop must be 'center' or 'random', got {crop!r}.")
    if empty_captions not in ("keep", "skip"):
      raise ValueError(f"empty_captions must be 'keep' or 'skip', got {empty_captions!r}.")
    self._image_size = int(image_size)
    self._encoder_image_size = int(encoder_image_size or 0)
    self._crop = crop
    self._random_flip = bool(random_flip)
    self._decode_kwargs = dict(
        min_decode_size=max(self._image_size, self._encoder_image_size),
        max_pixels=int(max_pixels),
        min_size=int(min_image_size),
        background=decode.background_color(alpha_background),
    )
    self._max_caption_chars = int(max_caption_chars)
    self._skip_empty = empty_captions == "skip"
    self._tokenizer = tokenizer
    self._captions = bool(captions)

  def _caption(self, element: Record, rng) -> tuple[str, list[str], str | None]:
    """(text, counter kinds, skip kind or None)."""
    caption, kinds = text.clean_caption(element.get("caption"), self._max_caption_chars, rng)
    if not self._captions and not self._skip_empty and text.CAPTION_MISSING in kinds:
      kinds.remove(text.CAPTION_MISSING)  # a source without captions: nothing is missing
    for missing in (text.CAPTION_MISSING, text.CAPTION_EMPTY):
      if missing in kinds:
        kinds.remove(missing)
        if self._skip_empty:
          return caption, kinds, f"skipped_{missing}"
        kinds.append(f"kept_{missing}")
    return caption, kinds, None

  def random_map(self, element: Record, rng: np.random.Generator | None) -> Record:
    # A skipped record is counted once, under its skip kind (no repairs reported).
    caption, kinds, skip = self._caption(element, rng)
    if skip:
      return {iterators.SKIP: skip}
    try:
      image, repairs = decode.load_rgb(element, **self._decode_kwargs)
    except decode.BadImage as e:
      logging.log_first_n(
          logging.WARNING,
          "Skipping bad image %s: %s",
          50,
          element.get("path") or element.get("key", "<in-memory>"),
          e,
      )
      return {iterators.SKIP: e.kind}
    images = {"": image}
    if "source_image" in element or "source_path" in element:  # a pair (module docstring)
      try:
        src, src_repairs = decode.load_rgb(
            {"image": element.get("source_image"), "path": element.get("source_path")},
            **self._decode_kwargs,
        )
      except decode.BadImage as e:
        return {iterators.SKIP: e.kind}
      if src.shape != image.shape:
        return {iterators.SKIP: SKIPPED_SOURCE_MISMATCH}
      images["source_"] = src
      repairs = repairs + src_repairs
    box = decode.crop_box(image.shape[0], image.shape[1], self._crop, rng)
    flip = self._random_flip and rng is not None and rng.random() < 0.5
    out = {}
    for prefix, pixels_ in images.items():
      out[prefix + "image"] = decode.resize_box(pixels_, box, self._image_size)
      if self._encoder_image_size:
        out[prefix + "image_enc"] = decode.resize_box(pixels_, box, self._encoder_image_size)
    if flip:
      out = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in out.items()}
    out.update(caption=caption, label=np.int32(element.get("label", -1)))
    if "target_caption" in element:
      out["target_caption"] = str(element["target_caption"])
    if self._tokenizer is not None:
      out.update(self._tokenizer(caption))
    out[iterators.KINDS_KEY] = kinds + repairs
    return out


def images_to_float(batch: Batch) -> Batch:
  """Converts a batch's uint8 image fields to float32 in [-1, 1] (in the main process:
  worker processes ship uint8, 4x less data)."""
  return {
      k: pixels.to_float_inplace(v) if k in _IMAGE_KEYS and v.dtype == np.uint8 else v
      for k, v in batch.items()
  }


def collate(records: Sequence[Record], as_float: bool = True) -> Batch:
  """Stacks preprocessed records into a batch (see the module docstring); images stay
  uint8 when not as_float."""
  captions = np.empty(len(records), dtype=object)  # (b,) of str
  captions[:] = [r["caption"] for r in records]
  batch = {
      "image": np.stack([r["image"] for r in records]),  # (b, S, S, 3) uint8
      "caption": captions,
      "label": np.array([r["label"] for r in records], dtype=np.int32),
  }
  for key in ("image_enc", "source_image", "source_image_enc"):
    if key in records[0]:
      batch[key] = np.stack([r[key] for r in records])  # (b, S or E, S or E, 3) uint8
  if "target_caption" in records[0]:
    batch["target_caption"] = np.array([r["target_caption"] for r in records], dtype=object)
  for key in ("input_ids", "attention_mask"):
    if key in records[0]:
      batch[key] = np.stack([r[key] for r in records])  # (b, L) int32
  return images_to_float(batch) if as_float else batch


def preprocess_from_cfg(data_cfg: Any, train: bool = True, source: Any = None) -> Preprocess:
  """Training (crop / flip as configured) or evaluation (center, no flip) transform.

  source: the source it reads; one whose `has_captions` is False (class folders without caption
  files, a tfds set without a caption feature) does not count its missing captions.
  """
  cfg = config.complete(data_cfg)
  random_flip = bool(cfg.random_flip) and train
  if random_flip and cfg.source in ("shapes", "shapes_instruct"):
    raise ValueError("random_flip must be off for shapes: captions say left/right.")
  return Preprocess(
      image_size=int(cfg.image_size),
      crop=cfg.crop if train else "center",
      random_flip=random_flip,
      encoder_image_size=int(cfg.encoder_image_size or 0),
      max_pixels=int(cfg.max_pixels),
      min_image_size=int(cfg.min_image_size or 1),
      alpha_background=cfg.alpha_background,
      max_caption_chars=int(cfg.max_caption_chars),
      empty_captions=cfg.empty_captions,
      tokenizer=text.make_tokenizer(cfg),
      captions=bool(getattr(source, "has_captions", True)),
  )


def build_train_iterator(
    data_cfg: Any,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> iterators.BatchIterator:
  """Infinite, seeded, checkpointable iterator of this process's batches.

  Args:
    data_cfg: data config (see `sources.get_source` and configs/common.py): also
      `crop`, `random_flip`, `encoder_image_size`, `tokenizer`, `max_length`,
      `max_pixels`, `min_image_size`, `alpha_background`, `max_caption_chars`,
      `empty_captions`, `probe_records`, `num_workers` (0: in-process), `prefetch`
      (batches buffered per worker), `num_threads` (reader threads per process).
      Missing fields take the defaults of configs/common.py. Worker processes are
      spawned and read absl flags, so the program must have parsed them
      (absl.app.run does).
    global_batch_size: batch size over all processes.
    seed: shuffle / augmentation seed, in [0, 2**32 - 2].
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).

  Returns:
    A `BatchIterator` of batches as in the module docstring.

  Raises:
    ValueError: if global_batch_size is not divisible by the process count, this
      process's shard is empty, or none of the probed records is usable.
  """
  cfg = config.complete(data_cfg)
  if cfg.source == "latents":
    return latents.build_latent_iterator(
        cfg,
        global_batch_size=global_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
  index, count = iterators.process_info(process_index, process_count)
  batch_size = iterators.per_process_batch(global_batch_size, count)
  source = sources.get_source(cfg, "train")
  preprocess = preprocess_from_cfg(cfg, train=True, source=source)
  start, stop = iterators.shard_bounds(len(source), index, count)
  iterators.probe(
      source,
      preprocess.random_map,
      start=start,
      stop=stop,
      seed=seed,
      num_records=int(cfg.probe_records),
  )
  num_workers = int(cfg.num_workers or 0)
  logging.info(
      "Train pipeline: %r, shard %d/%d [%d, %d), batch %d, %d workers.",
      source,
      index,
      count,
      start,
      stop,
      batch_size,
      num_workers,
  )
  return iterators.build_iterator(
      source,
      preprocess,
      functools.partial(collate, as_float=False),
      batch_size=batch_size,
      seed=seed,
      start=start,
      stop=stop,
      num_threads=int(cfg.num_threads or 0),
      num_workers=num_workers,
      prefetch=max(1, int(cfg.prefetch or 1)),
      finalize=images_to_float,
  )


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
    args_cls = grain.checkpoint.CheckpointSave if save else grain.checkpoint.CheckpointRestore
  except AttributeError as e:  # grain defines them only if orbax imports.
    raise ImportError("grain's Orbax checkpoint args need orbax-checkpoint.") from e
  return args_cls(iterator)


def eval_order(source: Any, num_images: int, seed: int) -> np.ndarray:
  """The order in which `build_eval_set` reads a held-out source: a seeded stratified draw of
  num_images records (`subsets.stratified`), then the others in a seeded order (replacements
  for bad records). A source whose records are already a random draw (`random_order = True`:
  a generator's i.i.d. samples, such as the shapes) is read in order."""
  if getattr(source, "random_order", False):
    return np.arange(len(source))
  first = subsets.stratified(sources.labels_of(source), num_images, seed)
  rest = np.setdiff1d(np.arange(len(source)), first)
  return np.concatenate([first, np.random.default_rng(seed).permutation(rest)])


def build_eval_set(data_cfg: Any, num_images: int) -> dict[str, Any]:
  """`num_images` good records of the held-out split: a seeded draw, stratified by class.

  Deterministic: `eval_order` (seed `data.seed`), center crop, no flip, first caption of
  alternatives. With class folders every class has its share (not the first classes in path
  order).

  Args:
    data_cfg: data config (see `sources.get_source`).
    num_images: number of images.

  Returns:
    {"image": float32 (N, S, S, 3) in [-1, 1], "caption": list of N str, "label":
    int32 (N,)}, plus "image_enc" / "input_ids" / "attention_mask" when configured.
  """
  return read_split(data_cfg, "eval", num_images)


def read_split(data_cfg: Any, split: str, num_images: int = 0) -> dict[str, Any]:
  """`build_eval_set` of any split ("train" or "eval"); num_images 0 = every good record."""
  cfg = config.complete(data_cfg)
  source = sources.get_source(cfg, split)
  preprocess = preprocess_from_cfg(cfg, train=False, source=source)
  wanted = int(num_images) or len(source)
  records = []
  for index in eval_order(source, wanted, int(cfg.seed)):
    if len(records) == wanted:
      break
    record = preprocess.random_map(source[int(index)], None)
    if iterators.SKIP not in record:
      records.append(record)
  if num_images and len(records) < num_images:
    raise ValueError(
        f"Asked for {num_images} {split} images but {source!r} has only {len(records)} good ones."
    )
  if not records:
    raise ValueError(f"No good {split} images in {source!r}.")
  batch = collate(records)
  for key in ("caption", "target_caption"):
    if key in batch:
      batch[key] = list(batch[key])
  return batch
