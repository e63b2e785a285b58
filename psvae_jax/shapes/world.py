"""Synthetic captioned shapes: scene sampling, rendering and the caption grammar.

Each scene holds one or two upright objects (circle, square, triangle pointing
up) in one of seven saturated colours, placed at a named position on a random
dark background. Two-object scenes always use an opposite pair of positions
(left + right or top + bottom), so objects never overlap. `generate(index,
image_size, seed)` is deterministic; `caption` and `parse_caption` map scenes to
captions such as "a red circle on the left and a blue square on the right" and
back. The prompt-adherence checker is in `checker.py`.

Compositions are split three ways (`composition_split`), so that generalisation is measured,
not assumed: "val" and "test" each hold out 10 of the 105 (colour, shape, position) objects
(every colour-shape, colour-position and shape-position pair still occurs in training) and an
eighth of the two-object pairings of the remaining objects. No training scene of any stage
shows a held-out composition (`generate(..., split="train")`); tuning reads "val", and the
demo's report.json reads "test" only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

# Position -> (x, y) centre as a fraction of the image side.
_CENTERS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}

BASE_SIZE = 0.35  # Object side / diameter as a fraction of the image side.
_SIZE_JITTER = 0.10  # Relative size jitter (+-10%).
_POS_JITTER = 0.035  # Position jitter as a fraction of the image side.
_MAX_BACKGROUND = 40  # Max value of each background channel.
_SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class ShapeObject:
  """One object of a scene; geometry is in fractions of the image side."""

  shape: str
  color: str
  position: str
  size: float = BASE_SIZE  # Side (square, triangle) or diameter (circle).
  dx: float = 0.0  # Position jitter.
  dy: float = 0.0

  def key(self) -> tuple[str, str, str]:
    """The caption-visible attributes (shape, colour, position)."""
    return (self.shape, self.color, self.position)


def sample_scene(rng: np.random.Generator) -> list[ShapeObject]:
  """Samples one or two objects (two objects use an opposite position pair)."""
  if rng.random() < 0.5:
    positions = [POSITIONS[rng.integers(len(POSITIONS))]]
  else:
    positions = list((("left", "right"), ("top", "bottom"))[rng.integers(2)])
    if rng.random() < 0.5:
      positions.reverse()  # Caption order varies too.
  objects = []
  for position in positions:
    objects.append(
        ShapeObject(
            shape=SHAPES[rng.integers(len(SHAPES))],
            color=list(COLORS)[rng.integers(len(COLORS))],
            position=position,
            size=BASE_SIZE * (1.0 + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER)),
            dx=float(rng.uniform(-_POS_JITTER, _POS_JITTER)),
            dy=float(rng.uniform(-_POS_JITTER, _POS_JITTER)),
        )
    )
  return objects


# ---- the composition split: train / val / test ------------------------------------------
SPLITS: tuple[str, ...] = ("train", "val", "test")
_HELD_OUT_PER_SPLIT = 10  # (shape, colour, position) objects held out per split ("val", "test")
_PAIR_HOLD_OUT = 8  # one in this many two-object pairings of kept objects is held out


def _held_out_objects() -> dict[tuple[str, str, str], str]:
  """(shape, colour, position) -> "val" | "test": a fixed, seeded choice in which each
  colour-shape pair is held out at most once (so every pair of attributes stays in training)."""
  triples = list(itertools.product(SHAPES, COLORS, POSITIONS))
  order = np.random.default_rng(20261204).permutation(len(triples))
  chosen, used = [], set()
  for i in order:
    shape, color, position = triples[i]
    if (shape, color) in used:
      continue
    used.add((shape, color))
    chosen.append(triples[i])
    if len(chosen) == 2 * _HELD_OUT_PER_SPLIT:
      break
  return {t: SPLITS[1 + k % 2] for k, t in enumerate(chosen)}


HELD_OUT_OBJECTS: dict[tuple[str, str, str], str] = _held_out_objects()


def _pair_split(a: tuple[str, str, str], b: tuple[str, str, str]) -> str:
  """The split of a two-object pairing of kept objects (order-free, stable across runs)."""
  key = "|".join(sorted(("/".join(a), "/".join(b)))).encode()
  h = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
  if h % _PAIR_HOLD_OUT:
    return "train"
  return SPLITS[1 + (h // _PAIR_HOLD_OUT) % 2]


def composition_split(objects: Sequence[ShapeObject]) -> str:
  """ "train", "val" or "test": where a scene's composition belongs (a scene showing any "test"
  composition is "test", else any "val" one "val")."""
  keys = [o.key() for o in objects]
  found = {HELD_OUT_OBJECTS.get(k, "train") for k in keys}
  if len(keys) == 2 and found == {"train"}:
    found.add(_pair_split(*keys))
  return "test" if "test" in found else "val" if "val" in found else "train"


def sample_scene_in(
    rng: np.random.Generator, split: str, num_objects: int | None = None
) -> list[ShapeObject]:
  """`sample_scene` restricted to a composition split, by rejection, with 1 or 2 objects (default:
  either, half and half as in the world, so no split is short of two-object scenes)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  if num_objects is None:  # the world's half single, half two-object scenes, in every split
    num_objects = 1 if rng.random() < 0.5 else 2
  for _ in range(100_000):
    objects = sample_scene(rng)
    if composition_split(objects) == split and num_objects in (None, len(objects)):
      return objects
  raise RuntimeError(f"no scene of split {split!r} with {num_objects} objects")  # unreachable


