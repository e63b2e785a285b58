"""Grain plumbing shared by the image and latent pipelines: sharding, skipping, counting.

A pipeline's per-record transform returns either a good record, which may carry
`KINDS_KEY` (a list of counter names: repairs, kept empty captions, ...), or a bad
marker `{SKIP: kind}`. `build_iterator` drops the bad records, folds every counter
into the next good record, sums them per batch, and `BatchIterator` accumulates them,
so `counters()` is exact whether records are processed in threads or worker processes,
and is restored with the iterator state on resume. `build_batched_iterator` serves
sources without bad records (latent caches) a batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import collections
from typing import Any

from absl import logging
import grain
import jax
import numpy as np

Record = dict[str, Any]
Batch = dict[str, np.ndarray]

SKIP = "_skip"  # Bad-record marker: {SKIP: kind}.
KINDS_KEY = "_kinds"  # Counter names a record contributes (repairs etc.).
_COUNTS = "_counts"  # Per-record / per-batch int32 (len(COUNTERS),) vector.
_ENDLESS = 2**62  # Length of a repeated-forever stream.

# Every counter a pipeline may report (counters() returns all of them, zeros included).
COUNTERS = (
    "skipped_empty_file",
    "skipped_not_image",
    "skipped_corrupt",
    "skipped_unreadable",
    "skipped_too_small",
    "skipped_too_large",
    "skipped_caption_missing",
    "skipped_caption_empty",
    "skipped_source_mismatch",
    "repaired_downscaled",
    "repaired_caption_encoding",
    "repaired_caption_truncated",
    "kept_caption_missing",
    "kept_caption_empty",
)
_INDEX = {name: i for i, name in enumerate(COUNTERS)}


def shard_bounds(
    num_records: int, process_index: int, process_count: int, drop_remainder: bool = True
) -> tuple[int, int]:
  """Record range [start, stop) of one process: equal contiguous shards.

  With drop_remainder the last `num_records % process_count` records are left out so
  every process has the same number; otherwise shards differ by at most one.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
  if drop_remainder:
    size = num_records // process_count
    return process_index * size, (process_index + 1) * size
  return (
      process_index * num_records // process_count,
      (process_index + 1) * num_records // process_count,
  )


def process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """(index, count), defaulting to this JAX process."""
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  return index, count


def per_process_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple "
        f"of the process count ({process_count})."
    )
  return global_batch_size // process_count


def count_vector(kinds: Sequence[str]) -> np.ndarray:
  counts = np.zeros(len(COUNTERS), np.int32)
  for kind in kinds:
    counts[_INDEX[kind]] += 1
  return counts


class _SkipBadIterator(grain.DatasetIterator):
  """Drops bad records; each good record carries the counts since the previous one."""

  def __init__(self, parent: grain.DatasetIterator, max_consecutive_bad: int):
    super().__init__(parent)
    self._max_bad = max_consecutive_bad

  def __next__(self) -> Record:
    kinds, bad = [], 0
    while True:
      element = dict(next(self._parent))
      kinds.extend(element.pop(KINDS_KEY, ()))
      if SKIP not in element:
        element[_COUNTS] = count_vector(kinds)
        return element
      kinds.append(element[SKIP])
      bad += 1
      if bad >= self._max_bad:
        summary = dict(collections.Counter(k for k in kinds if k.startswith("skipped")))
        raise RuntimeError(
            f"{bad} consecutive unusable records (a full pass over this "
            f"process's shard): {summary}. Is the data source broken?"
        )

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class _SkipBadIterDataset(grain.IterDataset):
  """IterDataset view of `_SkipBadIterator` (runs inside worker processes too)."""

  def __init__(self, parent: grain.IterDataset, max_consecutive_bad: int):
    super().__init__(parent)
    self._max_bad = max_consecutive_bad

  def __iter__(self) -> _SkipBadIterator:
    return _SkipBadIterator(self._parent.__iter__(), self._max_bad)


class _Collate:
  """Stacks records with `collate` and sums their counter vectors."""

  def __init__(self, collate: Callable[[Sequence[Record]], Batch]):
    self._collate = collate

  def __call__(self, records: Sequence[Record]) -> Batch:
    batch = self._collate(records)
    batch[_COUNTS] = np.sum([r[_COUNTS] for r in records], axis=0, dtype=np.int64)
    return batch


class BatchIterator(grain.DatasetIterator):
  """Yields batches (dicts of numpy arrays) and counts skipped / repaired records.

  State (`get_state`) is the grain pipeline state plus the counters; it is
  JSON-serializable, as the checkpoint handlers require.
  """

  def __init__(
      self, parent: grain.DatasetIterator, finalize: Callable[[Batch], Batch] | None = None
  ):
    super().__init__(parent)
    self._counts = np.zeros(len(COUNTERS), np.int64)
    self._finalize = finalize

  def __next__(self) -> Batch:
    batch = dict(next(self._parent))
    if self._finalize is not None:
      batch = self._finalize(batch)
    counts = batch.pop(_COUNTS)
    skipped = int(sum(c for c, n in zip(counts, COUNTERS) if n.startswith("skipped")))
    if skipped:
      logging.warning(
          "Skipped %d bad records: %s", skipped, {n: int(c) for n, c in zip(COUNTERS, counts) if c}
      )
    self._counts += counts
    return batch

  def counters(self) -> dict[str, int]:
    """Cumulative counts by kind, e.g. {"skipped_corrupt": 1, ...} (zeros included)."""
    return {name: int(c) for name, c in zip(COUNTERS, self._counts)}

  @property
  def num_bad_records(self) -> int:
    return sum(v for k, v in self.counters().items() if k.startswith("skipped"))

  def get_state(self) -> dict[str, Any]:
    return {"pipeline": self._parent.get_state(), "counters": self.counters()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["pipeline"])
    saved = state.get("counters", {})
    self._counts = np.array([int(saved.get(n, 0)) for n in COUNTERS], np.int64)

  def __str__(self) -> str:
    return f"BatchIterator({ {k: v for k, v in self.counters().items() if v} })"


