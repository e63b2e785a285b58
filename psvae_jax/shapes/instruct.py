"""Instruction-editing triples in the shapes world: (source scene, instruction, target scene).

  src, instruction, tgt, op = instruct.triple(index, seed=0, split="train")
  ok = instruct.success(edited_image, instruction_record)    # the checker on the target

Four operations (the PS-VAE paper's instruction editing, in a world a checker can judge):

  recolor  "make the circle blue"            (either object; a two-object scene with two
                                              objects of one shape names it by place:
                                              "make the left circle blue")
  reshape  "turn the triangle into a circle"
  move     "move the square to the right"    (one-object scenes: the other places are free)
  remove   "remove the left object"          (two-object scenes)

Held-out combinations, so that generalisation is measured: a triple belongs to the worst split
("test" > "val" > "train") of its source scene's and its target scene's composition split
(`world.composition_split`) and of its instruction's key (operation, the edited object's shape,
the new value: e.g. ("recolor", "circle", "blue")), one in eight of which is held out (half val,
half test). So training never shows "make the circle blue" when that key is held out, although
it shows circles made other colours and other shapes made blue.

Scoring (`success`, `preserved`): the instruction is followed when the checker accepts the target
caption and, for move and remove, nothing is left where the object was; the rest is preserved
when, in a two-object scene, the object the instruction does not name is still there as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from psvae_jax.shapes import checker
from psvae_jax.shapes import text
from psvae_jax.shapes import world

OPS: tuple[str, ...] = ("recolor", "reshape", "move", "remove")
_KEY_HOLD_OUT = 8  # one in this many instruction keys is held out (half val, half test)
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_MOVE_PHRASE = {
    "left": "to the left",
    "right": "to the right",
    "top": "to the top",
    "bottom": "to the bottom",
    "center": "to the center",
}
_PLACE_ADJ = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}


@dataclasses.dataclass(frozen=True)
class Triple:
  """One editing example: scenes as objects (render with `world.render`)."""

  background: tuple[int, int, int]
  source: tuple[world.ShapeObject, ...]
  instruction: str
  target: tuple[world.ShapeObject, ...]
  op: str
  edited: int  # index in `source` of the object the instruction names
  key: tuple[str, str, str]  # (op, the edited object's shape, the new value)

  @property
  def target_caption(self) -> str:
    return world.caption(self.target) if self.target else ""

  @property
  def source_caption(self) -> str:
    return world.caption(self.source)

  def images(self, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) uint8 (size, size, 3)."""
    return (
        world.render(self.source, size, self.background),
        world.render(self.target, size, self.background),
    )


def key_split(key: tuple[str, str, str]) -> str:
  """The split of an instruction key (stable across runs)."""
  h = int.from_bytes(hashlib.sha256("/".join(key).encode()).digest()[:8], "little")
  if h % _KEY_HOLD_OUT:
    return "train"
  return ("val", "test")[(h // _KEY_HOLD_OUT) % 2]


def _reference(objects: Sequence[world.ShapeObject], i: int) -> str:
  """How an instruction names object i: by shape, or by place and shape if the shape repeats."""
  o = objects[i]
  if sum(x.shape == o.shape for x in objects) > 1:
    return f"the {_PLACE_ADJ[o.position]} {o.shape}"
  return f"the {o.shape}"


def _edit(rng: np.random.Generator, objects: list[world.ShapeObject]):
  """(op, edited index, instruction, target objects, key) of one random edit of `objects`."""
  ops = [op for op in OPS if (op != "move" or len(objects) == 1)]
  ops = [op for op in ops if (op != "remove" or len(objects) == 2)]
  op = ops[int(rng.integers(len(ops)))]
  i = int(rng.integers(len(objects)))
  o, ref = objects[i], _reference(objects, i)
  target = list(objects)
  if op == "recolor":
    new = [c for c in world.COLORS if c != o.color][int(rng.integers(len(world.COLORS) - 1))]
    target[i] = dataclasses.replace(o, color=new)
    return op, i, f"make {ref} {new}", target, (op, o.shape, new)
  if op == "reshape":
    new = [s for s in world.SHAPES if s != o.shape][int(rng.integers(len(world.SHAPES) - 1))]
    target[i] = dataclasses.replace(o, shape=new)
    return op, i, f"turn {ref} into a {new}", target, (op, o.shape, new)
  if op == "move":
    new = [p for p in world.POSITIONS if p != o.position][
        int(rng.integers(len(world.POSITIONS) - 1))
    ]
    target[i] = dataclasses.replace(o, position=new, dx=0.0, dy=0.0)
    return op, i, f"move {ref} {_MOVE_PHRASE[new]}", target, (op, o.shape, new)
  del target[i]  # remove
  return op, i, f"remove the {_PLACE_ADJ[o.position]} object", target, (op, o.shape, o.position)


def triple(
    index: int, seed: int = 0, split: str = "train", num_objects: int | None = None
) -> Triple:
  """The deterministic triple (seed, index) of `split`, by rejection (module docstring)."""
  if split not in _SPLIT_ORDER:
    raise ValueError(f"split must be one of {tuple(_SPLIT_ORDER)}, got {split!r}.")
  rng = np.random.default_rng([seed, index, 7])
  background = tuple(int(c) for c in rng.integers(0, 41, 3))
  for _ in range(100_000):
    objects = world.sample_scene(rng)
    if num_objects is not None and len(objects) != num_objects:
      continue
    op, i, instruction, target, key = _edit(rng, objects)
    splits = [world.composition_split(objects), key_split(key)]
    if target:
      splits.append(world.composition_split(target))
    if max(splits, key=_SPLIT_ORDER.get) == split:
      return Triple(background, tuple(objects), instruction, tuple(target), op, i, key)
  raise RuntimeError(f"no triple of split {split!r}")  # unreachable


def vocabulary() -> list[str]:
  """The shapes captions' words (`text.shapes_vocabulary`) and every word of the instructions:
  the demo text encoder's vocabulary for an instruction-editing DiT."""
  words = text.shapes_vocabulary()
  extra = ["make", "turn", "into", "a", "move", "remove", "object", "to"]
  extra += list(world.SHAPES) + list(world.COLORS) + list(_PLACE_ADJ) + list(world.POSITIONS)
  for phrase in _MOVE_PHRASE.values():
    extra += phrase.split()
  return words + [w for w in dict.fromkeys(extra) if w not in words]


def _anything_at(image: np.ndarray, position: str) -> bool:
  """Whether the checker finds any shape of any colour at `position`."""
  return any(
      checker.score(image, world.caption([world.ShapeObject(s, c, position)]))
      for s in world.SHAPES
      for c in world.COLORS
  )


def success(image: np.ndarray, t: Triple) -> bool:
  """Whether `image` (uint8 (H, W, 3)) follows t's instruction (module docstring)."""
  if t.target and not checker.score(image, t.target_caption):
    return False
  if t.op in ("move", "remove"):
    return not _anything_at(image, t.source[t.edited].position)
  return True


def preserved(image: np.ndarray, t: Triple) -> bool | None:
  """Whether the object the instruction does not name is still there as it was (two-object
  scenes; None for one-object scenes, where nothing else is to keep)."""
  others = [o for k, o in enumerate(t.source) if k != t.edited]
  if not others:
    return None
  return all(checker.score(image, world.caption([o])) for o in others)
