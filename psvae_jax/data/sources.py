"""Random-access data sources (grain `RandomAccessDataSource` protocol).

Every source returns dict records with a "caption" (str, may be empty) and a
"label" (int, -1 when unlabelled) plus the pixels: either "image" (uint8
(H, W, 3) array or encoded bytes) or "path" (a file to decode). Decoding and
resizing happen in the input pipeline (`psvae_jax.data.pipeline`).
"""

from __future__ import annotations

from collections.abc import Mapping
import pathlib
from typing import Any, Sequence

from absl import logging
import numpy as np

from psvae_jax.data import shapes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
EVAL_INDEX_OFFSET = 10_000_000  # Shapes held-out split: generator indices.
_SPLIT_DIRS = {
    "train": ("train",),
    "eval": ("eval", "val", "validation", "test"),
}

Record = dict[str, Any]


def cfg_get(cfg: Any, name: str, default: Any = None) -> Any:
  """Reads a field from a dataclass / ConfigDict / namespace / mapping."""
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


class ShapesSource:
  """Synthetic captioned shapes, generated on the fly and deterministically.

  Record i is `shapes.generate(index_offset + i, image_size, seed)`.
  """

  def __init__(self, num_records: int, image_size: int, seed: int,
               index_offset: int = 0):
    if num_records <= 0:
      raise ValueError(f"num_records must be positive, got {num_records}.")
    self._num_records = int(num_records)
    self._image_size = int(image_size)
    self._seed = int(seed)
    self._index_offset = int(index_offset)

  def __len__(self) -> int:
    return self._num_records

  def __getitem__(self, index: int) -> Record:
    index = int(index)
    if not 0 <= index < self._num_records:
      raise IndexError(f"Index {index} out of range [0, {self._num_records}).")
    image, text = shapes.generate(
        self._index_offset + index, self._image_size, self._seed)
    return {"image": image, "caption": text, "label": -1}

  def __repr__(self) -> str:
    return (f"ShapesSource(num_records={self._num_records}, "
            f"image_size={self._image_size}, seed={self._seed}, "
            f"index_offset={self._index_offset})")


class ImageFolderSource:
  """All images under a folder (recursive, sorted by relative path).

  The caption of `a/b.png` is the text of `a/b.txt` when that file exists, else
  "". When images sit in first-level subfolders, the label is the index of the
  subfolder name among the sorted subfolder names (`class_names`); images at
  the top level get label -1. Records hold the file path; the pipeline decodes.
  """

  def __init__(self, path: str | pathlib.Path,
               exclude_dirs: Sequence[str] = ()):
    """Lists the images.

    Args:
      path: the folder.
      exclude_dirs: names of first-level subfolders to leave out.
    """
    self._root = pathlib.Path(path).expanduser()
    if not self._root.is_dir():
      raise ValueError(f"Image folder {str(self._root)!r} does not exist.")
    files = sorted(
        (p for p in self._root.rglob("*")
         if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
         and p.relative_to(self._root).parts[0] not in exclude_dirs),
        key=lambda p: p.relative_to(self._root).as_posix())
    if not files:
      raise ValueError(
          f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under "
          f"{str(self._root)!r}.")
    self._files = [str(p) for p in files]
    relative = [p.relative_to(self._root).parts for p in files]
    self.class_names: list[str] = sorted(
        {parts[0] for parts in relative if len(parts) > 1})
    class_index = {name: i for i, name in enumerate(self.class_names)}
    self._labels = [class_index[parts[0]] if len(parts) > 1 else -1
                    for parts in relative]
    logging.info("ImageFolderSource %s: %d images, %d classes.", self._root,
                 len(self._files), len(self.class_names))

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> Record:
    path = self._files[int(index)]
    sidecar = pathlib.Path(path).with_suffix(".txt")
    text = ""
    if sidecar.is_file():
      try:
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
      except OSError as e:
        logging.warning("Could not read caption %s: %s", sidecar, e)
    return {"path": path, "caption": text, "label": self._labels[int(index)]}

  def __repr__(self) -> str:
    return f"ImageFolderSource({str(self._root)!r}, n={len(self._files)})"