def build_iterator(
    source: Any,
    transform: grain.transforms.RandomMap,
    collate: Callable,
    *,
    batch_size: int,
    seed: int,
    start: int,
    stop: int,
    num_threads: int,
    num_workers: int,
    prefetch: int,
    finalize: Callable[[Batch], Batch] | None = None,
) -> BatchIterator:
  """source[start:stop] -> seeded shuffle, repeated forever (reshuffled each epoch) ->
  transform -> drop bad records (counted) -> batch (drop remainder) -> workers.

  Args:
    source: random-access source.
    transform: per-record RandomMap returning a record or {SKIP: kind}.
    collate: list of good records -> batch dict.
    batch_size: records per batch (this process).
    seed: shuffle / transform seed.
    start: first record of this process's shard.
    stop: end of this process's shard.
    num_threads: reader threads (0: none).
    num_workers: worker processes (0: in-process).
    prefetch: batches buffered per worker (and records per thread buffer, x batch).
    finalize: batch -> batch, applied in this process (after the workers).
  """
  ds = grain.MapDataset.source(source)[start:stop]
  ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.random_map(transform, seed=seed + 1)
  it_ds = ds.to_iter_dataset(
      grain.ReadOptions(
          num_threads=num_threads, prefetch_buffer_size=max(batch_size * prefetch, num_threads)
      )
  )
  it_ds = _SkipBadIterDataset(it_ds, max_consecutive_bad=max(stop - start, 1))
  it_ds = it_ds.batch(batch_size, drop_remainder=True, batch_fn=_Collate(collate))
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch)
    )
  return BatchIterator(iter(it_ds), finalize)


class _ZeroCounts(grain.transforms.RandomMap):
  """Adds an all-zero counter vector to a batch (sources without bad records)."""

  def __init__(self, transform: grain.transforms.RandomMap):
    self._transform = transform

  def random_map(self, element: Any, rng: np.random.Generator) -> Batch:
    return {**self._transform.random_map(element, rng), _COUNTS: np.zeros(len(COUNTERS), np.int64)}


class _ShuffledBatches:
  """Random access to the batches of an endless stream over source[start:stop].

  Epoch e is a numpy permutation seeded by (seed, e); item i is the list of the
  records of batch i (batches run across epoch boundaries). One permutation per epoch
  (instead of grain's per-index shuffle) keeps the per-record cost to the read itself.
  """

  def __init__(self, source: Any, start: int, stop: int, batch_size: int, seed: int):
    self._source, self._start, self._size = source, start, stop - start
    self._batch_size, self._seed = batch_size, seed
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return _ENDLESS

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng((self._seed, epoch)).permutation(self._size)
      self._perms = {epoch: perm, **{e: p for e, p in self._perms.items() if e == epoch - 1}}
    return perm

  def __getitem__(self, index: int) -> list[Any]:
    positions = range(int(index) * self._batch_size, (int(index) + 1) * self._batch_size)
    indices = [self._start + int(self._perm(p // self._size)[p % self._size]) for p in positions]
    return [self._source[i] for i in indices]

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_perms": {}}


def build_batched_iterator(
    source: Any,
    transform: grain.transforms.RandomMap,
    *,
    batch_size: int,
    seed: int,
    start: int,
    stop: int,
    num_threads: int,
    num_workers: int,
    prefetch: int,
) -> BatchIterator:
  """source[start:stop] -> seeded shuffle, repeated forever (reshuffled each epoch) ->
  lists of batch_size records -> transform (list -> batch) -> workers.

  For sources whose records are all good and cheap to read (latent caches), where
  grain's per-record overhead (index shuffling, per-read metrics) would dominate. Same
  state and `BatchIterator` behaviour as `build_iterator`.
  """
  ds = grain.MapDataset.source(_ShuffledBatches(source, start, stop, batch_size, seed))
  ds = ds.random_map(_ZeroCounts(transform), seed=seed + 1)
  it_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, num_threads, 1))
  )
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=prefetch)
    )
  return BatchIterator(iter(it_ds))


def probe(
    source: Any,
    transform: Callable[[Record, Any], Record],
    *,
    start: int,
    stop: int,
    num_records: int,
    seed: int,
) -> None:
  """Fails fast when none of `num_records` random records of [start, stop) is usable.

  Stops at the first usable one, so a healthy source costs one record.

  Raises:
    ValueError: naming the kinds of failure seen.
  """
  size = stop - start
  if size <= 0:
    raise ValueError(
        f"{source!r}: this process's shard [{start}, {stop}) is empty "
        "(fewer records than processes?)."
    )
  if size <= num_records:
    order = np.random.default_rng(seed).permutation(size)
  else:  # Sampled with replacement: no O(size) permutation for huge sources.
    order = np.random.default_rng(seed).integers(0, size, max(1, num_records))
  kinds = collections.Counter()
  for offset in order:
    record = transform(source[start + int(offset)], None)
    if SKIP not in record:
      return
    kinds[record[SKIP]] += 1
  raise ValueError(
      f"No usable record among {len(order)} checked of {source!r} "
      f"(shard [{start}, {stop})): {dict(kinds)}. See the warnings above for "
      "the first errors."
  )
