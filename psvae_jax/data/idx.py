"""IDX files (the MNIST / Fashion-MNIST format) -> class folders that `data.source="folder"` reads.

  python -m psvae_jax.data.idx --src=/usr/share/datasets/fashion-mnist --out=DIR \
      [--num_train=10000] [--num_test=1000] [--seed=0] [--names=fashion_mnist]

Reads `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-images-...` and
`t10k-labels-...` from --src (Debian's `dataset-fashion-mnist` package installs Fashion-MNIST in
/usr/share/datasets/fashion-mnist) and writes a seeded, stratified subset of each split
(`subsets.stratified`: every class keeps its share; 0 = all) as PNGs:
  DIR/train/<class>/<index>.png   DIR/test/<class>/<index>.png   DIR/classes.json
<class> is `N_name` ("7_sneaker"; ids zero-padded past 10 classes), so the sorted folder names
are the label order and read well in logs and grids; `--label=sneaker`, `--label=7_sneaker` and
`--label=7` all name it. Without --names the folders are the ids ("7"). DIR/idx_args.json
records the arguments: a rerun with the same ones does nothing, with others it refuses (remove
DIR first).
"""

from __future__ import annotations

import gzip
import json
import pathlib
import shutil
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from psvae_jax.data import subsets

NAMES = {
    "fashion_mnist": (
        "tshirt_top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle_boot",
    ),
    "mnist": tuple(str(i) for i in range(10)),
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ARGS_FILE = "idx_args.json"
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(ValueError):
  """A missing or malformed IDX file (the message names it)."""


def _find(src: pathlib.Path, stem: str) -> pathlib.Path:
  for name in (stem, stem + ".gz"):
    if (src / name).is_file():
      return src / name
  raise IdxError(f"{src}: no {stem} or {stem}.gz.")


def read_idx(path: str | pathlib.Path) -> np.ndarray:
  """An IDX file (gzipped or not) -> its array; IdxError when the header does not fit."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise IdxError(f"{path}: cannot read ({e}).") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise IdxError(f"{path}: not an IDX file (magic {data[:4].hex()}).")
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_DTYPES[data[2]])
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise IdxError(f"{path}: {len(data)} bytes, the header {shape} {dtype} needs {expected}.")
  return np.frombuffer(data, dtype, offset=header).reshape(shape)


def read_split(src: str | pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images (N, H, W), int64 labels (N,)) of the "train" or "test" split in `src`."""
  src = pathlib.Path(src).expanduser()
  images = read_idx(_find(src, FILES[split][0]))
  labels = read_idx(_find(src, FILES[split][1])).astype(np.int64)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise IdxError(f"{src} {split}: images {images.shape} {images.dtype}, expected (N, H, W) u8.")
  if labels.shape != images.shape[:1]:
    raise IdxError(f"{src} {split}: {len(labels)} labels for {len(images)} images.")
  return images, labels


def class_folders(num_classes: int, names: Sequence[str] | None) -> list[str]:
  """Folder names whose sorted order is the label order."""
  if names is not None and len(names) != num_classes:
    raise IdxError(f"{len(names)} class names for {num_classes} classes.")
  width = len(str(num_classes - 1))
  return [
      f"{i:0{width}d}" + (f"_{names[i]}" if names is not None and names[i] != str(i) else "")
      for i in range(num_classes)
  ]


def convert(
    src: str,
    out: str,
    *,
    num_train: int = 0,
    num_test: int = 0,
    seed: int = 0,
    names: str = "",
) -> dict:
  """Writes the class folders (module docstring); returns the recorded arguments and counts."""
  out_dir = pathlib.Path(out).expanduser()
  if names and names not in NAMES:
    raise IdxError(f"--names={names!r}: known {sorted(NAMES)} (or none: folders named by id).")
  args = dict(src=str(src), num_train=num_train, num_test=num_test, seed=seed, names=names)
  record = out_dir / ARGS_FILE
  if record.is_file():
    done = json.loads(record.read_text())
    if done.get("args") == args:
      logging.info("%s already holds this conversion (%s).", out_dir, ARGS_FILE)
      return done
    raise IdxError(f"{out_dir} holds a conversion with other arguments ({done.get('args')}).")
  if out_dir.exists() and any(out_dir.iterdir()):
    raise IdxError(f"{out_dir} exists and is not empty: give a new --out.")
  splits = {s: read_split(src, s) for s in FILES}
  num_classes = int(max(labels.max() for _, labels in splits.values())) + 1
  folders = class_folders(num_classes, NAMES[names] if names else None)
  tmp = out_dir.with_name(out_dir.name + ".partial")
  shutil.rmtree(tmp, ignore_errors=True)
  counts = {}
  for split, (images, labels) in splits.items():
    n = num_train if split == "train" else num_test
    chosen = subsets.stratified(labels, n if n > 0 else len(labels), seed)
    for folder in folders:
      (tmp / split / folder).mkdir(parents=True, exist_ok=True)
    for i in chosen:
      Image.fromarray(images[i]).save(tmp / split / folders[labels[i]] / f"{i:05d}.png")
    counts[split] = np.bincount(labels[chosen], minlength=num_classes).tolist()
  done = {"args": args, "class_names": folders, "counts": counts}
  (tmp / "classes.json").write_text(json.dumps(folders, indent=1))
  (tmp / ARGS_FILE).write_text(json.dumps(done, indent=1))
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  if out_dir.exists():
    out_dir.rmdir()  # empty (checked above)
  tmp.rename(out_dir)  # complete or absent
  logging.info("Wrote %s: %s images per class.", out_dir, counts)
  return done


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  try:
    done = convert(
        f.src, f.out, num_train=f.num_train, num_test=f.num_test, seed=f.seed, names=f.names
    )
  except IdxError as e:
    raise SystemExit(f"idx: {e}") from None
  print(f"{f.out}: train {sum(done['counts']['train'])}, test {sum(done['counts']['test'])} images")


if __name__ == "__main__":
  flags.DEFINE_string("src", None, "Folder with the four IDX files.")
  flags.DEFINE_string("out", None, "Output folder (train/, test/ class folders).")
  flags.DEFINE_integer("num_train", 0, "Training images (stratified, seeded; 0 = all).")
  flags.DEFINE_integer("num_test", 0, "Test images (stratified, seeded; 0 = all).")
  flags.DEFINE_integer("seed", 0, "Subset seed.")
  flags.DEFINE_string("names", "", f"Class names: one of {sorted(NAMES)}, or '' for ids.")
  flags.mark_flags_as_required(["src", "out"])
  app.run(main)
