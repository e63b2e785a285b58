"""Seeded, stratified subsets: every eval set, cap and hold-out draws from all classes.

  indices = subsets.stratified(labels, 1000, seed=0)   # sorted record indices

A subset of n records out of N keeps each class's share (largest-remainder rounding of
n * count_c / N, so the counts add up to n exactly, and every class with a record gets at
least one when n >= the number of classes); within a class the records are a seeded random
draw. Unlabelled records (label -1) form one more stratum. The result is sorted, so reading
it walks the source in order; the same (labels, n, seed) always gives the same subset.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def allocate(counts: Sequence[int], n: int) -> np.ndarray:
  """How many of n to take from each stratum of `counts` (proportional, sums to n)."""
  counts = np.asarray(counts, dtype=np.int64)
  total = int(counts.sum())
  if n >= total:
    return counts.copy()
  share = counts * n / total
  take = np.floor(share).astype(np.int64)
  if n >= np.count_nonzero(counts):  # every non-empty stratum gets at least one record
    take = np.maximum(take, (counts > 0).astype(np.int64))
  # Largest remainders fill the rest; if the minimum of one overshot, the largest strata give back.
  while take.sum() < n:
    room = np.where(take < counts, share - take, -np.inf)
    take[int(np.argmax(room))] += 1
  while take.sum() > n:
    over = np.where(take > 1, take - share, -np.inf)
    take[int(np.argmax(over))] -= 1
  return take


def stratified(labels: Sequence[int], n: int, seed: int) -> np.ndarray:
  """Sorted indices of a seeded subset of n records with each label's share (module docstring).

  Args:
    labels: the label of every record (-1: unlabelled).
    n: subset size (all records if n >= len(labels)).
    seed: the draw's seed.

  Returns:
    int64 (min(n, N),) sorted indices into `labels`.
  """
  labels = np.asarray(labels, dtype=np.int64)
  if n >= len(labels):
    return np.arange(len(labels), dtype=np.int64)
  if n <= 0:
    return np.zeros((0,), dtype=np.int64)
  strata, inverse = np.unique(labels, return_inverse=True)
  counts = np.bincount(inverse, minlength=len(strata))
  take = allocate(counts, n)
  rng = np.random.default_rng(seed)
  chosen = []
  for s in range(len(strata)):
    members = np.flatnonzero(inverse == s)
    chosen.append(rng.permutation(members)[: take[s]])
  return np.sort(np.concatenate(chosen))


def split(labels: Sequence[int], num_held_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(rest, held_out): sorted indices, held_out a stratified draw of num_held_out records."""
  held_out = stratified(labels, num_held_out, seed)
  mask = np.ones(len(labels), dtype=bool)
  mask[held_out] = False
  return np.flatnonzero(mask), held_out
