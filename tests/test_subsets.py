"""Seeded stratified subsets (psvae_jax/data/subsets.py)."""

import numpy as np
import pytest

from psvae_jax.data import subsets


def _labels():
  # Sorted like a class-folder listing: the first 256 records are classes 0 and 1 only.
  return np.repeat(np.arange(10), [600, 400, 100, 100, 100, 100, 100, 100, 100, 10])


def test_stratified_keeps_every_class_share():
  labels = _labels()
  idx = subsets.stratified(labels, 256, seed=0)
  assert len(idx) == 256 and len(set(idx.tolist())) == 256
  assert np.all(np.diff(idx) > 0)
  counts = np.bincount(labels[idx], minlength=10)
  expected = 256 * np.bincount(labels) / len(labels)
  assert np.all(np.abs(counts - expected) < 1.0 + 1e-9), counts
  assert np.all(counts >= 1)


def test_stratified_is_seeded():
  labels = _labels()
  a, b = subsets.stratified(labels, 100, 3), subsets.stratified(labels, 100, 3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, subsets.stratified(labels, 100, 4))
  # Not the first records of each class: a draw.
  assert not np.array_equal(np.sort(a[labels[a] == 0])[:5], np.arange(5))


def test_stratified_all_and_none():
  labels = _labels()
  np.testing.assert_array_equal(subsets.stratified(labels, 10**6, 0), np.arange(len(labels)))
  assert len(subsets.stratified(labels, 0, 0)) == 0


@pytest.mark.parametrize(
    "counts,n", [([5, 1, 1], 2), ([1000, 1, 1], 3), ([7, 7, 0, 2], 9), ([3], 5)]
)
def test_allocate_sums(counts, n):
  take = subsets.allocate(counts, n)
  assert take.sum() == min(n, sum(counts))
  assert np.all(take <= np.asarray(counts)) and np.all(take >= 0)


def test_split_disjoint_and_stratified():
  labels = _labels()
  rest, held = subsets.split(labels, 100, seed=0)
  assert len(rest) + len(held) == len(labels)
  assert not set(rest.tolist()) & set(held.tolist())
  assert np.all(np.bincount(labels[held], minlength=10) >= 1)
