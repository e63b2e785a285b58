"""Prompt-adherence checkers: a registry of scorers of whether images show what captions say.

The library knows no caption language itself; a world that has one registers its checker
(the shapes demo's "shapes": `psvae_jax.shapes_plugin.register()`). Users:

  * the "adherence" evaluator (evals/evaluators.py) and the DiT task's periodic eval pick
    the checker that accepts every caption (`for_captions`);
  * the autoencoder task's `recon_adherence` uses the checker registered under the data
    source's name (`get`), if any.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Checker:
  """accepts(caption) -> whether it can score that caption; score_batch(uint8 images (B, H, W, 3),
  captions) -> bool (B,), True where the image shows what its caption says."""

  accepts: Callable[[str], bool]
  score_batch: Callable[[np.ndarray, Sequence[str]], np.ndarray]


_CHECKERS: dict[str, Checker] = {}


def register_checker(name: str, checker: Checker) -> None:
  """Registers (or replaces) the checker called `name`."""
  _CHECKERS[name] = checker


def registered() -> list[str]:
  """The names of the registered checkers, sorted."""
  return sorted(_CHECKERS)


def get(name: str) -> Checker | None:
  """The checker registered as `name`, or None."""
  return _CHECKERS.get(name)


def for_captions(captions: Sequence[str]) -> Checker | None:
  """The first registered checker (by name) that accepts every caption; None if none does
  or there are no captions."""
  captions = [str(c) for c in captions]
  if not captions:
    return None
  for name in sorted(_CHECKERS):
    if all(_CHECKERS[name].accepts(c) for c in captions):
      return _CHECKERS[name]
  return None


def adherence(images: np.ndarray, captions: Sequence[str], checker: Checker) -> float:
  """The fraction of images the checker accepts for their captions."""
  return float(np.mean(checker.score_batch(images, captions)))
