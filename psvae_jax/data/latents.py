"""Latent cache format, its random-access source and the stage-3 latent iterator.

A cache directory (written by `python -m psvae_jax.cache_latents`) holds:
  latents-PPPPP-of-NNNNN.array_record  one file per writing process; one msgpack record
                                       per image: {"mu": bytes, "std": bytes} (store
                                       "mean_std") or {"z": bytes} (store "sample"), plus
                                       "caption" (str), "label" (int), "index" (source index);
                                       paired records (instruction editing) also hold
                                       "source_mu", the source image's mean latent
  meta.json                            {"format", "shape": [h, w, C], "dtype", "store",
                                       "count", "files", "counts", "autoencoder",
                                       "class_names" (labels index them; [] if none),
                                       "paired" (records hold "source_mu"), ...}
  latent_stats.npz                     per-channel statistics over the cache: "mean" / "std"
                                       of the sampled z (what training reads), "mu_mean" /
                                       "mu_std" of mu (psvae_jax/latent_stats.py)

`build_latent_iterator` yields {"latent": float32 (b, h, w, C), "caption": object (b,), "label":
int32 (b,)} (+ "source_latent": the source's mu, for a cache of pairs) (+ "input_ids" /
"attention_mask" with data.tokenizer), reading and decoding a whole batch at a time. For a mean_std
cache, "latent" is a sample mu + std * eps whose noise comes from grain's generator for that batch
position: deterministic given (seed, position in the shuffled stream), so it differs between epochs,
is identical across runs and survives a resume.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Sequence

from array_record.python import array_record_data_source
import grain
import ml_dtypes
import msgpack
import numpy as np

from psvae_jax import latent_stats
from psvae_jax.data import config
from psvae_jax.data import iterators
from psvae_jax.data import text
from psvae_jax import workdir as workdir_lib

FORMAT = "psvae-latent-cache/1"
META_FILE = "meta.json"
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}
Record = dict[str, Any]


def shard_file_name(process_index: int, process_count: int) -> str:
  return f"latents-{process_index:05d}-of-{process_count:05d}.array_record"


def serialize(
    arrays: dict[str, np.ndarray], caption: str, label: int, index: int, dtype: str
) -> bytes:
  """One record: arrays ("mu"/"std" or "z", (h, w, C)) cast to `dtype`, raw bytes."""
  fields = {k: np.ascontiguousarray(v, dtype=DTYPES[dtype]).tobytes() for k, v in arrays.items()}
  fields.update(caption=caption, label=int(label), index=int(index))
  return msgpack.packb(fields, use_bin_type=True)


def deserialize(data: bytes, shape: Sequence[int], dtype: str) -> Record:
  """Record bytes -> {"mu"/"std" or "z": float32 (h, w, C), "caption", "label", "index"}."""
  fields = msgpack.unpackb(data, raw=False)
  out = {
      k: np.frombuffer(fields[k], dtype=DTYPES[dtype]).reshape(shape).astype(np.float32)
      for k in ("mu", "std", "z", "source_mu")
      if k in fields
  }
  out.update(caption=fields["caption"], label=fields["label"], index=fields["index"])
  return out


def deserialize_batch(records: Sequence[bytes], shape: Sequence[int], dtype: str) -> dict[str, Any]:
  """Record bytes -> stacked float32 (b, h, w, C) arrays, "caption" list, "label" array."""
  fields = [msgpack.unpackb(r, raw=False) for r in records]
  out: dict[str, Any] = {}
  for key in ("mu", "std", "z", "source_mu"):
    if key in fields[0]:
      joined = b"".join(f[key] for f in fields)
      out[key] = (
          np.frombuffer(joined, dtype=DTYPES[dtype])
          .reshape((len(fields), *shape))
          .astype(np.float32)
      )
  out["caption"] = [f["caption"] for f in fields]
  out["label"] = np.array([f["label"] for f in fields], np.int32)
  return out


def read_meta(directory: str | pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(directory).expanduser() / META_FILE
  if not path.is_file():
    raise FileNotFoundError(
        f"{str(path.parent)!r} is not a latent cache (no {META_FILE}). Write one with: "
        "python -m psvae_jax.cache_latents --autoencoder=AE_DIR --data=SPEC --out=DIR"
    )
  meta = json.loads(path.read_text())
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}.")
  return meta


class LatentCacheSource:
  """Random access over a latent cache: records as `deserialize` returns them."""

  def __init__(self, directory: str | pathlib.Path):
    self._dir = pathlib.Path(directory).expanduser()
    self.meta = read_meta(self._dir)
    self.shape = tuple(self.meta["shape"])
    self._dtype = self.meta["dtype"]
    paths = [
        str(self._dir / name)
        for name, count in zip(self.meta["files"], self.meta["counts"])
        if count
    ]
    if not paths:
      raise ValueError(f"Latent cache {str(self._dir)!r} holds no records.")
    # array_record's own source: grain's subclass adds per-read metrics (~2x the cost).
    self._source = array_record_data_source.ArrayRecordDataSource(paths)
    if len(self._source) != self.meta["count"]:
      raise ValueError(
          f"Latent cache {str(self._dir)!r}: {len(self._source)} records in "
          f"its files, meta.json says {self.meta['count']} (incomplete write?)."
      )

  def __len__(self) -> int:
    return len(self._source)

  @property
  def class_names(self) -> list[str]:
    """The class names of the dataset the cache was made from (labels index them)."""
    return list(self.meta.get("class_names", []) or [])

  def fingerprint(self) -> str:
    """Identifies the cache's records (its directory, count and files)."""
    key = f"{self._dir}|{self.meta['count']}|{self.meta['files']}|{self.meta['counts']}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]

  def __getitem__(self, index: int) -> Record:
    return deserialize(self._source[int(index)], self.shape, self._dtype)

  @property
  def raw(self) -> Any:
    """The underlying random-access source of serialized records (bytes)."""
    return self._source

  @property
  def dtype(self) -> str:
    return self._dtype

  def stats(self) -> latent_stats.LatentStats:
    """Per-channel statistics of mu and of the sampled z over the cache."""
    stats = latent_stats.load(str(self._dir))
    if stats is None:
      raise FileNotFoundError(f"{str(self._dir / workdir_lib.LATENT_STATS)!r} is missing.")
    return stats

  def __repr__(self) -> str:
    return f"LatentCacheSource({str(self._dir)!r}, n={len(self)}, shape={self.shape})"