def render(
    objects: Sequence[ShapeObject], image_size: int, background: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
  """Draws the objects anti-aliased: uint8 (image_size, image_size, 3)."""
  big = image_size * _SUPERSAMPLE
  canvas = Image.new("RGB", (big, big), tuple(int(c) for c in background))
  draw = ImageDraw.Draw(canvas)
  for obj in objects:
    cx_frac, cy_frac = _CENTERS[obj.position]
    cx, cy = (cx_frac + obj.dx) * big, (cy_frac + obj.dy) * big
    half = obj.size * big / 2
    box = [cx - half, cy - half, cx + half - 1, cy + half - 1]
    color = COLORS[obj.color]
    if obj.shape == "circle":
      draw.ellipse(box, fill=color)
    elif obj.shape == "square":
      draw.rectangle(box, fill=color)
    elif obj.shape == "triangle":
      draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=color)
    else:
      raise ValueError(f"Unknown shape {obj.shape!r}.")
  small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
  return np.asarray(small, dtype=np.uint8)


def caption(objects: Sequence[ShapeObject]) -> str:
  """E.g. "a red circle on the left and a blue square on the right"."""
  return " and ".join(f"a {o.color} {o.shape} {_PHRASES[o.position]}" for o in objects)


_OBJECT_RE = (
    r"an?\s+("
    + "|".join(COLORS)
    + r")\s+("
    + "|".join(SHAPES)
    + r")\s+("
    + "|".join(re.escape(p) for p in _PHRASES.values())
    + r")"
)
_CAPTION_RE = re.compile(rf"{_OBJECT_RE}(?:\s+and\s+{_OBJECT_RE})?")
_PHRASE_TO_POSITION = {v: k for k, v in _PHRASES.items()}


def parse_caption(text: str) -> list[ShapeObject]:
  """Parses a caption into objects with nominal geometry.

  Args:
    text: a caption in the grammar produced by `caption` (case and surrounding
      whitespace / a final period are tolerated).

  Returns:
    One or two `ShapeObject`s with default size and no jitter.

  Raises:
    ValueError: if the text is not in the caption grammar.
  """
  normalized = " ".join(text.lower().strip().rstrip(".").split())
  match = _CAPTION_RE.fullmatch(normalized)
  if match is None:
    raise ValueError(f"Unparsable shapes caption: {text!r}")
  groups = match.groups()
  objects = []
  for i in range(0, len(groups), 3):
    if groups[i] is not None:
      objects.append(
          ShapeObject(
              shape=groups[i + 1], color=groups[i], position=_PHRASE_TO_POSITION[groups[i + 2]]
          )
      )
  return objects


def generate(
    index: int,
    image_size: int,
    seed: int = 0,
    split: str | None = None,
    num_objects: int | None = None,
) -> tuple[np.ndarray, str]:
  """Deterministic (image uint8 (S, S, 3), caption) for (seed, index): any composition, or one of
  `split` ("train", "val", "test"; `composition_split`) with `num_objects` objects."""
  background, objects = scene(index, seed, split, num_objects)
  return render(objects, image_size, background), caption(objects)


def scene(
    index: int, seed: int = 0, split: str | None = None, num_objects: int | None = None
) -> tuple[tuple[int, int, int], list[ShapeObject]]:
  """(background RGB, objects) of `generate(index, ..., seed, split, num_objects)`, unrendered."""
  rng = np.random.default_rng([seed, index])
  background = tuple(int(c) for c in rng.integers(0, _MAX_BACKGROUND + 1, 3))
  if split is None and num_objects is None:
    return background, sample_scene(rng)
  return background, sample_scene_in(rng, split or "train", num_objects)
