"""Random-access data sources (grain `RandomAccessDataSource` protocol) and the registry.

Every source returns dict records with a "caption" (raw: str, bytes, a list of
alternatives, or None when there is none), a "label" (int, -1 when unlabelled) and the
pixels: "image" (uint8 (H, W, 3) array, or encoded bytes) or "path" (a file to
decode). Decoding, caption repair and resizing happen in the input pipeline
(`psvae_jax.data.pipeline`), where bad records are skipped and counted.

`get_source(data_cfg, split)` picks the source from `data.source`:
  * "folder": an image folder (`data.path`): class subfolders, captions.jsonl or .txt
    sidecars, optional train/ and val/ split subfolders;
  * "tfds": a prepared TensorFlow Datasets dataset in ArrayRecord format
    (`data.tfds_name`, `data.path` = its data_dir; see `tfds_source.py` for how to
    prepare ImageNet, COCO or a folder);
  * "latents": a latent cache written by `python -m psvae_jax.cache_latents` (`data.path`);
    its "eval" split is the eval split of the dataset the cache was made from.
Subsets (a `num_train` / `num_eval` cap, the folder hold-out, the eval set of
`pipeline.build_eval_set`) are seeded and stratified by class (`subsets.stratified`, seed
`data.seed`): a cap on a class-folder dataset keeps every class's share, never "the first N
files". A source exposes per-record `labels` when it has them cheaply (folders); one without
(tfds, latent caches) is subset by a seeded random draw. A source's `class_names` are the
sorted class subfolder names (folders) or the tfds ClassLabel names; `check_class_names`
refuses train and eval splits that disagree (a class missing from one would shift every later
label).
Other kinds are registered with `register_source` by whoever provides them: the synthetic
captioned shapes of the demo ("shapes") by `psvae_jax.shapes_plugin.register()`, which the
entry points that can run a shapes config call.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from psvae_jax.data import config
from psvae_jax.data import labels
from psvae_jax.data import latents
from psvae_jax.data import subsets
from psvae_jax.data import text
from psvae_jax.data import tfds_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTIONS_FILE = "captions.jsonl"
_SPLIT_DIRS = {
    "train": ("train",),
    "eval": ("eval", "val", "validation", "test"),
}

Record = dict[str, Any]


class ImageFolderSource:
  """All images under a folder (recursive, sorted by relative path).

  Captions: the entry for the image in `captions.jsonl` (lines `{"file": "a/b.png",
  "caption": "..."}`, paths relative to the jsonl's folder; several lines for one file
  are alternatives, one drawn per read), else the text of the sidecar `a/b.txt`, else
  none (None: counted as missing by the pipeline). Captions are returned raw (bytes from
  files) and repaired / counted by the pipeline. When images sit in first-level
  subfolders, the label is the index of the subfolder name among the sorted subfolder
  names (`class_names`); images at the top level get label -1. With `label_captions`,
  the caption is the class name (`label_names` may map folder names to words).
  Records hold the file path; the pipeline decodes.
  """

  def __init__(
      self,
      path: str | pathlib.Path,
      exclude_dirs: Sequence[str] = (),
      *,
      captions_file: str | pathlib.Path | None = None,
      label_captions: bool = False,
      label_names: str = "",
      label_template: str = "{}",
  ):
    """Lists the images.

    Args:
      path: the folder.
      exclude_dirs: names of first-level subfolders to leave out.
      captions_file: a captions.jsonl (default: `path/captions.jsonl` if it exists).
      label_captions: use class names as captions.
      label_names: optional file mapping class folder names to words.
      label_template: caption template for label captions, e.g. "a photo of a {}".
    """
    self._root = pathlib.Path(path).expanduser()
    if not self._root.is_dir():
      raise ValueError(f"Image folder {str(self._root)!r} does not exist.")
    files = sorted(
        (
            p
            for p in self._root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and p.is_file()
            and p.relative_to(self._root).parts[0] not in exclude_dirs
        ),
        key=lambda p: p.relative_to(self._root).as_posix(),
    )
    if not files:
      raise ValueError(
          f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under " f"{str(self._root)!r}."
      )
    self._files = [os.path.normpath(p) for p in files]
    relative = [p.relative_to(self._root).parts for p in files]
    self.class_names: list[str] = sorted({parts[0] for parts in relative if len(parts) > 1})
    class_index = {name: i for i, name in enumerate(self.class_names)}
    self.labels = np.asarray(
        [class_index[parts[0]] if len(parts) > 1 else -1 for parts in relative], np.int64
    )
    captions_file = captions_file or self._root / CAPTIONS_FILE
    self._captions, self._sources = (
        read_captions_jsonl(captions_file, with_sources=True)
        if pathlib.Path(captions_file).is_file()
        else ({}, {})
    )
    if self._sources:  # an editing folder: its images are the targets of the jsonl's pairs
      keep = np.asarray([f in self._sources for f in self._files])
      missing = sorted(set(self._sources) - set(self._files))
      if missing:
        logging.warning(
            "%d captions.jsonl targets are not images of the folder, e.g. %s.",
            len(missing),
            missing[0],
        )
      self._files = [f for f, k in zip(self._files, keep) if k]
      self.labels = self.labels[keep]
      if not self._files:
        raise ValueError(f"No captions.jsonl pair of {str(self._root)!r} names an image.")
    self._captioner = None
    if label_captions:
      if not self.class_names:
        raise ValueError(f"data.label_captions: {str(self._root)!r} has no class subfolders.")
      self._captioner = text.LabelCaptioner(
          text.resolve_label_names(self.class_names, label_names), label_template
      )
    logging.info(
        "ImageFolderSource %s: %d images, %d classes, %d jsonl captions.",
        self._root,
        len(self._files),
        len(self.class_names),
        len(self._captions),
    )

  def __len__(self) -> int:
    return len(self._files)

  def _caption(self, path: str, label: int) -> Any:
    if self._captioner is not None:
      return self._captioner(label)
    if path in self._captions:
      return self._captions[path]
    sidecar = pathlib.Path(path).with_suffix(".txt")
    try:
      return sidecar.read_bytes()
    except FileNotFoundError:
      return None
    except OSError as e:
      logging.warning("Could not read caption %s: %s", sidecar, e)
      return None

  def __getitem__(self, index: int) -> Record:
    path = self._files[int(index)]
    label = int(self.labels[int(index)])
    record = {"path": path, "caption": self._caption(path, label), "label": label}
    if self._sources:
      record["source_path"] = self._sources[path]
    return record

  @functools.cached_property
  def has_captions(self) -> bool:
    """Whether any caption can exist (class names, a captions.jsonl, or a .txt sidecar)."""
    if self._captioner is not None or self._captions:
      return True
    return any(pathlib.Path(p).with_suffix(".txt").is_file() for p in self._files)

  def fingerprint(self) -> str:
    """A hash of the image list (relative paths and labels): changes when the folder does."""
    h = hashlib.sha1()
    for path, label in zip(self._files, self.labels):
      h.update(f"{os.path.relpath(path, self._root)}\t{label}\n".encode())
    return h.hexdigest()[:16]

  def __repr__(self) -> str:
    return f"ImageFolderSource({str(self._root)!r}, n={len(self._files)})"


def read_captions_jsonl(path: str | pathlib.Path, with_sources: bool = False) -> Any:
  """{absolute image path: caption (str, or bytes if not UTF-8) or list of them}.

  Malformed lines are logged and ignored (their images count as missing captions).
  with_sources: also return {target path: source path} of the lines that name a "source"
  image (an instruction-editing folder: `{"file": "out/1.png", "source": "in/1.png",
  "caption": "make the sky red"}`; only those targets are then the folder's records).
  """
  path = pathlib.Path(path)
  captions: dict[str, Any] = {}
  pairs: dict[str, str] = {}
  with path.open("rb") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        try:
          entry, raw = json.loads(line.decode("utf-8")), False
        except UnicodeDecodeError:  # Keep the caption's bytes; the pipeline repairs them.
          entry, raw = json.loads(line.decode("latin-1")), True
        name, caption = str(entry["file"]), entry.get("caption")
      except (ValueError, KeyError, TypeError) as e:
        logging.warning("%s:%d: ignoring malformed line (%r).", path, number, e)
        continue
      if raw:
        name = name.encode("latin-1").decode("utf-8", errors="replace")
        if isinstance(caption, str):
          caption = caption.encode("latin-1", errors="replace")
      key = os.path.normpath(path.parent / name)
      if isinstance(entry, dict) and entry.get("source"):
        pairs[key] = os.path.normpath(path.parent / str(entry["source"]))
      if key in captions:
        previous = captions[key]
        caption = (previous if isinstance(previous, list) else [previous]) + [caption]
      captions[key] = caption
  return (captions, pairs) if with_sources else captions


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

  @property
  def class_names(self) -> list[str]:
    return list(getattr(self._parent, "class_names", []))

  @property
  def indices(self) -> np.ndarray:
    return self._indices

  @property
  def labels(self) -> np.ndarray | None:
    parent = getattr(self._parent, "labels", None)
    return None if parent is None else np.asarray(parent)[self._indices]

  @property
  def has_captions(self) -> bool:
    return bool(getattr(self._parent, "has_captions", True))

  def fingerprint(self) -> str:
    h = hashlib.sha1(fingerprint(self._parent).encode())
    h.update(self._indices.tobytes())
    return h.hexdigest()[:16]

  def __repr__(self) -> str:
    return f"SubsetSource({self._parent!r}, n={len(self._indices)})"


def labels_of(source: Any) -> np.ndarray:
  """Per-record labels of a source that has them cheaply, else all -1 (one stratum)."""
  labels = getattr(source, "labels", None)
  return np.full(len(source), -1, np.int64) if labels is None else np.asarray(labels, np.int64)


def fingerprint(source: Any) -> str:
  """Identifies a source's records: its own `fingerprint()` if any, else its repr and size."""
  if hasattr(source, "fingerprint"):
    return source.fingerprint()
  return hashlib.sha1(f"{source!r}|{len(source)}".encode()).hexdigest()[:16]


def eval_split_is_separate(data_cfg: Any) -> bool:
  """Whether the eval split is a split of its own (shapes' held-out indices, an eval/ or test/
  folder, a tfds split), so that `num_eval` is only a cap; False where the held-out images are
  carved out of one folder (`num_eval` then moves images out of training)."""
  cfg = config.complete(data_cfg)
  if cfg.source == "latents":
    origin = latents.read_meta(cfg.path)["data"]
    return origin.get("source") != "latents" and eval_split_is_separate(origin)
  if cfg.source == "folder":
    root = pathlib.Path(cfg.path).expanduser()
    return any((root / n).is_dir() for n in _SPLIT_DIRS["eval"])
  return True


resolve_label = labels.resolve_label  # a class id from an id or a class name


def check_class_names(train: Any, held_out: Any, where: str) -> list[str]:
  """The class names of a dataset's splits; ValueError when both have names and they differ."""
  a = list(getattr(train, "class_names", []) or [])
  b = list(getattr(held_out, "class_names", []) or [])
  if a and b and a != b:
    only_train, only_eval = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    raise ValueError(
        f"{where}: the train and eval splits have different classes (only in train: "
        f"{only_train or '-'}; only in eval: {only_eval or '-'}); labels index the sorted class "
        "names, so every later label would mean another class. Give both splits the same class "
        "folders."
    )
  return a or b


def _label_kwargs(cfg: Any) -> dict[str, Any]:
  return dict(
      label_captions=bool(cfg.label_captions),
      label_names=cfg.label_names,
      label_template=cfg.label_template,
  )


def _folder_kwargs(cfg: Any, root: pathlib.Path) -> dict[str, Any]:
  captions = root / CAPTIONS_FILE
  return dict(captions_file=captions if captions.is_file() else None, **_label_kwargs(cfg))


def _limit(cfg: Any, split: str) -> int | None:
  return cfg.num_train if split == "train" else cfg.num_eval


def _folder_source(cfg: Any, split: str) -> Any:
  """A folder split: its split subfolder if any, else a seeded hold-out."""
  if not cfg.path:
    raise ValueError("data.source='folder' needs data.path.")
  root = pathlib.Path(cfg.path).expanduser()
  kwargs = _folder_kwargs(cfg, root)
  limit = _limit(cfg, split)
  split_dirs = {
      s: [root / n for n in names if (root / n).is_dir()] for s, names in _SPLIT_DIRS.items()
  }
  if split_dirs[split]:
    sub = split_dirs[split][0]
    if (sub / CAPTIONS_FILE).is_file():
      kwargs["captions_file"] = sub / CAPTIONS_FILE
    source = ImageFolderSource(sub, **kwargs)
    other = split_dirs["eval" if split == "train" else "train"]
    if other:
      pair = (source, _ClassFolders(other[0]))
      check_class_names(*(pair if split == "train" else pair[::-1]), where=str(root))
    return _cap(source, limit, cfg.seed)
  if split_dirs["eval"]:  # An eval subfolder but no train one.
    source = ImageFolderSource(root, exclude_dirs=_SPLIT_DIRS["eval"], **kwargs)
    if split == "train":
      check_class_names(source, _ClassFolders(split_dirs["eval"][0]), where=str(root))
    return _cap(source, limit, cfg.seed)
  if split_dirs["train"]:
    raise ValueError(
        f"{str(root)!r} has a train/ subfolder but none of "
        f"{'/, '.join(_SPLIT_DIRS['eval'])}/ for evaluation."
    )
  # No split subfolders: hold out `num_eval` images, a seeded stratified draw.
  source = ImageFolderSource(root, **kwargs)
  num_eval = min(int(cfg.num_eval or 0), len(source) // 2)
  rest, held_out = subsets.split(source.labels, num_eval, int(cfg.seed))
  if split == "train":
    return _cap(SubsetSource(source, rest), limit, cfg.seed)
  if num_eval == 0:
    raise ValueError(
        f"No held-out images: {str(root)!r} has no eval/val subfolder and "
        f"data.num_eval is 0 or the folder has < 2 images."
    )
  return SubsetSource(source, held_out)


class _ClassFolders:
  """The class subfolder names of a split folder (for `check_class_names`), without listing
  its images."""

  def __init__(self, root: pathlib.Path):
    self.class_names = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and any(q.suffix.lower() in IMAGE_EXTENSIONS for q in p.rglob("*"))
    )


def _cap(source: Any, limit: int | None, seed: int) -> Any:
  """`limit` records of `source`, a seeded stratified draw (all if limit is 0 / None)."""
  if limit and int(limit) < len(source):
    return SubsetSource(source, subsets.stratified(labels_of(source), int(limit), int(seed)))
  return source


def _tfds_source(cfg: Any, split: str) -> Any:
  split_name = cfg.train_split if split == "train" else cfg.eval_split
  source = tfds_source.TfdsSource(
      cfg.tfds_name,
      split_name,
      cfg.path or None,
      image_key=cfg.image_key,
      caption_key=cfg.caption_key,
      label_key=cfg.label_key,
      **_label_kwargs(cfg),
  )
  return _cap(source, _limit(cfg, split), cfg.seed)


def _latent_source(cfg: Any, split: str) -> Any:
  """The cache (train); for "eval", the eval split of the dataset the cache was made
  from (its data config is in meta.json), e.g. prompts and images for stage-3 eval."""
  if split == "train":
    return _cap(latents.LatentCacheSource(cfg.path), cfg.num_train, cfg.seed)
  origin = config.resolve(latents.read_meta(cfg.path)["data"])  # resolved when read
  origin.num_eval = cfg.num_eval
  if origin.get("source") == "latents":
    raise ValueError("A latent cache made from a latent cache has no eval split.")
  return get_source(origin, "eval")


# data.source -> builder(cfg, split), cfg complete (`config.complete`); more through
# `register_source`.
SOURCES: dict[str, Callable[[Any, str], Any]] = {
    "folder": _folder_source,
    "tfds": _tfds_source,
    "latents": _latent_source,
}


def register_source(name: str, factory: Callable[[Any, str], Any]) -> None:
  """Registers (or replaces) data.source=`name`: factory(resolved data cfg, split) -> source.

  The factory gets the complete data config (`config.complete`) and "train" or "eval",
  and returns a random-access source of dict records (module docstring).
  """
  SOURCES[name] = factory


def get_source(data_cfg: Any, split: str) -> Any:
  """Builds the source of a split ("train" or "eval") from the data config.

  Config fields: `source` (a key of SOURCES), `path` (folder root, tfds data_dir or
  latent cache), `image_size`, `num_train`, `num_eval` (record counts for shapes; for
  the others an optional cap, and for folders without train/eval subfolders the
  held-out size), `seed`; tfds: `tfds_name`, `train_split`, `eval_split`, `image_key`,
  `caption_key`, `label_key`; folder and tfds: `label_captions`, `label_names`,
  `label_template`.

  Args:
    data_cfg: the data config (ConfigDict, mapping or dataclass; missing fields take
      the defaults of configs/common.py).
    split: "train" or "eval".

  Returns:
    A random-access source of dict records.
  """
  if split not in _SPLIT_DIRS:
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
  cfg = config.complete(data_cfg)
  if cfg.source not in SOURCES:
    raise ValueError(
        f"Unknown data source {cfg.source!r}; registered: {sorted(SOURCES)} (the demo's "
        "'shapes': psvae_jax.shapes_plugin.register(), which the entry points call)."
    )
  return SOURCES[cfg.source](cfg, split)