class SampleBatch(grain.transforms.RandomMap):
  """A list of serialized records -> a latent batch (noise drawn for the whole batch)."""

  def __init__(self, shape: Sequence[int], dtype: str, tokenizer: Any = None):
    self._shape = tuple(shape)
    self._dtype = dtype
    self._tokenizer = tokenizer

  def random_map(
      self, records: Sequence[bytes], rng: np.random.Generator | None
  ) -> dict[str, np.ndarray]:
    fields = deserialize_batch(records, self._shape, self._dtype)
    if "z" in fields:
      latent = fields["z"]
    elif rng is None:  # Deterministic use: the mean.
      latent = fields["mu"]
    else:
      noise = rng.standard_normal(fields["mu"].shape, dtype=np.float32)
      latent = fields["mu"] + fields["std"] * noise  # (b, h, w, C)
    captions = np.empty(len(records), dtype=object)  # (b,) of str
    captions[:] = fields["caption"]
    batch = {"latent": latent, "caption": captions, "label": fields["label"]}
    if "source_mu" in fields:
      batch["source_latent"] = fields["source_mu"]  # (b, h, w, C)
    if self._tokenizer is not None:
      tokens = [self._tokenizer(c) for c in fields["caption"]]
      for key in ("input_ids", "attention_mask"):
        batch[key] = np.stack([t[key] for t in tokens])  # (b, L) int32
    return batch


def build_latent_iterator(
    data_cfg: Any,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> iterators.BatchIterator:
  """Infinite, seeded, checkpointable iterator over a latent cache (`data.path`).

  Same sharding, shuffling (reshuffled each epoch), worker and get_state / set_state
  behaviour as `pipeline.build_train_iterator`; records are read and decoded a batch
  at a time (cache records need no per-record skipping).

  Args:
    data_cfg: data config: `path` (the cache directory), optional `num_train` cap,
      `tokenizer` / `max_length`, `num_workers`, `prefetch`, `num_threads` (missing
      fields take the defaults of configs/common.py).
    global_batch_size: batch size over all processes.
    seed: shuffle / noise seed.
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).
  """
  cfg = config.complete(data_cfg)
  index, count = iterators.process_info(process_index, process_count)
  batch_size = iterators.per_process_batch(global_batch_size, count)
  cache = LatentCacheSource(cfg.path)
  limit = int(cfg.num_train or 0)
  num_records = min(len(cache), limit) if limit > 0 else len(cache)
  start, stop = iterators.shard_bounds(num_records, index, count)
  if stop - start < batch_size:
    raise ValueError(
        f"{cache!r}: this process's shard has {stop - start} records, fewer "
        f"than a batch ({batch_size})."
    )
  transform = SampleBatch(cache.shape, cache.dtype, text.make_tokenizer(cfg))
  return iterators.build_batched_iterator(
      cache.raw,
      transform,
      batch_size=batch_size,
      seed=seed,
      start=start,
      stop=stop,
      # Decoding a batch is GIL-bound Python: beyond 2 threads they only contend.
      num_threads=min(2, int(cfg.num_threads or 0)),
      num_workers=int(cfg.num_workers or 0),
      prefetch=max(1, int(cfg.prefetch or 1)),
  )
