"""The "shapes" data source: synthetic captioned shapes as a grain random-access source.

`plugin.register()` registers `get_source` as data.source="shapes"
(`psvae_jax.data.sources.register_source`). The train split is generator indices
[0, num_train) drawn from the training compositions only (`world.composition_split`); the eval
split, [EVAL_INDEX_OFFSET, EVAL_INDEX_OFFSET + num_eval), is the validation set: new scenes,
alternately of training compositions ("seen") and of the "val" held-out ones ("unseen"). The
"test" compositions appear in no split here: the demo's report draws them (figures.py).

The "shapes_instruct" source (`get_instruct_source`) serves instruction-editing triples
(`instruct.triple`) as paired records: "source_image" (the scene before), "image" (after),
"caption" (the instruction) and "target_caption"; the same train / eval index layout, its eval
split alternating training triples and "val" held-out ones.
"""

from __future__ import annotations

from typing import Any

from psvae_jax.shapes import instruct
from psvae_jax.shapes import world

EVAL_INDEX_OFFSET = 10_000_000  # Shapes held-out split: generator indices.

Record = dict[str, Any]


class ShapesSource:
  """Synthetic captioned shapes, generated on the fly and deterministically.

  Record i is `world.generate(index_offset + i, image_size, seed, split=splits[i % len(splits)])`:
  the records are i.i.d. draws already (per split), so eval sets read them in order
  (`random_order`, data/pipeline.eval_order) and a prefix alternates the splits evenly.
  """

  random_order = True

  def __init__(
      self,
      num_records: int,
      image_size: int,
      seed: int,
      index_offset: int = 0,
      splits: tuple[str, ...] = ("train",),
  ):
    if num_records <= 0:
      raise ValueError(f"num_records must be positive, got {num_records}.")
    self._num_records = int(num_records)
    self._image_size = int(image_size)
    self._seed = int(seed)
    self._index_offset = int(index_offset)
    self._splits = tuple(splits)

  def __len__(self) -> int:
    return self._num_records

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    if not 0 <= index < self._num_records:
      raise IndexError(f"Index {index} out of range [0, {self._num_records}).")
    split = self._splits[index % len(self._splits)]
    image, caption = world.generate(
        self._index_offset + index, self._image_size, self._seed, split=split
    )
    return {"image": image, "caption": caption, "label": -1}

  def __repr__(self) -> str:
    return (
        f"ShapesSource(num_records={self._num_records}, "
        f"image_size={self._image_size}, seed={self._seed}, "
        f"index_offset={self._index_offset}, splits={self._splits})"
    )


def get_source(cfg: Any, split: str) -> ShapesSource:
  """The source of a split ("train" or "eval") from a resolved data config: `num_train` /
  `num_eval` records of `image_size` pixels drawn with `seed`."""
  train = split == "train"
  num_records = int(cfg.num_train if train else cfg.num_eval)
  if train and num_records > EVAL_INDEX_OFFSET:
    raise ValueError(
        f"num_train={num_records} would overlap the held-out "
        f"shapes (indices from {EVAL_INDEX_OFFSET})."
    )
  return ShapesSource(
      num_records=num_records,
      image_size=int(cfg.image_size),
      seed=int(cfg.seed),
      index_offset=0 if train else EVAL_INDEX_OFFSET,
      splits=("train",) if train else ("train", "val"),
  )


class InstructSource(ShapesSource):
  """Instruction-editing triples (module docstring), generated on the fly like the scenes."""

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    if not 0 <= index < self._num_records:
      raise IndexError(f"Index {index} out of range [0, {self._num_records}).")
    split = self._splits[index % len(self._splits)]
    t = instruct.triple(self._index_offset + index, self._seed, split=split)
    src, tgt = t.images(self._image_size)
    return {
        "image": tgt,
        "source_image": src,
        "caption": t.instruction,
        "target_caption": t.target_caption,
        "label": -1,
    }

  def __repr__(self) -> str:
    return "Instruct" + super().__repr__()


def get_instruct_source(cfg: Any, split: str) -> InstructSource:
  """`get_source` of the triples (data.source="shapes_instruct")."""
  s = get_source(cfg, split)
  return InstructSource(
      num_records=len(s),
      image_size=s._image_size,  # pylint: disable=protected-access
      seed=s._seed,  # pylint: disable=protected-access
      index_offset=s._index_offset,  # pylint: disable=protected-access
      splits=s._splits,  # pylint: disable=protected-access
  )