class SubsetSource:
  """The records of `parent` at `indices`, in that order."""

  def __init__(self, parent: Any, indices: Sequence[int]):
    if len(indices) == 0:  # pylint: disable=g-explicit-length-test
      raise ValueError(f"Empty subset of {parent!r}.")
    self._parent = parent
    self._indices = np.asarray(indices, dtype=np.int64)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> Record:
    return self._parent[int(self._indices[int(index)])]

  def __repr__(self) -> str:
    return f"SubsetSource({self._parent!r}, n={len(self._indices)})"


def _folder_source(data_cfg: Any, split: str) -> Any:
  """A folder split: its split subfolder if any, else a seeded hold-out."""
  path = cfg_get(data_cfg, "path")
  if not path:
    raise ValueError("data.source='folder' needs data.path.")
  root = pathlib.Path(path).expanduser()
  limit = cfg_get(data_cfg, "num_train" if split == "train" else "num_eval")
  split_dirs = {s: [root / n for n in names if (root / n).is_dir()]
                for s, names in _SPLIT_DIRS.items()}
  if split_dirs[split]:
    return _cap(ImageFolderSource(split_dirs[split][0]), limit)
  if split_dirs["eval"]:  # An eval subfolder but no train one.
    return _cap(ImageFolderSource(root, exclude_dirs=_SPLIT_DIRS["eval"]),
                limit)
  if split_dirs["train"]:
    raise ValueError(f"{str(root)!r} has a train/ subfolder but none of "
                     f"{'/, '.join(_SPLIT_DIRS['eval'])}/ for evaluation.")
  # No split subfolders: hold out `num_eval` images of a seeded permutation.
  source = ImageFolderSource(root)
  num_eval = min(int(cfg_get(data_cfg, "num_eval", 0) or 0), len(source) // 2)
  order = np.random.default_rng(
      int(cfg_get(data_cfg, "seed", 0))).permutation(len(source))
  if split == "train":
    return _cap(SubsetSource(source, np.sort(order[num_eval:])), limit)
  if num_eval == 0:
    raise ValueError(
        f"No held-out images: {str(root)!r} has no eval/val subfolder and "
        f"data.num_eval is 0 or the folder has < 2 images.")
  return SubsetSource(source, np.sort(order[:num_eval]))


def _cap(source: Any, limit: int | None) -> Any:
  """The first `limit` records of `source` (all if limit is 0 / None)."""
  if limit and int(limit) < len(source):
    return SubsetSource(source, np.arange(int(limit)))
  return source


def get_source(data_cfg: Any, split: str) -> Any:
  """Builds the source of a split ("train" or "eval") from the data config.

  Config fields: `source` ("shapes" | "folder"), `path` (folder root),
  `image_size`, `num_train`, `num_eval` (record counts for shapes; for folders
  an optional cap, and the held-out size when the folder has no train/eval
  subfolders), `seed`.

  Args:
    data_cfg: the data config (dataclass, ConfigDict or mapping).
    split: "train" or "eval".

  Returns:
    A random-access source of dict records.
  """
  if split not in _SPLIT_DIRS:
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
  kind = cfg_get(data_cfg, "source", "shapes")
  if kind == "shapes":
    train = split == "train"
    num_records = int(cfg_get(data_cfg, "num_train" if train else "num_eval"))
    if train and num_records > EVAL_INDEX_OFFSET:
      raise ValueError(f"num_train={num_records} would overlap the held-out "
                       f"shapes (indices from {EVAL_INDEX_OFFSET}).")
    return ShapesSource(
        num_records=num_records,
        image_size=int(cfg_get(data_cfg, "image_size")),
        seed=int(cfg_get(data_cfg, "seed", 0)),
        index_offset=0 if train else EVAL_INDEX_OFFSET)
  if kind == "folder":
    return _folder_source(data_cfg, split)
  raise ValueError(f"Unknown data source {kind!r} (expected shapes | folder).")
